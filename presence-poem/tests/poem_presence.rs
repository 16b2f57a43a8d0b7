//! Presence on channels, end to end over loopback websockets, with both serializers: the
//! registry reaches channels through `PresenceMiddleware`, channels own what they track,
//! `presence_state` is pushed after the join and `presence_diff` reaches every socket on the
//! topic through the fastlane hub.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use poem::web::Data;
use poem::{EndpointExt, Route, get, handler};
use presence_core::PubSub;
use presence_core::presence::{PresenceHandle, PresenceOptions};
use presence_core::pubsub::Payload;
use presence_core::registry::Registry;
use presence_poem::{
    Channel, ChannelContext, HandleIn, Join, PhoenixSocket, PresenceMiddleware, Reply,
};
use serde_json::{Value, json};

presence_core::pubsub_server!(AppPubSub);

/// Who is in which room; the meta is any JSON value.
#[presence_core::presence(pubsub = AppPubSub, meta = Value, name = "RoomPresence")]
struct RoomPresence;

/// The user a channel tracked.
#[derive(Clone)]
struct User(String);

/// Tracks `params.user` with `{"device": params.device}` in `join` (unless no user is given)
/// and pushes `presence_state`.
struct RoomChannel;

impl Channel for RoomChannel {
    async fn join(&mut self, _topic: &str, params: Value, ctx: &mut ChannelContext) -> Join {
        if let Some(user) = params["user"].as_str() {
            let meta = json!({"device": params["device"]});
            if let Err(e) = RoomPresence::track(ctx, user, &meta) {
                return Join::error(json!({"reason": e.to_string()}));
            }
            ctx.assigns_mut().insert(User(user.to_owned()));
        }
        match ctx.push_presence_state::<RoomPresence>().await {
            Ok(()) => Join::ok(),
            Err(e) => Join::error(json!({"reason": e.to_string()})),
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> HandleIn {
        let Payload::Json(payload) = payload else {
            return HandleIn::NoReply;
        };
        let user = ctx.assigns().get::<User>().map(|u| u.0.clone());
        match (event, user) {
            ("update", Some(user)) => match RoomPresence::update(ctx, &user, &payload) {
                Ok(r) => HandleIn::Reply(Reply::ok(json!({"phx_ref": r.to_string()}))),
                Err(e) => HandleIn::Reply(Reply::error(json!({"reason": e.to_string()}))),
            },
            ("state", _) => match ctx.push_presence_state::<RoomPresence>().await {
                Ok(()) => HandleIn::Reply(Reply::ok(json!({}))),
                Err(e) => HandleIn::Reply(Reply::error(json!({"reason": e.to_string()}))),
            },
            ("crash", _) => panic!("crash requested"),
            _ => HandleIn::Reply(Reply::error(json!({"reason": "unknown event"}))),
        }
    }
}

#[handler]
fn registry_debug(Data(registry): Data<&Registry>) -> String {
    let running = PresenceHandle::<RoomPresence>::from_registry(registry).is_ok();
    format!("presence running: {running}")
}

struct App {
    server: TestServer,
    presence: PresenceHandle<RoomPresence>,
}

async fn app() -> App {
    let registry = Registry::new();
    registry.insert_pubsub(&AppPubSub, PubSub::new("test"));
    let pubsub = registry.pubsub(&AppPubSub).expect("pubsub");
    let presence = PresenceHandle::start(RoomPresence, pubsub.clone(), &PresenceOptions::new())
        .expect("presence");
    registry.insert(presence.clone());
    let socket = PhoenixSocket::builder(pubsub.clone())
        .channel("room:*", || RoomChannel)
        .build();
    let route = Route::new()
        .at("/socket/websocket", socket)
        .at("/registry", get(registry_debug))
        .with(PresenceMiddleware::new(registry));
    App {
        server: serve_app(pubsub, route).await,
        presence,
    }
}

/// A client's view of one topic's presences, kept as phoenix.js keeps it: key → metas, each
/// meta identified by its `phx_ref`.
#[derive(Debug, Default)]
struct View {
    keys: BTreeMap<String, Vec<Value>>,
}

fn metas(entry: &Value) -> Vec<Value> {
    entry["metas"].as_array().expect("metas").clone()
}

fn refs(metas: &[Value]) -> BTreeSet<String> {
    metas
        .iter()
        .map(|m| m["phx_ref"].as_str().expect("phx_ref").to_owned())
        .collect()
}

impl View {
    fn set_state(&mut self, state: &Value) {
        self.keys = state
            .as_object()
            .expect("state object")
            .iter()
            .map(|(k, entry)| (k.clone(), metas(entry)))
            .collect();
    }

    fn all_refs(&self) -> BTreeSet<String> {
        self.keys.values().flat_map(|m| refs(m)).collect()
    }

    /// Whether applying `diff` changes nothing (e.g. our own join, already in the state).
    fn is_noop(&self, diff: &Value) -> bool {
        let known = self.all_refs();
        let joins = diff["joins"].as_object().expect("joins");
        let leaves = diff["leaves"].as_object().expect("leaves");
        joins.values().all(|e| refs(&metas(e)).is_subset(&known))
            && leaves.values().all(|e| refs(&metas(e)).is_disjoint(&known))
    }

    /// `syncDiff`: joins first, then leaves.
    fn apply(&mut self, diff: &Value) {
        for (key, entry) in diff["joins"].as_object().expect("joins") {
            let joined = metas(entry);
            let joined_refs = refs(&joined);
            let current = self.keys.entry(key.clone()).or_default();
            current.retain(|m| !joined_refs.contains(m["phx_ref"].as_str().unwrap_or_default()));
            current.extend(joined);
        }
        for (key, entry) in diff["leaves"].as_object().expect("leaves") {
            let left = refs(&metas(entry));
            if let Some(current) = self.keys.get_mut(key) {
                current.retain(|m| !left.contains(m["phx_ref"].as_str().unwrap_or_default()));
                if current.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
    }

    fn devices(&self, key: &str) -> BTreeSet<String> {
        self.keys
            .get(key)
            .map(|metas| {
                metas
                    .iter()
                    .map(|m| m["device"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A client joined to one presence topic, with its view.
struct Member {
    client: Client,
    topic: String,
    join_ref: String,
    view: View,
    next_ref: u32,
}

impl Member {
    /// Connects with `vsn`, joins `topic` as `user` on `device`, and checks the reply and the
    /// `presence_state` that follows it.
    async fn join(server: &TestServer, vsn: &str, topic: &str, user: &str, device: &str) -> Self {
        let client = Client::connect(server.addr, &format!("vsn={vsn}")).await;
        let mut member = Member {
            client,
            topic: topic.to_owned(),
            join_ref: String::new(),
            view: View::default(),
            next_ref: 1,
        };
        member
            .join_topic(json!({"user": user, "device": device}))
            .await;
        member
    }

    fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    async fn join_topic(&mut self, params: Value) {
        let r = self.next_ref();
        let topic = self.topic.clone();
        let reply = self.client.join(&topic, &r, params).await;
        assert_eq!(reply.event, "phx_reply");
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        self.join_ref = r;
        let state = self.client.recv().await;
        assert_eq!(state.event, "presence_state", "{state:?}");
        assert_eq!(state.topic, self.topic);
        if self.client.v2 {
            assert_eq!(
                state.join_ref,
                json!(self.join_ref),
                "pushed with the join_ref"
            );
        }
        assert_eq!(state.reference, Value::Null, "pushed with a null ref");
        self.view.set_state(&state.payload);
    }

    /// The next `presence_diff` that changes this view (our own join, which may arrive after
    /// the state that already has it, changes nothing and is skipped). Any other frame fails.
    async fn next_diff(&mut self) -> Value {
        loop {
            let frame = self.client.recv().await;
            assert_eq!(frame.event, "presence_diff", "{frame:?}");
            assert_eq!(frame.topic, self.topic);
            assert_eq!(
                (&frame.join_ref, &frame.reference),
                (&Value::Null, &Value::Null),
                "a fastlane broadcast"
            );
            if self.view.is_noop(&frame.payload) {
                continue;
            }
            self.view.apply(&frame.payload);
            return frame.payload;
        }
    }

    /// Sends `event` and returns its reply.
    async fn call(&mut self, event: &str, payload: Value) -> Frame {
        let r = self.next_ref();
        let (topic, join_ref) = (self.topic.clone(), self.join_ref.clone());
        self.client
            .send(Some(&join_ref), Some(&r), &topic, event, payload)
            .await;
        loop {
            let frame = self.client.recv().await;
            if frame.event == "presence_diff" && self.view.is_noop(&frame.payload) {
                continue;
            }
            assert_eq!(frame.event, "phx_reply", "{frame:?}");
            assert_eq!(frame.reference, json!(r));
            return frame;
        }
    }

    /// A barrier: everything sent to this client before has arrived; only no-op diffs may
    /// be among it.
    async fn settle(&mut self) {
        let r = self.next_ref();
        self.client
            .send(None, Some(&r), "phoenix", "heartbeat", json!({}))
            .await;
        loop {
            let frame = self.client.recv().await;
            if frame.event == "phx_reply" && frame.topic == "phoenix" {
                assert_eq!(frame.reference, json!(r));
                return;
            }
            assert_eq!(frame.event, "presence_diff", "{frame:?}");
            assert!(
                self.view.is_noop(&frame.payload),
                "unexpected diff {frame:?}"
            );
        }
    }
}

fn keys_of(payload: &Value) -> Vec<&str> {
    payload
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

async fn server_devices(
    presence: &PresenceHandle<RoomPresence>,
    topic: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    presence
        .list(topic)
        .await
        .into_iter()
        .map(|(key, entry)| {
            let devices = entry
                .raw_metas()
                .iter()
                .map(|m| {
                    m.to_value()["device"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            (key, devices)
        })
        .collect()
}

fn devices(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    pairs
        .iter()
        .map(|(k, ds)| {
            (
                (*k).to_owned(),
                ds.iter().map(|d| (*d).to_owned()).collect(),
            )
        })
        .collect()
}

macro_rules! both_serializers {
    ($($name:ident),* $(,)?) => {
        mod v1 {
            $(#[tokio::test] async fn $name() { super::$name("1.0.0").await })*
        }
        mod v2 {
            $(#[tokio::test] async fn $name() { super::$name("2.0.0").await })*
        }
    };
}

both_serializers!(
    join_pushes_state_and_diffs_reach_the_topic,
    two_devices_under_one_key_and_an_update,
    leave_sends_a_leave_diff,
    socket_close_sends_a_leave_diff,
    crash_leaves_that_channels_presences_only,
    duplicate_join_replaces_the_presence,
);

async fn join_pushes_state_and_diffs_reach_the_topic(vsn: &str) {
    let app = app().await;
    let mut a = Member::join(&app.server, vsn, "room:1", "alice", "phone").await;
    assert_eq!(a.view.devices("alice"), ["phone".to_owned()].into());
    assert_eq!(a.view.keys.len(), 1);

    let mut b = Member::join(&app.server, vsn, "room:1", "bob", "laptop").await;
    assert_eq!(b.view.devices("alice"), ["phone".to_owned()].into());
    assert_eq!(b.view.devices("bob"), ["laptop".to_owned()].into());

    let diff = a.next_diff().await;
    assert_eq!(keys_of(&diff["joins"]), ["bob"]);
    assert_eq!(diff["leaves"], json!({}));
    let bob = &diff["joins"]["bob"]["metas"][0];
    assert_eq!(bob["device"], "laptop");
    assert!(bob["phx_ref"].is_string());
    assert_eq!(a.view.keys, b.view.keys, "both sockets agree");

    // A socket on another topic sees nothing of room:1.
    let mut c = Member::join(&app.server, vsn, "room:2", "carol", "web").await;
    assert_eq!(keys_of(&json!(c.view.keys)), ["carol"]);
    c.settle().await;
    a.settle().await;
    b.settle().await;

    // Outside join, push_presence_state lists and pushes at once, before the reply.
    let r = a.next_ref();
    let join_ref = a.join_ref.clone();
    a.client
        .send(Some(&join_ref), Some(&r), "room:1", "state", json!({}))
        .await;
    let state = a.client.recv().await;
    assert_eq!(state.event, "presence_state");
    assert_eq!(keys_of(&state.payload), ["alice", "bob"]);
    let reply = a.client.recv().await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    assert_eq!(
        server_devices(&app.presence, "room:1").await,
        devices(&[("alice", &["phone"]), ("bob", &["laptop"])])
    );
}

async fn two_devices_under_one_key_and_an_update(vsn: &str) {
    let app = app().await;
    let mut a = Member::join(&app.server, vsn, "room:1", "alice", "phone").await;
    let mut b = Member::join(&app.server, vsn, "room:1", "alice", "web").await;
    assert_eq!(
        b.view.devices("alice"),
        ["phone".to_owned(), "web".to_owned()].into()
    );

    let diff = a.next_diff().await;
    assert_eq!(keys_of(&diff["joins"]), ["alice"]);
    assert_eq!(diff["joins"]["alice"]["metas"].as_array().unwrap().len(), 1);
    assert_eq!(
        a.view.devices("alice"),
        ["phone".to_owned(), "web".to_owned()].into()
    );
    let old_ref = diff["joins"]["alice"]["metas"][0]["phx_ref"].clone();
    b.settle().await;

    // An update is one diff: the new meta (with phx_ref_prev) joins, the old one leaves.
    let reply = b.call("update", json!({"device": "tablet"})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let new_ref = reply.payload["response"]["phx_ref"].clone();
    let diff = a.next_diff().await;
    let joined = &diff["joins"]["alice"]["metas"];
    let left = &diff["leaves"]["alice"]["metas"];
    assert_eq!(joined.as_array().unwrap().len(), 1, "{diff}");
    assert_eq!(left.as_array().unwrap().len(), 1, "{diff}");
    assert_eq!(joined[0]["device"], "tablet");
    assert_eq!(joined[0]["phx_ref"], new_ref);
    assert_eq!(joined[0]["phx_ref_prev"], old_ref);
    assert_eq!(left[0]["device"], "web");
    assert_eq!(left[0]["phx_ref"], old_ref);
    assert_eq!(
        a.view.devices("alice"),
        ["phone".to_owned(), "tablet".to_owned()].into()
    );
    let diff = b.next_diff().await;
    assert_eq!(diff["joins"]["alice"]["metas"][0]["phx_ref"], new_ref);
    assert_eq!(a.view.keys, b.view.keys);
    assert_eq!(
        server_devices(&app.presence, "room:1").await,
        devices(&[("alice", &["phone", "tablet"])])
    );
}

async fn leave_sends_a_leave_diff(vsn: &str) {
    let app = app().await;
    let mut a = Member::join(&app.server, vsn, "room:1", "alice", "phone").await;
    let mut b = Member::join(&app.server, vsn, "room:1", "bob", "laptop").await;
    assert_eq!(keys_of(&a.next_diff().await["joins"]), ["bob"]);
    b.settle().await;

    let reply = b.call("phx_leave", json!({})).await;
    assert_eq!(reply.payload["status"], "ok");
    let close = b.client.recv().await;
    assert_eq!(close.event, "phx_close");

    let diff = a.next_diff().await;
    assert_eq!(diff["joins"], json!({}));
    assert_eq!(keys_of(&diff["leaves"]), ["bob"]);
    assert_eq!(diff["leaves"]["bob"]["metas"][0]["device"], "laptop");
    assert_eq!(keys_of(&json!(a.view.keys)), ["alice"]);
    assert_eq!(
        server_devices(&app.presence, "room:1").await,
        devices(&[("alice", &["phone"])])
    );
    // b's socket is still up, and left the topic: it gets no more diffs.
    b.client.heartbeat("99").await;
}

async fn socket_close_sends_a_leave_diff(vsn: &str) {
    let app = app().await;
    let mut a = Member::join(&app.server, vsn, "room:1", "alice", "phone").await;
    let mut b = Member::join(&app.server, vsn, "room:1", "bob", "laptop").await;
    assert_eq!(keys_of(&a.next_diff().await["joins"]), ["bob"]);

    b.client.ws.close(None).await.expect("close");
    drop(b);

    let diff = a.next_diff().await;
    assert_eq!(keys_of(&diff["leaves"]), ["bob"]);
    assert_eq!(
        server_devices(&app.presence, "room:1").await,
        devices(&[("alice", &["phone"])])
    );
}

/// The next frame on `client` that is not a `presence_diff`.
async fn next_non_diff(client: &mut Client) -> Frame {
    loop {
        let frame = client.recv().await;
        if frame.event != "presence_diff" {
            return frame;
        }
    }
}

/// Joins `topic` on a raw client and checks the reply and the state that follows it.
async fn raw_join(client: &mut Client, topic: &str, r: &str, params: Value) -> Value {
    client
        .send(Some(r), Some(r), topic, "phx_join", params)
        .await;
    let reply = next_non_diff(client).await;
    assert_eq!(
        (reply.event.as_str(), reply.topic.as_str()),
        ("phx_reply", topic)
    );
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let state = next_non_diff(client).await;
    assert_eq!(
        (state.event.as_str(), state.topic.as_str()),
        ("presence_state", topic)
    );
    state.payload
}

async fn crash_leaves_that_channels_presences_only(vsn: &str) {
    let app = app().await;
    let mut a1 = Member::join(&app.server, vsn, "room:1", "alice", "phone").await;
    let mut a2 = Member::join(&app.server, vsn, "room:2", "alice", "phone").await;
    // carol joins both rooms on one socket: two channels, each the owner of its presence.
    let mut carol = Client::connect(app.server.addr, &format!("vsn={vsn}")).await;
    let params = json!({"user": "carol", "device": "web"});
    let state = raw_join(&mut carol, "room:1", "1", params.clone()).await;
    assert_eq!(keys_of(&state), ["alice", "carol"]);
    let state = raw_join(&mut carol, "room:2", "2", params).await;
    assert_eq!(keys_of(&state), ["alice", "carol"]);
    assert_eq!(keys_of(&a1.next_diff().await["joins"]), ["carol"]);
    assert_eq!(keys_of(&a2.next_diff().await["joins"]), ["carol"]);

    carol
        .send(Some("1"), Some("3"), "room:1", "crash", json!({}))
        .await;
    let error = next_non_diff(&mut carol).await;
    assert_eq!(
        (error.event.as_str(), error.topic.as_str()),
        ("phx_error", "room:1")
    );

    // The crashed channel's presence leaves room:1...
    let diff = a1.next_diff().await;
    assert_eq!(keys_of(&diff["leaves"]), ["carol"]);
    assert_eq!(diff["joins"], json!({}));
    assert_eq!(keys_of(&json!(a1.view.keys)), ["alice"]);
    // ...and the other channel's stays in room:2, on the server and for its sockets.
    assert_eq!(
        server_devices(&app.presence, "room:2").await,
        devices(&[("alice", &["phone"]), ("carol", &["web"])])
    );
    a2.settle().await;
    assert_eq!(keys_of(&json!(a2.view.keys)), ["alice", "carol"]);
    // carol's socket and its room:2 channel go on.
    carol
        .send(Some("2"), Some("4"), "room:2", "state", json!({}))
        .await;
    let state = next_non_diff(&mut carol).await;
    assert_eq!(state.event, "presence_state");
    assert_eq!(keys_of(&state.payload), ["alice", "carol"]);
    let reply = next_non_diff(&mut carol).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
}

async fn duplicate_join_replaces_the_presence(vsn: &str) {
    let app = app().await;
    let mut a = Member::join(&app.server, vsn, "room:1", "alice", "phone").await;
    let mut b = Member::join(&app.server, vsn, "room:1", "bob", "laptop").await;
    assert_eq!(keys_of(&a.next_diff().await["joins"]), ["bob"]);
    b.settle().await;

    // bob joins again on the same socket (as phoenix.js does after a rejoin without a leave):
    // the old channel closes and its presence leaves; the new one tracks a new meta.
    let r = b.next_ref();
    let old_join_ref = b.join_ref.clone();
    let topic = b.topic.clone();
    b.client
        .send(
            Some(&r),
            Some(&r),
            &topic,
            "phx_join",
            json!({"user": "bob", "device": "desktop"}),
        )
        .await;
    let close = next_non_diff(&mut b.client).await;
    assert_eq!(close.event, "phx_close");
    if b.client.v2 {
        assert_eq!(close.join_ref, json!(old_join_ref));
    }
    let reply = next_non_diff(&mut b.client).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let state = next_non_diff(&mut b.client).await;
    assert_eq!(state.event, "presence_state");

    // a sees the old meta leave and the new one join (in one diff or two).
    while a.view.devices("bob") != ["desktop".to_owned()].into() {
        a.next_diff().await;
    }
    assert_eq!(
        server_devices(&app.presence, "room:1").await,
        devices(&[("alice", &["phone"]), ("bob", &["desktop"])])
    );
}

#[tokio::test]
async fn without_the_middleware_presence_helpers_say_so() {
    let pubsub = PubSub::new("test");
    let socket = PhoenixSocket::builder(pubsub.clone())
        .channel("room:*", || RoomChannel)
        .build();
    let server = serve(pubsub, socket).await;
    let mut c = Client::v2(server.addr).await;
    let reply = c
        .join("room:1", "1", json!({"user": "alice", "device": "phone"}))
        .await;
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("PresenceMiddleware") && !reason.contains("not running"),
        "the error names the fix: {reason}"
    );
}

#[tokio::test]
async fn handlers_extract_the_registry_as_data() {
    let app = app().await;
    let (_, body) = http_get(app.server.addr, "/registry").await;
    assert!(body.ends_with("presence running: true"), "{body}");
}
