//! The chat example's contract, over a real socket in the v2 wire format.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use presence_examples::chat::{ChatConfig, ChatServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> ChatServer {
    ChatServer::start(ChatConfig {
        port: 0,
        node_name: "contract".to_owned(),
        ..ChatConfig::default()
    })
    .await
    .expect("the chat server starts")
}

async fn connect(server: &ChatServer) -> Ws {
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.local_addr());
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connects")
        .0
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("sends");
}

/// The next text frame, as JSON; fails after 5 s.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// The next frame with this event.
async fn recv_event(ws: &mut Ws, event: &str) -> Value {
    loop {
        let frame = recv(ws).await;
        if frame[3] == event {
            return frame;
        }
    }
}

/// The next `presence_diff` that mentions `key` (a joiner also sees the diff of its own join).
async fn recv_diff_about(ws: &mut Ws, key: &str) -> Value {
    loop {
        let frame = recv_event(ws, "presence_diff").await;
        if frame[4]["joins"].get(key).is_some() || frame[4]["leaves"].get(key).is_some() {
            return frame;
        }
    }
}

async fn join(ws: &mut Ws, r: &str, topic: &str, params: Value) -> Value {
    send(ws, json!([r, r, topic, "phx_join", params])).await;
    recv_event(ws, "phx_reply").await
}

#[tokio::test]
async fn bad_join_params_get_a_reason() {
    let server = server().await;
    let mut ws = connect(&server).await;
    for (i, params) in [
        json!({}),
        json!({"user": ""}),
        json!({"user": "x".repeat(65)}),
        json!({"user": 1}),
        json!({"user": "a", "status": 2}),
        json!({"user": "a", "role": "admin"}),
        json!([1]),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = join(&mut ws, &i.to_string(), "room:lobby", params.clone()).await;
        assert_eq!(reply[4]["status"], "error", "{params}");
        assert!(
            reply[4]["response"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{reply}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn join_tracks_and_pushes_state_then_status_and_messages() {
    let server = server().await;
    let mut ann = connect(&server).await;
    let reply = join(&mut ann, "1", "room:contract", json!({"user": "ann"})).await;
    assert_eq!(
        reply,
        json!(["1", "1", "room:contract", "phx_reply", {"status": "ok", "response": {}}])
    );
    let state = recv_event(&mut ann, "presence_state").await;
    assert_eq!(state[0], "1", "pushed with the channel's join_ref");
    let meta = &state[4]["ann"]["metas"][0];
    assert_eq!(meta["status"], "online");
    assert!(
        meta["online_at"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000)
    );
    assert!(meta["phx_ref"].is_string());

    let mut bob = connect(&server).await;
    join(
        &mut bob,
        "1",
        "room:contract",
        json!({"user": "bob", "status": "busy"}),
    )
    .await;
    let diff = recv_diff_about(&mut ann, "bob").await;
    assert_eq!(diff[0], Value::Null);
    assert_eq!(diff[4]["joins"]["bob"]["metas"][0]["status"], "busy");

    // A status change is one diff: the new meta joins with phx_ref_prev, the old one leaves.
    send(
        &mut bob,
        json!(["1", "2", "room:contract", "status", {"status": "away"}]),
    )
    .await;
    let reply = recv_event(&mut bob, "phx_reply").await;
    assert_eq!(reply[4]["status"], "ok");
    let diff = recv_diff_about(&mut ann, "bob").await;
    let joined = &diff[4]["joins"]["bob"]["metas"][0];
    let left = &diff[4]["leaves"]["bob"]["metas"][0];
    assert_eq!(joined["status"], "away");
    assert_eq!(left["status"], "busy");
    assert_eq!(joined["phx_ref_prev"], left["phx_ref"]);

    send(
        &mut ann,
        json!(["1", "3", "room:contract", "new_msg", {"body": "hi bob"}]),
    )
    .await;
    let msg = recv_event(&mut bob, "new_msg").await;
    assert_eq!(msg[4], json!({"user": "ann", "body": "hi bob"}));
    assert_eq!(recv_event(&mut ann, "phx_reply").await[4]["status"], "ok");

    send(
        &mut ann,
        json!(["1", "4", "room:contract", "status", {"status": 5}]),
    )
    .await;
    assert_eq!(
        recv_event(&mut ann, "phx_reply").await[4]["status"],
        "error"
    );

    // Bob's socket closes: ann sees him leave.
    drop(bob);
    let diff = recv_diff_about(&mut ann, "bob").await;
    assert_eq!(diff[4]["leaves"]["bob"]["metas"][0]["status"], "away");
    server.shutdown().await;
}

#[tokio::test]
async fn page_and_socket_are_served() {
    let server = server().await;
    let page = reqwest_free_get(server.local_addr(), "/").await;
    assert!(
        page.contains("<select id=\"status\""),
        "the page has a status selector"
    );
    assert!(page.contains("id=\"presences\""));
    assert!(
        !page.contains("cdn") && !page.contains("https://"),
        "nothing is loaded from elsewhere"
    );
    let url = format!("ws://{}/socket/websocket?vsn=1.0.0", server.local_addr());
    let (mut v1, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("vsn 1.0.0 connects");
    v1.send(Message::text(
        json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}).to_string(),
    ))
    .await
    .unwrap();
    let reply = recv(&mut v1).await;
    assert_eq!(reply["event"], "phx_reply");
    server.shutdown().await;
}

/// The chat's `/metrics` exports histograms with fixed buckets, not as summaries (whose
/// sketches grow with the spread of the values).
#[tokio::test]
async fn metrics_histograms_have_buckets() {
    let server = server().await;
    let mut ws = connect(&server).await;
    join(&mut ws, "1", "room:metrics", json!({"user": "ann"})).await;
    let text = reqwest_free_get(server.local_addr(), "/metrics").await;
    let bucket = "presence_channel_join_duration_seconds_bucket{route=\"room:*\",le=\"0.0005\"}";
    assert!(text.contains(bucket), "{text}");
    assert!(
        text.contains(
            "presence_channel_join_duration_seconds_bucket{route=\"room:*\",le=\"+Inf\"}"
        ),
        "{text}"
    );
    assert!(!text.contains("quantile="), "no summary: {text}");
    server.shutdown().await;
}

/// A plain HTTP/1.1 GET of `path` over a TCP stream (no HTTP client dependency needed).
async fn reqwest_free_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "{}",
        &body[..body.len().min(200)]
    );
    body
}

#[tokio::test]
async fn status_and_body_lengths_are_checked_and_bad_input_changes_nothing() {
    let server = server().await;
    let mut ann = connect(&server).await;
    join(&mut ann, "1", "room:limits", json!({"user": "ann"})).await;
    recv_event(&mut ann, "presence_state").await;
    let long_status = "s".repeat(33);
    let long_body = "b".repeat(4001);
    let bad = [
        ("status", json!({"status": ""})),
        ("status", json!({"status": long_status})),
        ("status", json!({})),
        ("new_msg", json!({"body": ""})),
        ("new_msg", json!({"body": long_body})),
        ("new_msg", json!({"body": ["x"]})),
    ];
    for (i, (event, payload)) in bad.iter().enumerate() {
        let r = (10 + i).to_string();
        send(&mut ann, json!(["1", r, "room:limits", event, payload])).await;
        let reply = recv_event(&mut ann, "phx_reply").await;
        assert_eq!(reply[1], r);
        assert_eq!(reply[4]["status"], "error", "{event} {payload}");
        assert!(reply[4]["response"]["reason"].is_string());
    }
    // Nothing was broadcast or tracked: the next frames answer what follows.
    let ok_status = "s".repeat(32);
    send(
        &mut ann,
        json!(["1", "20", "room:limits", "status", {"status": ok_status}]),
    )
    .await;
    // The first diff after the refused ones (and ann's own join, which may come after the
    // state) is this status: none of them was tracked.
    loop {
        let diff = recv_event(&mut ann, "presence_diff").await;
        let status = &diff[4]["joins"]["ann"]["metas"][0]["status"];
        if status != "online" {
            assert_eq!(status, &json!(ok_status));
            break;
        }
    }
    let ok_body = "b".repeat(4000);
    send(
        &mut ann,
        json!(["1", "21", "room:limits", "new_msg", {"body": ok_body}]),
    )
    .await;
    // The first message broadcast is this one: none of the refused ones was.
    let msg = recv_event(&mut ann, "new_msg").await;
    assert_eq!(msg[4]["body"].as_str().map(str::len), Some(4000));
    // A join with a bad status is refused.
    let mut bob = connect(&server).await;
    let reply = join(
        &mut bob,
        "1",
        "room:limits",
        json!({"user": "bob", "status": "x".repeat(33)}),
    )
    .await;
    assert_eq!(reply[4]["status"], "error");
    server.shutdown().await;
}
