//! A fastlane hub that falls behind restarts its topic's channels, so clients resync.

mod common;

use common::*;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use serde_json::json;

/// Reads `client` until its `phx_error` on `topic`, skipping the broadcasts that did get
/// through.
async fn until_error(client: &mut Client, topic: &str) -> Frame {
    loop {
        let frame = client.recv().await;
        if frame.event != "tick" {
            assert_eq!(frame.topic, topic);
            return frame;
        }
    }
}

#[tokio::test]
async fn a_lagging_hub_errors_its_channels_so_clients_rejoin() {
    let pubsub = PubSub::builder("test").queue_capacity(8).build();
    let server = serve(pubsub.clone(), builder(&pubsub).build()).await;
    let mut events = pubsub.subscribe(EVENTS);
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:lag", "1").await;
    c.join_ok("room:other", "2").await;
    let mut d = Client::v2(server.addr).await;
    d.join_ok("room:lag", "5").await;

    // A burst the hub cannot keep up with: this test runtime has one thread, so the hub task
    // does not run until the loop ends, and its subscription holds 8 messages.
    for n in 0..20 {
        pubsub
            .broadcast(Message::json("room:lag", "tick", json!({"n": n})))
            .unwrap();
    }
    // Every channel of the topic is errored: phoenix.js rejoins it and gets a fresh state.
    for (client, join_ref) in [(&mut c, "1"), (&mut d, "5")] {
        let error = until_error(client, "room:lag").await;
        assert_eq!(error.event, "phx_error");
        assert_eq!(
            (error.join_ref, error.reference),
            (json!(join_ref), json!(join_ref))
        );
        assert_eq!(error.payload, json!({"reason": "lagged"}));
    }
    // The server-side channels stopped: terminate, and their Owners (presences) dropped.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (event, payload) = next_event(&mut events).await;
        assert_eq!(payload["topic"], "room:lag");
        seen.push((event, payload["reason"].clone()));
    }
    seen.sort_by_key(|(event, _)| event.clone());
    assert_eq!(
        seen,
        [
            ("context_dropped".to_owned(), json!(null)),
            ("context_dropped".to_owned(), json!(null)),
            ("terminate".to_owned(), json!("Lagged")),
            ("terminate".to_owned(), json!("Lagged")),
        ]
    );

    // The socket and its other channel go on; the topic can be rejoined.
    assert_eq!(c.heartbeat("3").await.payload["status"], "ok");
    c.send(Some("2"), Some("4"), "room:other", "echo", json!({"n": 1}))
        .await;
    assert_eq!(c.recv().await.payload["response"], json!({"n": 1}));
    c.join_ok("room:lag", "6").await;
    pubsub
        .broadcast(Message::json("room:lag", "tick", json!({"n": 99})))
        .unwrap();
    let tick = c.recv().await;
    assert_eq!(
        (tick.event.as_str(), &tick.payload),
        ("tick", &json!({"n": 99}))
    );
}

#[tokio::test]
async fn a_broadcast_from_burst_the_hub_cannot_queue_resyncs_like_a_lag() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).outbound_capacity(4096).build();
    let server = serve(pubsub.clone(), socket).await;
    let mut a = Client::v2(server.addr).await;
    let mut b = Client::v2(server.addr).await;
    a.join_ok("room:burst", "1").await;
    b.join_ok("room:burst", "1").await;
    // More than the hub's bounded broadcast_from queue (1024), while it cannot run.
    a.send(
        Some("1"),
        Some("2"),
        "room:burst",
        "broadcast_from_burst",
        json!({"n": 1500}),
    )
    .await;
    let mut shouts = 0;
    let error = loop {
        let frame = b.recv().await;
        if frame.event == "shout" {
            shouts += 1;
        } else {
            break frame;
        }
    };
    assert!(shouts < 1500, "{shouts} shouts");
    assert_eq!(error.event, "phx_error");
    assert_eq!(error.payload, json!({"reason": "lagged"}));
    // The sender's socket goes on (its channel on the topic is restarted as well).
    let reply = a.recv().await;
    assert_eq!(
        (reply.reference, reply.payload["status"].clone()),
        (json!("2"), json!("ok"))
    );
    assert_eq!(a.recv().await.event, "phx_error");
    assert_eq!(a.heartbeat("3").await.payload["status"], "ok");
}
