//! A stuck channel (a `handle_in` or a `join` that never returns) never freezes its socket.

mod common;

use std::time::Duration;

use common::*;
use presence_core::PubSub;
use serde_json::json;

#[tokio::test]
async fn a_stuck_channel_does_not_freeze_the_socket() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    let server = serve(pubsub.clone(), socket).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:stuck", "1").await;
    c.join_ok("room:ok", "2").await;

    // The first push never returns; the queue takes 15 more (one slot stays for a leave),
    // and the rest are refused with a clear error instead of blocking the read loop.
    c.send(Some("1"), Some("10"), "room:stuck", "hang", json!({}))
        .await;
    for i in 0..24 {
        let r = (100 + i).to_string();
        c.send(Some("1"), Some(&r), "room:stuck", "echo", json!({}))
            .await;
    }
    let mut busy = Vec::new();
    for _ in 0..9 {
        let reply = c.recv().await;
        assert_eq!(
            (reply.event.as_str(), reply.topic.as_str()),
            ("phx_reply", "room:stuck")
        );
        assert_eq!(reply.join_ref, "1");
        assert_eq!(
            reply.payload,
            json!({"status": "error", "response": {"reason": "channel busy"}})
        );
        busy.push(reply.reference.as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (115..124).map(|r| r.to_string()).collect();
    assert_eq!(busy, expected);

    // Heartbeats are answered and the other channel works.
    assert_eq!(c.heartbeat("200").await.payload["status"], "ok");
    c.send(Some("2"), Some("201"), "room:ok", "echo", json!({"n": 1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.reference, "201");
    assert_eq!(reply.payload["response"], json!({"n": 1}));
    assert_eq!(c.heartbeat("202").await.payload["status"], "ok");

    // The client goes away: the connection notices, the healthy channel terminates and its
    // Owner drops at once; the stuck one is aborted at the shutdown deadline.
    drop(c);
    let mut seen = Vec::new();
    while !seen.contains(&("context_dropped".to_owned(), "room:ok".to_owned())) {
        let (event, payload) = next_event(&mut events).await;
        seen.push((event, payload["topic"].as_str().unwrap().to_owned()));
    }
    assert!(
        seen.contains(&("terminate".to_owned(), "room:ok".to_owned())),
        "{seen:?}"
    );
    let (event, payload) = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the stuck channel is aborted")
        .map(|m| (m.event().to_owned(), m.payload().clone()))
        .unwrap();
    assert_eq!(event, "context_dropped");
    assert_eq!(
        payload,
        presence_core::pubsub::Payload::Json(json!({"topic": "room:stuck"}))
    );
}

#[tokio::test]
async fn a_join_that_never_returns_times_out() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .join_timeout(Duration::from_millis(300))
        .build();
    let server = serve(pubsub.clone(), socket).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.send(
        Some("1"),
        Some("1"),
        "room:slow",
        "phx_join",
        json!({"hang": true}),
    )
    .await;
    // While the join runs: heartbeats, other joins and pushes are served...
    assert_eq!(c.heartbeat("2").await.payload["status"], "ok");
    c.join_ok("room:ok", "3").await;
    c.send(Some("3"), Some("4"), "room:ok", "echo", json!({"n": 1}))
        .await;
    assert_eq!(c.recv().await.payload["response"], json!({"n": 1}));
    // ...and a push to the joining topic waits for the join.
    c.send(Some("1"), Some("5"), "room:slow", "echo", json!({}))
        .await;
    // Then the join times out: an error reply, and the channel task is gone...
    let reply = c.recv().await;
    assert_eq!((reply.join_ref, reply.reference), (json!("1"), json!("1")));
    assert_eq!(reply.topic, "room:slow");
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "join timeout"}})
    );
    // ...and the push that waited is answered as for a topic not joined.
    let reply = c.recv().await;
    assert_eq!((reply.join_ref, reply.reference), (json!(null), json!("5")));
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    let (event, payload) = next_event(&mut events).await;
    assert_eq!(
        (event.as_str(), &payload["topic"]),
        ("context_dropped", &json!("room:slow"))
    );
    // The topic is not joined; it can be joined again.
    c.send(Some("1"), Some("6"), "room:slow", "echo", json!({}))
        .await;
    assert_eq!(
        c.recv().await.payload["response"]["reason"],
        "unmatched topic"
    );
    c.join_ok("room:slow", "7").await;
    assert_eq!(c.heartbeat("8").await.payload["status"], "ok");
}

#[tokio::test]
async fn a_leave_cancels_a_pending_join() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(
        Some("1"),
        Some("1"),
        "room:slow",
        "phx_join",
        json!({"hang": true}),
    )
    .await;
    // phoenix.js sends phx_leave when its join push times out.
    c.send(Some("1"), Some("2"), "room:slow", "phx_leave", json!({}))
        .await;
    let reply = c.recv().await;
    assert_eq!((reply.join_ref, reply.reference), (json!("1"), json!("2")));
    assert_eq!(reply.payload["status"], "ok");
    let close = c.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!((close.join_ref, close.reference), (json!("1"), json!("1")));
    c.join_ok("room:slow", "3").await;
}

#[tokio::test]
async fn a_duplicate_join_replaces_a_pending_join() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.send(
        Some("1"),
        Some("1"),
        "room:slow",
        "phx_join",
        json!({"hang": true}),
    )
    .await;
    c.send(Some("2"), Some("2"), "room:slow", "phx_join", json!({}))
        .await;
    let close = c.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!(close.join_ref, "1");
    let reply = c.recv().await;
    assert_eq!((reply.join_ref, reply.reference), (json!("2"), json!("2")));
    assert_eq!(reply.payload["status"], "ok");
}

#[tokio::test]
async fn a_duplicate_join_of_a_stuck_channel_does_not_freeze_the_socket() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:stuck", "1").await;
    c.send(Some("1"), Some("2"), "room:stuck", "hang", json!({}))
        .await;
    // The old channel cannot stop before the shutdown deadline (5 s); meanwhile the socket
    // serves heartbeats.
    c.send(Some("3"), Some("3"), "room:stuck", "phx_join", json!({}))
        .await;
    assert_eq!(c.heartbeat("4").await.payload["status"], "ok");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.heartbeat("5").await.payload["status"], "ok");
    let close = c.recv().await;
    assert_eq!(
        (close.event.as_str(), close.join_ref),
        ("phx_close", json!("1"))
    );
    let reply = c.recv().await;
    assert_eq!(
        (reply.join_ref, reply.payload["status"].clone()),
        (json!("3"), json!("ok"))
    );
    // The new channel is not deaf: the replaced one's late end did not take its place in
    // the topic's hub. A broadcast from another client arrives.
    let mut other = Client::v2(server.addr).await;
    other.join_ok("room:stuck", "1").await;
    other
        .send(
            Some("1"),
            Some("2"),
            "room:stuck",
            "broadcast",
            json!({"n": 1}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let frame = tokio::time::timeout_at(deadline, c.recv())
            .await
            .expect("the broadcast reaches the new channel");
        if frame.payload == json!({"n": 1}) {
            break;
        }
    }
}
