//! Multi-node tracker scenarios (reference 1.16) over the in-process cluster, on tokio's paused
//! clock: virtual time advances only when every task waits, so no test races a real timer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::pubsub::LocalCluster;
use presence_core::tracker::{Diff, ReplicaEvent, ReplicaStatus, TrackError, UpdateError};
use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
use serde_json::json;

/// Phoenix's own test timings: heartbeat 100 ms, down after 400 ms, permdown after 1500 ms.
fn config() -> TrackerConfig {
    TrackerConfig {
        broadcast_period: Duration::from_millis(100),
        max_silent_periods: 2,
        permdown_period: Duration::from_millis(1500),
        ..TrackerConfig::default()
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Record>>>);

#[derive(Debug, Clone, PartialEq)]
enum Record {
    Join(String, String),
    Leave(String, String),
    Event(ReplicaEvent),
}

impl presence_core::tracker::DiffHandler for Log {
    fn handle_diff(&self, diff: Diff) {
        let mut log = self.0.lock().unwrap();
        for (topic, d) in diff.iter() {
            for (key, _) in &d.joins {
                log.push(Record::Join(topic.to_string(), key.to_string()));
            }
            for (key, _) in &d.leaves {
                log.push(Record::Leave(topic.to_string(), key.to_string()));
            }
        }
    }

    fn handle_replica_event(&self, event: &ReplicaEvent) {
        self.0.lock().unwrap().push(Record::Event(event.clone()));
    }
}

impl Log {
    fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Node {
    tracker: Tracker,
    log: Log,
}

fn node(cluster: &LocalCluster, name: &str) -> Node {
    let pubsub = PubSub::builder(name).adapter(cluster.adapter()).build();
    let log = Log::default();
    let tracker = Tracker::builder("Presence", pubsub)
        .config(config())
        .on_diff(log.clone())
        .start()
        .unwrap();
    Node { tracker, log }
}

fn keys(tracker: &Tracker, topic: &str) -> Vec<String> {
    let mut keys: Vec<String> = tracker
        .list(topic)
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    keys.sort();
    keys
}

/// Waits (in virtual time) until `cond` holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn gossip_from_an_unseen_node_brings_it_up_and_transfers_its_presences() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let owner = Owner::new();
    a.tracker
        .track(&owner, "room:1", "alice", json!({}))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let b = node(&cluster, "b");
    eventually(LONG, "b to list alice", || {
        keys(&b.tracker, "room:1") == ["alice"]
    })
    .await;
    let log = b.log.take();
    assert!(
        log.iter()
            .any(|r| matches!(r, Record::Event(ReplicaEvent::Up { name, .. }) if name == "a"))
    );
    assert!(log.contains(&Record::Join("room:1".into(), "alice".into())));
    assert_eq!(b.tracker.replicas()[0][0].name, "a");
}

#[tokio::test(start_paused = true)]
async fn local_and_remote_joins_and_leaves_are_reported() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let alice = Owner::new();
    let bob = Owner::new();
    a.tracker
        .track(&alice, "room:1", "alice", json!({}))
        .unwrap();
    assert_eq!(
        a.log.take(),
        [Record::Join("room:1".into(), "alice".into())],
        "reported before track returned"
    );
    b.tracker.track(&bob, "room:1", "bob", json!({})).unwrap();
    eventually(LONG, "both to list both", || {
        keys(&a.tracker, "room:1") == ["alice", "bob"]
            && keys(&b.tracker, "room:1") == ["alice", "bob"]
    })
    .await;
    assert!(
        a.log
            .take()
            .contains(&Record::Join("room:1".into(), "bob".into()))
    );

    drop(bob);
    assert!(
        b.log
            .take()
            .contains(&Record::Leave("room:1".into(), "bob".into()))
    );
    eventually(LONG, "a to see bob leave", || {
        keys(&a.tracker, "room:1") == ["alice"]
    })
    .await;
    assert!(
        a.log
            .take()
            .contains(&Record::Leave("room:1".into(), "bob".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn tempdown_and_up_with_the_same_vsn_then_permdown() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let owner = Owner::new();
    b.tracker.track(&owner, "room:1", "bob", json!({})).unwrap();
    eventually(LONG, "a to see bob", || {
        keys(&a.tracker, "room:1") == ["bob"]
    })
    .await;
    a.log.take();

    // A netsplit: after down_period, a reports bob's leave and hides him.
    cluster.partition(&["a"], &["b"]);
    eventually(LONG, "b to go down on a", || {
        a.tracker.list("room:1").is_empty()
    })
    .await;
    let log = a.log.take();
    assert!(log.contains(&Record::Leave("room:1".into(), "bob".into())));
    assert!(
        log.iter()
            .any(|r| matches!(r, Record::Event(ReplicaEvent::Down { name, .. }) if name == "b"))
    );
    assert_eq!(a.tracker.replicas()[0][0].status, ReplicaStatus::Down);

    // Healed before permdown: the same incarnation comes back up and bob joins again.
    cluster.heal();
    eventually(LONG, "bob back on a", || {
        keys(&a.tracker, "room:1") == ["bob"]
    })
    .await;
    let log = a.log.take();
    assert!(log.contains(&Record::Join("room:1".into(), "bob".into())));
    assert!(
        log.iter()
            .any(|r| matches!(r, Record::Event(ReplicaEvent::Up { name, .. }) if name == "b"))
    );

    // Split for longer than permdown_period: b is purged on a.
    cluster.partition(&["a"], &["b"]);
    eventually(LONG, "b purged on a", || a.tracker.replicas()[0].is_empty()).await;
    assert!(
        a.log.take().iter().any(
            |r| matches!(r, Record::Event(ReplicaEvent::Permdown { name, .. }) if name == "b")
        )
    );
    assert!(a.tracker.list("room:1").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_replaces_its_old_incarnation() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let old_owner = Owner::new();
    b.tracker
        .track(&old_owner, "room:1", "old", json!({}))
        .unwrap();
    eventually(LONG, "a to see old", || {
        keys(&a.tracker, "room:1") == ["old"]
    })
    .await;
    let old_vsn = a.tracker.replicas()[0][0].vsn;

    // b crashes (no graceful permdown) and restarts at once under the same name.
    std::mem::forget(old_owner); // the crash takes the owner with it, unannounced
    drop(b);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let b2 = node(&cluster, "b");
    let owner = Owner::new();
    b2.tracker
        .track(&owner, "room:1", "new", json!({}))
        .unwrap();
    eventually(
        LONG,
        "a to list only the new incarnation's presence",
        || keys(&a.tracker, "room:1") == ["new"],
    )
    .await;
    let info = &a.tracker.replicas()[0][0];
    assert_ne!(info.vsn, old_vsn);
    let log = a.log.take();
    assert!(log.contains(&Record::Leave("room:1".into(), "old".into())));
    assert!(log.iter().any(
        |r| matches!(r, Record::Event(ReplicaEvent::Permdown { vsn, .. }) if *vsn == old_vsn)
    ));
}

#[tokio::test(start_paused = true)]
async fn old_presences_of_a_killed_node_are_purged_when_it_comes_back() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let owner = Owner::new();
    b.tracker
        .track(&owner, "room:1", "ghost", json!({}))
        .unwrap();
    eventually(LONG, "a sees ghost", || {
        keys(&a.tracker, "room:1") == ["ghost"]
    })
    .await;
    std::mem::forget(owner);
    drop(b);
    eventually(LONG, "ghost hidden after down_period", || {
        a.tracker.list("room:1").is_empty()
    })
    .await;
    let b2 = node(&cluster, "b");
    eventually(LONG, "the new b to be up on a", || {
        a.tracker.replicas()[0]
            .iter()
            .any(|r| r.status == ReplicaStatus::Up)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        a.tracker.list("room:1").is_empty(),
        "no ghost after the restart"
    );
    assert!(
        b2.tracker.list("room:1").is_empty(),
        "the new incarnation never adopts its old rows"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_permdown_makes_peers_drop_presences_at_once() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let owner = Owner::new();
    b.tracker.track(&owner, "room:1", "bob", json!({})).unwrap();
    eventually(LONG, "a sees bob", || keys(&a.tracker, "room:1") == ["bob"]).await;
    a.log.take();

    b.tracker.graceful_permdown();
    // Well under down_period (400 ms): the leave is immediate, not a timeout.
    eventually(Duration::from_millis(50), "bob to leave a at once", || {
        a.tracker.list("room:1").is_empty()
    })
    .await;
    assert!(
        a.log
            .take()
            .contains(&Record::Leave("room:1".into(), "bob".into()))
    );
    assert!(a.tracker.replicas()[0].is_empty());
    assert_eq!(
        b.tracker.track(&Owner::new(), "room:1", "late", json!({})),
        Err(TrackError::Stopped)
    );
}

#[tokio::test(start_paused = true)]
async fn rolling_update_replaces_a_node_without_losing_the_others() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let (oa, ob) = (Owner::new(), Owner::new());
    a.tracker.track(&oa, "room:1", "on-a", json!({})).unwrap();
    b.tracker.track(&ob, "room:1", "on-b", json!({})).unwrap();
    eventually(LONG, "both converge", || {
        keys(&a.tracker, "room:1").len() == 2 && keys(&b.tracker, "room:1").len() == 2
    })
    .await;

    // Replace b with c: c starts, b leaves gracefully.
    let c = node(&cluster, "c");
    let oc = Owner::new();
    c.tracker.track(&oc, "room:1", "on-c", json!({})).unwrap();
    eventually(LONG, "c catches up", || {
        keys(&c.tracker, "room:1").len() == 3
    })
    .await;
    b.tracker.graceful_permdown();
    drop(ob);
    eventually(LONG, "a and c agree without b", || {
        keys(&a.tracker, "room:1") == ["on-a", "on-c"]
            && keys(&c.tracker, "room:1") == ["on-a", "on-c"]
    })
    .await;
    // Nothing flaps afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(keys(&a.tracker, "room:1"), ["on-a", "on-c"]);
    assert_eq!(keys(&c.tracker, "room:1"), ["on-a", "on-c"]);
}

#[tokio::test(start_paused = true)]
async fn duplicate_tracking_update_and_untrack_all() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let owner = Owner::new();
    let first = a
        .tracker
        .track(&owner, "room:1", "alice", json!({"s": 1}))
        .unwrap();
    assert_eq!(
        a.tracker.track(&owner, "room:1", "alice", json!({})),
        Err(TrackError::AlreadyTracked {
            topic: "room:1".into(),
            key: "alice".into()
        })
    );
    a.tracker
        .track(&owner, "room:2", "alice", json!({}))
        .unwrap();
    a.tracker
        .track(&owner, "room:1", "alias", json!({}))
        .unwrap();
    assert_eq!(
        a.tracker
            .update(&Owner::new(), "room:1", "alice", json!({})),
        Err(UpdateError::NoPresence)
    );

    a.log.take();
    let second = a
        .tracker
        .update_with(&owner, "room:1", "alice", |old| {
            assert_eq!(old.phx_ref(), first);
            json!({"s": old.get("s").and_then(|v| v.as_i64()).unwrap() + 1})
        })
        .unwrap();
    // One diff, with the new meta joining and the old one leaving under the same key.
    assert_eq!(
        a.log.take(),
        [
            Record::Join("room:1".into(), "alice".into()),
            Record::Leave("room:1".into(), "alice".into())
        ]
    );
    eventually(LONG, "b sees the update", || {
        b.tracker
            .get_by_key("room:1", "alice")
            .first()
            .is_some_and(|(_, m)| {
                m.phx_ref() == second
                    && m.phx_ref_prev() == Some(first)
                    && m.get("s") == Some(&json!(2))
            })
    })
    .await;

    a.tracker.untrack(&owner, "room:1", "nobody"); // a no-op
    a.tracker.untrack_all(&owner);
    assert!(a.tracker.list("room:1").is_empty() && a.tracker.list("room:2").is_empty());
    eventually(LONG, "b sees every leave", || {
        b.tracker.list("room:1").is_empty() && b.tracker.list("room:2").is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn convergence_survives_lossy_duplicating_reordering_links() {
    let cluster = LocalCluster::new();
    cluster.seed(42);
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(&cluster, n)).collect();
    cluster.set_faults(presence_core::pubsub::LinkFaults {
        drop: 0.3,
        duplicate: 0.2,
        jitter: Duration::from_millis(250),
        ..Default::default()
    });
    let owners: Vec<Owner> = (0..30).map(|_| Owner::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        nodes[i % 3]
            .tracker
            .track(owner, "room:1", &format!("u{i}"), json!({}))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    // Even-numbered users leave; the odd ones stay.
    let mut staying = Vec::new();
    for (i, owner) in owners.into_iter().enumerate() {
        if i % 2 == 1 {
            staying.push(owner);
        } // the even-numbered owners are dropped here: those users leave
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.heal();
    let want: Vec<String> = {
        let mut v: Vec<String> = (1..30).step_by(2).map(|i| format!("u{i}")).collect();
        v.sort();
        v
    };
    eventually(LONG, "all nodes to agree", || {
        nodes.iter().all(|n| keys(&n.tracker, "room:1") == want)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn pool_sizes_spread_topics_over_shards() {
    for pool_size in [1, 2, 8, 512] {
        let tracker = Tracker::start(
            "P",
            PubSub::new("a"),
            TrackerConfig {
                pool_size,
                ..config()
            },
        )
        .unwrap();
        let owner = Owner::new();
        for i in 0..100 {
            let r = tracker
                .track(&owner, &format!("topic:{i}"), "k", json!({}))
                .unwrap();
            assert_eq!(tracker.list(&format!("topic:{i}"))[0].1.phx_ref(), r);
        }
        tracker.untrack(&owner, "topic:7", "k");
        assert!(tracker.list("topic:7").is_empty());
        tracker.untrack_all(&owner);
        assert!((0..100).all(|i| tracker.list(&format!("topic:{i}")).is_empty()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_diff_handler_does_not_stop_the_tracker() {
    let tracker = Tracker::builder("P", PubSub::new("a"))
        .config(config())
        .on_diff(|_diff: Diff| panic!("handler bug"))
        .start()
        .unwrap();
    let owner = Owner::new();
    tracker.track(&owner, "t", "k", json!({})).unwrap();
    tracker.update(&owner, "t", "k", json!({"x": 1})).unwrap();
    assert_eq!(tracker.list("t").len(), 1);
}

#[test]
fn invalid_configurations_are_refused_at_start() {
    use presence_core::tracker::ConfigError;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let bad = |c: TrackerConfig| Tracker::start("P", PubSub::new("a"), c).unwrap_err();
    assert_eq!(
        bad(TrackerConfig {
            down_period: Some(Duration::from_millis(2999)),
            ..TrackerConfig::default()
        }),
        ConfigError::DownPeriod
    );
    assert_eq!(
        bad(TrackerConfig {
            permdown_period: Duration::from_secs(30),
            ..TrackerConfig::default()
        }),
        ConfigError::PermdownPeriod
    );
    assert_eq!(
        bad(TrackerConfig {
            pool_size: 0,
            ..TrackerConfig::default()
        }),
        ConfigError::PoolSize
    );
    assert_eq!(
        bad(TrackerConfig {
            max_delta_sizes: vec![],
            ..TrackerConfig::default()
        }),
        ConfigError::MaxDeltaSizes
    );
    assert_eq!(
        TrackerConfig::default().effective_down_period(),
        Duration::from_secs(30)
    );
    drop(_guard);
    assert_eq!(
        Tracker::start("P", PubSub::new("a"), TrackerConfig::default()).unwrap_err(),
        ConfigError::NoRuntime
    );
}

#[test]
fn handlers_may_call_back_into_any_shard_from_several_threads() {
    use std::sync::OnceLock;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let slot: Arc<OnceLock<Tracker>> = Arc::new(OnceLock::new());
    let echoes: Arc<Mutex<Vec<Owner>>> = Arc::default();
    let handler = {
        let (slot, echoes) = (slot.clone(), echoes.clone());
        move |diff: Diff| {
            for (topic, changes) in diff.iter() {
                if topic.starts_with("in:") && !changes.joins.is_empty() {
                    let tracker = slot.get().expect("set after start");
                    let owner = Owner::new();
                    // Another topic, most likely another shard, while this thread delivers.
                    tracker
                        .track(&owner, &format!("out:{topic}"), "echo", json!({}))
                        .unwrap();
                    echoes.lock().unwrap().push(owner);
                }
            }
        }
    };
    let tracker = Tracker::builder("P", PubSub::new("a"))
        .config(TrackerConfig {
            pool_size: 8,
            ..config()
        })
        .on_diff(handler)
        .start()
        .unwrap();
    slot.set(tracker.clone()).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for t in 0..4 {
        let (tracker, done_tx) = (tracker.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let owners: Vec<Owner> = (0..300).map(|_| Owner::new()).collect();
            for (i, owner) in owners.iter().enumerate() {
                tracker
                    .track(owner, &format!("in:{t}:{i}"), "k", json!({}))
                    .unwrap();
            }
            done_tx.send(owners).unwrap();
        });
    }
    let mut kept = Vec::new();
    for _ in 0..4 {
        kept.push(
            done_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("no deadlock between shards"),
        );
    }
    assert_eq!(
        echoes.lock().unwrap().len(),
        1200,
        "every join was echoed from inside the handler"
    );
    assert_eq!(tracker.list("out:in:3:299").len(), 1);
}

/// After its graceful permdown a node sends nothing more (a heartbeat heard after the
/// permdown would bring it back on its peers), yet its own view of the peers stays current.
#[tokio::test(start_paused = true)]
async fn a_departed_node_stays_silent_but_keeps_listening() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let owner = Owner::new();
    b.tracker.track(&owner, "room:1", "bob", json!({})).unwrap();
    eventually(LONG, "a sees bob", || keys(&a.tracker, "room:1") == ["bob"]).await;
    let alice = Owner::new();
    a.tracker
        .track(&alice, "room:1", "alice", json!({}))
        .unwrap();
    eventually(LONG, "b sees alice", || {
        keys(&b.tracker, "room:1") == ["alice", "bob"]
    })
    .await;

    // A watcher of the replication topic on a third node.
    let watcher = PubSub::builder("watcher")
        .adapter(cluster.adapter())
        .build();
    let mut replication = watcher.subscribe("phx_presence:Presence_shard0");
    b.tracker.graceful_permdown();
    eventually(LONG, "a drops bob", || {
        keys(&a.tracker, "room:1") == ["alice"]
    })
    .await;
    while replication.try_recv().is_ok() {}
    // Ten down periods: no heartbeat from b, so a never brings it back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut from_b = 0;
    while let Ok(message) = replication.try_recv() {
        if let presence_core::pubsub::Payload::Binary(bytes) = message.payload()
            && a_sender_is(bytes, "b")
        {
            from_b += 1;
        }
    }
    assert_eq!(from_b, 0, "b sent nothing after its permdown");
    assert_eq!(keys(&a.tracker, "room:1"), ["alice"]);
    assert!(a.tracker.replicas()[0].is_empty());

    // b still hears a: a change on a reaches b's list.
    let carol = Owner::new();
    a.tracker
        .track(&carol, "room:1", "carol", json!({}))
        .unwrap();
    eventually(LONG, "b's view of a stays current", || {
        keys(&b.tracker, "room:1").contains(&"carol".to_owned())
    })
    .await;
}

/// Whether a replication message (JSON: `{"<kind>": {"from": {"name": ..}, ..}}`) was sent
/// by `node`.
fn a_sender_is(bytes: &[u8], node: &str) -> bool {
    let message: serde_json::Value = serde_json::from_slice(bytes).expect("JSON");
    message
        .as_object()
        .and_then(|kinds| kinds.values().next())
        .is_some_and(|body| body["from"]["name"] == node)
}

/// A `tracing` writer that keeps what is logged, for tests that check a warning.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A node that receives replication for a presence it does not run (renamed on some nodes,
/// or declared under another name) says so once, after a grace period for a node that is
/// still starting its presences.
#[test]
fn replication_for_a_presence_this_node_does_not_run_is_reported_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    {
        use tracing_subscriber::util::SubscriberInitExt;
        let _default = subscriber.set_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let cluster = LocalCluster::new();
            let a = node(&cluster, "a");
            // b runs the pub/sub but another presence.
            let b_pubsub = PubSub::builder("b").adapter(cluster.adapter()).build();
            let _other = Tracker::builder("Other", b_pubsub)
                .config(config())
                .start()
                .unwrap();
            let owner = Owner::new();
            a.tracker.track(&owner, "room:1", "ann", json!({})).unwrap();
            tokio::time::sleep(Duration::from_secs(20)).await;
        });
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let reports = |name: &str| -> Vec<&str> {
        logs.lines()
            .filter(|l| l.contains(&format!("receives replication for the presence `{name}`")))
            .collect()
    };
    // Each node reports the other's presence, once in twenty seconds of heartbeats.
    let on_b = reports("Presence");
    assert_eq!(on_b.len(), 1, "{logs}");
    assert!(on_b[0].contains("node=\"b\""), "{logs}");
    let on_a = reports("Other");
    assert_eq!(on_a.len(), 1, "{logs}");
    assert!(on_a[0].contains("node=\"a\""), "{logs}");
}

/// Blocks the shard task that reports a diff while `stall` is set, and records replica events.
#[derive(Clone, Default)]
struct Stalling {
    stall: Arc<std::sync::atomic::AtomicBool>,
    events: Arc<Mutex<Vec<ReplicaEvent>>>,
}

impl presence_core::tracker::DiffHandler for Stalling {
    fn handle_diff(&self, _diff: Diff) {
        if self.stall.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // The shard's task is stuck (a slow handler, a descheduled thread) for well over
            // the down period while its peer's heartbeats queue up.
            std::thread::sleep(Duration::from_millis(2_500));
        }
    }

    fn handle_replica_event(&self, event: &ReplicaEvent) {
        self.events.lock().unwrap().push(event.clone());
    }
}

/// A shard whose task stalled past the down period handles the heartbeats that queued
/// meanwhile before its overdue tick looks for silent peers, so a live peer is never marked
/// down (its users would flicker offline and back on every client).
///
/// Node b runs on a runtime of its own, whose shard task its diff handler blocks; node a, on
/// the test's runtime, keeps beating into b's queue meanwhile. Real time, generous margins: a
/// heartbeat every 200 ms against a down period of 1 s, stalls of 2.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_does_not_mark_live_peers_down() {
    let config = TrackerConfig {
        broadcast_period: Duration::from_millis(100),
        max_silent_periods: 1,
        down_period: Some(Duration::from_millis(1_000)),
        permdown_period: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let cluster = LocalCluster::new();
    let a_pubsub = PubSub::builder("a").adapter(cluster.adapter()).build();
    let a = Tracker::builder("Presence", a_pubsub)
        .config(config.clone())
        .start()
        .unwrap();

    let stalling = Stalling::default();
    let (b_tx, b_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let b_thread = std::thread::spawn({
        let (cluster, stalling) = (cluster.clone(), stalling.clone());
        move || {
            // Two workers: while the stall blocks one, the other runs the timers, so b's
            // tick is due and ready together with the queued heartbeats when the stall ends
            // (as on a production runtime).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let b_pubsub = PubSub::builder("b").adapter(cluster.adapter()).build();
                let b = Tracker::builder("Presence", b_pubsub)
                    .config(config)
                    .on_diff(stalling)
                    .start()
                    .unwrap();
                b_tx.send(b).unwrap();
                let _ = stop_rx.await;
            });
        }
    });
    let b = b_rx.recv().unwrap();

    let owner = Owner::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for round in 0..4 {
        // a's next delta reaches b's shard task, whose diff report stalls b's thread.
        stalling
            .stall
            .store(true, std::sync::atomic::Ordering::SeqCst);
        a.track(&owner, "room:1", &format!("u{round}"), json!({}))
            .unwrap();
        while b.list("room:1").len() <= round {
            assert!(std::time::Instant::now() < deadline, "b never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The stall ends, then a few ticks pass.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
    }
    let events = stalling.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ReplicaEvent::Up { name, .. } if name == "a")),
        "{events:?}"
    );
    let downs: Vec<&ReplicaEvent> = events
        .iter()
        .filter(|e| matches!(e, ReplicaEvent::Down { .. }))
        .collect();
    assert!(downs.is_empty(), "a live peer was marked down: {events:?}");
    assert_eq!(b.list("room:1").len(), 4);
    drop(b);
    let _ = stop_tx.send(());
    b_thread.join().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_tracks_reaches_peers_in_heartbeats_of_bounded_size() {
    let cluster = LocalCluster::new();
    let a = node(&cluster, "a");
    let b = node(&cluster, "b");
    let spy = PubSub::builder("spy")
        .adapter(cluster.adapter())
        .queue_capacity(10_000)
        .build();
    let mut wire = spy.subscribe("phx_presence:Presence_shard0");
    eventually(LONG, "a and b to see each other", || {
        !a.tracker.replicas()[0].is_empty() && !b.tracker.replicas()[0].is_empty()
    })
    .await;
    // 25,000 tracks between two heartbeats: one delta would carry them all.
    let owners: Vec<Owner> = (0..25_000).map(|_| Owner::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        a.tracker
            .track(
                owner,
                &format!("room:{}", i % 7),
                &format!("user{i}"),
                json!({"i": i}),
            )
            .unwrap();
    }
    eventually(LONG, "b to list every presence", || {
        (0..7)
            .map(|t| b.tracker.list(&format!("room:{t}")).len())
            .sum::<usize>()
            == 25_000
    })
    .await;
    let mut largest = 0;
    let mut total = 0;
    while let Ok(msg) = wire.try_recv() {
        if let presence_core::pubsub::Payload::Binary(bytes) = msg.payload() {
            largest = largest.max(bytes.len());
            total += bytes.len();
        }
    }
    // The rows went out in three heartbeats (10,000 rows each at most), not in one.
    assert!(total > 2_500_000, "{total} bytes of replication seen");
    assert!(
        largest < total / 2,
        "the largest heartbeat held {largest} of {total} bytes"
    );
    let log = b.log.take();
    let joins = log.iter().filter(|r| matches!(r, Record::Join(..))).count();
    assert_eq!(joins, 25_000, "each presence reported once");
}
