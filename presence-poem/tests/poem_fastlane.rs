//! Fastlane broadcasts: one hub per topic fans out to every joined socket.

mod common;

use std::time::Duration;

use common::*;
use presence_core::pubsub::Message;
use serde_json::{Value, json};

#[tokio::test]
async fn broadcast_reaches_every_socket_of_both_serializers() {
    let server = default_server().await;
    let mut v2s = Vec::new();
    let mut v1s = Vec::new();
    for _ in 0..3 {
        let mut c = Client::v2(server.addr).await;
        c.join_ok("room:fan", "1").await;
        v2s.push(c);
        let mut c = Client::v1(server.addr).await;
        c.join_ok("room:fan", "1").await;
        v1s.push(c);
    }
    let mut elsewhere = Client::v2(server.addr).await;
    elsewhere.join_ok("room:other", "1").await;

    // From a channel: every socket, the sender included.
    v2s[0]
        .send(
            Some("1"),
            Some("2"),
            "room:fan",
            "broadcast",
            json!({"m": 1}),
        )
        .await;
    assert_eq!(v2s[0].recv().await.event, "phx_reply");
    for c in v2s.iter_mut().chain(v1s.iter_mut()) {
        let b = c.recv().await;
        assert_eq!(b.event, "shout");
        assert_eq!(b.topic, "room:fan");
        assert_eq!(b.join_ref, Value::Null);
        assert_eq!(b.reference, Value::Null);
        assert_eq!(b.payload, json!({"m": 1}));
    }
    // From the pub/sub directly (another part of the app, or another node).
    server
        .pubsub
        .broadcast(Message::json("room:fan", "news", json!({"m": 2})))
        .unwrap();
    for c in v2s.iter_mut().chain(v1s.iter_mut()) {
        assert_eq!(c.recv().await.event, "news");
    }
    elsewhere.assert_silent(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn broadcast_from_skips_the_sender_only() {
    let server = default_server().await;
    let mut a = Client::v2(server.addr).await;
    let mut b = Client::v2(server.addr).await;
    let mut c = Client::v1(server.addr).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join_ok("room:x", "1").await;
    }
    let mut observer = server.pubsub.subscribe("room:x");
    a.send(
        Some("1"),
        Some("2"),
        "room:x",
        "broadcast_from",
        json!({"k": 1}),
    )
    .await;
    assert_eq!(a.recv().await.event, "phx_reply");
    assert_eq!(b.recv().await.event, "shout");
    assert_eq!(c.recv().await.event, "shout");
    // Other pub/sub subscribers get it too.
    let seen = tokio::time::timeout(DEADLINE, observer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.event(), "shout");
    a.assert_silent(Duration::from_millis(50)).await;
    // Order per sender is kept: broadcast then broadcast_from.
    a.send(Some("1"), Some("3"), "room:x", "broadcast", json!({"n": 1}))
        .await;
    a.send(
        Some("1"),
        Some("4"),
        "room:x",
        "broadcast_from",
        json!({"n": 2}),
    )
    .await;
    assert_eq!(b.recv().await.payload, json!({"n": 1}));
    assert_eq!(b.recv().await.payload, json!({"n": 2}));
}

#[tokio::test]
async fn hub_subscription_ends_when_the_last_socket_leaves() {
    let server = default_server().await;
    let mut a = Client::v2(server.addr).await;
    let mut b = Client::v2(server.addr).await;
    a.join_ok("room:h", "1").await;
    b.join_ok("room:h", "1").await;
    // One pub/sub subscription for the topic, however many sockets joined.
    assert_eq!(server.pubsub.subscriber_count("room:h"), 1);
    a.send(Some("1"), Some("2"), "room:h", "phx_leave", json!({}))
        .await;
    a.recv().await;
    assert_eq!(a.recv().await.event, "phx_close");
    assert_eq!(server.pubsub.subscriber_count("room:h"), 1);
    drop(b);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.pubsub.subscriber_count("room:h") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub still subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
