//! The core's metrics move as a real cluster changes (OBSERVABILITY.md lists them): a peer
//! going down and up over the in-process cluster, with the replication traffic counted, and a
//! Redis adapter losing its server and reconnecting. Each test records into a recorder of its
//! own, installed on its current-thread runtime, so parallel tests never see each other's
//! counts.

mod plain_presence;
#[path = "../../presence-poem/tests/common/recorder.rs"]
mod recorder;
mod redis_support;

use std::time::Duration;

use plain_presence::Room;
use presence_core::presence::{PresenceHandle, PresenceOptions, TOPIC_METRICS_PERIOD};
use presence_core::pubsub::{LocalCluster, RedisAdapter, RedisOptions};
use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
use recorder::TestRecorder;
use redis_support::{DEADLINE, OwnRedis, eventually, unique};
use serde_json::json;

const LONG: Duration = Duration::from_secs(10);

fn state(s: &'static str) -> [(&'static str, &'static str); 2] {
    [("tracker", "Presence"), ("state", s)]
}

fn kind(k: &'static str) -> [(&'static str, &'static str); 2] {
    [("tracker", "Presence"), ("kind", k)]
}

#[tokio::test(start_paused = true)]
async fn a_peer_going_down_and_up_moves_the_replica_gauges() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let cluster = LocalCluster::new();
    let config = TrackerConfig {
        broadcast_period: Duration::from_millis(100),
        max_silent_periods: 2,
        permdown_period: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let node = |name: &str| {
        let pubsub = PubSub::builder(name).adapter(cluster.adapter()).build();
        Tracker::start("Presence", pubsub, config.clone()).unwrap()
    };
    // b tracks before a starts, so a asks b for a transfer.
    let b = node("b");
    let owner = Owner::new();
    b.track(&owner, "room:1", "bob", json!({})).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _a = node("a");

    // Both trackers set the gauges: each sees the other up.
    rec.eventually(LONG, "b up", |m| {
        m.gauge("presence_tracker_replicas", &state("up")) == 1.0
    })
    .await;
    assert_eq!(rec.gauge("presence_tracker_replicas", &state("down")), 0.0);
    rec.eventually(LONG, "bob's presence transferred", |m| {
        m.counter("presence_tracker_messages_sent_total", &kind("transfer")) >= 1
    })
    .await;
    assert!(rec.counter("presence_tracker_messages_sent_total", &kind("heartbeat")) > 0);
    assert!(rec.counter("presence_tracker_bytes_sent_total", &kind("heartbeat")) > 0);
    assert!(
        rec.counter(
            "presence_tracker_messages_received_total",
            &kind("heartbeat")
        ) > 0
    );
    assert!(rec.counter("presence_tracker_bytes_received_total", &kind("transfer")) > 0);
    assert!(rec.counter("presence_pubsub_messages_received_total", &[]) > 0);

    // A netsplit: each side marks the other down.
    cluster.partition(&["a"], &["b"]);
    rec.eventually(LONG, "b down", |m| {
        m.gauge("presence_tracker_replicas", &state("down")) == 1.0
    })
    .await;
    assert_eq!(rec.gauge("presence_tracker_replicas", &state("up")), 0.0);

    // Healed: up again.
    cluster.heal();
    rec.eventually(LONG, "b up again", |m| {
        m.gauge("presence_tracker_replicas", &state("up")) == 1.0
    })
    .await;
    assert_eq!(rec.gauge("presence_tracker_replicas", &state("down")), 0.0);
}

/// On the real clock: the time is read off the nodes' wall clocks, which a paused tokio clock
/// does not stop.
#[tokio::test]
async fn a_change_is_timed_from_its_node_to_its_merge_on_a_peer() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let cluster = LocalCluster::new();
    let period = Duration::from_millis(200);
    let config = TrackerConfig {
        broadcast_period: period,
        ..TrackerConfig::default()
    };
    let node = |name: &str| {
        let pubsub = PubSub::builder(name).adapter(cluster.adapter()).build();
        Tracker::start("Presence", pubsub, config.clone()).unwrap()
    };
    let a = node("a");
    let b = node("b");
    let label = [("tracker", "Presence")];
    rec.eventually(LONG, "a and b up", |m| {
        m.gauge("presence_tracker_replicas", &state("up")) == 1.0
    })
    .await;
    // Nothing changed yet: heartbeats without a delta are not timed.
    assert!(
        rec.histogram("presence_tracker_change_to_merge_seconds", &label)
            .is_empty()
    );

    let owner = Owner::new();
    let tracked = std::time::Instant::now();
    a.track(&owner, "room:1", "alice", json!({})).unwrap();
    eventually("alice on b", DEADLINE, || {
        !b.get_by_key("room:1", "alice").is_empty()
    })
    .await;
    let merged = tracked.elapsed().as_secs_f64();
    let samples = rec.histogram("presence_tracker_change_to_merge_seconds", &label);
    assert_eq!(samples.len(), 1, "one delta, merged once: {samples:?}");
    // Measured between the track and b's list showing it (with 50 ms of slack for the
    // millisecond rounding of the wall clocks).
    assert!(
        (0.0..=merged + 0.05).contains(&samples[0]),
        "{samples:?} against {merged} s seen"
    );
}

#[tokio::test(start_paused = true)]
async fn the_largest_topics_are_gauges_when_asked_for() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let topic = |t: &'static str| [("presence", "Room"), ("topic", t)];
    let gauge = |t: &'static str| rec.gauge("presence_topic_presences", &topic(t));
    let owners: Vec<Owner> = (0..6).map(|_| Owner::new()).collect();
    let track = |p: &PresenceHandle<Room>, o: usize, t: &str| {
        p.track(&owners[o], t, &format!("u{o}"), &json!({}))
            .unwrap();
    };

    // Off by default: no topic is a gauge.
    let plain = PresenceHandle::start(Room, PubSub::new("plain"), &PresenceOptions::new()).unwrap();
    track(&plain, 0, "room:a");
    tokio::time::sleep(TOPIC_METRICS_PERIOD * 2).await;
    assert!(
        !rec.names()
            .iter()
            .any(|n| n.contains("presence_topic_presences"))
    );
    drop(plain);

    // The two largest of three rooms, refreshed every period.
    let options = PresenceOptions::new().topic_metrics(2);
    let p = PresenceHandle::start(Room, PubSub::new("node"), &options).unwrap();
    for o in 0..3 {
        track(&p, o, "room:a");
    }
    track(&p, 3, "room:b");
    track(&p, 4, "room:b");
    track(&p, 5, "room:c");
    tokio::time::sleep(TOPIC_METRICS_PERIOD + Duration::from_millis(10)).await;
    assert_eq!((gauge("room:a"), gauge("room:b")), (3.0, 2.0));
    assert!(!rec.names().iter().any(|n| n.contains("room:c")));

    // room:a empties: it drops out (set to 0), room:c comes in.
    for (o, owner) in owners.iter().enumerate().take(3) {
        p.untrack(owner, "room:a", &format!("u{o}"));
    }
    tokio::time::sleep(TOPIC_METRICS_PERIOD).await;
    assert_eq!(
        (gauge("room:a"), gauge("room:b"), gauge("room:c")),
        (0.0, 2.0, 1.0)
    );
    // The refresh task goes with the presence: a change made after it through the tracker
    // (kept alive here) no longer reaches the gauge.
    let tracker = p.tracker().clone();
    drop(p);
    let extra = Owner::new();
    tracker.track(&extra, "room:b", "late", json!({})).unwrap();
    tokio::time::sleep(TOPIC_METRICS_PERIOD * 3).await;
    assert_eq!(tracker.count("room:b").metas, 3);
    assert_eq!(gauge("room:b"), 2.0);
}

#[tokio::test]
async fn a_redis_outage_and_reconnect_are_counted() {
    let Some(mut server) = OwnRedis::start().await else {
        return;
    };
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let url = server.url();
    let channel = unique("metrics");
    let options = RedisOptions::new("a")
        .pubsub_name(&channel)
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    let adapter = RedisAdapter::connect(&url, options).await.unwrap();
    let label = [("channel", adapter.channel().to_owned())];
    let label: Vec<(&str, &str)> = label.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _pubsub = PubSub::builder("a").adapter(adapter.clone()).build();
    assert_eq!(rec.gauge("presence_redis_connected", &label), 1.0);

    server.kill();
    eventually("the outage is noticed", DEADLINE, || {
        rec.gauge("presence_redis_connected", &label) == 0.0
    })
    .await;
    assert_eq!(rec.counter("presence_redis_outages_total", &label), 1);
    assert_eq!(rec.counter("presence_redis_reconnects_total", &label), 0);
    server.restart().await;
    eventually("reconnected", DEADLINE, || {
        rec.gauge("presence_redis_connected", &label) == 1.0
    })
    .await;
    assert_eq!(rec.counter("presence_redis_reconnects_total", &label), 1);
    assert!(adapter.stats().connected);
}
