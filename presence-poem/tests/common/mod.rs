//! Shared helpers for the `poem_*` integration tests: a loopback server, a raw websocket
//! client speaking V1/V2, and a scriptable test channel.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use poem::http::Method;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Endpoint, Request, Route, Server};
use presence_core::PubSub;
use presence_core::pubsub::{Message, Payload, Subscription};
use presence_poem::{
    Channel, ChannelContext, HandleIn, Info, Join, PhoenixSocket, PhoenixSocketBuilder, Reply,
    StopReason,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous deadline for anything the server should do "soon".
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A plain HTTP/1.1 GET over loopback (no upgrade): the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let status = response.split(' ').nth(1).expect("a status line");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head");
    (status.parse().expect("a status code"), body.to_owned())
}

/// The pub/sub topic where test channels report `terminate` and context drops.
pub const EVENTS: &str = "test:events";

/// A running server; aborted when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub pubsub: PubSub,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default test socket: `room:*` and `lobby` routed to [`TestChannel`].
pub fn builder(pubsub: &PubSub) -> PhoenixSocketBuilder {
    PhoenixSocket::builder(pubsub.clone())
        .channel("room:*", TestChannel::default)
        .channel("lobby", TestChannel::default)
}

pub async fn serve(pubsub: PubSub, socket: PhoenixSocket) -> TestServer {
    serve_app(pubsub, Route::new().at("/socket/websocket", socket)).await
}

/// Serves any app (e.g. a route wrapped in middleware) on a loopback port.
pub async fn serve_app(pubsub: PubSub, app: impl Endpoint + 'static) -> TestServer {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    serve_on(acceptor, pubsub, app)
}

/// Serves any app on a listener of the test's own (e.g. with socket options set).
pub fn serve_on(
    acceptor: impl Acceptor + 'static,
    pubsub: PubSub,
    app: impl Endpoint + 'static,
) -> TestServer {
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("a socket address");
    let task = tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor).run(app).await;
    });
    TestServer { addr, pubsub, task }
}

/// A server with the default test socket.
pub async fn default_server() -> TestServer {
    let pubsub = PubSub::new("test");
    let socket = builder(&pubsub).build();
    serve(pubsub, socket).await
}

pub fn url(addr: SocketAddr, query: &str) -> String {
    format!("ws://{addr}/socket/websocket?{query}")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw client. `v2` selects the frame shape used by `send`/`recv`.
pub struct Client {
    pub ws: Ws,
    pub v2: bool,
}

/// What the client received, normalised to the V2 tuple (V1 has no join_ref on output).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Value,
    pub reference: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

impl Client {
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url(addr, query))
            .await
            .expect("connect");
        Client {
            ws,
            v2: query.contains("vsn=2."),
        }
    }

    pub async fn v2(addr: SocketAddr) -> Client {
        Self::connect(addr, "vsn=2.0.0").await
    }

    pub async fn v1(addr: SocketAddr) -> Client {
        Self::connect(addr, "vsn=1.0.0").await
    }

    /// A V2 client that refuses any websocket frame longer than `max_frame` bytes (a message
    /// may still be longer, in fragments).
    pub async fn with_max_frame(addr: SocketAddr, max_frame: usize) -> Client {
        let config =
            tungstenite::protocol::WebSocketConfig::default().max_frame_size(Some(max_frame));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            url(addr, "vsn=2.0.0"),
            Some(config),
            false,
        )
        .await
        .expect("handshake");
        Client { ws, v2: true }
    }

    /// A V2 client with a 4 KiB TCP receive buffer: when it stops reading, what the server
    /// sends backs up into the server's queue instead of the kernel's buffers.
    pub async fn with_small_recv_buffer(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(
            url(addr, "vsn=2.0.0"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("handshake");
        Client { ws, v2: true }
    }

    pub async fn send(
        &mut self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = if self.v2 {
            json!([join_ref, reference, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": reference, "topic": topic, "event": event, "payload": payload})
                .to_string()
        };
        self.ws.send(WsMessage::text(text)).await.expect("send");
    }

    pub async fn send_raw(&mut self, message: WsMessage) {
        self.ws.send(message).await.expect("send");
    }

    /// The next websocket message, within [`DEADLINE`].
    pub async fn next_message(&mut self) -> Option<Result<WsMessage, tungstenite::Error>> {
        tokio::time::timeout(DEADLINE, self.ws.next())
            .await
            .expect("timed out waiting for a frame")
    }

    /// The next text frame, decoded.
    pub async fn recv(&mut self) -> Frame {
        loop {
            match self.next_message().await {
                Some(Ok(WsMessage::Text(text))) => return self.parse(&text),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    fn parse(&self, text: &str) -> Frame {
        let value: Value = serde_json::from_str(text).expect("JSON");
        if self.v2 {
            let a = value.as_array().expect("array");
            assert_eq!(a.len(), 5, "{text}");
            Frame {
                join_ref: a[0].clone(),
                reference: a[1].clone(),
                topic: a[2].as_str().unwrap().to_owned(),
                event: a[3].as_str().unwrap().to_owned(),
                payload: a[4].clone(),
            }
        } else {
            let o = value.as_object().expect("object");
            assert!(
                !o.contains_key("join_ref"),
                "V1 output has no join_ref: {text}"
            );
            Frame {
                join_ref: Value::Null,
                reference: o["ref"].clone(),
                topic: o["topic"].as_str().unwrap().to_owned(),
                event: o["event"].as_str().unwrap().to_owned(),
                payload: o["payload"].clone(),
            }
        }
    }

    /// The next binary frame.
    pub async fn recv_binary(&mut self) -> Bytes {
        match self.next_message().await {
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Joins `topic` with join_ref = ref = `r` and returns the reply.
    pub async fn join(&mut self, topic: &str, r: &str, params: Value) -> Frame {
        self.send(Some(r), Some(r), topic, "phx_join", params).await;
        self.recv().await
    }

    /// Joins and asserts the reply is ok.
    pub async fn join_ok(&mut self, topic: &str, r: &str) {
        let reply = self.join(topic, r, json!({})).await;
        assert_eq!(reply.event, "phx_reply");
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    }

    /// Reads until the server closes; returns the close frame (None if the connection
    /// ended without one). Other frames are skipped.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_message().await {
                Some(Ok(WsMessage::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Asserts nothing arrives for a short while.
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Ok(got) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("expected nothing, got {got:?}");
        }
    }

    /// Sends a heartbeat and waits for its reply (a barrier: everything the server sent before
    /// it has been received).
    pub async fn heartbeat(&mut self, r: &str) -> Frame {
        self.send(None, Some(r), "phoenix", "heartbeat", json!({}))
            .await;
        self.recv().await
    }
}

pub fn close_code(frame: Option<CloseFrame>) -> u16 {
    u16::from(frame.expect("a close frame").code)
}

/// A connect request with extra headers.
pub fn request(addr: SocketAddr, query: &str) -> tungstenite::handshake::client::Request {
    url(addr, query).into_client_request().expect("request")
}

/// Waits for the next test event (terminate / drop reports) on [`EVENTS`].
pub async fn next_event(sub: &mut Subscription) -> (String, Value) {
    let message = tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .expect("timed out waiting for a test event")
        .expect("pubsub");
    let Payload::Json(payload) = message.payload().clone() else {
        panic!("json expected")
    };
    (message.event().to_owned(), payload)
}

/// Reports on [`EVENTS`] when the channel context (and so its Owner) is dropped.
#[derive(Clone)]
struct DropReporter {
    pubsub: PubSub,
    topic: String,
}

impl Drop for DropReporter {
    fn drop(&mut self) {
        let _ = self.pubsub.broadcast(Message::json(
            EVENTS,
            "context_dropped",
            json!({"topic": self.topic}),
        ));
    }
}

/// A socket-level assign used by the connect tests.
#[derive(Clone, Debug)]
pub struct UserName(pub String);

/// A channel scripted by its join params and the events it receives.
#[derive(Default)]
pub struct TestChannel {
    handled: u64,
}

impl Channel for TestChannel {
    async fn join(&mut self, topic: &str, params: Value, ctx: &mut ChannelContext) -> Join {
        let reporter = DropReporter {
            pubsub: ctx.pubsub().clone(),
            topic: topic.to_owned(),
        };
        ctx.assigns_mut().insert(reporter);
        if params["crash"] == true {
            panic!("join crash requested");
        }
        if let Some(ms) = params["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if params["fail"] == true {
            return Join::error(json!({"reason": "refused"}));
        }
        if params["hang"] == true {
            // A join that never returns.
            std::future::pending::<()>().await;
        }
        if params["push"] == true {
            ctx.push(
                "joined_push",
                json!({"owner_id": format!("{:?}", ctx.owner().id())}),
            );
        }
        if let Some(topic) = params["subscribe"].as_str() {
            ctx.subscribe(topic);
        }
        match params.get("reply") {
            Some(reply) => Join::ok_with(reply.clone()),
            None => Join::ok(),
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> HandleIn {
        self.handled += 1;
        let json = match &payload {
            Payload::Json(v) => v.clone(),
            _ => Value::Null,
        };
        match event {
            "echo" => HandleIn::Reply(Reply::Ok(payload)),
            "fail" => HandleIn::Reply(Reply::error(json!({"reason": "failed"}))),
            "noreply" => HandleIn::NoReply,
            "stop" => HandleIn::Stop(Some(Reply::ok(json!({"bye": true})))),
            "crash" => panic!("crash requested"),
            "hang" => {
                // A handle_in that never returns.
                std::future::pending::<()>().await;
                HandleIn::NoReply
            }
            "push" => {
                ctx.push("pushed", payload);
                HandleIn::NoReply
            }
            "binary_push" => {
                ctx.push("bin", Bytes::from_static(b"\x00\x01\xff"));
                HandleIn::NoReply
            }
            "broadcast" => {
                ctx.broadcast("shout", payload).unwrap();
                HandleIn::Reply(Reply::ok(json!({})))
            }
            "broadcast_from" => {
                ctx.broadcast_from("shout", payload).unwrap();
                HandleIn::Reply(Reply::ok(json!({})))
            }
            "broadcast_from_burst" => {
                // Many broadcast_from without yielding: the topic's hub cannot run meanwhile.
                for n in 0..json["n"].as_u64().unwrap_or(0) {
                    ctx.broadcast_from("shout", json!({"n": n})).unwrap();
                }
                HandleIn::Reply(Reply::ok(json!({})))
            }
            "flood" => {
                // `n` values in the mailbox, then one message on a subscribed topic.
                let mailbox = ctx.mailbox();
                for i in 0..json["n"].as_u64().unwrap_or(0) {
                    mailbox.send(json!({"i": i})).unwrap();
                }
                let topic = json["topic"].as_str().unwrap_or_default().to_owned();
                ctx.pubsub()
                    .broadcast(Message::json(topic, "flooded", json!({})))
                    .unwrap();
                HandleIn::Reply(Reply::ok(json!({})))
            }
            "later" => {
                // Reply from handle_info, through the mailbox.
                let to = ctx.socket_ref().expect("inside handle_in");
                ctx.mailbox().send(to).unwrap();
                HandleIn::NoReply
            }
            "info" => {
                ctx.mailbox().send(json).unwrap();
                HandleIn::NoReply
            }
            "whoami" => {
                let user = ctx.socket_assigns().get::<UserName>().map(|u| u.0.clone());
                HandleIn::Reply(Reply::ok(json!({
                    "user": user,
                    "socket_id": ctx.socket_id(),
                    "topic": ctx.topic(),
                    "join_ref": ctx.join_ref(),
                    "handled": self.handled,
                })))
            }
            _ => HandleIn::Reply(Reply::error(json!({"reason": "unknown event"}))),
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> ControlFlow<()> {
        match info {
            Info::Message(message) => {
                ctx.push("info", json!({"event": message.event()}));
            }
            Info::Custom(value) => {
                let value = match value.downcast::<presence_poem::SocketRef>() {
                    Ok(to) => {
                        ctx.reply(&to, Reply::ok(json!({"later": true})));
                        return ControlFlow::Continue(());
                    }
                    Err(value) => value,
                };
                if let Ok(value) = value.downcast::<Value>() {
                    if value["stop"] == true {
                        return ControlFlow::Break(());
                    }
                    ctx.push("custom", *value);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    async fn terminate(&mut self, reason: StopReason, ctx: &mut ChannelContext) {
        let _ = ctx.pubsub().broadcast(Message::json(
            EVENTS,
            "terminate",
            json!({"topic": ctx.topic(), "reason": format!("{reason:?}")}),
        ));
    }
}

/// A V2 binary push (kind 0) from the client. The fields are bytes, so that a test can send
/// fields that are not UTF-8.
pub fn binary_push(
    join_ref: &[u8],
    reference: &[u8],
    topic: &[u8],
    event: &[u8],
    data: &[u8],
) -> WsMessage {
    let mut frame = vec![
        0u8,
        join_ref.len() as u8,
        reference.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for part in [join_ref, reference, topic, event, data] {
        frame.extend_from_slice(part);
    }
    WsMessage::binary(frame)
}

/// Sends one long-poll request to `app` and returns its JSON answer.
pub async fn longpoll_call(app: &Route, method: Method, uri: &str, body: String) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(uri.parse().unwrap())
        .header("content-type", "application/x-ndjson")
        .body(body);
    let response = app.call(req).await.unwrap();
    serde_json::from_str(&response.into_body().into_string().await.unwrap()).unwrap()
}

/// Opens a long-poll session on `app` (the socket nested at `/socket`), joins `room:mem` and
/// polls the join's reply; returns the session token.
pub async fn joined_longpoll_session(app: &Route) -> String {
    let opened = longpoll_call(
        app,
        Method::GET,
        "/socket/longpoll?vsn=2.0.0",
        String::new(),
    )
    .await;
    let token = opened["token"].as_str().unwrap().to_owned();
    let uri = format!("/socket/longpoll?vsn=2.0.0&token={token}");
    let join = json!(["1", "1", "room:mem", "phx_join", {}]).to_string();
    assert_eq!(
        longpoll_call(app, Method::POST, &uri, join).await["status"],
        200
    );
    let polled = longpoll_call(app, Method::GET, &uri, String::new()).await;
    assert_eq!(polled["status"], 200, "{polled}");
    token
}

/// Resident set size in bytes (Linux), or None elsewhere.
pub fn rss() -> Option<isize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: isize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of this process so far (user and system), from `/proc/self/stat`, or None
/// elsewhere. Clock ticks are 10 ms: measure many operations.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
