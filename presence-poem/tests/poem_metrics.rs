//! The endpoint's metrics move as real sockets connect, get refused, join, flood and stop
//! reading (OBSERVABILITY.md lists them). Each test records into a recorder of its own,
//! installed on its current-thread runtime, so parallel tests never see each other's counts.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use bytes::Bytes;
use common::*;
use presence_core::PubSub;
use presence_core::pubsub::Message;
use presence_poem::RateLimit;
use recorder::TestRecorder;
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const ROOM: &[(&str, &str)] = &[("route", "room:*")];

#[tokio::test]
async fn a_connect_a_join_and_a_close_are_counted() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let server = default_server().await;

    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:1", "1").await;
    rec.eventually(DEADLINE, "joined", |m| {
        m.gauge("presence_channels_joined", ROOM) == 1.0
    })
    .await;
    assert_eq!(rec.counter("presence_socket_connects_total", &[]), 1);
    assert_eq!(rec.gauge("presence_sockets_open", &[]), 1.0);
    assert_eq!(
        rec.counter(
            "presence_channel_joins_total",
            &[("route", "room:*"), ("outcome", "ok")]
        ),
        1
    );
    assert_eq!(
        rec.histogram("presence_channel_join_duration_seconds", ROOM)
            .len(),
        1
    );
    // A join to no route is refused, under its own label.
    c.send(Some("2"), Some("2"), "nowhere", "phx_join", json!({}))
        .await;
    assert_eq!(c.recv().await.payload["status"], "error");
    assert_eq!(
        rec.counter(
            "presence_channel_joins_total",
            &[("route", "unmatched"), ("outcome", "refused")]
        ),
        1
    );
    // Three frames in (two joins and nothing else), at least the two replies out.
    assert_eq!(rec.counter("presence_socket_frames_received_total", &[]), 2);
    assert!(rec.counter("presence_socket_bytes_received_total", &[]) > 20);
    assert!(rec.counter("presence_socket_frames_sent_total", &[]) >= 2);
    assert!(rec.counter("presence_socket_bytes_sent_total", &[]) > 20);

    c.ws.close(None).await.unwrap();
    rec.eventually(DEADLINE, "closed", |m| {
        m.gauge("presence_sockets_open", &[]) == 0.0
    })
    .await;
    assert_eq!(rec.gauge("presence_channels_joined", ROOM), 0.0);
    assert_eq!(
        rec.counter("presence_socket_closes_total", &[("code", "1000")]),
        1
    );
    assert_eq!(
        rec.histogram("presence_socket_outbound_queue_peak_bytes", &[])
            .len(),
        1
    );
}

#[tokio::test]
async fn a_refused_origin_is_counted_by_reason() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let server = default_server().await;
    let mut req = request(server.addr, "vsn=2.0.0");
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_static("https://evil.example.com"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(
        rec.counter("presence_socket_refusals_total", &[("reason", "origin")]),
        1
    );
    assert_eq!(rec.counter_total("presence_socket_refusals_total"), 1);
    assert_eq!(rec.counter("presence_socket_connects_total", &[]), 0);
    assert_eq!(rec.gauge("presence_sockets_open", &[]), 0.0);
}

#[tokio::test]
async fn rate_limit_hits_and_the_1008_close_are_counted() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).message_rate(RateLimit::new(1, 5)).build();
    let server = serve(pubsub, socket.clone()).await;
    let mut flooder = Client::v2(server.addr).await;
    flooder.join_ok("room:1", "1").await;
    for i in 0..100 {
        let r = (i + 2).to_string();
        flooder
            .send(Some("1"), Some(&r), "room:1", "echo", json!({"i": i}))
            .await;
    }
    assert_eq!(
        close_code(
            tokio::time::timeout(DEADLINE, flooder.closed())
                .await
                .unwrap()
        ),
        1008
    );
    rec.eventually(DEADLINE, "the 1008 close", |m| {
        m.counter("presence_socket_closes_total", &[("code", "1008")]) == 1
    })
    .await;
    // Refused past the burst until 2 × burst refusals, then closed: at least 11 hits.
    let hits = rec.counter(
        "presence_socket_rate_limited_total",
        &[("limit", "message")],
    );
    assert!(hits > 10, "{hits} rate limit hits");
    let recent = socket.recent_closes();
    assert_eq!(recent.len(), 1);
    assert_eq!((recent[0].code, recent[0].reason), (1008, "rate limited"));
}

#[tokio::test]
async fn a_slow_client_close_is_counted() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).outbound_capacity(8).build();
    let server = serve(pubsub.clone(), socket.clone()).await;
    let mut events = pubsub.subscribe(EVENTS);

    // A client with a tiny receive buffer that stops reading after joining (as in
    // poem_limits.rs).
    let mut slow = Client::with_small_recv_buffer(server.addr).await;
    slow.join_ok("room:slow", "1").await;
    let blob = Bytes::from(vec![7u8; 16 * 1024]);
    for sent in 0.. {
        pubsub
            .broadcast(Message::binary("room:slow", "blob", blob.clone()))
            .unwrap();
        tokio::task::yield_now().await;
        if events.try_recv().is_ok() {
            break;
        }
        assert!(sent < 20_000, "the slow client was never closed");
    }
    rec.eventually(DEADLINE, "the 1013 close", |m| {
        m.counter("presence_socket_closes_total", &[("code", "1013")]) == 1
    })
    .await;
    assert_eq!(rec.counter("presence_socket_slow_closes_total", &[]), 1);
    assert_eq!(socket.recent_closes()[0].code, 1013);
    // Its queue peaked at no more than 8 frames of the blob.
    let peaks = rec.histogram("presence_socket_outbound_queue_peak_bytes", &[]);
    assert_eq!(peaks.len(), 1);
    assert!(
        peaks[0] > 16_000.0 && peaks[0] <= 9.0 * 16_500.0,
        "{peaks:?}"
    );
    drop(slow);
}

#[tokio::test]
async fn diffs_merged_by_a_hub_are_counted() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let server = default_server().await;
    let mut c = Client::v2(server.addr).await;
    c.join_ok("room:d", "1").await;
    let window = std::time::Duration::from_secs(1);
    // Three diffs within one window: the first goes out at once, the next two merge.
    for key in ["a", "b", "c"] {
        let diff = json!({"joins": {key: {"metas": [{"phx_ref": key}]}}, "leaves": {}});
        let message = Message::json("room:d", "presence_diff", diff).with_merge_window(window);
        server.pubsub.local_broadcast(message);
    }
    assert_eq!(c.recv().await.event, "presence_diff");
    assert_eq!(c.recv().await.event, "presence_diff");
    assert_eq!(rec.counter("presence_hub_diffs_broadcast_total", &[]), 2);
    assert_eq!(
        rec.counter("presence_diffs_coalesced_total", &[("where", "hub")]),
        1
    );
}

#[tokio::test]
async fn a_long_poll_session_counts_as_a_connect_and_an_open_socket() {
    let rec = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&rec);
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .longpoll(presence_poem::LongPollConfig::new())
        .build();
    let app = poem::Route::new().nest("/socket", socket.clone());
    let token = joined_longpoll_session(&app).await;
    assert_eq!(rec.counter("presence_socket_connects_total", &[]), 1);
    assert_eq!(rec.gauge("presence_sockets_open", &[]), 1.0);
    rec.eventually(DEADLINE, "joined", |m| {
        m.gauge("presence_channels_joined", ROOM) == 1.0
    })
    .await;
    // The join came in a POST, its reply went out in a poll's answer: one message each way.
    // The polls themselves (two so far) are no messages.
    assert_eq!(rec.counter("presence_socket_frames_received_total", &[]), 1);
    assert_eq!(rec.counter("presence_socket_frames_sent_total", &[]), 1);
    let reply_bytes = rec.counter("presence_socket_bytes_sent_total", &[]);
    assert!(reply_bytes > 20, "{reply_bytes}");

    // Two messages in one POST, two replies in one answer.
    let uri = format!("/socket/longpoll?vsn=2.0.0&token={token}");
    let heartbeats = [
        json!([null, "2", "phoenix", "heartbeat", {}]).to_string(),
        json!([null, "3", "phoenix", "heartbeat", {}]).to_string(),
    ]
    .join("\n");
    let posted = longpoll_call(&app, poem::http::Method::POST, &uri, heartbeats).await;
    assert_eq!(posted["status"], 200);
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let polled = longpoll_call(&app, poem::http::Method::GET, &uri, String::new()).await;
        assert_eq!(polled["status"], 200, "{polled}");
        for m in polled["messages"].as_array().unwrap() {
            replies.push(m.as_str().unwrap().len() as u64);
        }
    }
    assert_eq!(rec.counter("presence_socket_frames_received_total", &[]), 3);
    assert_eq!(rec.counter("presence_socket_frames_sent_total", &[]), 3);
    assert_eq!(
        rec.counter("presence_socket_bytes_sent_total", &[]),
        reply_bytes + replies.iter().sum::<u64>()
    );
}
