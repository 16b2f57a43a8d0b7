//! Events on joined channels: replies, leaves, stale join_refs, pushes, info, terminate.

mod common;

use std::time::Duration;

use common::*;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use serde_json::{Value, json};

#[tokio::test]
async fn handle_in_replies_ok_error_or_nothing() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send(Some("1"), Some("2"), "room:1", "echo", json!({"a": 1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(
        (reply.join_ref.clone(), reply.reference.clone()),
        (json!("1"), json!("2"))
    );
    assert_eq!(reply.payload, json!({"status": "ok", "response": {"a": 1}}));
    c.send(Some("1"), Some("3"), "room:1", "fail", json!({}))
        .await;
    assert_eq!(
        c.recv().await.payload,
        json!({"status": "error", "response": {"reason": "failed"}})
    );
    c.send(Some("1"), Some("4"), "room:1", "noreply", json!({}))
        .await;
    c.assert_silent(Duration::from_millis(50)).await;
    // A null join_ref is accepted like a matching one.
    c.send(None, Some("5"), "room:1", "echo", json!({})).await;
    assert_eq!(c.recv().await.reference, "5");
}

#[tokio::test]
async fn push_carries_the_join_ref_and_a_null_ref() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send(Some("1"), Some("2"), "room:1", "push", json!({"x": 1}))
        .await;
    let push = c.recv().await;
    assert_eq!(push.join_ref, "1");
    assert_eq!(push.reference, Value::Null);
    assert_eq!(push.event, "pushed");
    assert_eq!(push.payload, json!({"x": 1}));
}

#[tokio::test]
async fn leave_replies_ok_then_closes() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send(Some("1"), Some("2"), "room:1", "phx_leave", json!({}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.reference, "2");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    let close = c.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!((close.join_ref, close.reference), (json!("1"), json!("1")));
    let (event, payload) = next_event(&mut events).await;
    assert_eq!(
        (event.as_str(), &payload["reason"]),
        ("terminate", &json!("Left"))
    );
    // The context (and with it the presence Owner) is dropped.
    let (event, _) = next_event(&mut events).await;
    assert_eq!(event, "context_dropped");
    // Now the topic is not joined.
    c.send(Some("1"), Some("3"), "room:1", "echo", json!({}))
        .await;
    assert_eq!(
        c.recv().await.payload["response"]["reason"],
        "unmatched topic"
    );
}

#[tokio::test]
async fn leave_for_a_non_joined_topic_replies_ok() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(Some("1"), Some("2"), "room:9", "phx_leave", json!({}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
    c.assert_silent(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn event_for_a_non_joined_topic_is_unmatched() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(Some("1"), Some("2"), "room:9", "echo", json!({}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.join_ref, Value::Null);
    assert_eq!(reply.reference, "2");
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
}

#[tokio::test]
async fn stale_join_ref_is_silently_dropped() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send(Some("0"), Some("2"), "room:1", "echo", json!({}))
        .await;
    c.send(Some("0"), Some("3"), "room:1", "phx_leave", json!({}))
        .await;
    let reply = c.heartbeat("4").await;
    assert_eq!(reply.topic, "phoenix");
    // Still joined.
    c.send(Some("1"), Some("5"), "room:1", "echo", json!({}))
        .await;
    assert_eq!(c.recv().await.reference, "5");
}

#[tokio::test]
async fn stop_replies_then_closes() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send(Some("1"), Some("2"), "room:1", "stop", json!({}))
        .await;
    assert_eq!(
        c.recv().await.payload,
        json!({"status": "ok", "response": {"bye": true}})
    );
    let close = c.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!(close.join_ref, "1");
    let (_, payload) = next_event(&mut events).await;
    assert_eq!(payload["reason"], "Stopped");
}

#[tokio::test]
async fn handle_info_from_subscriptions_and_mailbox() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut c = Client::v2(server.addr).await;
    let reply = c
        .join("room:1", "1", json!({"subscribe": "private:1"}))
        .await;
    assert_eq!(reply.payload["status"], "ok");
    pubsub
        .broadcast(Message::json("private:1", "ping", json!({})))
        .unwrap();
    let info = c.recv().await;
    assert_eq!(info.event, "info");
    assert_eq!(info.payload, json!({"event": "ping"}));
    assert_eq!(info.join_ref, "1");

    c.send(Some("1"), Some("2"), "room:1", "info", json!({"v": 1}))
        .await;
    let custom = c.recv().await;
    assert_eq!(custom.event, "custom");
    assert_eq!(custom.payload, json!({"v": 1}));

    // Replying later to a kept SocketRef.
    c.send(Some("1"), Some("3"), "room:1", "later", json!({}))
        .await;
    let later = c.recv().await;
    assert_eq!(later.reference, "3");
    assert_eq!(
        later.payload,
        json!({"status": "ok", "response": {"later": true}})
    );

    // handle_info can stop the channel.
    c.send(
        Some("1"),
        Some("4"),
        "room:1",
        "info",
        json!({"stop": true}),
    )
    .await;
    assert_eq!(c.recv().await.event, "phx_close");
}

#[tokio::test]
async fn socket_close_terminates_channels_and_drops_their_owners() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.join_ok("room:2", "2").await;
    c.ws.close(None).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (event, payload) = next_event(&mut events).await;
        seen.push((event, payload["reason"].clone()));
    }
    assert_eq!(
        seen.iter()
            .filter(|(e, r)| e == "terminate" && r == "Closed")
            .count(),
        2
    );
    assert_eq!(
        seen.iter().filter(|(e, _)| e == "context_dropped").count(),
        2
    );
}

#[tokio::test]
async fn a_busy_mailbox_does_not_starve_subscriptions() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let reply = c.join("room:1", "1", json!({"subscribe": "sub:x"})).await;
    assert_eq!(reply.payload["status"], "ok");
    c.send(
        Some("1"),
        Some("2"),
        "room:1",
        "flood",
        json!({"n": 60, "topic": "sub:x"}),
    )
    .await;
    assert_eq!(c.recv().await.payload["status"], "ok");
    // 60 mailbox values were waiting when the subscription's message arrived: it is handled
    // in turn with them, not after all of them.
    let mut order = Vec::new();
    for _ in 0..61 {
        order.push(c.recv().await.event);
    }
    let info = order
        .iter()
        .position(|e| e == "info")
        .expect("the info push");
    assert!(
        info <= 1,
        "the subscription's message came at {info}: {order:?}"
    );
    assert_eq!(order.iter().filter(|e| *e == "custom").count(), 60);
}
