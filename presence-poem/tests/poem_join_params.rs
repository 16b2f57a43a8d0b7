//! Typed join params: a channel implementing `Channel<JoinParams>` gets its params
//! deserialized by the socket; params that do not deserialize are refused with a reason and
//! the channel is not made nor joined. `impl Channel for X` (params as `Value`) keeps working,
//! and `PhoenixSocketBuilder::channel` infers the params type of either without annotations.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use presence_core::PubSub;
use presence_poem::{Channel, ChannelContext, HandleIn, Join, Payload, PhoenixSocket, Reply};
use serde::Deserialize;
use serde_json::{Value, json};

/// Required and optional fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict {
    user: String,
    #[serde(default)]
    status: Option<String>,
}

/// Every field optional: phoenix.js's default `{}` params deserialize.
#[derive(Debug, Deserialize)]
struct Lenient {
    user: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Echoes the typed params in its join reply; counts the channels made.
struct StrictRoom;

impl Channel<Strict> for StrictRoom {
    async fn join(&mut self, _: &str, params: Strict, _: &mut ChannelContext) -> Join {
        Join::ok_with(json!({"user": params.user, "status": params.status}))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        _: &mut ChannelContext,
    ) -> HandleIn {
        match event {
            "ping" => HandleIn::ok(payload),
            "refuse" => HandleIn::error(json!({"reason": "refused"})),
            "reply" => Reply::ok(json!({"via": "from"})).into(),
            _ => HandleIn::NoReply,
        }
    }
}

struct LenientRoom;

impl Channel<Lenient> for LenientRoom {
    async fn join(&mut self, _: &str, params: Lenient, _: &mut ChannelContext) -> Join {
        Join::ok_with(json!({"user": params.user, "tags": params.tags}))
    }
}

/// The untyped form, unchanged.
struct ValueRoom;

impl Channel for ValueRoom {
    async fn join(&mut self, _: &str, params: Value, _: &mut ChannelContext) -> Join {
        Join::ok_with(json!({"params": params}))
    }
}

async fn server(made: Arc<AtomicUsize>) -> TestServer {
    let pubsub = PubSub::new("test");
    // No turbofish: the params type comes from each channel's one `Channel` impl.
    let socket = PhoenixSocket::builder(pubsub.clone())
        .channel("strict:*", move || {
            made.fetch_add(1, Ordering::SeqCst);
            StrictRoom
        })
        .channel("lenient:*", || LenientRoom)
        .channel("value:*", || ValueRoom)
        .build();
    serve(pubsub, socket).await
}

fn assert_reply(frame: &Frame, status: &str) {
    assert_eq!(frame.event, "phx_reply", "{frame:?}");
    assert_eq!(frame.payload["status"], status, "{frame:?}");
}

#[tokio::test]
async fn typed_params_reach_join_deserialized() {
    let made = Arc::new(AtomicUsize::new(0));
    let server = server(made.clone()).await;
    for mut client in [Client::v2(server.addr).await, Client::v1(server.addr).await] {
        let reply = client
            .join("strict:1", "1", json!({"user": "alice", "status": "away"}))
            .await;
        assert_reply(&reply, "ok");
        assert_eq!(
            reply.payload["response"],
            json!({"user": "alice", "status": "away"})
        );
        // The shorter reply constructors and `From<Reply>`, on the wire.
        client
            .send(Some("1"), Some("2"), "strict:1", "ping", json!({"n": 1}))
            .await;
        let pong = client.recv().await;
        assert_reply(&pong, "ok");
        assert_eq!(pong.payload["response"], json!({"n": 1}));
        client
            .send(Some("1"), Some("3"), "strict:1", "refuse", json!({}))
            .await;
        let refused = client.recv().await;
        assert_reply(&refused, "error");
        assert_eq!(refused.payload["response"], json!({"reason": "refused"}));
        client
            .send(Some("1"), Some("4"), "strict:1", "reply", json!({}))
            .await;
        let replied = client.recv().await;
        assert_reply(&replied, "ok");
        assert_eq!(replied.payload["response"], json!({"via": "from"}));
    }
    assert_eq!(made.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn params_that_do_not_deserialize_are_refused_with_serdes_reason_and_nothing_joins() {
    let made = Arc::new(AtomicUsize::new(0));
    let server = server(made.clone()).await;
    let mut client = Client::v2(server.addr).await;
    let cases = [
        (
            json!({"user": 5}),
            "invalid join params: invalid type: integer `5`, expected a string",
        ),
        (json!({}), "invalid join params: missing field `user`"),
        (
            json!({"user": "bob", "admin": true}),
            "invalid join params: unknown field `admin`, expected `user` or `status`",
        ),
        (
            json!("bob"),
            "invalid join params: invalid type: string \"bob\", expected struct Strict",
        ),
        (
            Value::Null,
            "invalid join params: invalid type: null, expected struct Strict",
        ),
    ];
    for (i, (params, reason)) in cases.into_iter().enumerate() {
        let r = (i + 1).to_string();
        let reply = client.join("strict:1", &r, params).await;
        assert_reply(&reply, "error");
        assert_eq!(reply.payload["response"], json!({"reason": reason}));
        assert_eq!(reply.reference, json!(r));
        // Not joined: a push to the topic is unmatched.
        client
            .send(Some(&r), Some("push"), "strict:1", "ping", json!({}))
            .await;
        let push = client.recv().await;
        assert_reply(&push, "error");
        assert_eq!(
            push.payload["response"],
            json!({"reason": "unmatched topic"})
        );
    }
    // The factory never ran for a refused join.
    assert_eq!(made.load(Ordering::SeqCst), 0);
    // The socket goes on: a later join with good params joins.
    let reply = client.join("strict:1", "9", json!({"user": "bob"})).await;
    assert_reply(&reply, "ok");
    assert_eq!(made.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn all_optional_params_accept_phoenix_js_default_empty_object() {
    let server = server(Arc::default()).await;
    let mut client = Client::v2(server.addr).await;
    let reply = client.join("lenient:1", "1", json!({})).await;
    assert_reply(&reply, "ok");
    assert_eq!(reply.payload["response"], json!({"user": null, "tags": []}));
    let reply = client
        .join("lenient:2", "2", json!({"user": "carol", "tags": ["a"]}))
        .await;
    assert_reply(&reply, "ok");
    assert_eq!(
        reply.payload["response"],
        json!({"user": "carol", "tags": ["a"]})
    );
}

#[tokio::test]
async fn value_channels_get_any_params_unchanged() {
    let server = server(Arc::default()).await;
    let mut client = Client::v2(server.addr).await;
    for (r, params) in [
        ("1", json!({"a": [1, {"b": null}]})),
        ("2", json!([1, 2])),
        ("3", json!("text")),
    ] {
        let topic = format!("value:{r}");
        let reply = client.join(&topic, r, params.clone()).await;
        assert_reply(&reply, "ok");
        assert_eq!(reply.payload["response"], json!({ "params": params }));
    }
}
