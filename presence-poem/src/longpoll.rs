//! The long-poll transport: `<mount>/longpoll`, as phoenix.js's `LongPoll` speaks it.
//!
//! A session is a websocket connection's control loop (channels, limits, drain,
//! `disconnect` broadcasts) fed by POSTs instead of frames, its outbound queue read by GET
//! polls instead of a writer. The session lives on the node that created it; a request that
//! reaches another node goes to it over the pub/sub (see the crate docs, "Long poll").
//!
//! Every answer is HTTP 200 with a JSON body `{"status": N, ...}`, the status phoenix.js acts
//! on: 200 (messages), 204 (no messages), 410 (a new session and its token; or the session
//! is gone), 403 (refused), 500 (try again later). POSTs answer 200, 400 (a malformed
//! message: none of the batch is handled), 413 (too large), or 410.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use poem::http::{Method, StatusCode, header};
use poem::{Request, Response};
use presence_core::PubSub;
use presence_core::pubsub::{Message, Payload, RecvError, Subscription};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::connection::{self, SessionParts};
use crate::metrics::SocketCounters;
use crate::outbox::{CloseRx, Frames};
use crate::protocol::{Raw, Vsn};
use crate::socket::{Admitted, Inner, PhoenixSocket, Refusal};
use crate::token::{TokenError, TokenSigner};

/// The default time a poll waits for messages (Phoenix's `window_ms`).
pub const DEFAULT_LONGPOLL_WINDOW: Duration = Duration::from_secs(10);
/// The longest window accepted: a longer one is cut to this.
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// The default most long-poll sessions a socket holds at once.
pub const DEFAULT_LONGPOLL_MAX_SESSIONS: usize = 10_000;

/// The salt of session tokens: a token signed for any other purpose (a user token signed with
/// the same secret) is refused.
const SALT: &str = "presence-poem long-poll session";
/// How old a session token may be (Phoenix's default `max_age`, two weeks). A session ends long
/// before, when its client stops polling.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(14 * 86_400);
/// How long a node waits for the owner of a session to acknowledge a routed request.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(2);
/// The most messages one POST may carry (phoenix.js sends at most 100).
const MAX_BATCH: usize = 100;
/// Routed requests one session serves at once; more are answered 500.
const REMOTE_IN_FLIGHT: usize = 8;
/// Requests a node routes to other nodes at once (each waits up to a window and 2 s); more
/// are answered 500, which phoenix.js retries.
const MAX_ROUTED: usize = 4096;
/// The topic prefix of sessions and of routed requests' replies (no channel may join these).
pub(crate) const TOPIC_PREFIX: &str = "phx:lp:";
/// The topic prefix of routed requests' replies: an owner publishes a reply to no other topic.
const REPLY_PREFIX: &str = "phx:lp:reply:";

/// Settings of the long-poll transport, turned on with
/// [`PhoenixSocketBuilder::longpoll`](crate::PhoenixSocketBuilder::longpoll).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use presence_core::PubSub;
/// use presence_poem::{LongPollConfig, PhoenixSocket};
///
/// // Every node of a cluster signs session tokens with the same key.
/// let key = b"the same 32+ byte key on every node, from the configuration";
/// let socket = PhoenixSocket::builder(PubSub::new("node-a"))
///     .longpoll(LongPollConfig::new().window(Duration::from_secs(10)).secret(key)?)
///     .build();
/// # Ok::<(), presence_poem::TokenError>(())
/// ```
#[derive(Clone, Default)]
#[must_use = "a LongPollConfig does nothing until given to `PhoenixSocketBuilder::longpoll`"]
pub struct LongPollConfig {
    window: Option<Duration>,
    max_sessions: Option<usize>,
    signer: Option<TokenSigner>,
}

impl fmt::Debug for LongPollConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LongPollConfig")
            .field("window", &self.window_or_default())
            .field(
                "max_sessions",
                &self.max_sessions.unwrap_or(DEFAULT_LONGPOLL_MAX_SESSIONS),
            )
            .field("secret", &self.signer.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl LongPollConfig {
    /// The defaults: a 10 s window, and a session key generated when the socket is built.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how long a poll waits for messages before it is answered empty (default 10 s,
    /// Phoenix's `window_ms`). A session whose client neither polls nor sends for 1.5 times
    /// the window (one window before its first poll) is closed: its channels stop and their presences leave, as when a websocket
    /// closes. The window is kept between 1 ms and 1 hour: a value outside is clamped.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window.clamp(Duration::from_millis(1), MAX_WINDOW));
        self
    }

    /// Sets the most long-poll sessions the socket holds at once (default
    /// [`DEFAULT_LONGPOLL_MAX_SESSIONS`], 10,000). A session also counts against the socket's
    /// [`max_connections`](crate::PhoenixSocketBuilder::max_connections), which websockets
    /// share: this cap keeps sessions (which any `GET` without a token starts, before a client
    /// proves it polls) from taking every connection. A new session over either limit is
    /// answered `500` (phoenix.js retries).
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = Some(max);
        self
    }

    /// Sets the key session tokens are signed with. Without it a random key is generated when
    /// the socket is built, which is right for one node; **in a cluster every node must have
    /// the same key**, since a poll may reach any node (see the crate docs, "Long poll").
    ///
    /// # Errors
    ///
    /// [`TokenError::WeakSecret`] when `secret` has fewer than
    /// [`MIN_SECRET_LEN`](crate::MIN_SECRET_LEN) bytes.
    pub fn secret(mut self, secret: &[u8]) -> Result<Self, TokenError> {
        self.signer = Some(TokenSigner::new(secret, SALT)?);
        Ok(self)
    }

    fn window_or_default(&self) -> Duration {
        self.window.unwrap_or(DEFAULT_LONGPOLL_WINDOW)
    }

    /// The endpoint's long-poll state.
    ///
    /// # Panics
    ///
    /// When no secret was given and the operating system gives no random bytes for one.
    pub(crate) fn build(self) -> LongPoll {
        let window = self.window_or_default();
        let signer = self.signer.unwrap_or_else(|| {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).expect("the operating system's random source failed");
            // 32 bytes is the minimum length.
            TokenSigner::new(&key, SALT).unwrap_or_else(|_| unreachable!())
        });
        LongPoll {
            window,
            max_sessions: self.max_sessions.unwrap_or(DEFAULT_LONGPOLL_MAX_SESSIONS),
            signer,
            sessions: Mutex::new(HashMap::new()),
            routed: Semaphore::new(MAX_ROUTED),
        }
    }
}

/// An endpoint's long-poll sessions.
pub(crate) struct LongPoll {
    window: Duration,
    max_sessions: usize,
    signer: TokenSigner,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Permits for the requests this node routes to other nodes at once.
    routed: Semaphore,
}

impl fmt::Debug for LongPoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LongPoll")
            .field("window", &self.window)
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

/// What a session token says: the session id, its serializer, and the node that holds it
/// (requests that reach another node go to that one only).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    s: String,
    v: u8,
    n: String,
}

/// One long-poll session, on the node that created it.
struct Session {
    vsn: Vsn,
    frames: Frames,
    close: CloseRx,
    input: mpsc::Sender<WsMessage>,
    /// The number of polls begun: a poll that is no longer the last gives up (answered 204).
    polls: AtomicU64,
    superseded: Notify,
    /// Whether a binary frame was dropped already (warned once a session).
    binary_dropped: AtomicBool,
    /// The outbound budget: what one answer, and all unread answers, may hold.
    budget: usize,
    unread: Arc<UnreadBytes>,
    /// The endpoint's counters: a message handed to a poll's answer counts as a frame sent.
    sent: Arc<SocketCounters>,
}

/// How a poll ended.
#[derive(Debug)]
enum Polled {
    /// Messages, and the bytes they hold of the session's budget until their answer is gone.
    Messages(Vec<String>, Unread),
    Empty,
    Gone,
}

/// The bytes of a session's messages handed to answers that are not yet written out: with
/// its queue they stay within the session's outbound budget, so a client that polls but
/// never reads its answers is closed as a slow websocket reader is, rather than holding
/// budget after budget in unread bodies.
#[derive(Debug, Default)]
struct UnreadBytes {
    bytes: AtomicUsize,
    /// Signalled when an answer's bytes are released.
    released: Notify,
}

/// One answer's share of [`UnreadBytes`], released when dropped (its body written out, or
/// its connection gone).
#[derive(Debug)]
struct Unread {
    of: Option<Arc<UnreadBytes>>,
    bytes: usize,
}

impl Unread {
    const NONE: Unread = Unread { of: None, bytes: 0 };
}

impl Drop for Unread {
    fn drop(&mut self) {
        if let Some(of) = self.of.take() {
            of.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
            of.released.notify_waiters();
        }
    }
}

/// The size of the chunks an answer's body is written in: its bytes are released when the
/// last chunk was taken by the server, at most a write buffer before the client read them.
const BODY_CHUNK: usize = 16 * 1024;

impl Session {
    /// Tells the control loop the client is still there (resets its idle timer).
    fn touch(&self) {
        let _ = self.input.try_send(WsMessage::Ping(Bytes::new()));
    }

    fn is_closed(&self) -> bool {
        self.close.get().is_some()
    }

    /// What is queued, as frame texts, up to what is left of the budget after the answers
    /// not yet read (the rest stays queued for the next poll). One frame larger than the
    /// budget is taken alone when no answer is unread, as a websocket sends it.
    fn take(&self) -> (Vec<String>, Unread) {
        let mut batch = Vec::new();
        let unread = self.unread.bytes.load(Ordering::SeqCst);
        let mut left = self.budget.saturating_sub(unread);
        let mut taken = 0;
        loop {
            let limit = if unread == 0 && taken == 0 {
                usize::MAX
            } else {
                left
            };
            let Some(out) = self.frames.try_recv_within(limit) else {
                break;
            };
            left = left.saturating_sub(out.len());
            taken += out.len();
            match out.into_text() {
                Ok(text) => {
                    self.sent.frames_out.increment(1);
                    self.sent.bytes_out.increment(text.len() as u64);
                    batch.push(text);
                }
                Err(_) => {
                    if !self.binary_dropped.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "binary frame not sent: phoenix.js's long poll takes text messages \
                             only (warned once a session)"
                        );
                    }
                }
            }
        }
        // Polls of one session seldom overlap (a newer poll ends the older, and phoenix.js
        // polls once at a time); when they do, each is still capped by the budget.
        self.unread.bytes.fetch_add(taken, Ordering::SeqCst);
        let unread = Unread {
            of: Some(self.unread.clone()),
            bytes: taken,
        };
        (batch, unread)
    }

    /// Waits up to `window` for messages. A newer poll of the session ends this one (empty).
    /// The session's idle timer (1.5 windows) restarts when a poll begins, so it closes 1.5
    /// windows after the last poll began: a client that went away is noticed as soon as
    /// possible, and one that polls again within half a window of an answer stays.
    async fn poll(&self, window: Duration) -> Polled {
        let turn = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        self.superseded.notify_waiters();
        self.touch();
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        loop {
            if self.close.get().is_some() {
                break Polled::Gone;
            }
            let superseded = self.superseded.notified();
            tokio::pin!(superseded);
            superseded.as_mut().enable();
            let released = self.unread.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.polls.load(Ordering::SeqCst) != turn {
                // It may have taken the wake-up meant for the poll that replaces it.
                self.frames.wake();
                break Polled::Empty;
            }
            let (batch, unread) = self.take();
            if !batch.is_empty() {
                break Polled::Messages(batch, unread);
            }
            tokio::select! {
                () = self.frames.ready() => {}
                () = &mut released => {}
                () = &mut superseded => {}
                _ = self.close.wait() => break Polled::Gone,
                () = &mut deadline => break Polled::Empty,
            }
        }
    }

    /// Hands `messages` to the control loop, in order.
    async fn send(&self, messages: Vec<WsMessage>) -> Result<(), Gone> {
        for message in messages {
            if self.is_closed() {
                return Err(Gone);
            }
            self.input.send(message).await.map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// Removes a session from its endpoint's table when its task ends.
struct Listed {
    socket: PhoenixSocket,
    id: Arc<str>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(lp) = self.socket.inner().longpoll.as_ref() {
            lp.sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
        tracing::debug!(session = %self.id, "long-poll session ended");
    }
}

/// The session is gone (closed, expired, or unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gone;

/// A JSON status answer, HTTP 200 as Phoenix sends them.
fn status_json(status: u16, extra: Value) -> Response {
    let mut body = match extra {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    body.insert("status".to_owned(), json!(status));
    json_response().body(Value::Object(body).to_string())
}

/// The head of a JSON answer.
fn json_response() -> poem::ResponseBuilder {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
}

fn status(status: u16) -> Response {
    status_json(status, json!({}))
}

/// The session token a request carries: phoenix.js 1.9's header, or the last `token` query
/// parameter (phoenix.js 1.8 appends it after the socket's own params).
fn request_token(req: &Request) -> Option<String> {
    if let Some(token) = req
        .headers()
        .get("x-phoenix-longpoll-token")
        .and_then(|v| v.to_str().ok())
    {
        return Some(token.to_owned());
    }
    crate::socket::parse_query(req.uri().query().unwrap_or_default())
        .and_then(|mut params| params.remove("token"))
}

/// One line of a POST: a JSON frame (`[` for V2, `{` for V1) or base64 of a binary frame.
fn parse_line(vsn: Vsn, line: &str) -> Option<WsMessage> {
    let message = if line.starts_with('[') || line.starts_with('{') {
        vsn.decode(Raw::Text(line)).ok()?;
        WsMessage::Text(line.into())
    } else {
        let bytes = STANDARD.decode(line).ok()?;
        vsn.decode(Raw::Binary(&bytes)).ok()?;
        WsMessage::Binary(Bytes::from(bytes))
    };
    Some(message)
}

/// A POST body's lines: ndjson (as phoenix.js sends), or the whole body as one message.
fn body_lines(ndjson: bool, body: &str) -> Vec<&str> {
    if ndjson {
        body.split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        vec![body]
    }
}

impl LongPoll {
    fn is_full(&self) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.len() >= self.max_sessions
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn verify(&self, token: &str) -> Option<(Claims, Vsn)> {
        let claims: Claims = self.signer.verify(token, TOKEN_MAX_AGE).ok()?;
        let vsn = match claims.v {
            1 => Vsn::V1,
            2 => Vsn::V2,
            _ => return None,
        };
        Some((claims, vsn))
    }
}

/// Serves one request to `<mount>/longpoll`.
pub(crate) async fn serve(socket: &PhoenixSocket, lp: &LongPoll, req: Request) -> Response {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        // A CORS preflight: the origin is checked on the request itself.
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .header(header::ACCESS_CONTROL_ALLOW_HEADERS, asked)
            .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS")
            .header(header::ACCESS_CONTROL_MAX_AGE, "3600")
            .finish();
    }
    if method != Method::GET && method != Method::POST {
        return Response::builder().status(StatusCode::BAD_REQUEST).finish();
    }
    if !socket.origin_allowed(&req, "longpoll") {
        return status(403);
    }
    let token = request_token(&req);
    let claims = token.as_deref().and_then(|t| lp.verify(t).map(|c| (t, c)));
    if method == Method::GET {
        match claims {
            Some((token, (claims, _))) => poll(socket, lp, token, &claims).await,
            // No token, or one that is not ours (a socket param named `token`, a forged or
            // expired one): a new session, as Phoenix does.
            None => new_session(socket, lp, req).await,
        }
    } else {
        match claims {
            Some((_, (claims, vsn))) => publish(socket, lp, req, &claims, vsn).await,
            None => {
                tracing::debug!("long-poll POST without a valid session token");
                status(410)
            }
        }
    }
}

async fn new_session(socket: &PhoenixSocket, lp: &LongPoll, req: Request) -> Response {
    let refused = |refusal| match refusal {
        // phoenix.js closes for good on 403 and retries on 500; it has no other failure.
        Refusal::Forbidden | Refusal::BadRequest => status(403),
        Refusal::Unavailable => status(500),
    };
    if lp.is_full() {
        tracing::warn!(
            max = lp.max_sessions,
            "refusing long-poll session: too many sessions"
        );
        return status(500);
    }
    let (params, vsn) = match socket.check(&req, "longpoll") {
        Ok(checked) => checked,
        Err(refusal) => return refused(refusal),
    };
    // phoenix.js sends `authToken` in this header on long poll, as it is, not in base64.
    let auth_token = Ok(req
        .headers()
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned));
    let admitted = socket
        .connect(&req, params, vsn, "longpoll", auth_token)
        .await;
    let Admitted {
        vsn,
        connected,
        registry,
    } = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(refusal),
    };
    crate::metrics::connected();
    let mut id = [0u8; 16];
    if let Err(error) = getrandom::fill(&mut id) {
        tracing::error!(%error, "no random bytes for a long-poll session id");
        return status(500);
    }
    let id: Arc<str> = Arc::from(URL_SAFE_NO_PAD.encode(id));
    let inner: &Arc<Inner> = socket.inner();
    let SessionParts { rx, input, run } = connection::session(
        inner.clone(),
        vsn,
        connected.assigns,
        connected.id.map(Arc::from),
        registry,
        // Until its client polls (phoenix.js polls at once), one window: a session started by
        // a GET that never polls holds its connection slot no longer than that.
        lp.window,
        lp.window * 3 / 2,
    );
    let session = Arc::new(Session {
        vsn,
        frames: rx.frames,
        close: rx.close,
        input,
        polls: AtomicU64::new(0),
        superseded: Notify::new(),
        binary_dropped: AtomicBool::new(false),
        budget: inner.config.outbound.bytes,
        unread: Arc::default(),
        sent: inner.metrics.clone(),
    });
    let pubsub = inner.hubs.pubsub().clone();
    // Requests for this session that reach other nodes come on this topic.
    let routed = pubsub.subscribe(&format!("{TOPIC_PREFIX}{id}"));
    {
        let mut sessions = lp.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked again: sessions started at the same time passed the first check together.
        if sessions.len() >= lp.max_sessions {
            drop(sessions);
            tracing::warn!(
                max = lp.max_sessions,
                "refusing long-poll session: too many sessions"
            );
            // Dropping the session's parts, never run, gives its connection slot back.
            return status(500);
        }
        sessions.insert(id.clone(), session.clone());
    }
    let window = lp.window;
    let id_routed = id.clone();
    // Owned by the session: it ends when the session closes (its client stopped polling, it
    // was disconnected, or the endpoint drains), and the guard removes the session then, even
    // if the task is cancelled or panics.
    let listed = Listed {
        socket: socket.clone(),
        id: id.clone(),
    };
    tokio::spawn(async move {
        let _listed = listed;
        let serve_routed = serve_routed(id_routed, pubsub, routed, session, window);
        futures_util::future::join(run, serve_routed).await;
    });
    let v = match vsn {
        Vsn::V1 => 1,
        Vsn::V2 => 2,
    };
    let token = lp.signer.sign(&Claims {
        s: id.to_string(),
        v,
        n: inner.hubs.pubsub().node_name().to_owned(),
    });
    status_json(410, json!({ "token": token }))
}

async fn poll(socket: &PhoenixSocket, lp: &LongPoll, token: &str, claims: &Claims) -> Response {
    let polled = match lp.session(&claims.s) {
        Some(session) => session.poll(lp.window).await,
        None => {
            let pubsub = socket.inner().hubs.pubsub();
            match route(lp, pubsub, claims, "poll", json!({})).await {
                Routed::Answer(reply) => match reply["status"].as_u64() {
                    Some(200) => Polled::Messages(
                        serde_json::from_value(reply["messages"].clone()).unwrap_or_default(),
                        Unread::NONE,
                    ),
                    Some(204) => Polled::Empty,
                    _ => Polled::Gone,
                },
                Routed::Gone => Polled::Gone,
                Routed::Busy => return status(500),
            }
        }
    };
    match polled {
        Polled::Messages(messages, unread) => {
            let body = json!({ "status": 200, "token": token, "messages": messages }).to_string();
            let body = Bytes::from(body);
            let len = body.len();
            let chunks: Vec<Bytes> = (0..len)
                .step_by(BODY_CHUNK)
                .map(|at| body.slice(at..len.min(at + BODY_CHUNK)))
                .collect();
            // The stream owns the messages' share of the budget: released when the server
            // has taken its last chunk, or drops it (the connection is gone).
            let chunks = futures_util::stream::iter(chunks).map(move |chunk| {
                let _ = &unread;
                Ok::<_, std::io::Error>(chunk)
            });
            json_response()
                .header(header::CONTENT_LENGTH, len)
                .body(poem::Body::from_bytes_stream(chunks))
        }
        Polled::Empty => status_json(204, json!({ "token": token, "messages": [] })),
        Polled::Gone => status(410),
    }
}

async fn publish(
    socket: &PhoenixSocket,
    lp: &LongPoll,
    mut req: Request,
    claims: &Claims,
    vsn: Vsn,
) -> Response {
    let id = claims.s.as_str();
    let limit = socket
        .inner()
        .config
        .websocket
        .max_message_size
        .unwrap_or(crate::DEFAULT_MAX_MESSAGE_SIZE);
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let body = match req.take_body().into_bytes_limit(limit).await {
        Ok(body) => body,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => {
            tracing::warn!(limit, "long-poll POST over the message size limit");
            return status(413);
        }
        Err(error) => {
            tracing::debug!(%error, "long-poll POST body not read");
            return status(400);
        }
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        tracing::warn!("long-poll POST body not UTF-8");
        return status(400);
    };
    let lines = body_lines(ndjson, body);
    if lines.len() > MAX_BATCH {
        tracing::warn!(
            lines = lines.len(),
            "long-poll POST with more messages than a batch"
        );
        return status(413);
    }
    let Some(messages) = lines
        .iter()
        .map(|line| parse_line(vsn, line))
        .collect::<Option<Vec<_>>>()
    else {
        tracing::warn!("long-poll POST with an undecodable message: none handled");
        return status(400);
    };
    if let Some(session) = lp.session(id) {
        return match session.send(messages).await {
            Ok(()) => status(200),
            Err(Gone) => status(410),
        };
    }
    let pubsub = socket.inner().hubs.pubsub();
    let lines: Vec<&str> = lines.into_iter().collect();
    match route(lp, pubsub, claims, "send", json!({ "lines": lines })).await {
        Routed::Answer(reply) => status(reply["status"].as_u64().map_or(500, |s| s as u16)),
        Routed::Gone => status(410),
        Routed::Busy => status(500),
    }
}

/// What a routed request came to.
#[derive(Debug)]
enum Routed {
    /// The owner's answer.
    Answer(Value),
    /// No node acknowledged it: the session is gone.
    Gone,
    /// Too many requests are routed already: try later.
    Busy,
}

/// Whether `m` is the `event` of request `rid` for session `id`: anything else on the reply
/// topic (which only a forged or misrouted message could be) is dropped.
fn is_reply_to(m: &Message, event: &str, rid: &str, id: &str) -> bool {
    m.event() == event && matches!(m.payload(), Payload::Json(v) if v["r"] == rid && v["s"] == id)
}

/// The next message of `replies` that is the `event` of request `rid` for session `id`.
async fn next_reply(
    replies: &mut Subscription,
    event: &str,
    rid: &str,
    id: &str,
) -> Option<Arc<Message>> {
    loop {
        let m = next(replies).await?;
        if is_reply_to(&m, event, rid, id) {
            return Some(m);
        }
        tracing::warn!(
            event = m.event(),
            "unexpected message on a long-poll reply topic dropped"
        );
    }
}

/// Sends a request for the session of `claims` to the node that holds it (named in the
/// token), over the pub/sub, and waits for its answer: [`Routed::Gone`] when it does not
/// acknowledge it. The request goes to that node only, and its answer to this node only.
///
/// Each request has its own reply topic, named by 128 random bits, and its acknowledgement
/// and answer carry its id and the session's: a reply meant for another request (of another
/// socket on the same pub/sub, or of an earlier node of the same name) is never taken.
async fn route(
    lp: &LongPoll,
    pubsub: &PubSub,
    claims: &Claims,
    kind: &'static str,
    mut request: Value,
) -> Routed {
    let (id, owner) = (claims.s.as_str(), claims.n.as_str());
    let topic = format!("{TOPIC_PREFIX}{id}");
    let local = owner == pubsub.node_name();
    // On this node: served by another socket on the same pub/sub, or gone (no need to wait
    // for an acknowledgement that cannot come).
    if (local && pubsub.subscriber_count(&topic) == 0) || (!local && !pubsub.has_peers()) {
        return Routed::Gone;
    }
    let Ok(_permit) = lp.routed.try_acquire() else {
        tracing::warn!(
            max = MAX_ROUTED,
            "too many routed long-poll requests: try later"
        );
        return Routed::Busy;
    };
    let mut rid = [0u8; 16];
    if let Err(error) = getrandom::fill(&mut rid) {
        tracing::error!(%error, "no random bytes for a routed long-poll request");
        return Routed::Gone;
    }
    let rid = URL_SAFE_NO_PAD.encode(rid);
    let reply_topic = format!("{REPLY_PREFIX}{rid}");
    let mut replies = pubsub.subscribe(&reply_topic);
    request["reply"] = json!(reply_topic);
    request["r"] = json!(rid);
    request["s"] = json!(id);
    request["node"] = json!(pubsub.node_name());
    let message = Message::json(topic, kind, request);
    if let Err(error) = pubsub.direct_broadcast(owner, message) {
        tracing::warn!(%error, "long-poll request not routed");
        return Routed::Gone;
    }
    let ack = tokio::time::timeout(PUBSUB_TIMEOUT, next_reply(&mut replies, "ack", &rid, id)).await;
    if !matches!(ack, Ok(Some(_))) {
        tracing::debug!(session = id, "no node holds the long-poll session");
        return Routed::Gone;
    }
    let answer = tokio::time::timeout(
        lp.window + PUBSUB_TIMEOUT,
        next_reply(&mut replies, "reply", &rid, id),
    )
    .await;
    match answer {
        Ok(Some(m)) => match m.payload() {
            Payload::Json(value) => Routed::Answer(value.clone()),
            _ => Routed::Gone,
        },
        _ => {
            tracing::warn!(
                session = id,
                kind,
                "the node holding the long-poll session did not answer"
            );
            // Acknowledged: the session exists. A lost poll answer is an empty poll, a lost
            // send answer an error phoenix.js retries.
            Routed::Answer(json!({ "status": if kind == "poll" { 204 } else { 500 } }))
        }
    }
}

/// The next message of `replies`, skipping a lag.
async fn next(replies: &mut Subscription) -> Option<Arc<Message>> {
    loop {
        match replies.recv().await {
            Ok(m) => return Some(m),
            Err(RecvError::Lagged(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Serves the requests for `session` that reached other nodes, until the session closes.
async fn serve_routed(
    id: Arc<str>,
    pubsub: PubSub,
    mut routed: Subscription,
    session: Arc<Session>,
    window: Duration,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        if session.close.get().is_some() {
            break;
        }
        tokio::select! {
            _ = session.close.wait() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            request = routed.recv() => {
                let request = match request {
                    Ok(request) => request,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "routed long-poll requests lost");
                        continue;
                    }
                    Err(_) => break,
                };
                let Payload::Json(body) = request.payload() else { continue };
                let Some(reply) = body["reply"].as_str().map(str::to_owned) else { continue };
                // Replies go to reply topics only, never to a session's or a channel's.
                if !reply.starts_with(REPLY_PREFIX) {
                    tracing::warn!("routed long-poll request with a bad reply topic dropped");
                    continue;
                }
                let Some(rid) = body["r"].as_str().map(str::to_owned) else { continue };
                let Some(node) = body["node"].as_str().map(str::to_owned) else { continue };
                let tag = json!({"r": rid, "s": &*id});
                let _ = pubsub.direct_broadcast(&node, Message::json(reply.as_str(), "ack", tag.clone()));
                if in_flight.len() >= REMOTE_IN_FLIGHT {
                    tracing::warn!("too many routed long-poll requests for one session");
                    let mut answer = tag;
                    answer["status"] = json!(500);
                    let _ = pubsub.direct_broadcast(&node, Message::json(reply.as_str(), "reply", answer));
                    continue;
                }
                let (pubsub, session) = (pubsub.clone(), session.clone());
                let event = request.event().to_owned();
                let lines = body["lines"].clone();
                in_flight.push(async move {
                    let mut answer = match event.as_str() {
                        "poll" => match session.poll(window).await {
                            // Released at once: the asking node writes the answer, which the
                            // budget bounds, but its reading is not tracked here.
                            Polled::Messages(messages, _unread) => json!({"status": 200, "messages": messages}),
                            Polled::Empty => json!({"status": 204}),
                            Polled::Gone => json!({"status": 410}),
                        },
                        "send" => {
                            let messages = lines
                                .as_array()
                                .map(|lines| {
                                    lines
                                        .iter()
                                        .map(|l| l.as_str().and_then(|l| parse_line(session.vsn, l)))
                                        .collect::<Option<Vec<_>>>()
                                })
                                .unwrap_or_default();
                            match messages {
                                None => json!({"status": 400}),
                                Some(messages) => match session.send(messages).await {
                                    Ok(()) => json!({"status": 200}),
                                    Err(Gone) => json!({"status": 410}),
                                },
                            }
                        }
                        _ => json!({"status": 400}),
                    };
                    answer["r"] = tag["r"].clone();
                    answer["s"] = tag["s"].clone();
                    let _ = pubsub.direct_broadcast(&node, Message::json(reply.as_str(), "reply", answer));
                });
            }
        }
    }
    // The session closed: the requests in flight see it and answer `gone` at once.
    while in_flight.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most `MAX_ROUTED` requests are routed at once: more are answered "try later".
    #[tokio::test(start_paused = true)]
    async fn routing_is_refused_beyond_the_routed_cap() {
        let cluster = presence_core::pubsub::LocalCluster::new();
        let a = PubSub::builder("a").adapter(cluster.adapter()).build();
        let _b = PubSub::builder("b").adapter(cluster.adapter()).build();
        let lp = LongPollConfig::new().build();
        let claims = Claims {
            s: "no-such-session".to_owned(),
            v: 2,
            n: "b".to_owned(),
        };
        let all = lp.routed.try_acquire_many(MAX_ROUTED as u32).unwrap();
        let routed = route(&lp, &a, &claims, "poll", json!({})).await;
        assert!(matches!(routed, Routed::Busy), "{routed:?}");
        drop(all);
        // With a permit free the request goes to B, which holds no such session: gone (after
        // the acknowledgement's 2 s), and the permit is back.
        let routed = route(&lp, &a, &claims, "poll", json!({})).await;
        assert!(matches!(routed, Routed::Gone), "{routed:?}");
        assert_eq!(lp.routed.available_permits(), MAX_ROUTED);
    }

    #[test]
    fn lines_are_json_frames_or_base64_binaries() {
        let text = parse_line(Vsn::V2, r#"["1","1","room:1","phx_join",{}]"#);
        assert!(matches!(text, Some(WsMessage::Text(_))));
        // A V2 binary push, in base64 as phoenix.js sends it.
        let push = [&[0u8, 1, 1, 1, 1][..], b"1", b"2", b"t", b"e", b"data"].concat();
        let binary = parse_line(Vsn::V2, &STANDARD.encode(&push));
        assert!(matches!(binary, Some(WsMessage::Binary(_))));
        assert!(parse_line(Vsn::V1, &STANDARD.encode(&push)).is_none());
        for bad in ["[1,2", "{}", "not base64!", "[\"1\",\"1\",\"t\"]"] {
            assert!(parse_line(Vsn::V2, bad).is_none(), "{bad}");
        }
        assert_eq!(
            body_lines(true, "[1]\n[2]\r\n\n[3]"),
            vec!["[1]", "[2]", "[3]"]
        );
        assert_eq!(body_lines(false, "[1]\n[2]"), vec!["[1]\n[2]"]);
    }
}
