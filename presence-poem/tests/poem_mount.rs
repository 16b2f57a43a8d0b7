//! Mounting: `Route::new().nest("/socket", socket)` serves phoenix.js's
//! `new Socket("/socket")` at `/socket/websocket` and answers other paths below the mount
//! 404; `Route::new().at("/socket/websocket", socket)` keeps working.

mod common;

use std::net::SocketAddr;

use common::*;
use poem::{Route, get, handler};
use presence_core::PubSub;
use serde_json::json;
use tokio_tungstenite::tungstenite;

/// A websocket upgrade of `path`: `Ok` when it upgraded, else the HTTP status.
async fn upgrade(addr: SocketAddr, path: &str) -> Result<Client, u16> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await {
        Ok((ws, _)) => Ok(Client {
            ws,
            v2: path.contains("vsn=2."),
        }),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[handler]
fn page() -> &'static str {
    "page"
}

async fn nested_server() -> TestServer {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    let app = Route::new()
        .nest("/socket", socket)
        .at("/socket_page", get(page));
    serve_app(pubsub, app).await
}

#[tokio::test]
async fn nested_at_socket_phoenix_js_connects_to_socket_websocket() {
    let server = nested_server().await;
    // What phoenix.js's `new Socket("/socket").connect()` opens.
    for (query, v2) in [("vsn=2.0.0", true), ("vsn=1.0.0", false)] {
        let mut client = upgrade(server.addr, &format!("/socket/websocket?{query}"))
            .await
            .expect("upgraded");
        assert_eq!(client.v2, v2);
        let reply = client.join("room:1", "1", json!({})).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        client
            .send(Some("1"), Some("2"), "room:1", "echo", json!({"n": 1}))
            .await;
        let echo = client.recv().await;
        assert_eq!(echo.reference, "2");
        assert_eq!(echo.payload["status"], "ok", "{echo:?}");
        assert_eq!(client.heartbeat("3").await.payload["status"], "ok");
    }
}

#[tokio::test]
async fn other_paths_below_a_nested_socket_are_not_found() {
    let server = nested_server().await;
    for path in [
        "/socket",
        "/socket/",
        "/socket/longpoll?vsn=2.0.0",
        "/socket/websockets?vsn=2.0.0",
        "/socket/websocket/extra?vsn=2.0.0",
    ] {
        assert_eq!(upgrade(server.addr, path).await.err(), Some(404), "{path}");
        assert_eq!(http_get(server.addr, path).await.0, 404, "{path}");
    }
    // Neighbours of the mount are routed as usual.
    assert_eq!(http_get(server.addr, "/socket_page").await.0, 200);
    // A plain GET of the transport is not an upgrade: refused, but not as a missing route.
    assert_ne!(http_get(server.addr, "/socket/websocket").await.0, 404);
}

#[tokio::test]
async fn mounted_at_the_full_path_still_serves_the_websocket() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    let server = serve_app(pubsub, Route::new().at("/socket/websocket", socket)).await;
    let mut client = upgrade(server.addr, "/socket/websocket?vsn=2.0.0")
        .await
        .expect("upgraded");
    client.join_ok("room:1", "1").await;
    assert_eq!(
        upgrade(server.addr, "/socket/longpoll").await.err(),
        Some(404)
    );
}

#[tokio::test]
async fn nests_inside_nests() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    let app = Route::new().nest("/api", Route::new().nest("/live", socket));
    let server = serve_app(pubsub, app).await;
    let mut client = upgrade(server.addr, "/api/live/websocket?vsn=2.0.0")
        .await
        .expect("upgraded");
    client.join_ok("room:1", "1").await;
    assert_eq!(
        upgrade(server.addr, "/api/live/other").await.err(),
        Some(404)
    );
}
