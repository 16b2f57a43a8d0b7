//! Behaviour of presences declared with `#[derive(Presence)]` (and its attribute spelling
//! `#[presence(...)]`), through the helpers they generate, on
//! one node and across two nodes of a `LocalCluster`, on tokio's paused clock.
//!
//! Every scenario is an `async fn scenario(nodes: usize)`; `both!` runs it on one node and on
//! two. With two nodes, changes are made on the first node and observed on the last one.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::presence::{
    Fetch, FetchError, HandleMetas, InitError, PresenceContext, PresenceDiff, PresenceError,
    PresenceMap, PresenceOptions, PresenceSocket, TopicMetas,
};
use presence_core::pubsub::{LocalCluster, Payload, Subscription};
use presence_core::registry::{Registry, RegistryError};
use presence_core::supervisor::{ChildSpec, PubSubSpec, Running, Supervisor};
use presence_core::tracker::UpdateError;
use presence_core::{Owner, PhxRef, Presence, presence};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

presence_core::pubsub_server!(
    /// The application's pub/sub.
    pub AppPubSub
);

/// JSON-object metas, no hooks; the attribute spelling.
#[presence(pubsub = AppPubSub)]
struct RoomPresence;

/// A typed meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserMeta {
    device: String,
    typing: bool,
}

#[derive(Presence)]
#[presence(pubsub = AppPubSub, meta = UserMeta)]
struct Typed;

/// What [`Enriched`] adds to each entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct UserInfo {
    name: String,
}

/// Fetches a user per key: keys starting with `slow` take 5 s, `k<n>` take `(6 - n) * 100`
/// ms (earlier keys are slower), `boom` panics, others take 10 ms.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, fetch, broadcast_period = Duration::from_millis(100))]
struct Enriched {
    prefix: String,
}

impl Fetch for Enriched {
    type Extra = UserInfo;

    async fn fetch(
        &self,
        _ctx: &PresenceContext,
        _topic: &str,
        mut presences: PresenceMap<Self>,
    ) -> Result<PresenceMap<Self>, FetchError> {
        let mut delay = Duration::ZERO;
        for key in presences.keys() {
            assert_ne!(key, "boom", "the user database is on fire");
            let d = if key.starts_with("slow") {
                Duration::from_secs(5)
            } else if let Some(n) = key.strip_prefix('k').and_then(|n| n.parse::<u64>().ok()) {
                Duration::from_millis((6 - n) * 100)
            } else {
                Duration::from_millis(10)
            };
            delay = delay.max(d);
        }
        tokio::time::sleep(delay).await;
        for (key, entry) in presences.iter_mut() {
            entry.extra = Some(UserInfo {
                name: format!("{}{key}", self.prefix),
            });
        }
        Ok(presences)
    }
}

/// One call of [`HandleMetas::handle_metas`], as [`Hooked`] saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    topic: String,
    joins: Vec<String>,
    leaves: Vec<String>,
    /// The topic's presences passed in: the number of metas per key.
    presences: BTreeMap<String, usize>,
    /// The state passed in.
    state: usize,
}

/// Where a [`Hooked`] records what it saw.
type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// Counts its calls in its state and records what each call saw.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas)]
struct Hooked {
    seen: SeenLog,
}

impl HandleMetas for Hooked {
    type State = usize;

    fn init(&self, _ctx: &PresenceContext) -> Result<usize, InitError> {
        Ok(0)
    }

    async fn handle_metas(
        &self,
        _ctx: &PresenceContext,
        topic: &str,
        diff: &PresenceDiff<Self>,
        presences: &TopicMetas,
        state: usize,
    ) -> usize {
        self.seen.lock().unwrap().push(Seen {
            topic: topic.to_owned(),
            joins: diff.joins.keys().cloned().collect(),
            leaves: diff.leaves.keys().cloned().collect(),
            presences: presences
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect(),
            state,
        });
        state + 1
    }
}

/// A channel socket: what presence-poem gives the socket helpers.
struct Socket {
    registry: Registry,
    owner: Owner,
    topic: String,
}

impl Socket {
    fn new(registry: &Registry, topic: &str) -> Self {
        Socket {
            registry: registry.clone(),
            owner: Owner::new(),
            topic: topic.to_owned(),
        }
    }
}

impl PresenceSocket for Socket {
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn owner(&self) -> &Owner {
        &self.owner
    }
    fn topic(&self) -> &str {
        &self.topic
    }
}

/// `nodes` applications on one cluster, each a supervisor with the pub/sub and the presence
/// made by `spec`.
async fn start<S: ChildSpec>(nodes: usize, spec: impl Fn() -> S) -> Vec<Running> {
    let cluster = LocalCluster::new();
    let mut apps = Vec::new();
    for i in 0..nodes {
        let pubsub = PubSubSpec::new(AppPubSub)
            .node_name(format!("node-{i}"))
            .with_adapter({
                let c = cluster.clone();
                move || c.adapter()
            });
        let app = Supervisor::new()
            .child(pubsub)
            .child(spec())
            .start()
            .await
            .expect("the application starts");
        apps.push(app);
    }
    apps
}

/// The pub/sub tests read `presence_diff` from.
fn subscribe(app: &Running, topic: &str) -> Subscription {
    app.registry()
        .pubsub(&AppPubSub)
        .expect("the pub/sub runs")
        .subscribe(topic)
}

/// The next `presence_diff` payload on `sub`, within 30 s of virtual time.
async fn next_diff(sub: &mut Subscription) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("a presence_diff within 30 s")
            .expect("the subscription is open");
        if message.event() != "presence_diff" {
            continue;
        }
        match message.payload() {
            Payload::Json(value) => return value.clone(),
            other => panic!("a JSON presence_diff, not {other:?}"),
        }
    }
}

/// Polls `check` every 50 ms of virtual time until it holds; panics after 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 30 s: {what}");
}

fn device(device: &str) -> Value {
    json!({ "device": device })
}

fn options() -> PresenceOptions {
    PresenceOptions::new().broadcast_period(Duration::from_millis(100))
}

/// Runs `$scenario(1)` and `$scenario(2)` as two paused-clock tests.
macro_rules! both {
    ($scenario:ident: $one:ident, $two:ident) => {
        #[tokio::test(start_paused = true)]
        async fn $one() {
            $scenario(1).await;
        }

        #[tokio::test(start_paused = true)]
        async fn $two() {
            $scenario(2).await;
        }
    };
}

both!(grouping: grouping_one_node, grouping_two_nodes);

/// Two owners under one key make one entry with two metas.
async fn grouping(nodes: usize) {
    let apps = start(nodes, || RoomPresence.child_spec(options())).await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let (alice_web, alice_phone) = (Owner::new(), Owner::new());
    RoomPresence::running(first.registry())
        .unwrap()
        .track(&alice_web, "room:1", "alice", &device("web"))
        .unwrap();
    RoomPresence::running(last.registry())
        .unwrap()
        .track(&alice_phone, "room:1", "alice", &device("phone"))
        .unwrap();
    RoomPresence::running(first.registry())
        .unwrap()
        .track(&alice_web, "room:1", "bob", &device("web"))
        .unwrap();

    for app in &apps {
        eventually("both metas of alice on every node", || async {
            let list = RoomPresence::running(app.registry())
                .unwrap()
                .list("room:1")
                .await;
            list.get("alice").is_some_and(|e| e.len() == 2) && list.contains_key("bob")
        })
        .await;
        let list = RoomPresence::running(app.registry())
            .unwrap()
            .list("room:1")
            .await;
        assert_eq!(list.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        let mut devices: Vec<_> = list["alice"]
            .raw_metas()
            .iter()
            .map(|m| m.get("device").cloned().unwrap())
            .collect();
        devices.sort_by_key(|d| d.to_string());
        assert_eq!(devices, [json!("phone"), json!("web")]);
    }
}

both!(lifecycle: lifecycle_one_node, lifecycle_two_nodes);

/// track, update and untrack through a socket, seen by `list` and `get_by_key`.
async fn lifecycle(nodes: usize) {
    let apps = start(nodes, || RoomPresence.child_spec(options())).await;
    let (first, last) = (apps[0].registry(), apps[nodes - 1].registry());
    let socket = Socket::new(first, "room:1");

    let tracked: PhxRef = RoomPresence::track(&socket, "alice", &device("web")).unwrap();
    eventually("alice is listed", || async {
        RoomPresence::running(last)
            .unwrap()
            .get_by_key("room:1", "alice")
            .await
            .is_some()
    })
    .await;
    let entry = RoomPresence::running(last)
        .unwrap()
        .get_by_key("room:1", "alice")
        .await
        .unwrap();
    assert_eq!(entry.len(), 1);
    assert_eq!(entry.raw_metas()[0].get("device"), Some(&json!("web")));
    assert_eq!(entry.raw_metas()[0].phx_ref(), tracked);
    assert_eq!(entry.raw_metas()[0].phx_ref_prev(), None);
    assert!(entry.extra.is_none());
    let list = RoomPresence::running(last).unwrap().list("room:1").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list["alice"], entry);
    let count = RoomPresence::running(last).unwrap().count("room:1");
    assert_eq!((count.keys, count.metas), (1, 1));
    assert_eq!(RoomPresence::running(last).unwrap().count("room:2").keys, 0);

    let updated = RoomPresence::update(&socket, "alice", &device("phone")).unwrap();
    assert_ne!(updated, tracked);
    eventually("alice's update arrives", || async {
        let entry = RoomPresence::running(last)
            .unwrap()
            .get_by_key("room:1", "alice")
            .await;
        entry.is_some_and(|e| e.raw_metas()[0].phx_ref() == updated)
    })
    .await;
    let entry = RoomPresence::running(last)
        .unwrap()
        .get_by_key("room:1", "alice")
        .await
        .unwrap();
    assert_eq!(entry.len(), 1);
    assert_eq!(entry.raw_metas()[0].get("device"), Some(&json!("phone")));
    assert_eq!(entry.raw_metas()[0].phx_ref_prev(), Some(tracked));

    RoomPresence::untrack(&socket, "alice").unwrap();
    eventually("alice is gone", || async {
        RoomPresence::running(last)
            .unwrap()
            .get_by_key("room:1", "alice")
            .await
            .is_none()
    })
    .await;
    assert!(
        RoomPresence::running(last)
            .unwrap()
            .list("room:1")
            .await
            .is_empty()
    );
    assert_eq!(
        RoomPresence::running(last).unwrap().count("room:1").metas,
        0
    );

    // Untracking again is a no-op; updating what is not tracked is an error.
    RoomPresence::untrack(&socket, "alice").unwrap();
    assert!(matches!(
        RoomPresence::update(&socket, "alice", &device("web")),
        Err(PresenceError::Update(UpdateError::NoPresence))
    ));

    // The owner helpers do the same for an explicit owner and topic.
    let owner = Owner::new();
    RoomPresence::running(first)
        .unwrap()
        .track(&owner, "room:2", "bob", &device("web"))
        .unwrap();
    RoomPresence::running(first)
        .unwrap()
        .update(&owner, "room:2", "bob", &device("tv"))
        .unwrap();
    eventually("bob's update arrives", || async {
        RoomPresence::running(last)
            .unwrap()
            .get_by_key("room:2", "bob")
            .await
            .is_some_and(|e| e.raw_metas()[0].get("device") == Some(&json!("tv")))
    })
    .await;
    RoomPresence::running(first)
        .unwrap()
        .untrack(&owner, "room:2", "bob");
    eventually("bob is gone", || async {
        RoomPresence::running(last)
            .unwrap()
            .list("room:2")
            .await
            .is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn helpers_report_a_presence_that_is_not_running() {
    let registry = Registry::new();
    let not_running = PresenceError::Registry(RegistryError::PresenceNotRunning(
        <RoomPresence as presence_core::Presence>::NAME,
    ));
    let socket = Socket::new(&registry, "room:1");
    assert_eq!(
        RoomPresence::list(&socket).await.unwrap_err(),
        not_running.clone()
    );
    assert_eq!(
        RoomPresence::get_by_key(&socket, "alice")
            .await
            .unwrap_err(),
        not_running.clone()
    );
    assert_eq!(
        RoomPresence::count(&socket).unwrap_err(),
        not_running.clone()
    );
    assert_eq!(
        RoomPresence::track(&socket, "alice", &device("web")),
        Err(not_running.clone())
    );
    assert_eq!(RoomPresence::running(&registry).unwrap_err(), not_running);

    // Without its pub/sub, the presence's child fails to start.
    let started = Supervisor::new()
        .child(RoomPresence.child_spec(options()))
        .start()
        .await;
    let error = started.unwrap_err();
    assert!(error.to_string().contains("AppPubSub"), "{error}");
}

both!(fetch_enriches: fetch_enriches_one_node, fetch_enriches_two_nodes);

/// `fetch` enriches `list`, `get_by_key` and both sides of every diff.
async fn fetch_enriches(nodes: usize) {
    let apps = start(nodes, || {
        Enriched {
            prefix: "user:".to_owned(),
        }
        .child_spec(PresenceOptions::new())
    })
    .await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut diffs = subscribe(last, "room:1");
    let socket = Socket::new(first.registry(), "room:1");

    Enriched::track(&socket, "alice", &device("web")).unwrap();
    let diff = next_diff(&mut diffs).await;
    assert_eq!(diff["joins"]["alice"]["name"], "user:alice");
    assert_eq!(diff["joins"]["alice"]["metas"][0]["device"], "web");
    assert_eq!(diff["leaves"], json!({}));

    let list = Enriched::running(last.registry())
        .unwrap()
        .list("room:1")
        .await;
    let expected = UserInfo {
        name: "user:alice".to_owned(),
    };
    assert_eq!(list["alice"].extra.as_ref(), Some(&expected));
    let entry = Enriched::running(last.registry())
        .unwrap()
        .get_by_key("room:1", "alice")
        .await
        .unwrap();
    assert_eq!(entry.extra, Some(expected));

    Enriched::update(&socket, "alice", &device("phone")).unwrap();
    let diff = next_diff(&mut diffs).await;
    assert_eq!(diff["joins"]["alice"]["name"], "user:alice");
    assert_eq!(diff["joins"]["alice"]["metas"][0]["device"], "phone");
    assert_eq!(diff["leaves"]["alice"]["name"], "user:alice");
    assert_eq!(diff["leaves"]["alice"]["metas"][0]["device"], "web");

    Enriched::untrack(&socket, "alice").unwrap();
    let diff = next_diff(&mut diffs).await;
    assert_eq!(diff["joins"], json!({}));
    assert_eq!(diff["leaves"]["alice"]["name"], "user:alice");
}

both!(fetch_keeps_order: fetch_keeps_order_one_node, fetch_keeps_order_two_nodes);

/// Diffs go out in tracker order while fetches of different lengths overlap: `k0` is fetched
/// slowest and `k5` fastest, yet they are broadcast `k0` first.
async fn fetch_keeps_order(nodes: usize) {
    let apps = start(nodes, || {
        Enriched {
            prefix: String::new(),
        }
        .child_spec(PresenceOptions::new())
    })
    .await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut diffs = subscribe(last, "room:1");
    let owner = Owner::new();
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    for key in &keys {
        Enriched::running(first.registry())
            .unwrap()
            .track(&owner, "room:1", key, &device("web"))
            .unwrap();
    }

    let mut broadcast = Vec::new();
    let mut messages = 0;
    while broadcast.len() < keys.len() {
        let diff = next_diff(&mut diffs).await;
        messages += 1;
        for (key, entry) in diff["joins"].as_object().unwrap() {
            assert_eq!(entry["name"], json!(key), "every diff is fetched");
            broadcast.push(key.clone());
        }
    }
    assert_eq!(broadcast, keys);
    if nodes == 1 {
        // One diff per track, so the six fetches did overlap.
        assert_eq!(messages, keys.len());
    }
    let handle = Enriched::running(last.registry()).unwrap();
    handle.settled().await;
    assert_eq!(handle.pending_diffs(), 0);
}

both!(fetch_panics: fetch_panics_one_node, fetch_panics_two_nodes);

/// A panicking fetch sends its diff unenriched; listing still works, and later fetches too.
async fn fetch_panics(nodes: usize) {
    let apps = start(nodes, || {
        Enriched {
            prefix: "user:".to_owned(),
        }
        .child_spec(PresenceOptions::new())
    })
    .await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut diffs = subscribe(last, "room:1");
    let owner = Owner::new();

    Enriched::running(first.registry())
        .unwrap()
        .track(&owner, "room:1", "boom", &device("web"))
        .unwrap();
    let diff = next_diff(&mut diffs).await;
    assert_eq!(diff["joins"]["boom"]["metas"][0]["device"], "web");
    assert!(diff["joins"]["boom"].get("name").is_none(), "{diff}");

    let list = Enriched::running(last.registry())
        .unwrap()
        .list("room:1")
        .await;
    assert_eq!(list["boom"].len(), 1);
    assert_eq!(list["boom"].extra, None);

    Enriched::running(first.registry())
        .unwrap()
        .track(&owner, "room:2", "alice", &device("web"))
        .unwrap();
    eventually("alice is listed", || async {
        let list = Enriched::running(last.registry())
            .unwrap()
            .list("room:2")
            .await;
        !list.is_empty()
    })
    .await;
    let list = Enriched::running(last.registry())
        .unwrap()
        .list("room:2")
        .await;
    assert_eq!(list["alice"].extra.as_ref().unwrap().name, "user:alice");
}

both!(handle_metas_state: handle_metas_state_one_node, handle_metas_state_two_nodes);

/// `handle_metas` threads its state through every diff of every topic, in order, and sees the
/// topic's metas after each one; an emptied topic starts over.
async fn handle_metas_state(nodes: usize) {
    let logs: Mutex<Vec<SeenLog>> = Mutex::default();
    let apps = start(nodes, || {
        let seen = Arc::new(Mutex::new(Vec::new()));
        logs.lock().unwrap().push(seen.clone());
        Hooked { seen }.child_spec(options())
    })
    .await;
    let first = apps[0].registry();
    let seen = logs.lock().unwrap()[nodes - 1].clone();
    let last_presences = |topic: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.topic == topic)
            .map(|s| s.presences.clone())
    };
    let counts = |pairs: &[(&str, usize)]| -> Option<BTreeMap<String, usize>> {
        Some(pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect())
    };
    let (web, phone) = (Owner::new(), Owner::new());

    Hooked::running(first)
        .unwrap()
        .track(&web, "room:1", "alice", &device("web"))
        .unwrap();
    eventually("alice joined", || async {
        last_presences("room:1") == counts(&[("alice", 1)])
    })
    .await;
    Hooked::running(first)
        .unwrap()
        .track(&phone, "room:1", "alice", &device("phone"))
        .unwrap();
    eventually("alice joined twice", || async {
        last_presences("room:1") == counts(&[("alice", 2)])
    })
    .await;
    Hooked::running(first)
        .unwrap()
        .track(&web, "room:2", "bob", &device("web"))
        .unwrap();
    eventually("bob joined room:2", || async {
        last_presences("room:2") == counts(&[("bob", 1)])
    })
    .await;
    let before_update = seen.lock().unwrap().len();
    Hooked::running(first)
        .unwrap()
        .update(&web, "room:1", "alice", &device("tv"))
        .unwrap();
    eventually("alice's update", || async {
        let seen = seen.lock().unwrap();
        seen[before_update..]
            .iter()
            .any(|s| s.leaves == ["alice"] && s.presences == counts(&[("alice", 2)]).unwrap())
    })
    .await;
    Hooked::running(first)
        .unwrap()
        .untrack(&phone, "room:1", "alice");
    eventually("alice's phone left", || async {
        last_presences("room:1") == counts(&[("alice", 1)])
    })
    .await;
    drop(web);
    eventually("room:1 emptied", || async {
        last_presences("room:1") == counts(&[])
    })
    .await;
    eventually("room:2 emptied", || async {
        last_presences("room:2") == counts(&[])
    })
    .await;
    let carol = Owner::new();
    Hooked::running(first)
        .unwrap()
        .track(&carol, "room:1", "carol", &device("web"))
        .unwrap();
    eventually("room:1 starts over with carol", || async {
        last_presences("room:1") == counts(&[("carol", 1)])
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    // The state counted every call, in order, across topics.
    let states: Vec<usize> = seen.iter().map(|s| s.state).collect();
    assert_eq!(states, (0..seen.len()).collect::<Vec<_>>());
    // Each call saw its own topic only.
    for s in &seen {
        let keys: Vec<&str> = s.presences.keys().map(String::as_str).collect();
        match s.topic.as_str() {
            "room:1" => assert!(keys.iter().all(|k| ["alice", "carol"].contains(k)), "{s:?}"),
            "room:2" => assert!(keys.iter().all(|k| *k == "bob"), "{s:?}"),
            other => panic!("unexpected topic {other}"),
        }
    }
    let joined: Vec<&str> = seen
        .iter()
        .filter(|s| s.topic == "room:1")
        .flat_map(|s| s.joins.iter().map(String::as_str))
        .collect();
    assert!(joined.ends_with(&["carol"]), "{joined:?}");
}

both!(owner_exit: owner_exit_one_node, owner_exit_two_nodes);

/// Dropping the owner (its task ended) makes its presences leave.
async fn owner_exit(nodes: usize) {
    let apps = start(nodes, || RoomPresence.child_spec(options())).await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut diffs = subscribe(last, "room:1");
    let socket = Socket::new(first.registry(), "room:1");
    RoomPresence::track(&socket, "alice", &device("web")).unwrap();
    RoomPresence::track(&socket, "bob", &device("web")).unwrap();
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let diff = next_diff(&mut diffs).await;
        joined.extend(diff["joins"].as_object().unwrap().keys().cloned());
    }
    assert_eq!(joined, ["alice", "bob"]);

    // The channel's task ends, and its socket (with the owner) with it.
    tokio::spawn(async move { drop(socket) }).await.unwrap();
    let mut left = Vec::new();
    while left.len() < 2 {
        let diff = next_diff(&mut diffs).await;
        assert_eq!(diff["joins"], json!({}));
        left.extend(diff["leaves"].as_object().unwrap().keys().cloned());
    }
    assert_eq!(left, ["alice", "bob"]);
    assert!(
        RoomPresence::running(last.registry())
            .unwrap()
            .list("room:1")
            .await
            .is_empty()
    );
}

both!(settled_waits: settled_waits_one_node, settled_waits_two_nodes);

/// `settled` waits for in-flight fetches: a 5 s fetch holds its diff back until then.
async fn settled_waits(nodes: usize) {
    let apps = start(nodes, || {
        Enriched {
            prefix: "user:".to_owned(),
        }
        .child_spec(PresenceOptions::new())
    })
    .await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut diffs = subscribe(last, "room:1");
    let owner = Owner::new();
    Enriched::running(first.registry())
        .unwrap()
        .track(&owner, "room:1", "slow", &device("web"))
        .unwrap();

    // The change reaches the last node well within a second; its fetch takes five.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handle = Enriched::running(last.registry()).unwrap();
    assert_eq!(handle.pending_diffs(), 1);
    assert!(diffs.try_recv().is_err(), "the diff waits for its fetch");
    let started = tokio::time::Instant::now();
    handle.settled().await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(handle.pending_diffs(), 0);
    let message = diffs.try_recv().expect("settled after the broadcast");
    let Payload::Json(diff) = message.payload() else {
        panic!("a JSON diff")
    };
    assert_eq!(diff["joins"]["slow"]["name"], "user:slow");
}

both!(typed_meta: typed_meta_one_node, typed_meta_two_nodes);

/// A typed meta goes in and comes out as the same value, and reaches clients as JSON.
async fn typed_meta(nodes: usize) {
    let apps = start(nodes, || Typed.child_spec(options())).await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut diffs = subscribe(last, "room:1");
    let socket = Socket::new(first.registry(), "room:1");
    let meta = UserMeta {
        device: "web".to_owned(),
        typing: false,
    };
    Typed::track(&socket, "alice", &meta).unwrap();
    let diff = next_diff(&mut diffs).await;
    assert_eq!(diff["joins"]["alice"]["metas"][0]["device"], "web");
    assert_eq!(diff["joins"]["alice"]["metas"][0]["typing"], false);

    let list = Typed::running(last.registry())
        .unwrap()
        .list("room:1")
        .await;
    let metas = list["alice"].metas().unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].meta, meta);
    assert_eq!(metas[0].phx_ref_prev, None);

    let typing = UserMeta {
        device: "web".to_owned(),
        typing: true,
    };
    Typed::update(&socket, "alice", &typing).unwrap();
    next_diff(&mut diffs).await;
    let entry = Typed::running(last.registry())
        .unwrap()
        .get_by_key("room:1", "alice")
        .await
        .unwrap();
    let metas = entry.metas().unwrap();
    assert_eq!(metas[0].meta, typing);
    assert!(metas[0].phx_ref_prev.is_some());

    // The socket forms, and an update computed from the typed old meta.
    let reader = Socket::new(last.registry(), "room:1");
    Typed::update_with(&socket, "alice", |old| UserMeta {
        device: format!("{}+tablet", old.device),
        ..old
    })
    .unwrap();
    next_diff(&mut diffs).await;
    let listed = Typed::list(&reader).await.unwrap();
    let entry = Typed::get_by_key(&reader, "alice").await.unwrap().unwrap();
    assert_eq!(listed["alice"], entry);
    let metas = entry.metas().unwrap();
    assert_eq!(metas[0].meta.device, "web+tablet");
    assert!(metas[0].meta.typing, "the closure kept the other fields");
    assert_eq!(Typed::count(&reader).unwrap().metas, 1);
    assert!(
        Typed::get_by_key(&reader, "nobody")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        Typed::update_with(&socket, "nobody", |old| old),
        Err(PresenceError::Update(UpdateError::NoPresence))
    ));
}

/// Phoenix.Presence's `handle_metas` example: a presence client that rebroadcasts joins and
/// leaves to local subscribers of `proxy:<topic>`, through the pub/sub of its hook context.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas, broadcast_period = Duration::from_millis(100))]
struct Proxy;

impl HandleMetas for Proxy {
    type State = ();

    fn init(&self, _ctx: &PresenceContext) -> Result<(), InitError> {
        Ok(())
    }

    async fn handle_metas(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        diff: &PresenceDiff<Self>,
        presences: &TopicMetas,
        state: (),
    ) {
        for (event, side) in [
            ("presence_join", &diff.joins),
            ("presence_leave", &diff.leaves),
        ] {
            for (user_id, entry) in side {
                let devices = presences.get(user_id).map_or(0, Vec::len);
                ctx.pubsub()
                    .local_broadcast(presence_core::pubsub::Message::json(
                        format!("proxy:{topic}"),
                        event,
                        json!({
                            "id": user_id,
                            "metas": entry.raw_metas(),
                            "devices": devices,
                            "node": ctx.node_name(),
                        }),
                    ));
            }
        }
        state
    }
}

both!(proxy_client: proxy_client_one_node, proxy_client_two_nodes);

/// Every node's `handle_metas` tells its own local subscribers, through the context's
/// pub/sub, who joined and left anywhere in the cluster.
async fn proxy_client(nodes: usize) {
    let apps = start(nodes, || Proxy.child_spec(PresenceOptions::new())).await;
    let (first, last) = (&apps[0], &apps[nodes - 1]);
    let mut proxied = subscribe(last, "proxy:room:1");
    let next = |sub: &mut Subscription| {
        let message = sub.try_recv().ok()?;
        let Payload::Json(value) = message.payload() else {
            return None;
        };
        Some((message.event().to_owned(), value.clone()))
    };
    let socket = Socket::new(first.registry(), "room:1");
    Proxy::track(&socket, "alice", &device("web")).unwrap();
    let phone = Socket::new(first.registry(), "room:1");
    Proxy::track(&phone, "alice", &device("phone")).unwrap();
    // One join per device here; the other node may get both in one replicated diff.
    let mut seen = Vec::new();
    eventually("both joins are proxied", || {
        while let Some(event) = next(&mut proxied) {
            seen.push(event);
        }
        let done = seen.last().is_some_and(|(_, e)| e["devices"] == 2);
        async move { done }
    })
    .await;
    let node = format!("node-{}", nodes - 1);
    assert!(seen.iter().all(|(event, e)| event == "presence_join"
        && e["id"] == "alice"
        && e["node"] == node.as_str()));
    let devices: Vec<&Value> = seen
        .iter()
        .flat_map(|(_, e)| e["metas"].as_array().unwrap())
        .map(|m| &m["device"])
        .collect();
    assert_eq!(devices, [&json!("web"), &json!("phone")]);

    drop(phone);
    let mut left = None;
    eventually("the leave is proxied", || {
        while let Some(event) = next(&mut proxied) {
            if event.0 == "presence_leave" {
                left = Some(event.1);
            }
        }
        let done = left.is_some();
        async move { done }
    })
    .await;
    let left = left.unwrap();
    assert_eq!(left["metas"][0]["device"], "phone");
    assert_eq!(left["devices"], 1, "alice is still on the web");
}

/// A meta written by another version of the meta type cannot be updated through a closure
/// that needs the new type: the update is refused and the meta stays as it was.
#[tokio::test(start_paused = true)]
async fn update_with_refuses_a_meta_of_another_shape() {
    let apps = start(1, || Typed.child_spec(options())).await;
    let typed = Typed::running(apps[0].registry()).unwrap();
    let owner = Owner::new();
    typed
        .tracker()
        .track(&owner, "room:1", "old", json!({"device": 5}))
        .unwrap();
    let error = typed
        .update_with(&owner, "room:1", "old", |m| m)
        .unwrap_err();
    assert!(
        matches!(&error, UpdateError::InvalidMeta(m) if m.contains("does not decode")),
        "{error}"
    );
    let entry = typed.get_by_key("room:1", "old").await.unwrap();
    assert_eq!(entry.raw_metas()[0].get("device"), Some(&json!(5)));
    assert!(entry.metas().is_err(), "typed reading says so too");
}

/// A meta that does not serialize to an object is refused when tracked, not wrapped.
#[tokio::test(start_paused = true)]
async fn a_non_object_meta_is_refused() {
    let apps = start(1, || RoomPresence.child_spec(options())).await;
    let socket = Socket::new(apps[0].registry(), "room:1");
    let error = RoomPresence::track(&socket, "alice", &json!("online")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("must serialize to a JSON object")
            && error.to_string().contains("a string"),
        "{error}"
    );
    assert!(RoomPresence::list(&socket).await.unwrap().is_empty());
}

/// A closure that panics inside `update_with` (it runs under the shard's lock) changes
/// nothing, and the presence goes on: the same key updates and lists afterwards.
#[tokio::test(start_paused = true)]
async fn a_panicking_update_closure_changes_nothing() {
    let apps = start(1, || Typed.child_spec(options())).await;
    let typed = Typed::running(apps[0].registry()).unwrap();
    let owner = Owner::new();
    let meta = UserMeta {
        device: "web".to_owned(),
        typing: false,
    };
    let tracked = typed.track(&owner, "room:1", "alice", &meta).unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        typed.update_with(&owner, "room:1", "alice", |_| {
            panic!("a bug in the closure")
        })
    }));
    assert!(panicked.is_err());
    let entry = typed.get_by_key("room:1", "alice").await.unwrap();
    assert_eq!(
        entry.raw_metas()[0].phx_ref(),
        tracked,
        "the meta is untouched"
    );
    typed
        .update_with(&owner, "room:1", "alice", |old| UserMeta {
            typing: true,
            ..old
        })
        .unwrap();
    let entry = typed.get_by_key("room:1", "alice").await.unwrap();
    assert!(entry.metas().unwrap()[0].meta.typing);
    let bob = Owner::new();
    typed.track(&bob, "room:1", "bob", &meta).unwrap();
    assert_eq!(typed.count("room:1").keys, 2);
}

/// Counts the topic from inside `handle_metas`, through the registry of its context.
#[derive(Presence)]
#[presence(pubsub = AppPubSub, handle_metas)]
struct SelfCounting {
    counts: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl HandleMetas for SelfCounting {
    type State = ();

    fn init(&self, _ctx: &PresenceContext) -> Result<(), InitError> {
        Ok(())
    }

    async fn handle_metas(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        _diff: &PresenceDiff<Self>,
        presences: &TopicMetas,
        state: (),
    ) {
        let count = SelfCounting::running(ctx.registry())
            .expect("the supervisor put the presence in the registry")
            .count(topic);
        // The count is live: it may already include changes whose diffs come later, so it
        // is never below what this diff left.
        assert!(count.keys >= presences.len(), "{count:?} vs {presences:?}");
        self.counts.lock().unwrap().push((count.keys, count.metas));
        state
    }
}

/// A hook reaches its own presence through the context's registry; by the last diff, the
/// count it reads is the final one.
#[tokio::test(start_paused = true)]
async fn a_hook_counts_its_own_topic() {
    let counts = Arc::new(Mutex::new(Vec::new()));
    let apps = start(1, || {
        SelfCounting {
            counts: counts.clone(),
        }
        .child_spec(options())
    })
    .await;
    let (web, phone) = (
        Socket::new(apps[0].registry(), "room:1"),
        Socket::new(apps[0].registry(), "room:1"),
    );
    SelfCounting::track(&web, "alice", &device("web")).unwrap();
    SelfCounting::track(&phone, "alice", &device("phone")).unwrap();
    SelfCounting::track(&phone, "bob", &device("phone")).unwrap();
    let running = SelfCounting::running(apps[0].registry()).unwrap();
    running.settled().await;
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 3, "one call per diff");
    assert_eq!(counts.last(), Some(&(2, 3)));
}
