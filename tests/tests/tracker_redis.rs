//! The tracker replicating over Redis (the `redis` feature) as it does over the in-process
//! adapter, and surviving a Redis restart.
//!
//! The replication tests need `PRESENCE_REDIS_URL` (e.g. `redis://127.0.0.1:6379`) and print
//! "skipped: PRESENCE_REDIS_URL not set" without it. The restart tests start their own
//! `redis-server` on a free port (it must be on `PATH`; they print a skip line otherwise) so they
//! can kill it without disturbing other tests. Real time throughout: waits poll for a condition
//! and fail after a deadline.

mod redis_support;

use redis_support::{DEADLINE, OwnRedis, eventually, redis_url, unique};

use std::collections::BTreeSet;
use std::time::Duration;

use presence_core::pubsub::{RedisAdapter, RedisOptions};
use presence_core::tracker::ReplicaStatus;
use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
use serde_json::json;

const TOPIC: &str = "room:lobby";

/// Phoenix's test timings, with a down period longer than any outage here unless overridden.
fn config() -> TrackerConfig {
    TrackerConfig {
        broadcast_period: Duration::from_millis(100),
        max_silent_periods: 2,
        down_period: Some(Duration::from_secs(20)),
        permdown_period: Duration::from_secs(60),
        ..TrackerConfig::default()
    }
}

struct Node {
    tracker: Tracker,
    adapter: RedisAdapter,
}

async fn node(
    url: &str,
    channel: &str,
    name: &str,
    options: RedisOptions,
    config: TrackerConfig,
) -> Node {
    let adapter = RedisAdapter::connect(url, options.pubsub_name(channel))
        .await
        .unwrap_or_else(|e| panic!("{name} connects to redis: {e}"));
    let pubsub = PubSub::builder(name).adapter(adapter.clone()).build();
    let tracker = Tracker::start("Presence", pubsub, config).expect("tracker starts");
    Node { tracker, adapter }
}

async fn nodes(url: &str, test: &str, n: usize, config: TrackerConfig) -> Vec<Node> {
    let channel = unique(test);
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{channel}-{i}");
        out.push(
            node(
                url,
                &channel,
                &name,
                RedisOptions::new(name.as_str()),
                config.clone(),
            )
            .await,
        );
    }
    out
}

fn keys(tracker: &Tracker) -> BTreeSet<String> {
    tracker
        .list(TOPIC)
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

async fn converge(nodes: &[Node], expected: &BTreeSet<String>) {
    eventually("every node lists the same presences", DEADLINE, || {
        nodes.iter().all(|n| keys(&n.tracker) == *expected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge() {
    let Some(url) = redis_url() else { return };
    let nodes = nodes(&url, "converge", 3, config()).await;
    let owners: Vec<Owner> = (0..3).map(|_| Owner::new()).collect();
    for (i, (n, o)) in nodes.iter().zip(&owners).enumerate() {
        n.tracker
            .track(o, TOPIC, &format!("user{i}"), json!({"node": i}))
            .unwrap();
    }
    converge(&nodes, &set(&["user0", "user1", "user2"])).await;
    // Every node sees the others up, and metas travel intact.
    for n in &nodes {
        let up = n.tracker.replicas()[0]
            .iter()
            .filter(|r| r.status == ReplicaStatus::Up)
            .count();
        assert_eq!(up, 2);
        let (_, meta) = &n.tracker.get_by_key(TOPIC, "user1")[0];
        assert_eq!(meta.get("node"), Some(&json!(1)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrack_and_owner_drop_propagate() {
    let Some(url) = redis_url() else { return };
    let nodes = nodes(&url, "untrack", 2, config()).await;
    let alice = Owner::new();
    let bob = Owner::new();
    nodes[0]
        .tracker
        .track(&alice, TOPIC, "alice", json!({}))
        .unwrap();
    nodes[0]
        .tracker
        .track(&alice, "room:other", "alice", json!({}))
        .unwrap();
    nodes[0]
        .tracker
        .track(&bob, TOPIC, "bob", json!({}))
        .unwrap();
    converge(&nodes, &set(&["alice", "bob"])).await;

    nodes[0].tracker.untrack(&alice, TOPIC, "alice");
    converge(&nodes, &set(&["bob"])).await;
    assert_eq!(nodes[1].tracker.list("room:other").len(), 1);

    drop(bob);
    drop(alice);
    converge(&nodes, &set(&[])).await;
    eventually("the owner's other topic is empty", DEADLINE, || {
        nodes[1].tracker.list("room:other").is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_permdown_is_immediate_on_peers() {
    let Some(url) = redis_url() else { return };
    let nodes = nodes(&url, "permdown", 2, config()).await;
    let a = Owner::new();
    let b = Owner::new();
    nodes[0].tracker.track(&a, TOPIC, "a", json!({})).unwrap();
    nodes[1].tracker.track(&b, TOPIC, "b", json!({})).unwrap();
    converge(&nodes, &set(&["a", "b"])).await;

    let started = tokio::time::Instant::now();
    nodes[0].tracker.graceful_permdown();
    eventually("b drops a's presences", DEADLINE, || {
        keys(&nodes[1].tracker) == set(&["b"])
    })
    .await;
    // Far below the 20 s down period: the permdown message did it, not silence.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eventually("b forgets a", DEADLINE, || {
        nodes[1].tracker.replicas()[0].is_empty()
    })
    .await;
}

// ----- Redis restarts -----

/// Two trackers over a private Redis, which is killed and restarted while both change their
/// presences. `down`: whether the outage outlasts the down period.
async fn survive_restart(down: bool) {
    let Some(mut server) = OwnRedis::start().await else {
        return;
    };
    let url = server.url();
    let config = TrackerConfig {
        down_period: Some(Duration::from_millis(if down { 400 } else { 20_000 })),
        ..config()
    };
    let channel = unique("restart");
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        // Frequent pings: a healthy link must never look dead (subscribed-mode PING works).
        let options = RedisOptions::new(name)
            .ping_interval(Duration::from_millis(100))
            .backoff(Duration::from_millis(50), Duration::from_millis(500));
        nodes.push(node(&url, &channel, name, options, config.clone()).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);

    let alice = Owner::new();
    let bob = Owner::new();
    let carol = Owner::new();
    a.tracker.track(&alice, TOPIC, "alice", json!({})).unwrap();
    a.tracker.track(&bob, TOPIC, "bob", json!({})).unwrap();
    b.tracker.track(&carol, TOPIC, "carol", json!({})).unwrap();
    converge(&nodes, &set(&["alice", "bob", "carol"])).await;
    for n in &nodes {
        let stats = n.adapter.stats();
        assert!(
            stats.connected && stats.outages == 0 && stats.subscriptions == 1,
            "{stats:?}"
        );
    }

    server.kill();
    eventually("both adapters notice the outage", DEADLINE, || {
        nodes.iter().all(|n| !n.adapter.stats().connected)
    })
    .await;
    // Changes made during the outage: their deltas are lost on the way.
    drop(alice);
    let dave = Owner::new();
    a.tracker.track(&dave, TOPIC, "dave", json!({})).unwrap();
    let erin = Owner::new();
    b.tracker.track(&erin, TOPIC, "erin", json!({})).unwrap();
    drop(carol);
    let dropped: Vec<u64> = nodes.iter().map(|n| n.adapter.stats().dropped).collect();
    eventually(
        "heartbeats are dropped while redis is down",
        DEADLINE,
        || {
            nodes
                .iter()
                .zip(&dropped)
                .all(|(n, d)| n.adapter.stats().dropped > *d)
        },
    )
    .await;
    if down {
        eventually("each node marks the other down", DEADLINE, || {
            nodes.iter().all(|n| {
                n.tracker.replicas()[0]
                    .iter()
                    .all(|r| r.status == ReplicaStatus::Down)
            })
        })
        .await;
        assert_eq!(keys(&a.tracker), set(&["bob", "dave"]));
        assert_eq!(keys(&b.tracker), set(&["erin"]));
    } else {
        // Nothing is learnt while redis is down.
        assert_eq!(keys(&a.tracker), set(&["bob", "carol", "dave"]));
        assert_eq!(keys(&b.tracker), set(&["alice", "bob", "erin"]));
    }

    server.restart().await;
    eventually(
        "both adapters reconnect and subscribe again",
        DEADLINE,
        || {
            nodes.iter().all(|n| {
                let s = n.adapter.stats();
                s.connected && s.subscriptions >= 2 && s.outages == 1
            })
        },
    )
    .await;
    // Nothing lost, nothing ghosting.
    converge(&nodes, &set(&["bob", "dave", "erin"])).await;
    for n in &nodes {
        assert!(
            n.tracker.replicas()[0]
                .iter()
                .all(|r| r.status == ReplicaStatus::Up)
        );
    }
    // And replication goes on as before.
    a.tracker.untrack(&bob, TOPIC, "bob");
    converge(&nodes, &set(&["dave", "erin"])).await;
    drop((dave, erin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_resynchronise_after_a_redis_restart() {
    survive_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_resynchronise_after_an_outage_longer_than_the_down_period() {
    survive_restart(true).await;
}

/// With no traffic during the outage, the publisher has not seen its connection die when the
/// subscriber is back: the first broadcast after the restart must still go through, without a
/// second outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_broadcast_after_a_quiet_restart_goes_through() {
    use presence_core::pubsub::Message;

    let Some(mut server) = OwnRedis::start().await else {
        return;
    };
    let url = server.url();
    let channel = unique("quiet");
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let options = RedisOptions::new(name)
            .pubsub_name(&channel)
            .backoff(Duration::from_millis(50), Duration::from_millis(500));
        let adapter = RedisAdapter::connect(&url, options).await.unwrap();
        let pubsub = PubSub::builder(name).adapter(adapter.clone()).build();
        nodes.push((pubsub, adapter));
    }
    let mut sub = nodes[1].0.subscribe("t");

    server.kill();
    eventually("the subscribers notice", DEADLINE, || {
        nodes.iter().all(|(_, a)| !a.stats().connected)
    })
    .await;
    server.restart().await;
    eventually("both subscribe again", DEADLINE, || {
        nodes.iter().all(|(_, a)| {
            let s = a.stats();
            s.connected && s.subscriptions == 2
        })
    })
    .await;

    nodes[0]
        .0
        .broadcast(Message::json("t", "after", json!({})))
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, sub.recv()).await;
    assert_eq!(got.expect("delivered").unwrap().event(), "after");
    for (_, a) in &nodes {
        let s = a.stats();
        assert_eq!((s.outages, s.dropped), (1, 0), "{s:?}");
    }
}
