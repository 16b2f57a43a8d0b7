//! Wiring mistakes are reported, not silent: a socket no registry reached (no
//! `PresenceMiddleware`) and a socket on another pub/sub than its presence's get errors that
//! name the fix; `PhoenixSocket::builder_for` takes the right pub/sub from the registry; and the
//! `PresenceData` extractor hands HTTP handlers a running presence, or answers 500.

mod common;

use common::*;
use poem::web::Path;
use poem::{EndpointExt, Route, get, handler};
use presence_core::presence::{PresenceError, PresenceHandle, PresenceOptions};
use presence_core::registry::{Registry, RegistryError};
use presence_core::{Owner, PubSub};
use presence_poem::{
    Channel, ChannelContext, HandleIn, Join, Payload, PhoenixSocket, PresenceData,
    PresenceMiddleware,
};
use serde_json::{Value, json};

presence_core::pubsub_server!(AppPubSub);

#[presence_core::presence(pubsub = AppPubSub, meta = Value, name = "WiringPresence")]
struct RoomPresence;

/// Pushes the presence state (`room:*`) or count (`count:*`) in `join`, refusing the join
/// with the error's text; `state` does the same later, in `handle_in`.
struct RoomChannel;

impl Channel for RoomChannel {
    async fn join(&mut self, topic: &str, _: Value, ctx: &mut ChannelContext) -> Join {
        let pushed = if topic.starts_with("count:") {
            ctx.push_presence_count::<RoomPresence>(10).await
        } else {
            ctx.push_presence_state::<RoomPresence>().await
        };
        match pushed {
            Ok(()) => Join::ok(),
            Err(e) => Join::error(json!({"reason": e.to_string()})),
        }
    }

    async fn handle_in(&mut self, event: &str, _: Payload, ctx: &mut ChannelContext) -> HandleIn {
        match (event, ctx.push_presence_state::<RoomPresence>().await) {
            ("state", Ok(())) => HandleIn::ok(json!({})),
            ("state", Err(e)) => HandleIn::error(json!({"reason": e.to_string()})),
            _ => HandleIn::NoReply,
        }
    }
}

/// Tracks the joiner through the generated socket helper, refusing the join with its error.
struct Tracking;

impl Channel for Tracking {
    async fn join(&mut self, _: &str, _: Value, ctx: &mut ChannelContext) -> Join {
        match RoomPresence::track(ctx, "alice", &json!({})) {
            Ok(_) => Join::ok(),
            Err(e) => Join::error(json!({"reason": e.to_string()})),
        }
    }
}

/// A channel that joins without presence, to reach `handle_in` on any socket.
struct Plain;

impl Channel for Plain {
    async fn join(&mut self, _: &str, _: Value, _: &mut ChannelContext) -> Join {
        Join::ok()
    }

    async fn handle_in(&mut self, _: &str, _: Payload, ctx: &mut ChannelContext) -> HandleIn {
        match ctx.push_presence_state::<RoomPresence>().await {
            Ok(()) => HandleIn::ok(json!({})),
            Err(e) => HandleIn::error(json!({"reason": e.to_string()})),
        }
    }
}

/// A registry with `AppPubSub` (node `app`) and the presence running on it.
fn registry() -> (Registry, PresenceHandle<RoomPresence>) {
    let registry = Registry::new();
    registry.insert_pubsub(&AppPubSub, PubSub::new("app"));
    let pubsub = registry.pubsub(&AppPubSub).expect("pubsub");
    let presence =
        PresenceHandle::start(RoomPresence, pubsub, &PresenceOptions::new()).expect("presence");
    registry.insert(presence.clone());
    (registry, presence)
}

fn reason(frame: &Frame) -> &Value {
    assert_eq!(frame.event, "phx_reply", "{frame:?}");
    assert_eq!(frame.payload["status"], "error", "{frame:?}");
    &frame.payload["response"]["reason"]
}

#[tokio::test]
async fn without_presence_middleware_presence_use_names_the_middleware() {
    let (_registry, _presence) = registry();
    let pubsub = PubSub::new("app");
    let socket = PhoenixSocket::builder(pubsub.clone())
        .channel("room:*", || RoomChannel)
        .channel("count:*", || RoomChannel)
        .channel("plain:*", || Plain)
        .channel("track:*", || Tracking)
        .build();
    // Nested, but not wrapped in `PresenceMiddleware`.
    let server = serve_app(pubsub, Route::new().nest("/socket", socket)).await;
    let mut client = Client::v2(server.addr).await;
    let expected = "no registry reached this socket: wrap the routes in \
                    `presence_poem::PresenceMiddleware::new(registry)`";
    assert_eq!(RegistryError::NoRegistry.to_string(), expected);

    let reply = client.join("room:1", "1", json!({})).await;
    assert_eq!(reason(&reply), expected);
    let reply = client.join("count:1", "2", json!({})).await;
    assert_eq!(reason(&reply), expected);
    // The generated helpers say the same, not "not running".
    let reply = client.join("track:1", "5", json!({})).await;
    assert_eq!(reason(&reply), expected);
    // Outside `join` too.
    client.join_ok("plain:1", "3").await;
    client
        .send(Some("3"), Some("4"), "plain:1", "state", json!({}))
        .await;
    assert_eq!(reason(&client.recv().await), expected);
}

#[tokio::test]
async fn a_socket_on_another_pubsub_than_the_presence_is_refused_naming_both() {
    let (registry, _presence) = registry();
    // Another pub/sub: the presence's diffs would never reach this socket.
    let other = PubSub::new("other");
    let socket = PhoenixSocket::builder(other.clone())
        .channel("room:*", || RoomChannel)
        .channel("count:*", || RoomChannel)
        .build();
    let app = Route::new()
        .nest("/socket", socket)
        .with(PresenceMiddleware::new(registry));
    let server = serve_app(other, app).await;
    let mut client = Client::v2(server.addr).await;
    let expected = RegistryError::PubSubMismatch {
        presence: "WiringPresence",
        presence_pubsub: "app".to_owned(),
        socket_pubsub: "other".to_owned(),
    };
    let text = expected.to_string();
    for needle in ["WiringPresence", "`app`", "`other`", "builder_for"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    for (topic, r) in [("room:1", "1"), ("count:1", "2")] {
        let reply = client.join(topic, r, json!({})).await;
        assert_eq!(reason(&reply), &json!(text), "{topic}");
    }
}

#[tokio::test]
async fn a_pubsub_of_the_same_node_name_is_still_another_pubsub() {
    let (registry, _presence) = registry();
    let twin = PubSub::new("app");
    let socket = PhoenixSocket::builder(twin.clone())
        .channel("room:*", || RoomChannel)
        .build();
    let app = Route::new()
        .nest("/socket", socket)
        .with(PresenceMiddleware::new(registry));
    let server = serve_app(twin, app).await;
    let mut client = Client::v2(server.addr).await;
    let reply = client.join("room:1", "1", json!({})).await;
    let reason = reason(&reply).as_str().expect("a reason");
    assert!(reason.contains("another pub/sub"), "{reason}");
}

#[tokio::test]
async fn builder_for_builds_on_the_presences_pubsub_and_diffs_arrive() {
    let (registry, presence) = registry();
    let socket = PhoenixSocket::builder_for(&registry, &AppPubSub)
        .expect("pubsub running")
        .channel("room:*", || RoomChannel)
        .build();
    let pubsub = registry.pubsub(&AppPubSub).expect("pubsub");
    let app = Route::new()
        .nest("/socket", socket)
        .with(PresenceMiddleware::new(registry));
    let server = serve_app(pubsub, app).await;
    let mut client = Client::v2(server.addr).await;
    client.join_ok("room:1", "1").await;
    let state = client.recv().await;
    assert_eq!(state.event, "presence_state");
    assert_eq!(state.payload, json!({}));
    let owner = Owner::new();
    presence
        .track(&owner, "room:1", "alice", &json!({}))
        .expect("track");
    let diff = client.recv().await;
    assert_eq!(diff.event, "presence_diff");
    assert!(diff.payload["joins"]["alice"].is_object(), "{diff:?}");

    assert_eq!(
        PhoenixSocket::builder_for(&Registry::new(), &AppPubSub).err(),
        Some(RegistryError::PubSubNotRunning("AppPubSub"))
    );
    // A presence error carries it as `PresenceError::Registry`.
    let wrapped: PresenceError = RegistryError::NoRegistry.into();
    assert!(matches!(
        wrapped,
        PresenceError::Registry(RegistryError::NoRegistry)
    ));
}

/// `GET /rooms/<room>/count`: the room's users, from the extractor.
#[handler]
fn count(PresenceData(rooms): PresenceData<RoomPresence>, Path(room): Path<String>) -> String {
    rooms.count(&format!("room:{room}")).keys.to_string()
}

/// `GET /rooms/<room>/metas`.
#[handler]
fn metas(PresenceData(rooms): PresenceData<RoomPresence>, Path(room): Path<String>) -> String {
    rooms.count(&format!("room:{room}")).metas.to_string()
}

fn rooms() -> Route {
    Route::new()
        .at("/rooms/:room/count", get(count))
        .at("/rooms/:room/metas", get(metas))
}

#[tokio::test]
async fn presence_data_extracts_the_running_presence() {
    let (registry, presence) = registry();
    let pubsub = registry.pubsub(&AppPubSub).expect("pubsub");
    let server = serve_app(pubsub, rooms().with(PresenceMiddleware::new(registry))).await;
    assert_eq!(
        http_get(server.addr, "/rooms/lobby/count").await,
        (200, "0".to_owned())
    );
    let (phone, laptop) = (Owner::new(), Owner::new());
    presence
        .track(&phone, "room:lobby", "alice", &json!({}))
        .expect("track");
    presence
        .track(&laptop, "room:lobby", "alice", &json!({}))
        .expect("track");
    assert_eq!(
        http_get(server.addr, "/rooms/lobby/count").await,
        (200, "1".to_owned())
    );
    assert_eq!(
        http_get(server.addr, "/rooms/lobby/metas").await,
        (200, "2".to_owned())
    );
    // It derefs to the handle.
    let data = PresenceData(presence);
    assert_eq!(data.count("room:lobby").metas, 2);
}

#[tokio::test]
async fn presence_data_without_middleware_or_presence_is_a_500_without_details() {
    // No middleware: no registry in the request.
    let server = serve_app(PubSub::new("app"), rooms()).await;
    assert_eq!(
        http_get(server.addr, "/rooms/lobby/count").await,
        (500, String::new())
    );
    // A registry without the presence.
    let registry = Registry::new();
    registry.insert_pubsub(&AppPubSub, PubSub::new("app"));
    let server = serve_app(
        PubSub::new("app"),
        rooms().with(PresenceMiddleware::new(registry)),
    )
    .await;
    assert_eq!(
        http_get(server.addr, "/rooms/lobby/count").await,
        (500, String::new())
    );
}
