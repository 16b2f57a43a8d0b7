//! The long-poll transport, `/socket/longpoll`: sessions, tokens, expiry, limits and bad input,
//! driven by calling the endpoint in process (so the clock can be paused). phoenix.js itself
//! runs against it in `tests/js/test/longpoll.test.mjs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use poem::http::{Method, StatusCode};
use poem::{Endpoint, EndpointExt, Request, Route};
use presence_core::PubSub;
use presence_core::pubsub::Message;
use presence_poem::{
    CheckOrigin, ConnectError, Connected, LongPollConfig, PhoenixSocket, PhoenixSocketBuilder,
    TokenSigner,
};
use serde_json::{Value, json};

const KEY: &[u8] = b"the long-poll key of these tests, 32+ bytes";
/// The salt session tokens are signed with (pinned here: changing it logs every client out).
const SALT: &str = "presence-poem long-poll session";

fn lp_builder(pubsub: &PubSub, window: Duration) -> PhoenixSocketBuilder {
    builder(pubsub).longpoll(LongPollConfig::new().window(window).secret(KEY).unwrap())
}

fn app(socket: PhoenixSocket) -> Arc<Route> {
    Arc::new(Route::new().nest("/socket", socket))
}

/// One long-poll request: the HTTP status and the JSON body (a string when not JSON).
async fn call(
    app: &Route,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri.parse().unwrap());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = match app.call(req.body(body.to_owned())).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let status = response.status();
    let body = response.into_body().into_string().await.unwrap();
    // Long-poll answers are JSON; a 404 is poem's text.
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

/// A session as phoenix.js keeps it: its token.
struct Session {
    token: String,
}

impl Session {
    /// A GET without a token: a new session (410 and a token).
    async fn open(app: &Route, query: &str) -> Session {
        let (http, body) = call(
            app,
            Method::GET,
            &format!("/socket/longpoll?{query}"),
            &[],
            "",
        )
        .await;
        assert_eq!(http, StatusCode::OK, "long poll answers HTTP 200: {body}");
        assert_eq!(body["status"], 410, "{body}");
        Session {
            token: body["token"].as_str().expect("a token").to_owned(),
        }
    }

    async fn open_v2(app: &Route) -> Session {
        Session::open(app, "vsn=2.0.0").await
    }

    /// A poll: the status and the decoded messages.
    async fn poll(&self, app: &Route) -> (u64, Vec<Value>) {
        let uri = format!("/socket/longpoll?vsn=2.0.0&token={}", self.token);
        let (http, body) = call(app, Method::GET, &uri, &[], "").await;
        assert_eq!(http, StatusCode::OK);
        let messages = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| serde_json::from_str(m.as_str().expect("a string")).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        (body["status"].as_u64().unwrap(), messages)
    }

    /// A POST of `lines`, as phoenix.js batches them (ndjson).
    async fn post(&self, app: &Route, lines: &[Value]) -> u64 {
        let body: Vec<String> = lines.iter().map(Value::to_string).collect();
        self.post_raw(app, &body.join("\n")).await
    }

    async fn post_raw(&self, app: &Route, body: &str) -> u64 {
        post_with_token(app, &self.token, body).await
    }

    /// Polls until `n` messages have come (or a status other than 200/204).
    async fn poll_n(&self, app: &Route, n: usize) -> Vec<Value> {
        let mut all = Vec::new();
        while all.len() < n {
            let (status, messages) = self.poll(app).await;
            assert!(status == 200 || status == 204, "poll status {status}");
            all.extend(messages);
        }
        all
    }
}

async fn post_with_token(app: &Route, token: &str, body: &str) -> u64 {
    let uri = format!("/socket/longpoll?vsn=2.0.0&token={token}");
    let headers = [("content-type", "application/x-ndjson")];
    let (http, reply) = call(app, Method::POST, &uri, &headers, body).await;
    assert_eq!(http, StatusCode::OK);
    reply["status"].as_u64().unwrap()
}

/// A GET of `/socket/longpoll?{query}` with `headers`: the status its body gives, and the
/// body.
async fn get_status(app: &Route, query: &str, headers: &[(&str, &str)]) -> (u64, Value) {
    let uri = format!("/socket/longpoll?{query}");
    let (_, body) = call(app, Method::GET, &uri, headers, "").await;
    (body["status"].as_u64().unwrap(), body)
}

fn join(topic: &str, r: &str) -> Value {
    json!([r, r, topic, "phx_join", {}])
}

fn echo(topic: &str, join_ref: &str, r: &str, n: u64) -> Value {
    json!([join_ref, r, topic, "echo", {"n": n}])
}

/// `(ref, status, response)` of a reply frame.
fn reply(frame: &Value) -> (&str, &str, &Value) {
    assert_eq!(frame[3], "phx_reply", "{frame}");
    (
        frame[1].as_str().unwrap(),
        frame[4]["status"].as_str().unwrap(),
        &frame[4]["response"],
    )
}

/// The session id a token carries (its payload is readable: signed, not encrypted).
fn session_id(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    payload["d"]["s"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_session_joins_sends_batches_and_polls_in_order() {
    let pubsub = PubSub::new("test");
    let app = app(lp_builder(&pubsub, Duration::from_secs(10)).build());
    let session = Session::open_v2(&app).await;
    assert_eq!(session.post(&app, &[join("room:1", "1")]).await, 200);
    let joined = session.poll_n(&app, 1).await;
    assert_eq!(reply(&joined[0]), ("1", "ok", &json!({})));

    // One POST of five messages, as phoenix.js batches one event-loop turn's pushes.
    let batch: Vec<Value> = (0..5)
        .map(|n| echo("room:1", "1", &format!("{}", n + 10), n))
        .collect();
    assert_eq!(session.post(&app, &batch).await, 200);
    let replies = session.poll_n(&app, 5).await;
    let ns: Vec<&Value> = replies.iter().map(|r| &reply(r).2["n"]).collect();
    assert_eq!(
        ns,
        [0, 1, 2, 3, 4].map(|n| json!(n)).iter().collect::<Vec<_>>()
    );

    // phoenix.js 1.9 sends the token in a header instead of the query.
    let headers = [("x-phoenix-longpoll-token", session.token.as_str())];
    let post = Request::builder()
        .method(Method::POST)
        .uri("/socket/longpoll?vsn=2.0.0".parse().unwrap())
        .header("x-phoenix-longpoll-token", session.token.as_str())
        .body(echo("room:1", "1", "20", 20).to_string());
    let response = app.call(post).await.unwrap();
    let body: Value =
        serde_json::from_str(&response.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(body["status"], 200);
    let (_, polled) = call(&app, Method::GET, "/socket/longpoll", &headers, "").await;
    assert_eq!(polled["status"], 200, "{polled}");
    let frame: Value = serde_json::from_str(polled["messages"][0].as_str().unwrap()).unwrap();
    assert_eq!(reply(&frame).2["n"], 20);
}

#[tokio::test(start_paused = true)]
async fn an_empty_poll_waits_the_window_then_answers_204() {
    let pubsub = PubSub::new("test");
    let app = app(lp_builder(&pubsub, Duration::from_secs(10)).build());
    let session = Session::open_v2(&app).await;
    let started = tokio::time::Instant::now();
    let (status, messages) = session.poll(&app).await;
    assert_eq!((status, messages.len()), (204, 0));
    assert!(started.elapsed() >= Duration::from_secs(10));
    // A message that comes while a poll waits ends it at once.
    assert_eq!(session.post(&app, &[join("room:1", "1")]).await, 200);
    let started = tokio::time::Instant::now();
    let (status, messages) = session.poll(&app).await;
    assert_eq!((status, messages.len()), (200, 1));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_newer_poll_ends_the_one_waiting() {
    let pubsub = PubSub::new("test");
    let app = app(lp_builder(&pubsub, Duration::from_secs(10)).build());
    let session = Session::open_v2(&app).await;
    let first = {
        let (app, token) = (app.clone(), session.token.clone());
        tokio::spawn(async move { Session { token }.poll(&app).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = {
        let (app, token) = (app.clone(), session.token.clone());
        tokio::spawn(async move { Session { token }.poll(&app).await })
    };
    let started = tokio::time::Instant::now();
    assert_eq!(first.await.unwrap().0, 204);
    assert!(started.elapsed() < Duration::from_secs(1), "ended at once");
    // The newer poll gets what comes.
    assert_eq!(session.post(&app, &[join("room:1", "1")]).await, 200);
    let (status, messages) = second.await.unwrap();
    assert_eq!((status, messages.len()), (200, 1));
}

#[tokio::test(start_paused = true)]
async fn a_session_expires_when_polls_stop_and_its_channels_terminate() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_secs(2)).build();
    let app = app(socket.clone());
    let mut events = pubsub.subscribe(EVENTS);
    let session = Session::open_v2(&app).await;
    assert_eq!(session.post(&app, &[join("room:1", "1")]).await, 200);
    assert_eq!(session.poll_n(&app, 1).await.len(), 1);
    // Polling on keeps it: ten windows of empty polls.
    for _ in 0..10 {
        assert_eq!(session.poll(&app).await.0, 204);
    }
    assert_eq!(socket.open_sockets(), 1);
    assert_eq!(
        session.post(&app, &[echo("room:1", "1", "2", 2)]).await,
        200
    );
    assert_eq!(session.poll_n(&app, 1).await.len(), 1);
    // Then the client goes away: 1.5 windows (3 s) after its last poll began, the session
    // closes and its channel terminates, as a closed websocket's does.
    let started = tokio::time::Instant::now();
    let (event, payload) = next_event(&mut events).await;
    assert_eq!(
        (event.as_str(), &payload["topic"]),
        ("terminate", &json!("room:1"))
    );
    assert_eq!(payload["reason"], "Closed");
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(3), "{waited:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(socket.open_sockets(), 0);
    // Its token now gets 410 (phoenix.js reconnects and rejoins), POST and GET alike.
    assert_eq!(session.poll(&app).await.0, 410);
    assert_eq!(
        session.post(&app, &[echo("room:1", "1", "3", 3)]).await,
        410
    );
}

/// A session whose client never polls (any GET without a token starts one) holds its
/// connection slot one window only, not the 1.5 windows of a session that polls.
#[tokio::test(start_paused = true)]
async fn a_session_never_polled_expires_after_one_window() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_secs(2)).build();
    let app = app(socket.clone());
    let _session = Session::open_v2(&app).await;
    assert_eq!(socket.open_sockets(), 1);
    tokio::time::sleep(Duration::from_millis(1_900)).await;
    assert_eq!(socket.open_sockets(), 1, "still there within the window");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(socket.open_sockets(), 0, "gone after one window");
}

/// Long-poll sessions have a cap of their own, below the connection limit websockets share.
#[tokio::test(start_paused = true)]
async fn long_poll_sessions_have_their_own_cap() {
    let pubsub = PubSub::new("test");
    let config = LongPollConfig::new()
        .window(Duration::from_secs(2))
        .secret(KEY)
        .unwrap()
        .max_sessions(2);
    let socket = builder(&pubsub)
        .max_connections(10)
        .longpoll(config)
        .build();
    let app = app(socket.clone());
    let first = Session::open_v2(&app).await;
    let _second = Session::open_v2(&app).await;
    let (_, body) = call(&app, Method::GET, "/socket/longpoll?vsn=2.0.0", &[], "").await;
    assert_eq!(body["status"], 500, "over the cap: {body}");
    assert_eq!(socket.open_sockets(), 2);
    // The sessions that exist go on.
    assert_eq!(first.post(&app, &[join("room:1", "1")]).await, 200);
    assert_eq!(first.poll_n(&app, 1).await.len(), 1);
    // Once one ends, a new one starts.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(socket.open_sockets(), 1);
    let _third = Session::open_v2(&app).await;
}

/// A window too long for arithmetic is clamped (to an hour): requests do not panic.
#[tokio::test(start_paused = true)]
async fn a_huge_window_is_clamped_and_serves() {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub)
        .longpoll(
            LongPollConfig::new()
                .window(Duration::MAX)
                .secret(KEY)
                .unwrap(),
        )
        .build();
    let app = app(socket.clone());
    let session = Session::open_v2(&app).await;
    let start = tokio::time::Instant::now();
    assert_eq!(session.poll(&app).await.0, 204);
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
}

/// A query string that does not parse is refused without being logged: on long poll it may
/// hold a session token or the app's own token param.
#[tokio::test]
async fn an_unparsable_query_is_refused_and_not_logged() {
    #[derive(Clone, Default)]
    struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    // A current-thread runtime: the subscriber sees everything this test runs.
    let _guard = tracing::subscriber::set_default(subscriber);
    let pubsub = PubSub::new("test");
    let app = app(lp_builder(&pubsub, Duration::from_secs(2)).build());
    let uri = "/socket/longpoll?vsn=2.0.0&token=SECRET-USER-TOKEN&bad=%zz";
    let (_, body) = call(&app, Method::GET, uri, &[], "").await;
    assert_eq!(body["status"], 403, "{body}");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("unparsable query string"), "{logs}");
    assert!(!logs.contains("SECRET-USER-TOKEN"), "{logs}");
}

/// An owner replies to reply topics only: a request naming another topic (a channel's) as its
/// reply topic is dropped.
#[tokio::test(start_paused = true)]
async fn an_owner_replies_to_reply_topics_only() {
    let pubsub = PubSub::new("a");
    let app = app(lp_builder(&pubsub, Duration::from_secs(2)).build());
    let session = Session::open_v2(&app).await;
    let mut room = pubsub.subscribe("room:victim");
    let request =
        json!({"reply": "room:victim", "r": "x", "s": session_id(&session.token), "node": "a"});
    pubsub
        .broadcast(Message::json(
            format!("phx:lp:{}", session_id(&session.token)),
            "send",
            request,
        ))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), room.recv()).await;
    assert!(got.is_err(), "a reply reached a channel's topic: {got:?}");
}

#[tokio::test]
async fn bad_input_gets_its_status_and_touches_no_other_session() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_millis(300))
        .max_message_size(4096)
        .build();
    let app = app(socket);
    let a = Session::open_v2(&app).await;
    let b = Session::open_v2(&app).await;
    assert_ne!(session_id(&a.token), session_id(&b.token));
    for s in [&a, &b] {
        assert_eq!(s.post(&app, &[join("room:1", "1")]).await, 200);
        assert_eq!(s.poll_n(&app, 1).await.len(), 1);
    }

    // Forged: A's token with another payload (B's id), or signed with another key.
    let parts: Vec<&str> = a.token.split('.').collect();
    let b_payload = b.token.split('.').nth(1).unwrap();
    let spliced = format!("{}.{}.{}.{}", parts[0], b_payload, parts[2], parts[3]);
    let other_key = TokenSigner::new(b"another key, also 32 bytes or more", SALT).unwrap();
    let forged = other_key.sign(&json!({"s": session_id(&a.token), "v": 2}));
    // Expired: signed with the right key, over two weeks ago.
    let signer = TokenSigner::new(KEY, SALT).unwrap();
    let old = SystemTime::now() - Duration::from_secs(15 * 86_400);
    let expired = signer.sign_at(&json!({"s": session_id(&a.token), "v": 2}), old);
    // Signed for another purpose with the same key (a user token).
    let users = TokenSigner::new(KEY, "user socket").unwrap();
    let user_token = users.sign(&json!({"s": session_id(&a.token), "v": 2}));
    for token in [
        &spliced,
        &forged,
        &expired,
        &user_token,
        &"garbage".to_owned(),
    ] {
        let line = echo("room:1", "1", "66", 66).to_string();
        assert_eq!(post_with_token(&app, token, &line).await, 410, "{token}");
        // A GET with a token that is not ours starts a new session, as in Phoenix: a socket
        // param named `token` is sent on the first poll too.
        let uri = format!("/socket/longpoll?vsn=2.0.0&token={token}");
        let (_, body) = call(&app, Method::GET, &uri, &[], "").await;
        assert_eq!(body["status"], 410, "{body}");
        let new = body["token"].as_str().unwrap();
        assert_ne!(session_id(new), session_id(&a.token));
        assert_ne!(session_id(new), session_id(&b.token));
    }

    // Malformed bodies: nothing of the batch is handled, not even its good lines.
    let good = echo("room:1", "1", "77", 77).to_string();
    for body in [
        "[1,2".to_owned(),
        format!("{good}\n[\"1\",\"78\",\"room:1\"]"),
        format!("{good}\nnot base64!"),
        "{\"topic\":\"room:1\"}".to_owned(),
    ] {
        assert_eq!(a.post_raw(&app, &body).await, 400, "{body}");
    }
    // Oversize: over max_message_size, or more messages than a batch.
    let big = echo("room:1", "1", "79", 79)
        .to_string()
        .replace("79}", &format!("79,\"pad\":\"{}\"}}", "x".repeat(5000)));
    assert_eq!(a.post_raw(&app, &big).await, 413);
    let many: Vec<Value> = (0..101).map(|n| echo("room:1", "1", "80", n)).collect();
    let many: Vec<String> = many.iter().map(Value::to_string).collect();
    assert_eq!(a.post_raw(&app, &many.join("\n")).await, 413);
    // None of it reached A's channel: the next reply is to the next good message.
    assert_eq!(a.post(&app, &[echo("room:1", "1", "81", 81)]).await, 200);
    let replies = a.poll_n(&app, 1).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(reply(&replies[0]).0, "81");
    // And B never saw any of it.
    assert_eq!(b.post(&app, &[echo("room:1", "1", "82", 82)]).await, 200);
    let replies = b.poll_n(&app, 1).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(reply(&replies[0]).0, "82");

    // Other methods, and the CORS preflight.
    let (http, _) = call(&app, Method::PUT, "/socket/longpoll", &[], "").await;
    assert_eq!(http, StatusCode::BAD_REQUEST);
    let (http, _) = call(&app, Method::OPTIONS, "/socket/longpoll", &[], "").await;
    assert_eq!(http, StatusCode::OK);
}

/// The messages in answers not yet read count against the session's outbound budget: a
/// client that polls but leaves its answers unread gets no more than the budget out of the
/// queue, and the rest waits there (where the slow-reader bound applies).
#[tokio::test(start_paused = true)]
async fn unread_answers_count_against_the_outbound_budget() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_secs(2))
        .outbound_budget(4_000)
        .build();
    let app = app(socket);
    let session = Session::open_v2(&app).await;
    assert_eq!(session.post(&app, &[join("room:1", "1")]).await, 200);
    assert_eq!(session.poll_n(&app, 1).await.len(), 1);
    // About 1 KB a reply.
    let padded =
        |n: u64| json!(["1", n.to_string(), "room:1", "echo", {"n": n, "pad": "x".repeat(1_000)}]);
    assert_eq!(
        session
            .post(&app, &(0..3).map(padded).collect::<Vec<_>>())
            .await,
        200
    );
    // Polled, but the answer (about 3 KB) is not read.
    let uri = format!("/socket/longpoll?vsn=2.0.0&token={}", session.token);
    let held = app
        .call(
            Request::builder()
                .method(Method::GET)
                .uri(uri.parse().unwrap())
                .finish(),
        )
        .await
        .unwrap();
    assert_eq!(
        session
            .post(&app, &(3..5).map(padded).collect::<Vec<_>>())
            .await,
        200
    );
    // What is left of the budget holds none of the next replies: they stay queued.
    assert_eq!(session.poll(&app).await, (204, Vec::new()));
    // Once the first answer is read, they come.
    let first: Value =
        serde_json::from_str(&held.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(first["status"], 200);
    assert_eq!(first["messages"].as_array().unwrap().len(), 3);
    let ns: Vec<u64> = session
        .poll_n(&app, 2)
        .await
        .iter()
        .map(|r| reply(r).2["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![3, 4]);
}

#[tokio::test]
async fn a_session_that_stops_reading_is_closed_like_a_slow_websocket() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_secs(10))
        .outbound_capacity(4)
        .build();
    let app = app(socket.clone());
    let slow = Session::open_v2(&app).await;
    let other = Session::open_v2(&app).await;
    assert_eq!(slow.post(&app, &[join("room:1", "1")]).await, 200);
    let echoes: Vec<Value> = (0..8).map(|n| echo("room:1", "1", "2", n)).collect();
    assert_eq!(slow.post(&app, &echoes).await, 200);
    // Nine replies for a queue of four: it passes its bound, however many a poll takes while
    // the channel is still replying. The session closes (1013 on a websocket), its queue is
    // dropped, and a poll is told it is gone: phoenix.js reconnects.
    let mut received = 0;
    loop {
        let (status, messages) = slow.poll(&app).await;
        received += messages.len();
        if status == 410 {
            break;
        }
        assert_eq!(status, 200, "no empty poll before the close");
    }
    assert!(
        received < 9,
        "{received} replies delivered: the queue never overflowed"
    );
    assert_eq!(other.post(&app, &[join("room:1", "1")]).await, 200);
    assert_eq!(other.poll_n(&app, 1).await.len(), 1);
}

#[tokio::test]
async fn connects_are_checked_as_websockets_are() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_secs(10))
        .check_origin(CheckOrigin::allow(["https://example.com"]).unwrap())
        .on_connect(|info| async move {
            match info.params.get("user").map(String::as_str) {
                Some("ann") => Ok(Connected::new().id("user:ann")),
                _ => Err(ConnectError::new("who?")),
            }
        })
        .max_connections(1)
        .build();
    let app = app(socket.clone());
    // A refused connect, a refused origin, an unknown vsn: 403 (phoenix.js stops).
    let evil = [("origin", "https://evil.example")];
    let ok = [("origin", "https://example.com")];
    assert_eq!(get_status(&app, "vsn=2.0.0&user=bob", &[]).await.0, 403);
    assert_eq!(get_status(&app, "vsn=2.0.0&user=ann", &evil).await.0, 403);
    assert_eq!(get_status(&app, "vsn=9.0.0&user=ann", &[]).await.0, 403);
    let (status, body) = get_status(&app, "vsn=2.0.0&user=ann", &ok).await;
    assert_eq!(status, 410);
    let ann = Session {
        token: body["token"].as_str().unwrap().to_owned(),
    };
    // Each request is checked, not only the first.
    let query = format!("vsn=2.0.0&token={}", ann.token);
    assert_eq!(get_status(&app, &query, &evil).await.0, 403);
    // Sessions count as connections: at the limit, 500 (phoenix.js retries later).
    assert_eq!(get_status(&app, "vsn=2.0.0&user=ann", &[]).await.0, 500);
    // The socket id's `disconnect` broadcast ends the session: its poll gets 410.
    let poll = {
        let (app, token) = (app.clone(), ann.token.clone());
        tokio::spawn(async move { Session { token }.poll(&app).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    pubsub
        .broadcast(Message::json("user:ann", "disconnect", json!({})))
        .unwrap();
    let (status, _) = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap();
    assert_eq!(status, 410);
    // A drain refuses new sessions with 500, after closing the others.
    tokio::time::timeout(DEADLINE, socket.drain())
        .await
        .unwrap();
    let (_, body) = call(
        &app,
        Method::GET,
        "/socket/longpoll?vsn=2.0.0&user=ann",
        &[],
        "",
    )
    .await;
    assert_eq!(body["status"], 500);
}

#[tokio::test]
async fn long_poll_is_off_unless_turned_on() {
    let pubsub = PubSub::new("test");
    let app = app(builder(&pubsub).build());
    let (http, _) = call(&app, Method::GET, "/socket/longpoll?vsn=2.0.0", &[], "").await;
    assert_eq!(http, StatusCode::NOT_FOUND);
    // A middleware-wrapped app serves it too.
    let socket = lp_builder(&pubsub, Duration::from_secs(1)).build();
    let wrapped = Route::new().nest("/socket", socket.with(poem::middleware::Tracing));
    let (_, body) = call(&wrapped, Method::GET, "/socket/longpoll?vsn=2.0.0", &[], "").await;
    assert_eq!(body["status"], 410);
}

/// Two nodes of an in-process cluster, each with its socket (same long-poll key unless
/// `key_b` differs), served in process.
fn two_nodes(window: Duration, key_b: &[u8]) -> (Arc<Route>, Arc<Route>, PubSub) {
    let cluster = presence_core::pubsub::LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b").adapter(cluster.adapter()).build();
    let node_a = app(lp_builder(&a, window).build());
    let socket_b = builder(&b)
        .longpoll(LongPollConfig::new().window(window).secret(key_b).unwrap())
        .build();
    (node_a, app(socket_b), a)
}

#[tokio::test]
async fn polls_and_sends_reach_the_session_from_any_node_once_and_in_order() {
    let (a, b, _) = two_nodes(Duration::from_millis(500), KEY);
    let session = Session::open_v2(&a).await;
    // Joined through B, the reply polled through A: the session lives on A.
    assert_eq!(session.post(&b, &[join("room:1", "1")]).await, 200);
    let joined = session.poll_n(&a, 1).await;
    assert_eq!(reply(&joined[0]), ("1", "ok", &json!({})));
    // Batches of echoes sent through A and B in turn, polled through B and A in turn.
    let mut got = Vec::new();
    for round in 0..10u64 {
        let via = if round % 2 == 0 { &a } else { &b };
        let batch: Vec<Value> = (0..3)
            .map(|i| echo("room:1", "1", "2", round * 3 + i))
            .collect();
        assert_eq!(session.post(via, &batch).await, 200, "round {round}");
        let poll_via = if round % 2 == 0 { &b } else { &a };
        let (status, messages) = session.poll(poll_via).await;
        assert!(status == 200 || status == 204, "round {round}: {status}");
        got.extend(messages);
    }
    while got.len() < 30 {
        let (status, messages) = session.poll(&b).await;
        assert!(status == 200 || status == 204, "{status}");
        got.extend(messages);
    }
    let ns: Vec<u64> = got
        .iter()
        .map(|r| reply(r).2["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..30).collect::<Vec<_>>(), "each once, in order");
    // An empty poll through the other node waits its window and answers 204.
    assert_eq!(session.poll(&b).await.0, 204);
    // A token of a session no node holds: 410 from either node (B after asking the cluster).
    let gone = TokenSigner::new(KEY, SALT)
        .unwrap()
        .sign(&json!({"s": "no-such-session", "v": 2, "n": "a"}));
    assert_eq!(
        post_with_token(&a, &gone, &echo("room:1", "1", "3", 3).to_string()).await,
        410
    );
    assert_eq!(
        post_with_token(&b, &gone, &echo("room:1", "1", "3", 3).to_string()).await,
        410
    );
}

/// Two sockets on one pub/sub (as two endpoints of one node, or a node restarted under the
/// same name) route requests at the same time: each poll gets its own session's messages.
#[tokio::test]
async fn routed_requests_of_two_sockets_on_one_pubsub_get_their_own_answers() {
    let cluster = presence_core::pubsub::LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b").adapter(cluster.adapter()).build();
    let window = Duration::from_secs(5);
    let owner = app(lp_builder(&a, window).build());
    let b1 = app(lp_builder(&b, window).build());
    let b2 = app(lp_builder(&b, window).build());
    let x = Session::open_v2(&owner).await;
    let y = Session::open_v2(&owner).await;
    for s in [&x, &y] {
        assert_eq!(s.post(&owner, &[join("room:1", "1")]).await, 200);
        assert_eq!(reply(&s.poll_n(&owner, 1).await[0]).1, "ok");
    }
    for round in 0..5u64 {
        assert_eq!(
            x.post(&owner, &[echo("room:1", "1", "2", round)]).await,
            200
        );
        assert_eq!(
            y.post(&owner, &[echo("room:1", "1", "2", 100 + round)])
                .await,
            200
        );
        let ((sx, mx), (sy, my)) = tokio::join!(x.poll(&b1), y.poll(&b2));
        assert_eq!((sx, sy), (200, 200), "round {round}");
        let ns = |m: &[Value]| -> Vec<u64> {
            m.iter()
                .map(|r| reply(r).2["n"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(ns(&mx), vec![round], "round {round}: X's own");
        assert_eq!(ns(&my), vec![100 + round], "round {round}: Y's own");
    }
}

/// Routed requests go to the node named in the session token only, and their answers to the
/// asking node only: a third node sees none of them.
#[tokio::test]
async fn routed_requests_and_answers_reach_only_the_two_nodes_concerned() {
    let cluster = presence_core::pubsub::LocalCluster::new();
    let a = PubSub::builder("a").adapter(cluster.adapter()).build();
    let b = PubSub::builder("b").adapter(cluster.adapter()).build();
    let c = PubSub::builder("c").adapter(cluster.adapter()).build();
    let window = Duration::from_secs(5);
    let node_a = app(lp_builder(&a, window).build());
    let node_b = app(lp_builder(&b, window).build());
    let session = Session::open_v2(&node_a).await;
    // A spy on C, on the session's topic and every other long-poll topic it can name.
    let mut spy = c.subscribe(&format!("phx:lp:{}", session_id(&session.token)));
    assert_eq!(session.post(&node_b, &[join("room:1", "1")]).await, 200);
    assert_eq!(reply(&session.poll_n(&node_b, 1).await[0]).1, "ok");
    // A request C would have had to see, had requests been broadcast: a later one, so the
    // earlier ones were delivered (or not) by now, in order.
    a.broadcast(Message::json(
        format!("phx:lp:{}", session_id(&session.token)),
        "marker",
        json!({}),
    ))
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), spy.recv())
        .await
        .expect("the marker")
        .unwrap();
    assert_eq!(first.event(), "marker", "C saw a routed request");
}

/// A token naming this node for a session it no longer holds (a node restarted under the same
/// name) is answered 410 at once, without a round trip nor the 2 s wait.
#[tokio::test(start_paused = true)]
async fn a_token_of_a_session_this_node_no_longer_holds_is_gone_at_once() {
    let (a, _, _) = two_nodes(Duration::from_secs(5), KEY);
    let gone = TokenSigner::new(KEY, SALT)
        .unwrap()
        .sign(&json!({"s": "no-such-session", "v": 2, "n": "a"}));
    let start = tokio::time::Instant::now();
    assert_eq!(
        post_with_token(&a, &gone, &echo("room:1", "1", "3", 3).to_string()).await,
        410
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_node_with_another_key_refuses_the_session_token() {
    let (a, b, _) = two_nodes(
        Duration::from_millis(500),
        b"a key of another cluster, 32 bytes+",
    );
    let session = Session::open_v2(&a).await;
    assert_eq!(session.post(&b, &[join("room:1", "1")]).await, 410);
    // Nothing reached the session.
    assert_eq!(session.poll(&a).await, (204, Vec::new()));
}

#[tokio::test]
async fn v1_sessions_speak_json_objects() {
    let pubsub = PubSub::new("test");
    let app = app(lp_builder(&pubsub, Duration::from_millis(300)).build());
    let session = Session::open(&app, "vsn=1.0.0").await;
    let v1_join = json!({"topic": "room:1", "event": "phx_join", "payload": {}, "ref": "1"});
    // phoenix.js's V1 serializer also writes one JSON object per line.
    assert_eq!(session.post(&app, &[v1_join]).await, 200);
    let uri = format!("/socket/longpoll?vsn=1.0.0&token={}", session.token);
    let (_, body) = call(&app, Method::GET, &uri, &[], "").await;
    assert_eq!(body["status"], 200, "{body}");
    let frame: Value = serde_json::from_str(body["messages"][0].as_str().unwrap()).unwrap();
    assert_eq!(frame["event"], "phx_reply");
    assert_eq!(frame["payload"]["status"], "ok");
    // A V2 array is not a V1 message: refused whole.
    assert_eq!(session.post(&app, &[join("room:2", "2")]).await, 400);
}

// Paused: the bucket refills by the clock, and no token may come back during the test.
#[tokio::test(start_paused = true)]
async fn a_sessions_messages_count_against_the_socket_rates() {
    let pubsub = PubSub::new("test");
    let socket = lp_builder(&pubsub, Duration::from_millis(300))
        .message_rate(presence_poem::RateLimit::new(1, 3))
        .build();
    let app = app(socket);
    let session = Session::open_v2(&app).await;
    assert_eq!(session.post(&app, &[join("room:1", "1")]).await, 200);
    assert_eq!(session.poll_n(&app, 1).await.len(), 1);
    // The join took one of three; of four echoes in one POST, two are handled.
    let echoes: Vec<Value> = (0..4)
        .map(|n| echo("room:1", "1", &format!("{}", 10 + n), n))
        .collect();
    assert_eq!(session.post(&app, &echoes).await, 200);
    let replies = session.poll_n(&app, 4).await;
    // Refusals are answered by the socket at once, replies by the channel's task: sorted by
    // ref, as phoenix.js matches them.
    let mut statuses: Vec<(&str, &str)> = replies
        .iter()
        .map(|r| {
            let (r, status, _) = reply(r);
            (r, status)
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [("10", "ok"), ("11", "ok"), ("12", "error"), ("13", "error")]
    );
    let refused = replies.iter().find(|r| reply(r).0 == "13").unwrap();
    assert_eq!(reply(refused).2["reason"], "rate limited");
}
