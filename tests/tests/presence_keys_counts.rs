//! `count` and key-level events of a presence: on one node, on two nodes of a `LocalCluster`
//! (paused clock), and on two nodes over Redis (real time; skipped with a printed reason when
//! `PRESENCE_REDIS_URL` is not set). Changes are made on the first node and observed on the
//! last one, so with two nodes everything observed crossed the cluster.

mod plain_presence;
mod redis_support;

use std::time::Duration;

use plain_presence::Room;
use presence_core::presence::{KeyChange, KeyEvents, PresenceHandle, PresenceOptions};
use presence_core::pubsub::{LocalCluster, RedisAdapter, RedisOptions};
use presence_core::tracker::PresenceCount;
use presence_core::{Owner, PubSub};
use redis_support::{redis_url, unique};
use serde_json::json;

const TOPIC: &str = "room:lobby";
/// Generous: virtual time on the paused clock, real time over Redis.
const WAIT: Duration = Duration::from_secs(10);

fn options() -> PresenceOptions {
    PresenceOptions::new().broadcast_period(Duration::from_millis(100))
}

async fn next(events: &mut KeyEvents) -> (String, String, KeyChange) {
    let event = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("a key event in time")
        .expect("the subscription is open");
    (event.topic.to_string(), event.key.to_string(), event.change)
}

fn ev(key: &str, change: KeyChange) -> (String, String, KeyChange) {
    (TOPIC.to_owned(), key.to_owned(), change)
}

async fn count_becomes(presence: &PresenceHandle<Room>, keys: usize, metas: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let count = presence.count(TOPIC);
        if (count.keys, count.metas) == (keys, metas) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "count stayed {count:?}, expected {keys} keys and {metas} metas"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The whole story, on `nodes` (changes on the first, observations on the last).
async fn scenario(nodes: &[PresenceHandle<Room>]) {
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let mut topic_events = last.key_events(TOPIC);
    let mut all_events = last.all_key_events();
    let mut other_topic = last.key_events("room:other");
    assert_eq!(last.count(TOPIC), PresenceCount::default());

    let (phone, laptop, bob) = (Owner::new(), Owner::new(), Owner::new());
    first
        .track(&phone, TOPIC, "alice", &json!({"d": "phone"}))
        .unwrap();
    assert_eq!(
        next(&mut topic_events).await,
        ev("alice", KeyChange::Online)
    );
    count_becomes(last, 1, 1).await;

    first
        .track(&laptop, TOPIC, "alice", &json!({"d": "laptop"}))
        .unwrap();
    assert_eq!(
        next(&mut topic_events).await,
        ev("alice", KeyChange::Updated),
        "a second device is an update, not a second online"
    );
    count_becomes(last, 1, 2).await;

    first.track(&bob, TOPIC, "bob", &json!({})).unwrap();
    assert_eq!(next(&mut topic_events).await, ev("bob", KeyChange::Online));
    first
        .update(&phone, TOPIC, "alice", &json!({"d": "phone", "away": true}))
        .unwrap();
    assert_eq!(
        next(&mut topic_events).await,
        ev("alice", KeyChange::Updated)
    );
    count_becomes(last, 2, 3).await;

    first.untrack(&phone, TOPIC, "alice");
    assert_eq!(
        next(&mut topic_events).await,
        ev("alice", KeyChange::Updated)
    );
    drop(laptop); // the owner ends: its presences leave
    assert_eq!(
        next(&mut topic_events).await,
        ev("alice", KeyChange::Offline)
    );
    count_becomes(last, 1, 1).await;

    // The all-topics subscriber saw the same, in the same order (nobody read it: events
    // merged per key, so alice online then offline is nothing, bob is online).
    assert_eq!(next(&mut all_events).await, ev("bob", KeyChange::Online));
    assert!(all_events.try_recv().is_none());
    assert!(
        other_topic.try_recv().is_none(),
        "other topics are filtered"
    );

    // A reconnect unread: offline then online again is an update.
    drop(bob);
    let bob_again = Owner::new();
    count_becomes(last, 0, 0).await;
    first.track(&bob_again, TOPIC, "bob", &json!({})).unwrap();
    count_becomes(last, 1, 1).await;
    assert_eq!(
        next(&mut topic_events).await,
        ev("bob", KeyChange::Updated),
        "offline then online, read late, is one update"
    );
    assert!(topic_events.try_recv().is_none());
}

fn local_nodes(n: usize) -> Vec<PresenceHandle<Room>> {
    let cluster = LocalCluster::new();
    (0..n)
        .map(|i| {
            let pubsub = PubSub::builder(format!("node-{i}"))
                .adapter(cluster.adapter())
                .build();
            PresenceHandle::start(Room, pubsub, &options()).expect("the presence starts")
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn keys_and_counts_on_one_node() {
    scenario(&local_nodes(1)).await;
}

#[tokio::test(start_paused = true)]
async fn keys_and_counts_across_two_nodes() {
    scenario(&local_nodes(2)).await;
}

#[tokio::test]
async fn keys_and_counts_across_two_nodes_over_redis() {
    let Some(url) = redis_url() else { return };
    let channel = unique("keys-counts");
    let mut nodes = Vec::new();
    for i in 0..2 {
        let name = format!("{channel}-{i}");
        let adapter =
            RedisAdapter::connect(&url, RedisOptions::new(name.as_str()).pubsub_name(&channel))
                .await
                .expect("connects to redis");
        let pubsub = PubSub::builder(name).adapter(adapter).build();
        nodes.push(PresenceHandle::start(Room, pubsub, &options()).expect("starts"));
    }
    // Both nodes know each other before the story starts.
    let deadline = tokio::time::Instant::now() + WAIT;
    while nodes
        .iter()
        .any(|n| n.tracker().replicas().iter().flatten().count() == 0)
    {
        assert!(tokio::time::Instant::now() < deadline, "nodes never met");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scenario(&nodes).await;
}

/// A whole node going down takes each of its users offline once, whatever their devices; its
/// users come back online when it is reachable again.
#[tokio::test(start_paused = true)]
async fn a_node_going_down_takes_its_keys_offline_once() {
    let cluster = LocalCluster::new();
    let start = |i: usize| {
        let pubsub = PubSub::builder(format!("node-{i}"))
            .adapter(cluster.adapter())
            .build();
        let options = options().down_period(Duration::from_secs(1));
        PresenceHandle::start(Room, pubsub, &options).expect("starts")
    };
    let (a, b) = (start(0), start(1));
    let _keep = &a;
    let mut events = b.key_events(TOPIC);
    let owners: Vec<Owner> = (0..6).map(|_| Owner::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        // Three users with two devices each.
        a.track(owner, TOPIC, &format!("u{}", i / 2), &json!({}))
            .unwrap();
    }
    count_becomes(&b, 3, 6).await;
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        seen.push((e.key.to_string(), e.change));
    }
    assert_eq!(
        seen.iter().filter(|(_, c)| *c == KeyChange::Online).count(),
        3
    );
    // Node a disappears without a word: b hears nothing more from it.
    cluster.isolate("node-0");
    count_becomes(&b, 0, 0).await;
    let mut offline = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        offline.push((e.key.to_string(), e.change));
    }
    offline.sort();
    assert_eq!(
        offline,
        [
            ("u0".to_owned(), KeyChange::Offline),
            ("u1".to_owned(), KeyChange::Offline),
            ("u2".to_owned(), KeyChange::Offline)
        ]
    );
    cluster.heal();
    count_becomes(&b, 3, 6).await;
    let mut online = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        online.push((e.key.to_string(), e.change));
    }
    online.sort();
    assert_eq!(
        online,
        [
            ("u0".to_owned(), KeyChange::Online),
            ("u1".to_owned(), KeyChange::Online),
            ("u2".to_owned(), KeyChange::Online)
        ]
    );
    drop(owners);
}
