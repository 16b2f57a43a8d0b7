//! Idle timeout, oversize and malformed frames, slow clients.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn idle_socket_is_closed_with_1001_and_heartbeats_keep_it_open() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .idle_timeout(Duration::from_millis(500))
        .build();
    let server = serve(pubsub, socket).await;
    let mut idle = Client::v2(server.addr).await;
    let mut busy = Client::v2(server.addr).await;
    // `busy` heartbeats every 50 ms for well over the timeout.
    for i in 0..20 {
        assert_eq!(busy.heartbeat(&i.to_string()).await.payload["status"], "ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `idle` was closed long ago; `busy` is still open.
    let close = idle.closed().await.expect("a close frame");
    // Not 1000: phoenix.js treats 1000 as final and would not reconnect.
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "idle timeout");
    assert_eq!(busy.heartbeat("x").await.payload["status"], "ok");
    // Once it stops, it is closed too.
    assert_eq!(close_code(busy.closed().await), 1001);
}

#[tokio::test]
async fn oversize_frame_closes_1009() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).max_message_size(1024).build();
    let server = serve(pubsub, socket).await;
    let mut c = Client::v2(server.addr).await;
    let mut other = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    let big = "x".repeat(2048);
    c.send(Some("1"), Some("2"), "room:1", "echo", json!({"big": big}))
        .await;
    assert_eq!(close_code(c.closed().await), 1009);
    assert_eq!(other.heartbeat("1").await.payload["status"], "ok");
}

#[tokio::test]
async fn invalid_json_and_wrong_shapes_close_1007() {
    let server = default_server().await;
    let mut other = Client::v2(server.addr).await;
    other.join_ok("room:1", "1").await;
    for bad in [
        "not json",
        "{\"topic\": 1}",
        "[\"1\",\"2\",\"room:1\"]",
        "[1,2,3,4,5]",
        "",
    ] {
        let mut c = Client::v2(server.addr).await;
        c.send_raw(WsMessage::text(bad)).await;
        assert_eq!(close_code(c.closed().await), 1007, "{bad:?}");
    }
    let mut v1 = Client::v1(server.addr).await;
    v1.send_raw(WsMessage::text("[\"1\",\"2\",\"t\",\"e\",{}]"))
        .await;
    assert_eq!(close_code(v1.closed().await), 1007);
    // Nobody else noticed.
    other
        .send(Some("1"), Some("2"), "room:1", "echo", json!({}))
        .await;
    assert_eq!(other.recv().await.payload["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed_with_1013_and_others_keep_up() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).outbound_capacity(8).build();
    let server = serve(pubsub.clone(), socket).await;
    let mut events = pubsub.subscribe(EVENTS);

    // A client with a tiny receive buffer that stops reading after joining.
    let mut slow = Client::with_small_recv_buffer(server.addr).await;
    slow.join_ok("room:slow", "1").await;
    let mut fast = Client::v2(server.addr).await;
    fast.join_ok("room:slow", "1").await;

    let blob = Bytes::from(vec![7u8; 16 * 1024]);
    let mut sent = 0;
    let terminated = loop {
        pubsub
            .broadcast(Message::binary("room:slow", "blob", blob.clone()))
            .unwrap();
        sent += 1;
        // The fast client reads everything as it comes.
        assert_eq!(fast.recv_binary().await.len(), 16 * 1024 + 3 + 9 + 4);
        if let Ok(message) = events.try_recv() {
            break message;
        }
        assert!(sent < 20_000, "the slow client was never closed");
    };
    assert_eq!(terminated.event(), "terminate");
    // The slow client gets what fitted, then a 1013 close (or the connection ends if even the
    // close frame could not be written).
    let mut received = 0;
    let close = loop {
        match slow.next_message().await {
            Some(Ok(WsMessage::Binary(_))) => received += 1,
            Some(Ok(WsMessage::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(received < sent, "received {received} of {sent}");
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 1013);
    }
    assert_eq!(fast.heartbeat("2").await.payload["status"], "ok");
}

/// A client that pipelines bad frames, and goes on writing while the server closes, still
/// reads the server's 1007, every time: the server reads on until the client's close instead
/// of dropping the connection with unread data (which resets it: the client would see 1006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_bad_frames_get_1007_every_time() {
    use futures_util::{SinkExt, StreamExt};
    let server = default_server().await;
    let junk = "x".repeat(4096);
    for run in 0..20 {
        let (ws, _) = tokio_tungstenite::connect_async(url(server.addr, "vsn=2.0.0"))
            .await
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        let junk = junk.clone();
        let writer = tokio::spawn(async move {
            for i in 0..200 {
                let frame = WsMessage::text(format!("not json {run} {i} {junk}"));
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let close = loop {
            match tokio::time::timeout(DEADLINE, stream.next()).await {
                Ok(Some(Ok(WsMessage::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("run {run}: no close frame, got {other:?}"),
                Err(_) => panic!("run {run}: nothing within the deadline"),
            }
        };
        assert_eq!(close_code(close), 1007, "run {run}");
        writer.abort();
    }
}

/// A connection that sends half an HTTP request is closed at the handshake timeout, while
/// whole handshakes go through.
#[tokio::test]
async fn a_half_sent_request_is_closed_at_the_handshake_timeout() {
    use poem::listener::{Listener, TcpListener};
    use presence_poem::HandshakeTimeout;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let acceptor = HandshakeTimeout::new(acceptor).limit(Duration::from_millis(300));
    let app = poem::Route::new().at("/socket/websocket", socket);
    let server = serve_on(acceptor, pubsub, app);

    let started = tokio::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A byte now and then does not keep it open either.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server closed the half-sent request");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A whole handshake, and then a quiet websocket, are not affected.
    let mut c = Client::v2(server.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.heartbeat("1").await.payload["status"], "ok");
}
