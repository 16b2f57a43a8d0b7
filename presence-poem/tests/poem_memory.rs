//! Memory per idle joined socket, measured as the growth of the process's resident set (server
//! and client halves both live in this process, so the figure is an upper bound for the server).

mod common;

use common::*;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::test]
async fn idle_joined_sockets_are_small() {
    const N: usize = 500;
    let server = default_server().await;
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    // Warm up (lazy statics, the hub for the topic).
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        url(server.addr, "vsn=2.0.0"),
        Some(config),
        false,
    )
    .await
    .unwrap();
    let mut warm = Client { ws, v2: true };
    warm.join_ok("room:mem", "1").await;

    if rss().is_none() {
        return; // not Linux
    }
    let before = rss().unwrap_or(0);
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            url(server.addr, "vsn=2.0.0"),
            Some(config),
            false,
        )
        .await
        .unwrap();
        let mut c = Client { ws, v2: true };
        c.join_ok("room:mem", "1").await;
        c.heartbeat("2").await;
        clients.push(c);
    }
    let per_socket = (rss().unwrap_or(0) - before) / N as isize;
    println!("~{per_socket} bytes per idle joined socket (server + client)");
    // The server side's design goal is 15 KB; server + client must stay well under 2x that.
    assert!(per_socket < 30_000, "{per_socket} bytes per socket");
}
