//! A panicking channel errors only itself.

mod common;

use common::*;
use presence_core::PubSub;
use serde_json::json;

#[tokio::test]
async fn a_crash_errors_that_channel_only() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    let mut other_socket = Client::v2(server.addr).await;
    c.join_ok("room:a", "1").await;
    c.join_ok("room:b", "2").await;
    other_socket.join_ok("room:a", "1").await;

    c.send(Some("1"), Some("3"), "room:a", "crash", json!({}))
        .await;
    let error = c.recv().await;
    assert_eq!(error.event, "phx_error");
    assert_eq!(error.topic, "room:a");
    assert_eq!((error.join_ref, error.reference), (json!("1"), json!("1")));
    assert_eq!(error.payload, json!({"reason": "channel_crash"}));
    // No terminate on a crash, but the context and its Owner are dropped.
    let (event, payload) = next_event(&mut events).await;
    assert_eq!(event, "context_dropped");
    assert_eq!(payload["topic"], "room:a");

    // The other channel and the socket go on.
    c.send(Some("2"), Some("4"), "room:b", "echo", json!({"ok": 1}))
        .await;
    assert_eq!(c.recv().await.payload["response"], json!({"ok": 1}));
    assert_eq!(c.heartbeat("5").await.payload["status"], "ok");
    // The crashed topic is no longer joined; it can be rejoined.
    c.send(Some("1"), Some("6"), "room:a", "echo", json!({}))
        .await;
    assert_eq!(
        c.recv().await.payload["response"]["reason"],
        "unmatched topic"
    );
    c.join_ok("room:a", "7").await;
    // Another socket on the same topic is unaffected.
    other_socket
        .send(Some("1"), Some("2"), "room:a", "echo", json!({}))
        .await;
    assert_eq!(other_socket.recv().await.payload["status"], "ok");
}
