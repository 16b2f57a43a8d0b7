//! Big rooms over loopback websockets: presence diffs merged within the presence's window and
//! kept in order with other broadcasts, slow readers served with merged diffs instead of being
//! closed, a client that stops reading closed at its byte budget without touching its
//! neighbour, and count-only channels.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use poem::listener::TcpAcceptor;
use poem::{EndpointExt, Route};
use presence_core::presence::{PresenceHandle, PresenceOptions};
use presence_core::pubsub::Message;
use presence_core::registry::Registry;
use presence_core::{Owner, PubSub};
use presence_poem::{Channel, ChannelContext, Join, PhoenixSocket, PresenceMiddleware};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message as WsMessage;

presence_core::pubsub_server!(AppPubSub);

#[presence_core::presence(pubsub = AppPubSub, meta = Value, name = "BigPresence")]
struct BigPresence;

const TOPIC: &str = "room:big";

/// Joins without tracking; pushes the state, or counts above `params.counts_above`.
struct Watcher;

impl Channel for Watcher {
    async fn join(&mut self, _topic: &str, params: Value, ctx: &mut ChannelContext) -> Join {
        let pushed = match params["counts_above"].as_u64() {
            Some(above) => {
                if let Some(user) = params["user"].as_str() {
                    let _ = BigPresence::track(ctx, user, &json!({}));
                }
                ctx.push_presence_count::<BigPresence>(above as usize).await
            }
            None => ctx.push_presence_state::<BigPresence>().await,
        };
        match pushed {
            Ok(()) => Join::ok(),
            Err(e) => Join::error(json!({"reason": e.to_string()})),
        }
    }
}

struct Room {
    server: TestServer,
    presence: PresenceHandle<BigPresence>,
    _registry: Registry,
}

/// A server whose presence merges diffs within `window`, with outbound queues of `frames` and
/// `bytes`. With `small_buffers`, accepted sockets have small kernel send buffers, so that a
/// client that does not read fills the server's queue quickly.
async fn room(window: Duration, frames: usize, bytes: usize, small_buffers: bool) -> Room {
    let pubsub = PubSub::new("big");
    let registry = Registry::new();
    registry.insert_pubsub(&AppPubSub, pubsub.clone());
    let presence = PresenceHandle::start(
        BigPresence,
        pubsub.clone(),
        &PresenceOptions::new().diff_window(window),
    )
    .expect("presence starts");
    registry.insert(presence.clone());
    let socket = PhoenixSocket::builder(pubsub.clone())
        .channel("room:*", || Watcher)
        .outbound_capacity(frames)
        .outbound_budget(bytes)
        .build();
    let app = Route::new()
        .at("/socket/websocket", socket)
        .with(PresenceMiddleware::new(registry.clone()));
    let listener = TcpSocket::new_v4().expect("socket");
    if small_buffers {
        // Inherited by accepted sockets.
        listener.set_send_buffer_size(4096).expect("SO_SNDBUF");
    }
    listener
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let acceptor =
        TcpAcceptor::from_tokio(listener.listen(1024).expect("listen")).expect("acceptor");
    Room {
        server: serve_on(acceptor, pubsub, app),
        presence,
        _registry: registry,
    }
}

/// What a phoenix.js client shows: key to the refs of its metas (diffs before the state wait
/// for it; joins, then leaves).
#[derive(Default)]
struct View {
    synced: bool,
    pending: Vec<Value>,
    keys: BTreeMap<String, BTreeSet<String>>,
    diffs: usize,
}

impl View {
    fn refs(entry: &Value) -> BTreeSet<String> {
        entry["metas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
            .collect()
    }

    fn apply(&mut self, frame: &Frame) {
        match frame.event.as_str() {
            "presence_state" => {
                self.keys = frame
                    .payload
                    .as_object()
                    .expect("a state object")
                    .iter()
                    .map(|(k, e)| (k.clone(), Self::refs(e)))
                    .collect();
                self.synced = true;
                for diff in std::mem::take(&mut self.pending) {
                    self.sync_diff(&diff);
                }
            }
            "presence_diff" => {
                self.diffs += 1;
                if self.synced {
                    self.sync_diff(&frame.payload);
                } else {
                    self.pending.push(frame.payload.clone());
                }
            }
            _ => {}
        }
    }

    fn sync_diff(&mut self, diff: &Value) {
        for (key, entry) in diff["joins"].as_object().expect("joins") {
            self.keys
                .entry(key.clone())
                .or_default()
                .extend(Self::refs(entry));
        }
        for (key, entry) in diff["leaves"].as_object().expect("leaves") {
            if let Some(refs) = self.keys.get_mut(key) {
                for r in Self::refs(entry) {
                    refs.remove(&r);
                }
                if refs.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
    }

    fn key_set(&self) -> BTreeSet<String> {
        self.keys.keys().cloned().collect()
    }
}

/// Connects and joins `TOPIC` without tracking; returns the client and its view after the
/// join reply.
async fn watcher(client: Client) -> (Client, View) {
    let mut client = client;
    client.join_ok(TOPIC, "1").await;
    (client, View::default())
}

fn users(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("u{i}")).collect()
}

#[tokio::test]
async fn diffs_merge_within_the_window_and_keep_their_order_with_other_broadcasts() {
    let room = room(Duration::from_secs(2), 256, 8 << 20, false).await;
    let (mut client, mut view) = watcher(Client::v2(room.server.addr).await).await;
    let state = client.recv().await;
    view.apply(&state);
    assert_eq!(state.event, "presence_state");

    let owners: Vec<Owner> = (0..51).map(|_| Owner::new()).collect();
    // The first diff after a quiet period goes out at once.
    room.presence
        .track(&owners[0], TOPIC, "u0", &json!({}))
        .unwrap();
    let first = client.recv().await;
    assert_eq!(first.event, "presence_diff");
    view.apply(&first);
    // The next 49 come within the window: held and merged...
    for (i, owner) in owners.iter().enumerate().take(50).skip(1) {
        room.presence
            .track(owner, TOPIC, &format!("u{i}"), &json!({}))
            .unwrap();
    }
    room.presence.settled().await;
    // ...until another broadcast on the topic, which goes out after them.
    room.server
        .pubsub
        .broadcast(Message::json(TOPIC, "new_msg", json!({"body": "hi"})))
        .unwrap();
    let merged = client.recv().await;
    assert_eq!(merged.event, "presence_diff", "{merged:?}");
    assert_eq!(merged.payload["joins"].as_object().unwrap().len(), 49);
    view.apply(&merged);
    assert_eq!(client.recv().await.event, "new_msg");
    assert_eq!(view.key_set(), users(0..50));
    // A diff held with nothing behind it goes out when the window ends.
    room.presence
        .track(&owners[50], TOPIC, "u50", &json!({}))
        .unwrap();
    let late = tokio::time::timeout(Duration::from_secs(10), client.recv())
        .await
        .expect("the held diff is flushed by the window");
    view.apply(&late);
    assert_eq!(view.key_set(), users(0..51));
    assert_eq!(view.diffs, 3, "51 joins, 3 diffs");
}

#[tokio::test]
async fn joiners_of_one_window_share_a_listing_and_each_sees_its_own_join() {
    let room = room(Duration::from_millis(300), 256, 8 << 20, false).await;
    let owners: Vec<Owner> = (0..20).map(|_| Owner::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        room.presence
            .track(owner, TOPIC, &format!("u{i}"), &json!({}))
            .unwrap();
    }
    // 30 sockets join at once, each tracking itself.
    let mut joins = Vec::new();
    for i in 0..30 {
        let addr = room.server.addr;
        joins.push(tokio::spawn(async move {
            let mut client = Client::v2(addr).await;
            let reply = client
                .join(
                    TOPIC,
                    "1",
                    json!({"user": format!("j{i}"), "counts_above": 1_000_000}),
                )
                .await;
            assert_eq!(reply.payload["status"], "ok");
            let mut view = View::default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !(view.synced && view.keys.contains_key(&format!("j{i}"))) {
                let frame = tokio::time::timeout_at(deadline, client.recv())
                    .await
                    .expect("state and own join in time");
                view.apply(&frame);
            }
            (client, view)
        }));
    }
    let mut clients = Vec::new();
    for join in joins {
        clients.push(join.await.expect("a joiner"));
    }
    // Everyone converges on the same 50 keys.
    let expected: BTreeSet<String> = users(0..20)
        .into_iter()
        .chain((0..30).map(|i| format!("j{i}")))
        .collect();
    for (client, view) in &mut clients {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while view.key_set() != expected {
            let frame = tokio::time::timeout_at(deadline, client.recv())
                .await
                .expect("converges");
            view.apply(&frame);
        }
    }
}

#[tokio::test]
async fn a_slow_reader_gets_merged_diffs_and_is_never_closed() {
    // No merging at the hub: every change is its own diff, far more than the 64-frame queue.
    let room = room(Duration::ZERO, 64, 8 << 20, true).await;
    let (mut slow, mut view) =
        watcher(Client::with_small_recv_buffer(room.server.addr).await).await;
    let pad = "x".repeat(1024);
    let mut owners = Vec::new();
    for i in 0..3000 {
        let owner = Owner::new();
        room.presence
            .track(&owner, TOPIC, &format!("u{i}"), &json!({ "pad": pad }))
            .unwrap();
        owners.push(owner);
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Half of them leave again.
    owners.truncate(1500);
    room.presence.settled().await;
    // Read one frame per 10 ms until the view has converged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut frames = 0;
    while !(view.synced && view.key_set() == users(0..1500)) {
        let message = tokio::time::timeout_at(deadline, slow.ws.next())
            .await
            .expect("converges within 60 s");
        match message {
            Some(Ok(WsMessage::Text(text))) => {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                let frame = Frame {
                    join_ref: value[0].clone(),
                    reference: value[1].clone(),
                    topic: value[2].as_str().unwrap_or_default().to_owned(),
                    event: value[3].as_str().unwrap_or_default().to_owned(),
                    payload: value[4].clone(),
                };
                view.apply(&frame);
            }
            other => panic!("the slow reader was closed or failed: {other:?}"),
        }
        frames += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        frames < 2000,
        "the 4500 changes came merged into fewer frames ({frames})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_its_budget_and_its_neighbour_is_untouched() {
    let room = room(Duration::ZERO, 100_000, 512 << 10, true).await;
    let (stuck, _) = watcher(Client::with_small_recv_buffer(room.server.addr).await).await;
    let mut stuck = Some(stuck);
    let mut stuck_reader = None;
    let (mut neighbour, mut view) = watcher(Client::v2(room.server.addr).await).await;
    // The neighbour reports how many keys it lists, so that the joins are paced by its
    // reading (not by the clock): it never falls a whole byte budget behind, however slow
    // the machine, while the stuck client's queue only grows.
    let (listed_tx, mut listed) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        while !(view.synced && view.key_set() == users(0..2000)) {
            let frame = neighbour.recv().await;
            view.apply(&frame);
            listed_tx.send_replace(view.keys.len());
        }
        neighbour
    });
    let pad = "x".repeat(1024);
    let mut owners = Vec::new();
    for i in 0..2000 {
        let owner = Owner::new();
        room.presence
            .track(&owner, TOPIC, &format!("u{i}"), &json!({ "pad": pad }))
            .unwrap();
        owners.push(owner);
        // At most 100 joins (about 100 KB of diffs) ahead of the neighbour.
        if i % 100 == 99 {
            tokio::time::timeout(DEADLINE, listed.wait_for(|&n| n + 100 > i))
                .await
                .expect("the neighbour keeps reading")
                .expect("the neighbour's reader runs");
        }
        // By now the neighbour has read 900 diffs of about 1 KB: the stuck client's queue
        // got them too and passed its 512 KiB budget. It reads from here on, so that the
        // server can write the close frame within its shutdown timeout.
        if i == 999 {
            let mut stuck = stuck.take().expect("once");
            stuck_reader = Some(tokio::spawn(async move { stuck.closed().await }));
        }
    }
    let mut neighbour = reader.await.expect("the neighbour's reader");
    // The neighbour is still connected: a heartbeat is answered.
    assert_eq!(neighbour.heartbeat("9").await.event, "phx_reply");
    // The stuck client, reading at last, finds the server closed it with 1013.
    let close = tokio::time::timeout(Duration::from_secs(30), stuck_reader.expect("spawned"))
        .await
        .expect("closed in time")
        .expect("the stuck client's reader");
    assert_eq!(close_code(close), 1013);
}

#[tokio::test]
async fn count_only_channels_get_counts_instead_of_lists_above_their_threshold() {
    let room = room(Duration::from_millis(20), 256, 8 << 20, false).await;
    let join = |user: &str, above: u64| json!({"user": user, "counts_above": above});
    // Below the threshold: a list, then diffs.
    let mut lister = Client::v2(room.server.addr).await;
    assert_eq!(
        lister.join(TOPIC, "1", join("a", 2)).await.payload["status"],
        "ok"
    );
    let mut lister_view = View::default();
    lister_view.apply(&lister.recv().await);
    assert!(lister_view.synced, "a presence_state first");
    let mut b = Client::v2(room.server.addr).await;
    assert_eq!(
        b.join(TOPIC, "1", join("b", 2)).await.payload["status"],
        "ok"
    );
    // Above it (a, b and c make 3 > 2): counts.
    let mut counter = Client::v2(room.server.addr).await;
    assert_eq!(
        counter.join(TOPIC, "1", join("c", 2)).await.payload["status"],
        "ok"
    );
    let first = counter.recv().await;
    assert_eq!(first.event, "presence_count", "{first:?}");
    assert_eq!(first.payload, json!({"keys": 3, "metas": 3}));
    let mut d = Client::v2(room.server.addr).await;
    assert_eq!(
        d.join(TOPIC, "1", join("d", 2)).await.payload["status"],
        "ok"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, counter.recv())
            .await
            .expect("a count with d");
        assert_ne!(
            frame.event, "presence_diff",
            "count-only channels get no diffs"
        );
        if frame.event == "presence_count" && frame.payload["keys"] == 4 {
            break;
        }
    }
    drop(d);
    loop {
        let frame = tokio::time::timeout_at(deadline, counter.recv())
            .await
            .expect("a count without d");
        assert_ne!(frame.event, "presence_diff");
        if frame.event == "presence_count" && frame.payload["keys"] == 3 {
            break;
        }
    }
    // The lister saw everyone by diffs.
    while lister_view.key_set() != ["a", "b", "c"].map(str::to_owned).into() {
        let frame = tokio::time::timeout_at(deadline, lister.recv())
            .await
            .expect("the lister converges");
        assert_ne!(frame.event, "presence_count");
        lister_view.apply(&frame);
    }
    drop(b);
}

/// As in Phoenix (which subscribes before it tracks), a socket always receives the
/// `presence_diff` of its own join, after its join reply.
#[tokio::test]
async fn the_joining_socket_always_receives_the_diff_of_its_own_join() {
    let room = room(Duration::from_millis(50), 256, 8 << 20, false).await;
    for run in 0..20 {
        let topic = format!("room:own-{run}");
        let mut client = Client::v2(room.server.addr).await;
        let reply = client
            .join(
                &topic,
                "1",
                json!({"user": "me", "counts_above": 1_000_000}),
            )
            .await;
        assert_eq!(reply.event, "phx_reply", "run {run}: the reply comes first");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let frame = tokio::time::timeout_at(deadline, client.recv())
                .await
                .unwrap_or_else(|_| panic!("run {run}: no diff of its own join"));
            if frame.event == "presence_diff" && frame.payload["joins"].get("me").is_some() {
                break;
            }
        }
    }
}

/// A client flooding a presence room (default limits) is refused and closed with 1008; a
/// neighbour in the room gets a newcomer's presence_diff as usual meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_in_a_room_does_not_delay_its_presence_diffs() {
    let room = room(Duration::from_millis(50), 256, 8 << 20, false).await;
    let join = |user: &str| json!({"user": user, "counts_above": 1_000_000});
    let mut flooder = Client::v2(room.server.addr).await;
    assert_eq!(
        flooder.join(TOPIC, "1", join("flooder")).await.payload["status"],
        "ok"
    );
    let mut neighbour = Client::v2(room.server.addr).await;
    assert_eq!(
        neighbour.join(TOPIC, "1", join("neighbour")).await.payload["status"],
        "ok"
    );
    // The flooder reads what it is sent (refusals included) while it floods.
    let (mut sink, mut stream) = flooder.ws.split();
    let reader = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    });
    for i in 0..1000 {
        let frame = json!(["1", (i + 2).to_string(), TOPIC, "chatter", {"i": i}]);
        if sink.send(WsMessage::text(frame.to_string())).await.is_err() {
            break;
        }
    }
    let sent = tokio::time::Instant::now();
    let mut newcomer = Client::v2(room.server.addr).await;
    assert_eq!(
        newcomer.join(TOPIC, "1", join("newcomer")).await.payload["status"],
        "ok"
    );
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), neighbour.recv())
            .await
            .expect("the neighbour gets the newcomer's diff");
        if frame.event == "presence_diff" && frame.payload["joins"].get("newcomer").is_some() {
            break;
        }
    }
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    let close = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the flooder is closed")
        .expect("its reader");
    assert_eq!(close_code(close), 1008);
}

#[tokio::test]
async fn a_big_presence_state_goes_out_in_fragments_of_2_kib() {
    // Every frame a socket writes passes through tungstenite's write buffer, which keeps its
    // largest size for the socket's life; so a big room's `presence_state` goes out in
    // fragments, and a client that refuses frames over 2 KiB still receives it whole.
    let room = room(Duration::from_millis(20), 256, 8 << 20, false).await;
    let owners: Vec<Owner> = (0..300).map(|_| Owner::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        room.presence
            .track(
                owner,
                TOPIC,
                &format!("u{i}"),
                &json!({"pad": "x".repeat(40)}),
            )
            .expect("tracked");
    }
    let (mut client, mut view) =
        watcher(Client::with_max_frame(room.server.addr, 2048).await).await;
    let state = client.recv().await;
    assert_eq!(state.event, "presence_state");
    assert!(
        state.payload.to_string().len() > 5 * 2048,
        "the state is several fragments long"
    );
    view.apply(&state);
    assert_eq!(view.key_set(), users(0..300));
}
