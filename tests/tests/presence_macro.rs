//! Behaviour of presences declared with `#[presence]`, through the helpers it generates, on
//! one node and across two nodes of a `LocalCluster`, on tokio's paused clock.
//!
//! Every scenario is an `async fn scenario(nodes: usize)`; `both!` runs it on one node and on
//! two. With two nodes, changes are made on the first node and observed on the last one.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_core::presence::{
    Fetch, FetchError, HandleMetas, Init, PresenceDiff, PresenceError, PresenceMap,
    PresenceOptions, PresenceSocket, TopicMetas,
};
use presence_core::pubsub::{LocalCluster, Payload, Subscription};
use presence_core::registry::{Registry, RegistryError};
use presence_core::supervisor::{ChildSpec, PubSubSpec, Running, Supervisor};
use presence_core::tracker::UpdateError;
use presence_core::{Owner, PhxRef, presence};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

presence_core::pubsub_server!(
    /// The application's pub/sub.
    pub AppPubSub
);

/// JSON-object metas, no hooks.
#[presence(pubsub = AppPubSub)]
struct RoomPresence;

/// A typed meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserMeta {
    device: String,
    typing: bool,
}

#[presence(pubsub = AppPubSub, meta = UserMeta)]
struct Typed;

/// What [`Enriched`] adds to each entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct UserInfo {
    name: String,
}

/// Fetches a user per key: keys starting with `slow` take 5 s, `k<n>` take `(6 - n) * 100`
/// ms (earlier keys are slower), `boom` panics, others take 10 ms.
#[presence(pubsub = AppPubSub, fetch, broadcast_period = Duration::from_millis(100))]
struct Enriched {
    prefix: String,
}

impl Fetch for Enriched {
    type Extra = UserInfo;

    async fn fetch(
        &self,
        _topic: &str,
        mut presences: PresenceMap<UserInfo>,
    ) -> Result<PresenceMap<UserInfo>, FetchError> {
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
#[presence(pubsub = AppPubSub, init, handle_metas)]
struct Hooked {
    seen: SeenLog,
}

impl Init for Hooked {
    type State = usize;

    fn init(&self) -> usize {
        0
    }
}

impl HandleMetas for Hooked {
    async fn handle_metas(
        &self,
        topic: &str,
        diff: &PresenceDiff,
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
        let pubsub = PubSubSpec::new(AppPubSub, format!("node-{i}")).with_adapter({
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

fn device(device: &str) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({ "device": device }) else {
        unreachable!()
    };
    map
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
    RoomPresence::track_owner(
        first.registry(),
        &alice_web,
        "room:1",
        "alice",
        &device("web"),
    )
    .unwrap();
    RoomPresence::track_owner(
        last.registry(),
        &alice_phone,
        "room:1",
        "alice",
        &device("phone"),
    )
    .unwrap();
    RoomPresence::track_owner(
        first.registry(),
        &alice_web,
        "room:1",
        "bob",
        &device("web"),
    )
    .unwrap();

    for app in &apps {
        eventually("both metas of alice on every node", || async {
            let list = RoomPresence::list(app.registry(), "room:1").await.unwrap();
            list.get("alice").is_some_and(|e| e.metas.len() == 2) && list.contains_key("bob")
        })
        .await;
        let list = RoomPresence::list(app.registry(), "room:1").await.unwrap();
        assert_eq!(list.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        let mut devices: Vec<_> = list["alice"]
            .metas
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
        RoomPresence::get_by_key(last, "room:1", "alice")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let entry = RoomPresence::get_by_key(last, "room:1", "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.metas.len(), 1);
    assert_eq!(entry.metas[0].get("device"), Some(&json!("web")));
    assert_eq!(entry.metas[0].phx_ref(), tracked);
    assert_eq!(entry.metas[0].phx_ref_prev(), None);
    assert!(entry.extra.is_none());
    let list = RoomPresence::list(last, "room:1").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list["alice"], entry);
    let count = RoomPresence::count(last, "room:1").unwrap();
    assert_eq!((count.keys, count.metas), (1, 1));
    assert_eq!(RoomPresence::count(last, "room:2").unwrap().keys, 0);

    let updated = RoomPresence::update(&socket, "alice", &device("phone")).unwrap();
    assert_ne!(updated, tracked);
    eventually("alice's update arrives", || async {
        let entry = RoomPresence::get_by_key(last, "room:1", "alice")
            .await
            .unwrap();
        entry.is_some_and(|e| e.metas[0].phx_ref() == updated)
    })
    .await;
    let entry = RoomPresence::get_by_key(last, "room:1", "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.metas.len(), 1);
    assert_eq!(entry.metas[0].get("device"), Some(&json!("phone")));
    assert_eq!(entry.metas[0].phx_ref_prev(), Some(tracked));

    RoomPresence::untrack(&socket, "alice").unwrap();
    eventually("alice is gone", || async {
        RoomPresence::get_by_key(last, "room:1", "alice")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(RoomPresence::list(last, "room:1").await.unwrap().is_empty());
    assert_eq!(RoomPresence::count(last, "room:1").unwrap().metas, 0);

    // Untracking again is a no-op; updating what is not tracked is an error.
    RoomPresence::untrack(&socket, "alice").unwrap();
    assert!(matches!(
        RoomPresence::update(&socket, "alice", &device("web")),
        Err(PresenceError::Update(UpdateError::NoPresence))
    ));

    // The owner helpers do the same for an explicit owner and topic.
    let owner = Owner::new();
    RoomPresence::track_owner(first, &owner, "room:2", "bob", &device("web")).unwrap();
    RoomPresence::update_owner(first, &owner, "room:2", "bob", &device("tv")).unwrap();
    eventually("bob's update arrives", || async {
        RoomPresence::get_by_key(last, "room:2", "bob")
            .await
            .unwrap()
            .is_some_and(|e| e.metas[0].get("device") == Some(&json!("tv")))
    })
    .await;
    RoomPresence::untrack_owner(first, &owner, "room:2", "bob").unwrap();
    eventually("bob is gone", || async {
        RoomPresence::list(last, "room:2").await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn helpers_report_a_presence_that_is_not_running() {
    let registry = Registry::new();
    let not_running = PresenceError::Registry(RegistryError::PresenceNotRunning(
        <RoomPresence as presence_core::Presence>::NAME,
    ));
    assert_eq!(
        RoomPresence::list(&registry, "room:1").await,
        Err(not_running.clone())
    );
    assert_eq!(
        RoomPresence::get_by_key(&registry, "room:1", "alice").await,
        Err(not_running.clone())
    );
    let socket = Socket::new(&registry, "room:1");
    assert_eq!(
        RoomPresence::track(&socket, "alice", &device("web")),
        Err(not_running.clone())
    );
    assert_eq!(RoomPresence::handle(&registry).unwrap_err(), not_running);

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

    let list = Enriched::list(last.registry(), "room:1").await.unwrap();
    let expected = UserInfo {
        name: "user:alice".to_owned(),
    };
    assert_eq!(list["alice"].extra.as_ref(), Some(&expected));
    let entry = Enriched::get_by_key(last.registry(), "room:1", "alice")
        .await
        .unwrap()
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
        Enriched::track_owner(first.registry(), &owner, "room:1", key, &device("web")).unwrap();
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
    let handle = Enriched::handle(last.registry()).unwrap();
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

    Enriched::track_owner(first.registry(), &owner, "room:1", "boom", &device("web")).unwrap();
    let diff = next_diff(&mut diffs).await;
    assert_eq!(diff["joins"]["boom"]["metas"][0]["device"], "web");
    assert!(diff["joins"]["boom"].get("name").is_none(), "{diff}");

    let list = Enriched::list(last.registry(), "room:1").await.unwrap();
    assert_eq!(list["boom"].metas.len(), 1);
    assert_eq!(list["boom"].extra, None);

    Enriched::track_owner(first.registry(), &owner, "room:2", "alice", &device("web")).unwrap();
    eventually("alice is listed", || async {
        let list = Enriched::list(last.registry(), "room:2").await.unwrap();
        !list.is_empty()
    })
    .await;
    let list = Enriched::list(last.registry(), "room:2").await.unwrap();
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

    Hooked::track_owner(first, &web, "room:1", "alice", &device("web")).unwrap();
    eventually("alice joined", || async {
        last_presences("room:1") == counts(&[("alice", 1)])
    })
    .await;
    Hooked::track_owner(first, &phone, "room:1", "alice", &device("phone")).unwrap();
    eventually("alice joined twice", || async {
        last_presences("room:1") == counts(&[("alice", 2)])
    })
    .await;
    Hooked::track_owner(first, &web, "room:2", "bob", &device("web")).unwrap();
    eventually("bob joined room:2", || async {
        last_presences("room:2") == counts(&[("bob", 1)])
    })
    .await;
    let before_update = seen.lock().unwrap().len();
    Hooked::update_owner(first, &web, "room:1", "alice", &device("tv")).unwrap();
    eventually("alice's update", || async {
        let seen = seen.lock().unwrap();
        seen[before_update..]
            .iter()
            .any(|s| s.leaves == ["alice"] && s.presences == counts(&[("alice", 2)]).unwrap())
    })
    .await;
    Hooked::untrack_owner(first, &phone, "room:1", "alice").unwrap();
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
    Hooked::track_owner(first, &carol, "room:1", "carol", &device("web")).unwrap();
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
        RoomPresence::list(last.registry(), "room:1")
            .await
            .unwrap()
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
    Enriched::track_owner(first.registry(), &owner, "room:1", "slow", &device("web")).unwrap();

    // The change reaches the last node well within a second; its fetch takes five.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handle = Enriched::handle(last.registry()).unwrap();
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

    let list = Typed::list(last.registry(), "room:1").await.unwrap();
    assert_eq!(list["alice"].decode_metas::<UserMeta>().unwrap(), [meta]);

    let typing = UserMeta {
        device: "web".to_owned(),
        typing: true,
    };
    Typed::update(&socket, "alice", &typing).unwrap();
    next_diff(&mut diffs).await;
    let entry = Typed::get_by_key(last.registry(), "room:1", "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.decode_metas::<UserMeta>().unwrap(), [typing]);
}
