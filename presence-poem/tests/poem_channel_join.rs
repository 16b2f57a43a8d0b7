//! Joining: replies, refusals, crashes, unmatched topics, duplicate joins, the channel limit.

mod common;

use std::time::Duration;

use common::*;
use presence_core::PubSub;
use serde_json::{Value, json};

#[tokio::test]
async fn join_ok_replies_with_the_join_ref_and_ref() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let reply = c.join("room:lobby", "3", json!({})).await;
    assert_eq!(reply.join_ref, "3");
    assert_eq!(reply.reference, "3");
    assert_eq!(reply.topic, "room:lobby");
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));
}

#[tokio::test]
async fn join_with_reply_and_join_ref_defaulting_to_ref() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(
        None,
        Some("5"),
        "lobby",
        "phx_join",
        json!({"reply": {"n": 1}}),
    )
    .await;
    let reply = c.recv().await;
    // Answered with the join's own (null) join_ref, as Phoenix does...
    assert_eq!(reply.join_ref, json!(null));
    assert_eq!(reply.reference, "5");
    assert_eq!(reply.payload, json!({"status": "ok", "response": {"n": 1}}));
    // ...while the channel's join_ref is the join's ref.
    c.send(Some("5"), Some("6"), "lobby", "whoami", json!({}))
        .await;
    assert_eq!(c.recv().await.payload["response"]["join_ref"], "5");
}

#[tokio::test]
async fn pushes_sent_before_the_join_reply_are_handled_after_the_join() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(
        Some("1"),
        Some("1"),
        "room:1",
        "phx_join",
        json!({"sleep_ms": 200}),
    )
    .await;
    for r in 2..5 {
        c.send(
            Some("1"),
            Some(&r.to_string()),
            "room:1",
            "echo",
            json!({"n": r}),
        )
        .await;
    }
    let reply = c.recv().await;
    assert_eq!(
        (reply.reference, &reply.payload["status"]),
        (json!("1"), &json!("ok"))
    );
    for r in 2..5 {
        let echo = c.recv().await;
        assert_eq!(echo.reference, json!(r.to_string()));
        assert_eq!(echo.payload, json!({"status": "ok", "response": {"n": r}}));
    }
}

#[tokio::test]
async fn pushes_sent_before_a_refused_join_get_unmatched_topic() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(
        Some("1"),
        Some("1"),
        "room:1",
        "phx_join",
        json!({"sleep_ms": 200, "fail": true}),
    )
    .await;
    c.send(Some("1"), Some("2"), "room:1", "echo", json!({}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.reference, json!("1"));
    assert_eq!(reply.payload["status"], "error");
    let reply = c.recv().await;
    assert_eq!((reply.join_ref, reply.reference), (json!(null), json!("2")));
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
}

#[tokio::test]
async fn join_error_replies_error_and_does_not_join() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let reply = c.join("room:1", "1", json!({"fail": true})).await;
    assert_eq!(reply.join_ref, "1");
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "refused"}})
    );
    c.send(Some("1"), Some("2"), "room:1", "echo", json!({}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.join_ref, Value::Null);
    assert_eq!(reply.payload["response"]["reason"], "unmatched topic");
}

#[tokio::test]
async fn join_crash_replies_join_crashed() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let reply = c.join("room:1", "1", json!({"crash": true})).await;
    assert_eq!(reply.join_ref, "1");
    assert_eq!(reply.reference, "1");
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "join crashed"}})
    );
    // The socket goes on, and the topic can be joined again.
    c.join_ok("room:1", "2").await;
}

#[tokio::test]
async fn unmatched_topic_replies_error_with_null_join_ref() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let reply = c.join("nowhere:1", "1", json!({})).await;
    assert_eq!(reply.join_ref, Value::Null);
    assert_eq!(reply.reference, "1");
    assert_eq!(reply.topic, "nowhere:1");
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
}

#[tokio::test]
async fn pushes_made_in_join_follow_the_join_reply() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let reply = c.join("room:1", "4", json!({"push": true})).await;
    assert_eq!(reply.event, "phx_reply");
    let push = c.recv().await;
    assert_eq!(push.event, "joined_push");
    assert_eq!(push.join_ref, "4");
    assert_eq!(push.reference, Value::Null);
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel_first() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    let reply = c.join("room:1", "2", json!({})).await;
    // phx_close for the OLD join_ref first, then the new join's reply.
    assert_eq!(reply.event, "phx_close");
    assert_eq!(reply.join_ref, "1");
    assert_eq!(reply.reference, "1");
    assert_eq!(reply.payload, json!({}));
    let reply = c.recv().await;
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(reply.join_ref, "2");
    assert_eq!(reply.payload["status"], "ok");
    let (event, payload) = next_event(&mut events).await;
    assert_eq!(event, "terminate");
    assert_eq!(payload["reason"], "DuplicateJoin");
    // The new instance answers; messages for the old join_ref are dropped.
    c.send(Some("1"), Some("3"), "room:1", "echo", json!({}))
        .await;
    c.send(Some("2"), Some("4"), "room:1", "echo", json!({"n": 4}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.reference, "4");
    assert_eq!(reply.payload["response"], json!({"n": 4}));
}

#[tokio::test]
async fn channel_limit() {
    let pubsub = PubSub::new("test");
    let server = serve(pubsub.clone(), builder(&pubsub).max_channels(3).build()).await;
    let mut c = Client::v2(server.addr).await;
    for i in 0..3 {
        c.join_ok(&format!("room:{i}"), &i.to_string()).await;
    }
    let reply = c.join("room:3", "9", json!({})).await;
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "too many channels joined"}})
    );
    // Rejoining an already joined topic is not an extra channel.
    let close = c.join("room:0", "10", json!({})).await;
    assert_eq!(close.event, "phx_close");
    assert_eq!(c.recv().await.payload["status"], "ok");
    // Leaving frees a slot.
    c.send(Some("1"), Some("11"), "room:1", "phx_leave", json!({}))
        .await;
    assert_eq!(c.recv().await.payload["status"], "ok");
    assert_eq!(c.recv().await.event, "phx_close");
    c.join_ok("room:3", "12").await;
}

#[tokio::test]
async fn default_channel_limit_is_100() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    for i in 0..100 {
        c.send(
            Some(&i.to_string()),
            Some(&i.to_string()),
            &format!("room:{i}"),
            "phx_join",
            json!({}),
        )
        .await;
    }
    for _ in 0..100 {
        assert_eq!(c.recv().await.payload["status"], "ok");
    }
    let reply = c.join("room:100", "100", json!({})).await;
    assert_eq!(
        reply.payload["response"]["reason"],
        "too many channels joined"
    );
    c.assert_silent(Duration::from_millis(50)).await;
}
