//! V2 binary frames: client push (kind 0), server push (kind 0, no ref), reply (kind 1),
//! broadcast (kind 2).

mod common;

use bytes::Bytes;
use common::*;
use presence_core::pubsub::Message;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn binary_push_gets_a_binary_reply() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send_raw(binary_push(
        b"1",
        b"22",
        b"room:1",
        b"echo",
        b"\x01\x02\x03",
    ))
    .await;
    let reply = c.recv_binary().await;
    let mut expected = vec![1u8, 1, 2, 6, 2];
    expected.extend_from_slice(b"122room:1ok\x01\x02\x03");
    assert_eq!(&reply[..], &expected[..]);
}

#[tokio::test]
async fn binary_server_push_has_no_ref() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "12").await;
    c.send(Some("12"), Some("2"), "room:1", "binary_push", json!({}))
        .await;
    let push = c.recv_binary().await;
    let mut expected = vec![0u8, 2, 6, 3];
    expected.extend_from_slice(b"12room:1bin\x00\x01\xff");
    assert_eq!(&push[..], &expected[..]);
}

#[tokio::test]
async fn binary_broadcast_is_kind_2() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    server
        .pubsub
        .broadcast(Message::binary(
            "room:1",
            "blob",
            Bytes::from_static(b"\xca\xfe"),
        ))
        .unwrap();
    let frame = c.recv_binary().await;
    let mut expected = vec![2u8, 6, 4];
    expected.extend_from_slice(b"room:1blob\xca\xfe");
    assert_eq!(&frame[..], &expected[..]);
}

#[tokio::test]
async fn malformed_binary_frame_closes_1007() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    let mut other = Client::v2(server.addr).await;
    c.send_raw(WsMessage::binary(vec![0u8, 9, 9, 9, 9, b'x']))
        .await;
    assert_eq!(close_code(c.closed().await), 1007);
    assert_eq!(other.heartbeat("1").await.payload["status"], "ok");
}

#[tokio::test]
async fn binary_push_with_an_empty_join_ref_is_stale() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send_raw(binary_push(b"", b"2", b"room:1", b"echo", b"\x01"))
        .await;
    // Dropped as stale, as in Phoenix: the next frame is the heartbeat's reply.
    let reply = c.heartbeat("3").await;
    assert_eq!(
        (reply.topic.as_str(), reply.reference),
        ("phoenix", json!("3"))
    );
    // With the channel's join_ref it is handled.
    c.send_raw(binary_push(b"1", b"4", b"room:1", b"echo", b"\x01"))
        .await;
    assert_eq!(&c.recv_binary().await[..2], &[1u8, 1]);
}

#[tokio::test]
async fn binary_header_field_that_is_not_utf8_closes_1007() {
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    c.send_raw(binary_push(b"\xff", b"2", b"room:1", b"echo", b""))
        .await;
    assert_eq!(close_code(c.closed().await), 1007);
}
