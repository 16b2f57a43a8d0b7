//! Messages longer than 2 KiB go out as websocket fragments (so that no socket keeps a write
//! buffer the size of the largest message it was sent), and clients receive them whole.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_long_text_reply_arrives_whole_in_fragments() {
    let server = default_server().await;
    let mut client = Client::with_max_frame(server.addr, 2048).await;
    client.join_ok("room:1", "1").await;
    // Not a multiple of the fragment size, and multi-byte characters split across fragments.
    let text = "é✓".repeat(7_000);
    client
        .send(
            Some("1"),
            Some("2"),
            "room:1",
            "echo",
            json!({"text": text}),
        )
        .await;
    let reply = client.recv().await;
    assert_eq!(reply.payload["status"], "ok");
    assert_eq!(reply.payload["response"]["text"], text.as_str());
    // The socket goes on with short frames.
    client.heartbeat("3").await;
}

#[tokio::test]
async fn a_long_binary_reply_arrives_whole_in_fragments() {
    let server = default_server().await;
    let mut client = Client::with_max_frame(server.addr, 2048).await;
    client.join_ok("room:1", "1").await;
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    client
        .send_raw(binary_push(b"1", b"2", b"room:1", b"echo", &body))
        .await;
    let reply = client.recv_binary().await;
    assert!(
        reply.ends_with(&body),
        "the reply ends with the echoed body ({} bytes)",
        reply.len()
    );
    client.heartbeat("3").await;
}
