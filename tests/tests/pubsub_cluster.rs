//! Multi-node behaviour of `presence_core::pubsub`: the `LocalCluster` transport with its fault
//! injection, and a hand-written `Adapter` (Phoenix.PubSub semantics, reference section 2).

mod pubsub_support;

use pubsub_support::{drain, msg, num};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::pubsub::{
    Adapter, BroadcastError, ClusterAdapter, Inbound, LinkFaults, LocalCluster, Message, PubSub,
    RecvError, Subscription,
};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Bytes;

fn none() -> Vec<u64> {
    Vec::new()
}

/// Three nodes `a`, `b`, `c` joined to one cluster, each with a subscriber on `t`.
struct Three {
    cluster: LocalCluster,
    nodes: [PubSub; 3],
    subs: [Subscription; 3],
}

impl Three {
    fn new() -> Self {
        let cluster = LocalCluster::new();
        Self::with(cluster)
    }

    fn with(cluster: LocalCluster) -> Self {
        let nodes = ["a", "b", "c"].map(|n| PubSub::builder(n).adapter(cluster.adapter()).build());
        let subs = [0, 1, 2].map(|i| nodes[i].subscribe("t"));
        Three {
            cluster,
            nodes,
            subs,
        }
    }

    /// What each node's subscriber has queued.
    fn drain(&mut self) -> [Vec<u64>; 3] {
        let [a, b, c] = &mut self.subs;
        [drain(a), drain(b), drain(c)]
    }
}

/// Lets spawned tasks (the cluster's delay queues) run after the clock moved.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn broadcast_reaches_every_node_once() {
    let mut n = Three::new();
    assert_eq!(n.cluster.nodes(), vec!["a", "b", "c"]);
    n.nodes[0].broadcast(msg("t", 1)).unwrap();
    assert_eq!(n.drain(), [vec![1], vec![1], vec![1]]);
    n.nodes[2].broadcast(msg("t", 2)).unwrap();
    assert_eq!(n.drain(), [vec![2], vec![2], vec![2]]);
    // Two remote frames per broadcast, none dropped.
    assert_eq!(n.cluster.counters(), (4, 0));
}

#[tokio::test]
async fn remote_messages_keep_topic_event_and_payload() {
    let mut n = Three::new();
    let mut other_topic = n.nodes[1].subscribe("u");
    let sent = Message::json("t", "new_msg", json!({"body": "héllo", "n": [1, 2]}));
    n.nodes[0].broadcast(sent.clone()).unwrap();
    let got = n.subs[1].try_recv().unwrap();
    assert_eq!(*got, sent);
    let bin = Message::binary("t", "bin", Bytes::from_static(b"\x00\xff\x10"));
    n.nodes[0].broadcast(bin.clone()).unwrap();
    assert_eq!(*n.subs[2].try_recv().unwrap(), sent);
    assert_eq!(*n.subs[2].try_recv().unwrap(), bin);
    assert_eq!(other_topic.try_recv().unwrap_err(), RecvError::Empty);
}

#[tokio::test]
async fn remote_delivery_shares_one_arc_per_node() {
    let cluster = LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b").adapter(cluster.adapter()).build();
    let mut subs: Vec<_> = (0..4).map(|_| b.subscribe("t")).collect();
    a.broadcast(msg("t", 1)).unwrap();
    let got: Vec<Arc<Message>> = subs.iter_mut().map(|s| s.try_recv().unwrap()).collect();
    for m in &got[1..] {
        assert!(Arc::ptr_eq(&got[0], m));
    }
    assert_eq!(Arc::strong_count(&got[0]), 4);
}

#[tokio::test]
async fn broadcast_from_skips_the_sender_locally_but_remote_nodes_deliver_to_all() {
    let cluster = LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b").adapter(cluster.adapter()).build();
    // Subscribed first on each node, so both likely carry the same numeric id: the remote node
    // must not apply the sender's id to its own subscriptions.
    let mut remote_first = b.subscribe("t");
    let mut me = a.subscribe("t");
    let mut local_other = a.subscribe("t");
    let mut remote_second = b.subscribe("t");
    a.broadcast_from(me.id(), msg("t", 1)).unwrap();
    assert_eq!(drain(&mut me), none());
    assert_eq!(drain(&mut local_other), vec![1]);
    assert_eq!(drain(&mut remote_first), vec![1]);
    assert_eq!(drain(&mut remote_second), vec![1]);
}

#[tokio::test]
async fn local_broadcasts_do_not_leave_the_node() {
    let mut n = Three::new();
    let me = n.nodes[0].subscribe("t");
    n.nodes[0].local_broadcast(msg("t", 1));
    n.nodes[0].local_broadcast_from(me.id(), msg("t", 2));
    assert_eq!(n.drain(), [vec![1, 2], none(), none()]);
    assert_eq!(n.cluster.counters(), (0, 0));
}

#[tokio::test]
async fn direct_broadcast_reaches_only_the_named_node() {
    let mut n = Three::new();
    n.nodes[0].direct_broadcast("b", msg("t", 1)).unwrap();
    assert_eq!(n.drain(), [none(), vec![1], none()]);
    n.nodes[0].direct_broadcast("c", msg("t", 2)).unwrap();
    assert_eq!(n.drain(), [none(), none(), vec![2]]);
    // Naming the local node delivers locally only.
    n.nodes[0].direct_broadcast("a", msg("t", 3)).unwrap();
    assert_eq!(n.drain(), [vec![3], none(), none()]);
    // An unknown node: nobody.
    n.nodes[0].direct_broadcast("zzz", msg("t", 4)).unwrap();
    assert_eq!(n.drain(), [none(), none(), none()]);
    assert_eq!(n.cluster.counters(), (2, 0));
}

#[tokio::test]
async fn partition_and_heal() {
    let mut n = Three::new();
    n.cluster.partition(&["a"], &["b", "c"]);
    n.nodes[0].broadcast(msg("t", 1)).unwrap();
    assert_eq!(n.drain(), [vec![1], none(), none()]);
    // Both directions are cut...
    n.nodes[1].broadcast(msg("t", 2)).unwrap();
    assert_eq!(n.drain(), [none(), vec![2], vec![2]]);
    // ...and direct sends across the cut are lost too.
    n.nodes[2].direct_broadcast("a", msg("t", 3)).unwrap();
    assert_eq!(n.drain(), [none(), none(), none()]);
    assert_eq!(n.cluster.counters(), (1, 4));

    n.cluster.heal();
    n.nodes[0].broadcast(msg("t", 4)).unwrap();
    n.nodes[1].broadcast(msg("t", 5)).unwrap();
    assert_eq!(n.drain(), [vec![4, 5], vec![4, 5], vec![4, 5]]);
    assert_eq!(n.cluster.counters(), (5, 4));
}

#[tokio::test]
async fn isolate_cuts_one_node_off_both_ways() {
    let mut n = Three::new();
    n.cluster.isolate("c");
    n.nodes[0].broadcast(msg("t", 1)).unwrap();
    assert_eq!(n.drain(), [vec![1], vec![1], none()]);
    n.nodes[2].broadcast(msg("t", 2)).unwrap();
    assert_eq!(n.drain(), [none(), none(), vec![2]]);
    n.nodes[1].broadcast(msg("t", 3)).unwrap();
    assert_eq!(n.drain(), [vec![3], vec![3], none()]);
    n.cluster.heal();
    n.nodes[2].broadcast(msg("t", 4)).unwrap();
    assert_eq!(n.drain(), [vec![4], vec![4], vec![4]]);
}

#[tokio::test]
async fn drop_probability_one_drops_every_frame() {
    let mut n = Three::new();
    n.cluster.set_faults(LinkFaults {
        drop: 1.0,
        ..LinkFaults::NONE
    });
    for i in 0..10 {
        n.nodes[0].broadcast(msg("t", i)).unwrap();
    }
    let [local, b, c] = n.drain();
    assert_eq!(local, (0..10).collect::<Vec<_>>());
    assert_eq!((b, c), (none(), none()));
    assert_eq!(n.cluster.counters(), (0, 20));
}

#[tokio::test]
async fn duplicate_probability_one_delivers_twice() {
    let mut n = Three::new();
    n.cluster.set_faults(LinkFaults {
        duplicate: 1.0,
        ..LinkFaults::NONE
    });
    n.nodes[0].broadcast(msg("t", 1)).unwrap();
    n.nodes[0].broadcast(msg("t", 2)).unwrap();
    assert_eq!(n.drain(), [vec![1, 2], vec![1, 1, 2, 2], vec![1, 1, 2, 2]]);
    assert_eq!(n.cluster.counters(), (8, 0));
}

#[tokio::test]
async fn link_faults_apply_to_one_direction_only() {
    let mut n = Three::new();
    n.cluster.set_link_faults(
        "a",
        "b",
        LinkFaults {
            drop: 1.0,
            ..LinkFaults::NONE
        },
    );
    n.nodes[0].broadcast(msg("t", 1)).unwrap();
    assert_eq!(n.drain(), [vec![1], none(), vec![1]]);
    n.nodes[1].broadcast(msg("t", 2)).unwrap();
    assert_eq!(n.drain(), [vec![2], vec![2], vec![2]]);
    // A link setting overrides the default.
    n.cluster.set_faults(LinkFaults {
        drop: 1.0,
        ..LinkFaults::NONE
    });
    n.cluster.set_link_faults("c", "a", LinkFaults::NONE);
    n.nodes[2].broadcast(msg("t", 3)).unwrap();
    assert_eq!(n.drain(), [vec![3], none(), vec![3]]);
}

#[tokio::test(start_paused = true)]
async fn delay_delivers_only_after_the_delay() {
    let mut n = Three::new();
    let delay = Duration::from_millis(100);
    n.cluster.set_faults(LinkFaults {
        delay,
        ..LinkFaults::NONE
    });
    let start = Instant::now();
    n.nodes[0].broadcast(msg("t", 1)).unwrap();
    // Local delivery is immediate.
    assert_eq!(n.drain(), [vec![1], none(), none()]);

    tokio::time::advance(Duration::from_millis(99)).await;
    settle().await;
    assert_eq!(n.drain(), [none(), none(), none()]);

    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(n.drain(), [none(), vec![1], vec![1]]);
    assert!(start.elapsed() >= delay);

    // With the clock left alone, `recv` wakes exactly when the frame is due.
    let start = Instant::now();
    n.nodes[1].broadcast(msg("t", 2)).unwrap();
    let got = n.subs[0].recv().await.unwrap();
    assert_eq!(num(&got), 2);
    let waited = start.elapsed();
    assert!(
        waited >= delay && waited < delay + Duration::from_millis(5),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn delay_without_jitter_keeps_order() {
    let mut n = Three::new();
    n.cluster.set_faults(LinkFaults {
        delay: Duration::from_millis(30),
        ..LinkFaults::NONE
    });
    for i in 0..50 {
        n.nodes[0].broadcast(msg("t", i)).unwrap();
    }
    tokio::time::advance(Duration::from_millis(31)).await;
    settle().await;
    let [_, b, c] = n.drain();
    assert_eq!(b, (0..50).collect::<Vec<_>>());
    assert_eq!(c, b);
}

#[tokio::test(start_paused = true)]
async fn jitter_reorders_but_loses_nothing() {
    let mut n = Three::new();
    let jitter = Duration::from_millis(100);
    n.cluster.set_faults(LinkFaults {
        jitter,
        ..LinkFaults::NONE
    });
    for i in 0..30 {
        n.nodes[0].broadcast(msg("t", i)).unwrap();
    }
    tokio::time::advance(jitter + Duration::from_millis(1)).await;
    settle().await;
    let [_, b, c] = n.drain();
    for got in [b, c] {
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..30).collect::<Vec<_>>(), "lost or duplicated");
        assert_ne!(got, sorted, "30 frames with 100ms jitter arrived in order");
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(n.drain(), [none(), none(), none()]);
    assert_eq!(n.cluster.counters(), (60, 0));
}

/// One run of a fixed scenario with per-link faults: counters and what each node got.
async fn faulty_run(seed: u64) -> ((u64, u64), [Vec<u64>; 3]) {
    let cluster = LocalCluster::new();
    cluster.seed(seed);
    cluster.set_link_faults(
        "a",
        "b",
        LinkFaults {
            drop: 0.5,
            ..LinkFaults::NONE
        },
    );
    cluster.set_link_faults(
        "a",
        "c",
        LinkFaults {
            drop: 0.2,
            duplicate: 0.5,
            ..LinkFaults::NONE
        },
    );
    cluster.set_link_faults(
        "b",
        "c",
        LinkFaults {
            duplicate: 0.3,
            ..LinkFaults::NONE
        },
    );
    let mut n = Three::with(cluster);
    for i in 0..40 {
        n.nodes[i as usize % 2].broadcast(msg("t", i)).unwrap();
    }
    (n.cluster.counters(), n.drain())
}

#[tokio::test]
async fn same_seed_gives_the_same_run() {
    let first = faulty_run(42).await;
    // The faults really did something.
    assert!(first.0.1 > 0, "nothing dropped: {first:?}");
    assert!(first.1[2].len() > 20, "nothing duplicated: {first:?}");
    for _ in 0..8 {
        assert_eq!(faulty_run(42).await, first);
    }
}

#[tokio::test]
async fn adjacent_seeds_give_different_runs() {
    // Every seed should pick its own stream; a test sweeping seeds 0..n must explore n runs.
    for seed in [0, 2, 42, 1000] {
        assert_ne!(
            faulty_run(seed).await,
            faulty_run(seed + 1).await,
            "seeds {seed} and {} replay the same run",
            seed + 1
        );
    }
}

#[tokio::test]
async fn same_seed_gives_the_same_counters_with_uniform_faults() {
    async fn run(seed: u64) -> (u64, u64) {
        let mut n = Three::new();
        n.cluster.seed(seed);
        n.cluster.set_faults(LinkFaults {
            drop: 0.3,
            duplicate: 0.3,
            ..LinkFaults::NONE
        });
        for i in 0..100 {
            n.nodes[(i % 3) as usize].broadcast(msg("t", i)).unwrap();
        }
        n.drain();
        n.cluster.counters()
    }
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert!(a.0 + a.1 > 200, "duplicates add frames: {a:?}");
    // Different seeds give different runs (checked over a few seeds, the stream is fixed).
    let others = [run(8).await, run(1234).await, run(99_999).await];
    assert!(others.iter().any(|o| *o != a), "{a:?} vs {others:?}");
}

#[tokio::test]
async fn dropped_nodes_leave_the_cluster() {
    let cluster = LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b").adapter(cluster.adapter()).build();
    assert_eq!(cluster.nodes(), vec!["a", "b"]);
    let mut sub = a.subscribe("t");
    drop(b);
    assert_eq!(cluster.nodes(), vec!["a"]);
    a.broadcast(msg("t", 1)).unwrap();
    assert_eq!(drain(&mut sub), vec![1]);
    assert_eq!(cluster.counters(), (0, 0));
}

#[tokio::test]
async fn remote_slow_subscriber_lags_without_affecting_others() {
    let cluster = LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b")
        .queue_capacity(2)
        .adapter(cluster.adapter())
        .build();
    let mut slow = b.subscribe("t");
    let mut fast = b.subscribe("t");
    let mut seen = Vec::new();
    for i in 0..6 {
        a.broadcast(msg("t", i)).unwrap();
        seen.extend(drain(&mut fast));
    }
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
    assert_eq!(slow.try_recv().unwrap_err(), RecvError::Lagged(4));
    assert_eq!(drain(&mut slow), vec![0, 1]);
}

// ---------------------------------------------------------------------------------------------
// A hand-written adapter.

/// What a [`Recorder`] saw; shared with the test.
#[derive(Debug, Default)]
struct Seen {
    started: Vec<String>,
    inbound: Option<Inbound>,
    broadcasts: Vec<Bytes>,
    directs: Vec<(String, Bytes)>,
}

/// An adapter that records frames instead of sending them.
#[derive(Debug, Clone)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    peers: bool,
    fail: Option<BroadcastError>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            seen: Arc::default(),
            peers: true,
            fail: None,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    fn inbound(&self) -> Inbound {
        self.seen().inbound.clone().expect("adapter started")
    }
}

impl Adapter for Recorder {
    fn start(&self, node_name: &str, inbound: Inbound) {
        let mut seen = self.seen();
        seen.started.push(node_name.to_owned());
        seen.inbound = Some(inbound);
    }

    fn has_peers(&self) -> bool {
        self.peers
    }

    fn broadcast(&self, frame: Bytes) -> Result<(), BroadcastError> {
        self.seen().broadcasts.push(frame);
        self.fail.clone().map_or(Ok(()), Err)
    }

    fn direct_broadcast(&self, node: &str, frame: Bytes) -> Result<(), BroadcastError> {
        self.seen().directs.push((node.to_owned(), frame));
        self.fail.clone().map_or(Ok(()), Err)
    }
}

#[test]
fn custom_adapter_is_started_once_with_the_node_name() {
    let rec = Recorder::new();
    let ps = PubSub::builder("node-x").adapter(rec.clone()).build();
    assert_eq!(ps.node_name(), "node-x");
    assert_eq!(rec.seen().started, vec!["node-x"]);
    assert!(rec.inbound().is_alive());
    drop(ps);
    assert!(!rec.inbound().is_alive());
}

#[test]
fn one_frame_per_broadcast_whatever_the_number_of_subscribers() {
    let rec = Recorder::new();
    let ps = PubSub::builder("a").adapter(rec.clone()).build();
    let mut subs: Vec<_> = (0..10).map(|_| ps.subscribe("t")).collect();
    ps.broadcast(msg("t", 1)).unwrap();
    assert_eq!(rec.seen().broadcasts.len(), 1);
    ps.broadcast_from(subs[0].id(), msg("t", 2)).unwrap();
    assert_eq!(rec.seen().broadcasts.len(), 2);
    // Topics without local subscribers still go to the other nodes.
    ps.broadcast(msg("elsewhere", 3)).unwrap();
    assert_eq!(rec.seen().broadcasts.len(), 3);
    // Local-only variants never reach the adapter.
    ps.local_broadcast(msg("t", 4));
    ps.local_broadcast_from(subs[0].id(), msg("t", 5));
    assert_eq!(rec.seen().broadcasts.len(), 3);
    assert!(rec.seen().directs.is_empty());
    assert_eq!(drain(&mut subs[0]), vec![1, 4]);
    for sub in &mut subs[1..] {
        assert_eq!(drain(sub), vec![1, 2, 4, 5]);
    }
}

#[test]
fn direct_broadcast_goes_to_the_adapter_with_the_target_unless_it_is_self() {
    let rec = Recorder::new();
    let ps = PubSub::builder("a").adapter(rec.clone()).build();
    let mut sub = ps.subscribe("t");
    ps.direct_broadcast("b", msg("t", 1)).unwrap();
    ps.direct_broadcast("a", msg("t", 2)).unwrap();
    let seen = rec.seen();
    assert!(seen.broadcasts.is_empty());
    assert_eq!(seen.directs.len(), 1);
    assert_eq!(seen.directs[0].0, "b");
    drop(seen);
    assert_eq!(drain(&mut sub), vec![2]);
}

#[test]
fn adapter_without_peers_is_not_called() {
    let rec = Recorder {
        peers: false,
        ..Recorder::new()
    };
    let ps = PubSub::builder("a").adapter(rec.clone()).build();
    let mut sub = ps.subscribe("t");
    ps.broadcast(msg("t", 1)).unwrap();
    ps.direct_broadcast("b", msg("t", 2)).unwrap();
    assert!(rec.seen().broadcasts.is_empty());
    assert!(rec.seen().directs.is_empty());
    assert_eq!(drain(&mut sub), vec![1]);
}

#[test]
fn adapter_errors_are_returned_after_local_delivery() {
    let rec = Recorder {
        fail: Some(BroadcastError::Full),
        ..Recorder::new()
    };
    let ps = PubSub::builder("a").adapter(rec.clone()).build();
    let mut sub = ps.subscribe("t");
    assert_eq!(ps.broadcast(msg("t", 1)), Err(BroadcastError::Full));
    assert_eq!(
        ps.direct_broadcast("b", msg("t", 2)),
        Err(BroadcastError::Full)
    );
    assert_eq!(drain(&mut sub), vec![1]);
}

#[test]
fn frames_from_one_node_deliver_on_another_through_inbound() {
    let ra = Recorder::new();
    let rb = Recorder::new();
    let a = PubSub::builder("a").adapter(ra.clone()).build();
    let b = PubSub::builder("b").adapter(rb.clone()).build();
    let mut b1 = b.subscribe("t");
    let mut b2 = b.subscribe("t");
    let sent = Message::json("t", "shout", json!({"x": [1, "two", null]}));
    a.broadcast(sent.clone()).unwrap();
    let bin = Message::binary("t", "raw", Bytes::from_static(&[0, 1, 2, 255]));
    a.broadcast(bin.clone()).unwrap();

    let frames = ra.seen().broadcasts.clone();
    assert_eq!(frames.len(), 2);
    for frame in frames {
        rb.inbound().deliver(frame).unwrap();
    }
    let (x1, x2) = (b1.try_recv().unwrap(), b2.try_recv().unwrap());
    assert_eq!(*x1, sent);
    assert!(Arc::ptr_eq(&x1, &x2), "one Arc per delivered frame");
    assert_eq!(*b1.try_recv().unwrap(), bin);
    assert_eq!(*b2.try_recv().unwrap(), bin);
    // Delivering a frame does not send it on.
    assert!(rb.seen().broadcasts.is_empty());
}

#[test]
fn malformed_frames_are_rejected_and_deliver_nothing() {
    let ra = Recorder::new();
    let rb = Recorder::new();
    let a = PubSub::builder("a").adapter(ra.clone()).build();
    let b = PubSub::builder("b").adapter(rb.clone()).build();
    let mut sub = b.subscribe("t");
    a.broadcast(msg("t", 1)).unwrap();
    let good = ra.seen().broadcasts[0].clone();

    let mut bad: Vec<Bytes> = vec![
        Bytes::new(),
        Bytes::from_static(b"\x02"),
        Bytes::from_static(b"garbage"),
    ];
    // Every strict prefix of a good frame.
    for cut in 0..good.len() {
        bad.push(good.slice(..cut));
    }
    // Trailing junk after the JSON.
    let mut v = good.to_vec();
    v.extend_from_slice(b"}}");
    bad.push(Bytes::from(v));
    // Unknown version byte.
    let mut v = good.to_vec();
    v[0] = 9;
    bad.push(Bytes::from(v));
    // Unknown payload kind: version, topic "t", event "e", kind 7.
    bad.push(Bytes::from_static(
        b"\x01\x00\x00\x00\x01t\x00\x00\x00\x01e\x07{}",
    ));
    // Topic that is not UTF-8.
    bad.push(Bytes::from_static(
        b"\x01\x00\x00\x00\x01\xff\x00\x00\x00\x01e\x001",
    ));

    let inbound = rb.inbound();
    for frame in bad {
        let err = inbound
            .deliver(frame.clone())
            .expect_err(&format!("accepted {frame:?}"));
        assert!(
            err.to_string().starts_with("malformed pubsub frame"),
            "{err}"
        );
        assert_eq!(sub.try_recv().unwrap_err(), RecvError::Empty, "{frame:?}");
    }
    // The good frame still goes through.
    inbound.deliver(good).unwrap();
    assert_eq!(drain(&mut sub), vec![1]);
}

#[test]
fn inbound_outliving_its_pubsub_accepts_and_drops_frames() {
    let ra = Recorder::new();
    let rb = Recorder::new();
    let a = PubSub::builder("a").adapter(ra.clone()).build();
    let b = PubSub::builder("b").adapter(rb.clone()).build();
    a.broadcast(msg("t", 1)).unwrap();
    let inbound = rb.inbound();
    drop(b);
    assert!(!inbound.is_alive());
    assert!(inbound.deliver(ra.seen().broadcasts[0].clone()).is_ok());
    assert!(inbound.deliver(Bytes::new()).is_err());
}

/// Wraps the cluster adapter and counts what the pub/sub hands it.
#[derive(Debug)]
struct Counting {
    inner: ClusterAdapter,
    broadcasts: Arc<AtomicUsize>,
}

impl Adapter for Counting {
    fn start(&self, node_name: &str, inbound: Inbound) {
        self.inner.start(node_name, inbound);
    }

    fn broadcast(&self, frame: Bytes) -> Result<(), BroadcastError> {
        self.broadcasts.fetch_add(1, Ordering::SeqCst);
        self.inner.broadcast(frame)
    }

    fn direct_broadcast(&self, node: &str, frame: Bytes) -> Result<(), BroadcastError> {
        self.inner.direct_broadcast(node, frame)
    }
}

#[tokio::test]
async fn cluster_broadcast_is_encoded_once_for_all_nodes() {
    let cluster = LocalCluster::new();
    let count = Arc::new(AtomicUsize::new(0));
    let a = PubSub::builder("a")
        .adapter(Counting {
            inner: cluster.adapter(),
            broadcasts: count.clone(),
        })
        .build();
    let others: Vec<PubSub> = ["b", "c", "d"]
        .iter()
        .map(|n| PubSub::builder(*n).adapter(cluster.adapter()).build())
        .collect();
    let mut subs: Vec<Subscription> = others
        .iter()
        .flat_map(|p| [p.subscribe("t"), p.subscribe("t")])
        .collect();
    a.broadcast(msg("t", 1)).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // One frame per other node, fanned out to both subscribers of each.
    assert_eq!(cluster.counters(), (3, 0));
    for sub in &mut subs {
        assert_eq!(drain(sub), vec![1]);
    }
}
