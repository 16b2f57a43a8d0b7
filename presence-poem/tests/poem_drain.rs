//! Draining an endpoint for a graceful shutdown: sockets close with 1012, channels terminate,
//! new upgrades get 503.

mod common;

use common::*;
use presence_core::PubSub;
use tokio_tungstenite::tungstenite;

#[tokio::test]
async fn drain_closes_every_socket_with_1012_and_waits_for_the_channels() {
    let pubsub = PubSub::new("test");
    let mut events = pubsub.subscribe(EVENTS);
    let socket = builder(&pubsub).build();
    let server = serve(pubsub.clone(), socket.clone()).await;

    let mut joined = Client::v2(server.addr).await;
    joined.join_ok("room:1", "1").await;
    let mut idle = Client::v1(server.addr).await;
    idle.heartbeat("1").await;
    assert_eq!(socket.open_sockets(), 2);
    assert!(!socket.is_draining());

    tokio::time::timeout(DEADLINE, socket.drain())
        .await
        .expect("drain resolves once the sockets have ended");
    assert!(socket.is_draining());
    assert_eq!(socket.open_sockets(), 0);

    // The channel was stopped as on a client close, before drain resolved.
    let mut seen = Vec::new();
    while let Ok(Ok(message)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), events.recv()).await
    {
        seen.push(message.event().to_owned());
    }
    assert!(seen.contains(&"terminate".to_owned()), "{seen:?}");
    assert!(seen.contains(&"context_dropped".to_owned()), "{seen:?}");

    assert_eq!(close_code(joined.closed().await), 1012);
    assert_eq!(close_code(idle.closed().await), 1012);

    // No new sockets while draining.
    match tokio_tungstenite::connect_async(url(server.addr, "vsn=2.0.0")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("expected a 503, got {other:?}"),
    }
    // Draining again only waits.
    tokio::time::timeout(DEADLINE, socket.drain())
        .await
        .expect("a second drain resolves at once");
}

#[tokio::test]
async fn drain_without_sockets_resolves_at_once() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    let _server = serve(pubsub, socket.clone()).await;
    tokio::time::timeout(DEADLINE, socket.drain())
        .await
        .expect("nothing to wait for");
    assert_eq!(socket.open_sockets(), 0);
}

#[tokio::test]
async fn drain_closes_sockets_in_batches_then_everyone_at_the_deadline() {
    use std::time::Duration;
    use tokio::time::Instant;
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .drain_batches(2, Duration::from_millis(300), Duration::from_millis(1000))
        .build();
    let server = serve(pubsub, socket.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..7 {
        let mut c = Client::v2(server.addr).await;
        c.heartbeat("1").await;
        clients.push(c);
    }
    let started = Instant::now();
    let drain = tokio::spawn({
        let socket = socket.clone();
        async move { socket.drain().await }
    });
    // Each client notes when it was closed.
    let mut closed_at = Vec::new();
    for mut c in clients {
        closed_at.push(tokio::spawn(async move {
            let code = close_code(c.closed().await);
            (code, started.elapsed())
        }));
    }
    let mut times = Vec::new();
    for t in closed_at {
        let (code, at) = t.await.unwrap();
        assert_eq!(code, 1012);
        times.push(at);
    }
    tokio::time::timeout(DEADLINE, drain)
        .await
        .unwrap()
        .unwrap();
    times.sort();
    // Two at once, two 300 ms later, two at 600 ms, and the last by 900 ms or the deadline.
    let at_once = times
        .iter()
        .filter(|t| **t < Duration::from_millis(250))
        .count();
    assert_eq!(at_once, 2, "{times:?}");
    assert!(times[2] >= Duration::from_millis(250), "{times:?}");
    assert!(times[4] >= Duration::from_millis(550), "{times:?}");
    assert!(times[6] < Duration::from_millis(1500), "{times:?}");
}
