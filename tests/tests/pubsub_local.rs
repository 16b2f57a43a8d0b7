//! Single-node behaviour of `presence_core::pubsub`: subscriptions, the broadcast variants,
//! shared-`Arc` fan-out and bounded queues (Phoenix.PubSub semantics, reference section 2).

mod pubsub_support;

use pubsub_support::{drain, msg, num};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use presence_core::pubsub::{Message, Payload, PubSub, RecvError, Subscription};
use proptest::prelude::*;
use serde_json::json;

#[test]
fn node_name_is_the_configured_name() {
    assert_eq!(PubSub::new("node-a").node_name(), "node-a");
    let built = PubSub::builder(String::from("node-b")).build();
    assert_eq!(built.node_name(), "node-b");
    assert_eq!(built.clone().node_name(), "node-b");
}

#[test]
fn subscriber_receives_only_its_topic() {
    let ps = PubSub::new("a");
    let mut lobby = ps.subscribe("room:lobby");
    let mut other = ps.subscribe("room:other");
    assert_eq!(lobby.topic(), "room:lobby");

    let sent = Message::json("room:lobby", "new_msg", json!({"body": "hi"}));
    ps.broadcast(sent.clone()).unwrap();

    let got = lobby.try_recv().unwrap();
    assert_eq!(*got, sent);
    assert_eq!(got.topic(), "room:lobby");
    assert_eq!(got.event(), "new_msg");
    assert_eq!(got.payload(), &Payload::Json(json!({"body": "hi"})));
    assert_eq!(lobby.try_recv().unwrap_err(), RecvError::Empty);
    assert_eq!(other.try_recv().unwrap_err(), RecvError::Empty);
}

#[test]
fn broadcast_to_topic_without_subscribers_is_ok() {
    let ps = PubSub::new("a");
    assert_eq!(ps.broadcast(msg("nobody", 1)), Ok(()));
    assert_eq!(ps.subscriber_count("nobody"), 0);
}

#[test]
fn clones_share_one_registry() {
    let ps = PubSub::new("a");
    let clone = ps.clone();
    let mut sub = clone.subscribe("t");
    assert_eq!(ps.subscriber_count("t"), 1);
    ps.broadcast(msg("t", 7)).unwrap();
    assert_eq!(drain(&mut sub), vec![7]);
}

#[tokio::test]
async fn recv_waits_for_a_later_broadcast() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    let publisher = ps.clone();
    let task = tokio::spawn(async move {
        tokio::task::yield_now().await;
        publisher.broadcast(msg("t", 42)).unwrap();
    });
    let got = sub.recv().await.unwrap();
    assert_eq!(num(&got), 42);
    task.await.unwrap();
}

#[test]
fn every_local_subscriber_gets_the_same_arc() {
    let ps = PubSub::new("a");
    let mut subs: Vec<_> = (0..5).map(|_| ps.subscribe("t")).collect();
    let original = Arc::new(msg("t", 1));
    ps.broadcast(original.clone()).unwrap();
    for sub in &mut subs {
        let got = sub.try_recv().unwrap();
        assert!(
            Arc::ptr_eq(&got, &original),
            "subscriber got a copy, not the shared Arc"
        );
    }
    // The subscribers' clones plus ours: no hidden per-subscriber copies.
    assert_eq!(Arc::strong_count(&original), 1);

    // A message passed by value is also wrapped once and shared.
    ps.local_broadcast(msg("t", 2));
    let got: Vec<Arc<Message>> = subs.iter_mut().map(|s| s.try_recv().unwrap()).collect();
    for m in &got[1..] {
        assert!(Arc::ptr_eq(&got[0], m));
    }
    assert_eq!(Arc::strong_count(&got[0]), 5);
}

#[test]
fn duplicate_subscriptions_each_receive() {
    // Phoenix registers duplicates, and each one gets its own delivery.
    let ps = PubSub::new("a");
    let mut one = ps.subscribe("t");
    let mut two = ps.subscribe("t");
    assert_ne!(one.id(), two.id());
    assert_eq!(ps.subscriber_count("t"), 2);
    ps.broadcast(msg("t", 1)).unwrap();
    assert_eq!(drain(&mut one), vec![1]);
    assert_eq!(drain(&mut two), vec![1]);
}

#[test]
fn unsubscribe_and_drop_stop_delivery() {
    let ps = PubSub::new("a");
    let a = ps.subscribe("t");
    let b = ps.subscribe("t");
    let mut c = ps.subscribe("t");
    assert_eq!(ps.subscriber_count("t"), 3);

    ps.unsubscribe(a);
    assert_eq!(ps.subscriber_count("t"), 2);
    drop(b);
    assert_eq!(ps.subscriber_count("t"), 1);

    ps.broadcast(msg("t", 9)).unwrap();
    assert_eq!(drain(&mut c), vec![9]);
    drop(c);
    assert_eq!(ps.subscriber_count("t"), 0);
    ps.broadcast(msg("t", 10)).unwrap();

    // Resubscribing works and does not see the earlier messages.
    let mut d = ps.subscribe("t");
    assert_eq!(d.try_recv().unwrap_err(), RecvError::Empty);
    ps.broadcast(msg("t", 11)).unwrap();
    assert_eq!(drain(&mut d), vec![11]);
}

#[test]
fn dropping_a_subscription_after_the_pubsub_is_fine() {
    let ps = PubSub::new("a");
    let sub = ps.subscribe("t");
    drop(ps);
    drop(sub);
}

#[tokio::test]
async fn recv_returns_queued_messages_then_closed_when_pubsub_is_gone() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    ps.broadcast(msg("t", 1)).unwrap();
    ps.broadcast(msg("t", 2)).unwrap();
    drop(ps);
    assert_eq!(num(&sub.recv().await.unwrap()), 1);
    assert_eq!(num(&sub.try_recv().unwrap()), 2);
    assert_eq!(sub.recv().await.unwrap_err(), RecvError::Closed);
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Closed);
}

#[test]
fn broadcast_from_skips_only_the_sender() {
    let ps = PubSub::new("a");
    let mut me = ps.subscribe("t");
    let mut other = ps.subscribe("t");
    let mut elsewhere = ps.subscribe("u");
    ps.broadcast_from(me.id(), msg("t", 1)).unwrap();
    assert_eq!(drain(&mut me), Vec::<u64>::new());
    assert_eq!(drain(&mut other), vec![1]);
    assert_eq!(drain(&mut elsewhere), Vec::<u64>::new());

    // The skip is per subscription, not per topic: `me` still gets other senders' messages.
    ps.broadcast_from(other.id(), msg("t", 2)).unwrap();
    assert_eq!(drain(&mut me), vec![2]);
    assert_eq!(drain(&mut other), Vec::<u64>::new());
}

#[test]
fn broadcast_from_an_id_of_another_topic_skips_nobody() {
    let ps = PubSub::new("a");
    let foreign = ps.subscribe("u");
    let mut t1 = ps.subscribe("t");
    let mut t2 = ps.subscribe("t");
    ps.broadcast_from(foreign.id(), msg("t", 5)).unwrap();
    assert_eq!(drain(&mut t1), vec![5]);
    assert_eq!(drain(&mut t2), vec![5]);
}

#[test]
fn local_broadcast_and_local_broadcast_from() {
    let ps = PubSub::new("a");
    let mut me = ps.subscribe("t");
    let mut other = ps.subscribe("t");
    ps.local_broadcast(msg("t", 1));
    assert_eq!(drain(&mut me), vec![1]);
    assert_eq!(drain(&mut other), vec![1]);

    ps.local_broadcast_from(me.id(), msg("t", 2));
    assert_eq!(drain(&mut me), Vec::<u64>::new());
    assert_eq!(drain(&mut other), vec![2]);
}

#[test]
fn direct_broadcast_to_self_delivers_locally() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    ps.direct_broadcast("a", msg("t", 1)).unwrap();
    assert_eq!(drain(&mut sub), vec![1]);
}

#[test]
fn direct_broadcast_to_another_node_does_not_deliver_locally() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    assert_eq!(ps.direct_broadcast("b", msg("t", 1)), Ok(()));
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Empty);
}

#[test]
fn lagged_reports_the_exact_count_then_the_queued_messages() {
    let ps = PubSub::builder("a").queue_capacity(2).build();
    let mut slow = ps.subscribe("t");
    let mut fast = ps.subscribe("t");
    let mut fast_seen = Vec::new();
    for n in 1..=5 {
        ps.broadcast(msg("t", n)).unwrap();
        fast_seen.extend(drain(&mut fast));
    }
    // Other subscribers are unaffected.
    assert_eq!(fast_seen, vec![1, 2, 3, 4, 5]);

    // The queue kept the first two; the next three were dropped for `slow` alone.
    assert_eq!(slow.try_recv().unwrap_err(), RecvError::Lagged(3));
    assert_eq!(num(&slow.try_recv().unwrap()), 1);
    assert_eq!(num(&slow.try_recv().unwrap()), 2);
    assert_eq!(slow.try_recv().unwrap_err(), RecvError::Empty);

    // Lagged is reported once; after that the subscriber carries on normally.
    ps.broadcast(msg("t", 6)).unwrap();
    assert_eq!(drain(&mut slow), vec![6]);
    assert_eq!(drain(&mut fast), vec![6]);
}

#[tokio::test]
async fn recv_reports_lagged_like_try_recv() {
    let ps = PubSub::builder("a").queue_capacity(2).build();
    let mut slow = ps.subscribe("t");
    for n in 1..=4 {
        ps.broadcast(msg("t", n)).unwrap();
    }
    assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(2));
    assert_eq!(num(&slow.recv().await.unwrap()), 1);
    assert_eq!(num(&slow.recv().await.unwrap()), 2);
    // Lag accumulates again from zero.
    for n in 5..=9 {
        ps.broadcast(msg("t", n)).unwrap();
    }
    assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(3));
    assert_eq!(num(&slow.recv().await.unwrap()), 5);
    assert_eq!(num(&slow.recv().await.unwrap()), 6);
    assert_eq!(slow.try_recv().unwrap_err(), RecvError::Empty);
}

#[tokio::test]
async fn poll_recv_reports_lagged_then_messages() {
    let ps = PubSub::builder("a").queue_capacity(1).build();
    let mut sub = ps.subscribe("t");
    ps.broadcast(msg("t", 1)).unwrap();
    ps.broadcast(msg("t", 2)).unwrap();
    let first = std::future::poll_fn(|cx| sub.poll_recv(cx)).await;
    assert_eq!(first.unwrap_err(), RecvError::Lagged(1));
    let second = std::future::poll_fn(|cx| sub.poll_recv(cx)).await.unwrap();
    assert_eq!(num(&second), 1);
}

#[test]
fn queue_capacity_zero_is_clamped_to_one() {
    let ps = PubSub::builder("a").queue_capacity(0).build();
    let mut sub = ps.subscribe("t");
    ps.broadcast(msg("t", 1)).unwrap();
    ps.broadcast(msg("t", 2)).unwrap();
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Lagged(1));
    assert_eq!(drain(&mut sub), vec![1]);
}

#[test]
fn default_queue_capacity_holds_1024_messages() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    for n in 0..1025 {
        ps.broadcast(msg("t", n)).unwrap();
    }
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Lagged(1));
    assert_eq!(drain(&mut sub), (0..1024).collect::<Vec<_>>());
}

#[tokio::test]
async fn publisher_never_blocks_on_a_subscriber_that_does_not_read() {
    let ps = PubSub::builder("a").queue_capacity(2).build();
    let mut stuck = ps.subscribe("t");
    // `broadcast` is synchronous; bound the whole loop anyway so a blocking
    // implementation shows up as a failure rather than a hang.
    let publisher = ps.clone();
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            for n in 0..100_000 {
                publisher.broadcast(msg("t", n)).unwrap();
            }
        }),
    )
    .await;
    done.expect("publisher blocked").unwrap();
    assert_eq!(stuck.try_recv().unwrap_err(), RecvError::Lagged(99_998));
    assert_eq!(drain(&mut stuck), vec![0, 1]);
}

#[test]
fn per_publisher_order_is_preserved() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    for n in 0..500 {
        ps.broadcast(msg("t", n)).unwrap();
    }
    assert_eq!(drain(&mut sub), (0..500).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_reach_every_subscriber_in_per_publisher_order() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 1000;
    let ps = PubSub::builder("a").queue_capacity(8192).build();
    let mut subs: Vec<_> = (0..3).map(|_| ps.subscribe("t")).collect();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let ps = ps.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                ps.broadcast(msg("t", p * EACH + i)).unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for sub in &mut subs {
        let got = drain(sub);
        assert_eq!(got.len() as u64, PUBLISHERS * EACH);
        for p in 0..PUBLISHERS {
            let mine: Vec<u64> = got
                .iter()
                .copied()
                .filter(|n| n / EACH == p)
                .map(|n| n % EACH)
                .collect();
            assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
        }
    }
}

#[test]
fn many_topics_with_any_number_of_partitions() {
    for partitions in [0, 1, 3, 64] {
        let ps = PubSub::builder("a").partitions(partitions).build();
        let mut subs: Vec<_> = (0..50)
            .map(|i| ps.subscribe(&format!("topic:{i}")))
            .collect();
        for i in 0..50u64 {
            ps.broadcast(msg(&format!("topic:{i}"), i)).unwrap();
        }
        for (i, sub) in subs.iter_mut().enumerate() {
            assert_eq!(drain(sub), vec![i as u64], "partitions = {partitions}");
            assert_eq!(ps.subscriber_count(sub.topic()), 1);
        }
    }
}

#[test]
fn binary_payloads_are_delivered_unchanged() {
    let ps = PubSub::new("a");
    let mut sub = ps.subscribe("t");
    let bytes = tokio_tungstenite::tungstenite::Bytes::from_static(b"\x00\x01\xff");
    ps.broadcast(Message::binary("t", "bin", bytes.clone()))
        .unwrap();
    let got = sub.try_recv().unwrap();
    assert_eq!(got.payload(), &Payload::Binary(bytes));
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(usize),
    Unsubscribe(usize),
    Broadcast(usize),
    BroadcastFrom(usize, usize),
    LocalBroadcastFrom(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize).prop_map(Op::Subscribe),
        (0..8usize).prop_map(Op::Unsubscribe),
        (0..3usize).prop_map(Op::Broadcast),
        (0..3usize, 0..8usize).prop_map(|(t, s)| Op::BroadcastFrom(t, s)),
        (0..3usize, 0..8usize).prop_map(|(t, s)| Op::LocalBroadcastFrom(t, s)),
    ]
}

proptest! {
    /// Random subscribe/unsubscribe/broadcast sequences match a simple model.
    #[test]
    fn delivery_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let topics = ["t0", "t1", "t2"];
        let ps = PubSub::new("a");
        // Live subscriptions, in creation order, with the messages the model expects.
        let mut live: Vec<(Subscription, Vec<u64>)> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Subscribe(t) => live.push((ps.subscribe(topics[t]), Vec::new())),
                Op::Unsubscribe(i) => {
                    if !live.is_empty() {
                        let (sub, _) = live.remove(i % live.len());
                        ps.unsubscribe(sub);
                    }
                }
                Op::Broadcast(t) => {
                    next += 1;
                    ps.broadcast(msg(topics[t], next)).unwrap();
                    for (sub, want) in &mut live {
                        if sub.topic() == topics[t] {
                            want.push(next);
                        }
                    }
                }
                Op::BroadcastFrom(t, i) | Op::LocalBroadcastFrom(t, i) => {
                    if live.is_empty() {
                        continue;
                    }
                    let from = live[i % live.len()].0.id();
                    next += 1;
                    if matches!(op, Op::BroadcastFrom(..)) {
                        ps.broadcast_from(from, msg(topics[t], next)).unwrap();
                    } else {
                        ps.local_broadcast_from(from, msg(topics[t], next));
                    }
                    for (sub, want) in &mut live {
                        if sub.topic() == topics[t] && sub.id() != from {
                            want.push(next);
                        }
                    }
                }
            }
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (sub, _) in &live {
            *counts.entry(sub.topic()).or_default() += 1;
        }
        for t in topics {
            prop_assert_eq!(ps.subscriber_count(t), counts.get(t).copied().unwrap_or(0));
        }
        for (sub, want) in &mut live {
            prop_assert_eq!(&drain(sub), want);
        }
    }

    /// A bounded queue behaves like: keep the oldest `capacity` unread, count the rest,
    /// report the count once before the queued messages.
    #[test]
    fn lag_matches_a_model(capacity in 1usize..5, ops in proptest::collection::vec(any::<bool>(), 1..80)) {
        let ps = PubSub::builder("a").queue_capacity(capacity).build();
        let mut sub = ps.subscribe("t");
        let mut queue: std::collections::VecDeque<u64> = Default::default();
        let mut lagged = 0u64;
        let mut next = 0u64;
        for publish in ops {
            if publish {
                next += 1;
                ps.broadcast(msg("t", next)).unwrap();
                if queue.len() < capacity {
                    queue.push_back(next);
                } else {
                    lagged += 1;
                }
            } else {
                let got = sub.try_recv();
                if lagged > 0 {
                    prop_assert_eq!(got.unwrap_err(), RecvError::Lagged(lagged));
                    lagged = 0;
                } else if let Some(want) = queue.pop_front() {
                    prop_assert_eq!(num(&got.unwrap()), want);
                } else {
                    prop_assert_eq!(got.unwrap_err(), RecvError::Empty);
                }
            }
        }
    }
}
