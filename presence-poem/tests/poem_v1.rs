//! The V1 (JSON object) serializer end to end.

mod common;

use common::*;
use futures_util::SinkExt;
use presence_core::pubsub::Message;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn v1_join_events_push_broadcast_leave() {
    let server = default_server().await;
    let mut c = Client::v1(server.addr).await;
    let reply = c.join("room:1", "1", json!({})).await;
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.reference, "1");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));

    c.send(Some("1"), Some("2"), "room:1", "echo", json!({"a": 1}))
        .await;
    assert_eq!(
        c.recv().await.payload,
        json!({"status": "ok", "response": {"a": 1}})
    );

    c.send(Some("1"), Some("3"), "room:1", "push", json!({"p": 1}))
        .await;
    let push = c.recv().await;
    assert_eq!(
        (push.event.as_str(), &push.reference),
        ("pushed", &Value::Null)
    );

    server
        .pubsub
        .broadcast(Message::json("room:1", "news", json!({"n": 1})))
        .unwrap();
    let b = c.recv().await;
    assert_eq!((b.event.as_str(), &b.payload), ("news", &json!({"n": 1})));

    c.send(Some("1"), Some("4"), "room:1", "phx_leave", json!({}))
        .await;
    assert_eq!(c.recv().await.payload["status"], "ok");
    let close = c.recv().await;
    assert_eq!(
        (close.event.as_str(), &close.reference),
        ("phx_close", &json!("1"))
    );
}

#[tokio::test]
async fn v1_messages_without_join_ref() {
    let server = default_server().await;
    let mut c = Client::v1(server.addr).await;
    let join = json!({"topic": "room:1", "event": "phx_join", "payload": {}, "ref": "1"});
    c.ws.send(WsMessage::text(join.to_string())).await.unwrap();
    assert_eq!(c.recv().await.payload["status"], "ok");
    let echo = json!({"topic": "room:1", "event": "echo", "payload": {"x": 2}, "ref": "2"});
    c.ws.send(WsMessage::text(echo.to_string())).await.unwrap();
    assert_eq!(c.recv().await.payload["response"], json!({"x": 2}));
}

#[tokio::test]
async fn v1_binary_pushes_are_not_sent_and_binary_frames_close_1007() {
    let server = default_server().await;
    let mut c = Client::v1(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send(Some("1"), Some("2"), "room:1", "binary_push", json!({}))
        .await;
    // Dropped with a warning: the next thing received is the heartbeat reply.
    assert_eq!(c.heartbeat("3").await.topic, "phoenix");
    c.send_raw(WsMessage::binary(vec![0u8, 0, 0, 0, 0])).await;
    assert_eq!(close_code(c.closed().await), 1007);
}
