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
