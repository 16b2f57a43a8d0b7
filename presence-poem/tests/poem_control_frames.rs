//! Control frames: the server answers pings and a client's close itself (tungstenite only
//! reads the frames; the socket writes its own).

mod common;

use bytes::Bytes;
use common::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The next pong's payload, skipping other messages.
async fn next_pong(client: &mut Client) -> Bytes {
    loop {
        match tokio::time::timeout(DEADLINE, client.next_message()).await {
            Ok(Some(Ok(WsMessage::Pong(payload)))) => return payload,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_ping_is_answered_with_its_payload() {
    let server = default_server().await;
    let mut client = Client::v2(server.addr).await;
    client.join_ok("room:1", "1").await;
    client
        .send_raw(WsMessage::Ping(Bytes::from_static(b"are you there")))
        .await;
    assert_eq!(&next_pong(&mut client).await[..], b"are you there");
    // The socket goes on.
    assert_eq!(client.heartbeat("2").await.event, "phx_reply");
}

#[tokio::test]
async fn a_flood_of_pings_costs_one_pong_at_a_time() {
    let server = default_server().await;
    let mut client = Client::v2(server.addr).await;
    for i in 0..2_000u32 {
        client
            .send_raw(WsMessage::Ping(Bytes::from(i.to_string())))
            .await;
    }
    // A heartbeat after the pings: its reply comes after any pong the server still owed.
    client
        .send(
            None,
            Some("1"),
            "phoenix",
            "heartbeat",
            serde_json::json!({}),
        )
        .await;
    let mut pongs = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, client.next_message()).await {
            Ok(Some(Ok(WsMessage::Pong(payload)))) => pongs.push(payload),
            Ok(Some(Ok(WsMessage::Text(_)))) => break,
            other => panic!("unexpected: {other:?}"),
        }
    }
    // Pings read together are answered once, by the last (RFC 6455, section 5.5.3), in the
    // order they were sent; the last ping is always answered.
    assert!(!pongs.is_empty() && pongs.len() <= 2_000);
    let numbers: Vec<u32> = pongs
        .iter()
        .map(|p| std::str::from_utf8(p).unwrap().parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(numbers.last(), Some(&1_999));
    assert_eq!(client.heartbeat("2").await.event, "phx_reply");
}

#[tokio::test]
async fn a_clients_close_is_answered_with_its_code() {
    let server = default_server().await;
    let mut client = Client::v2(server.addr).await;
    client.join_ok("room:1", "1").await;
    client
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        }))
        .await
        .expect("the close frame is sent");
    let answer = client.closed().await;
    assert_eq!(close_code(answer), 4001);
}
