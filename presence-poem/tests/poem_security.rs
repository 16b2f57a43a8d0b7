//! The endpoint's limits, each hit by a misbehaving client while a well-behaved neighbour in
//! the same room goes on as usual: message and join rates, topic length, topics per endpoint,
//! connections per endpoint, and the connect hook's timeout.

mod common;

use std::time::Duration;

use common::*;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use presence_poem::{ConnectInfo, Connected, RateLimit};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

async fn upgrade_status(addr: std::net::SocketAddr) -> u16 {
    match tokio_tungstenite::connect_async(url(addr, "vsn=2.0.0")).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// Joins and returns the join's reply (skipping the `phx_close` of a replaced channel).
async fn join_reply(c: &mut Client, topic: &str, r: &str) -> Frame {
    c.send(Some(r), Some(r), topic, "phx_join", json!({})).await;
    loop {
        let frame = c.recv().await;
        if frame.event == "phx_reply" && frame.reference == json!(r) {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_refused_then_closed_1008_and_its_neighbour_is_served() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .message_rate(RateLimit::new(10, 20))
        .build();
    let server = serve(pubsub.clone(), socket).await;
    let mut flooder = Client::v2(server.addr).await;
    flooder.join_ok("room:1", "1").await;
    let mut neighbour = Client::v2(server.addr).await;
    neighbour.join_ok("room:1", "1").await;

    // Over the burst: the first pushes are handled, the rest refused with a reason.
    for i in 0..30 {
        let r = (i + 2).to_string();
        flooder
            .send(Some("1"), Some(&r), "room:1", "echo", json!({"i": i}))
            .await;
    }
    let (mut echoed, mut refused) = (0, 0);
    for _ in 0..30 {
        let reply = flooder.recv().await;
        assert_eq!(reply.event, "phx_reply");
        match reply.payload["response"]["reason"].as_str() {
            Some("rate limited") => refused += 1,
            _ => echoed += 1,
        }
    }
    // The burst of 20 (less the join's token) and what refilled meanwhile.
    assert!((19..30).contains(&echoed), "echoed {echoed}");
    assert!(refused > 0);

    // A flood: 500 pushes as fast as they go.
    for i in 0..500 {
        let r = (i + 100).to_string();
        flooder
            .send(Some("1"), Some(&r), "room:1", "echo", json!({"i": i}))
            .await;
    }
    // Meanwhile the neighbour gets the room's broadcasts at once.
    for n in 0..5 {
        let sent = Instant::now();
        pubsub
            .broadcast(Message::json("room:1", "news", json!({"n": n})))
            .unwrap();
        let frame = tokio::time::timeout(DEADLINE, neighbour.recv())
            .await
            .expect("the neighbour is served");
        assert_eq!(
            (frame.event.as_str(), &frame.payload),
            ("news", &json!({"n": n}))
        );
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
    }
    assert_eq!(neighbour.heartbeat("h").await.payload["status"], "ok");
    // The flooder is closed with 1008 (policy violation).
    let close = tokio::time::timeout(DEADLINE, flooder.closed())
        .await
        .expect("closed in time");
    assert_eq!(close_code(close), 1008);
}

#[tokio::test]
async fn joins_are_rate_limited_duplicates_included() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).join_rate(RateLimit::new(1, 3)).build();
    let server = serve(pubsub, socket).await;
    let mut c = Client::v2(server.addr).await;
    // A duplicate join re-lists a room: it counts as a join.
    for r in ["1", "2", "3"] {
        let reply = join_reply(&mut c, "room:1", r).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    }
    let reply = join_reply(&mut c, "room:2", "4").await;
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "rate limited"}})
    );
    // A second later there is a token again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.join("room:2", "5", json!({})).await.payload["status"],
        "ok"
    );
}

#[tokio::test]
async fn long_topics_and_too_many_topics_are_refused_with_a_reason() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).max_topic_length(16).max_topics(2).build();
    let server = serve(pubsub, socket).await;
    let mut a = Client::v2(server.addr).await;
    let long = format!("room:{}", "x".repeat(12));
    let reply = a.join(&long, "1", json!({})).await;
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "topic too long"}})
    );
    a.join_ok("room:a", "2").await;
    a.join_ok("room:b", "3").await;
    let reply = a.join("room:c", "4", json!({})).await;
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "too many topics"}})
    );
    // Topics that exist can still be joined, by anyone.
    let mut b = Client::v2(server.addr).await;
    b.join_ok("room:a", "1").await;
    assert_eq!(a.heartbeat("h").await.payload["status"], "ok");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).max_connections(2).build();
    let server = serve(pubsub, socket).await;
    let mut first = Client::v2(server.addr).await;
    let _second = Client::v2(server.addr).await;
    assert_eq!(upgrade_status(server.addr).await, 503);
    assert_eq!(first.heartbeat("1").await.payload["status"], "ok");
}

#[tokio::test]
async fn a_slow_connect_hook_times_out_with_503() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .connect_timeout(Duration::from_millis(200))
        .on_connect(|info: ConnectInfo| async move {
            if info.params.contains_key("slow") {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(Connected::new())
        })
        .build();
    let server = serve(pubsub, socket).await;
    let started = Instant::now();
    let status = match tokio_tungstenite::connect_async(url(server.addr, "vsn=2.0.0&slow=1")).await
    {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    };
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(upgrade_status(server.addr).await, 101);
}
