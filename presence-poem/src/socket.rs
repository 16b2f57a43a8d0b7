//! [`PhoenixSocket`]: the poem endpoint that serves `<mount>/websocket` (nested at `/socket`:
//! `/socket/websocket`), and `<mount>/longpoll` when long poll is on.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use poem::http::{Extensions, HeaderMap, StatusCode, header};
use poem::web::RemoteAddr;
use poem::web::websocket::WebSocketConfig;
use poem::{Endpoint, Request, Response};
use presence_core::registry::{PubSubServer, RegistryError};
use presence_core::{PubSub, Registry};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::Channel;
use crate::connection;
use crate::context::{self, Start};
use crate::hub::Hubs;
use crate::longpoll::{self, LongPoll, LongPollConfig};
use crate::metrics;
use crate::origin::CheckOrigin;
use crate::outbox::{Limits, Outbox, code};
use crate::protocol::Vsn;
use crate::rebalance::Rebalance;
use crate::status::{RecentClose, Status};
use crate::upgrade::Upgrade;

/// The connect hook's input: what Phoenix's `connect/3` sees, with its `connect_info`.
///
/// Its `Debug` output redacts what grants access: the auth token, the `token` param, and the
/// `cookie`, `authorization` and `sec-websocket-protocol` headers.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectInfo {
    /// The query parameters (phoenix.js `params`, plus `vsn`). Nested params arrive flat, with
    /// their bracketed names (`user[id]`).
    pub params: HashMap<String, String>,
    /// The connecting request's headers (the websocket upgrade, or the long poll's first
    /// `GET`).
    pub headers: HeaderMap,
    /// The address the connection came from (a proxy's, behind one).
    pub remote_addr: RemoteAddr,
    /// The client's address: the connection's, or, when that is one of the
    /// [trusted proxies](PhoenixSocketBuilder::trusted_proxies), the last address in
    /// `X-Forwarded-For` that is not a trusted proxy. `None` when the connection has no IP
    /// address (a Unix socket).
    pub peer_addr: Option<IpAddr>,
    /// The request's URI (path and query).
    pub uri: poem::http::Uri,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// Every `x-*` header, in order (Phoenix's `:x_headers`).
    pub x_headers: Vec<(String, String)>,
    /// The token phoenix.js sends with `authToken`: decoded from
    /// `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<base64>` on a websocket, the
    /// `X-Phoenix-AuthToken` header on long poll.
    pub auth_token: Option<String>,
}

/// Headers whose values grant access, redacted from `Debug` output.
const SECRET_HEADERS: [&str; 5] = [
    "cookie",
    "authorization",
    "sec-websocket-protocol",
    "x-phoenix-authtoken",
    "x-phoenix-longpoll-token",
];

impl fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = "[redacted]";
        let params: HashMap<&str, &str> = self
            .params
            .iter()
            .map(|(k, v)| {
                let secret = k == "token" || k.contains("token") || k.contains("password");
                (k.as_str(), if secret { redacted } else { v.as_str() })
            })
            .collect();
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.contains(&k.as_str());
                (
                    k.as_str(),
                    if secret {
                        redacted
                    } else {
                        v.to_str().unwrap_or("[binary]")
                    },
                )
            })
            .collect();
        f.debug_struct("ConnectInfo")
            .field("params", &params)
            .field("headers", &headers)
            .field("remote_addr", &self.remote_addr)
            .field("peer_addr", &self.peer_addr)
            .field("uri", &self.uri.path())
            .field("user_agent", &self.user_agent)
            .field("auth_token", &self.auth_token.as_ref().map(|_| redacted))
            .finish_non_exhaustive()
    }
}

/// The client's address behind trusted proxies: walking `X-Forwarded-For` from the right
/// (the hop closest to us), the first address that is not a trusted proxy.
fn client_addr(
    remote: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[(IpAddr, u8)],
) -> Option<IpAddr> {
    let remote = remote?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|(net, bits)| in_net(*ip, *net, *bits));
    if !is_trusted(&remote) {
        return Some(remote);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let mut client = remote;
    for ip in forwarded.into_iter().rev() {
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Parses `"10.0.0.0/8"`, `"::1/128"` or a plain address (a network of one).
fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?),
        None => {
            let ip: IpAddr = s.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

/// The connect hook's acceptance: socket-level assigns and an optional socket id.
///
/// # Examples
///
/// ```
/// use presence_poem::Connected;
///
/// #[derive(Clone)]
/// struct UserId(u64);
///
/// let connected = Connected::new().assign(UserId(7)).id("user_socket:7");
/// ```
#[derive(Debug, Default)]
#[must_use = "a Connected does nothing until returned from the connect hook"]
pub struct Connected {
    pub(crate) assigns: Extensions,
    pub(crate) id: Option<String>,
}

impl Connected {
    /// Accepts with no assigns and no id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a socket-level assign, readable from every channel with
    /// [`ChannelContext::socket_assigns`](crate::ChannelContext::socket_assigns).
    pub fn assign<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.assigns.insert(value);
        self
    }

    /// Sets the socket id: a `"disconnect"` broadcast on this topic closes the socket with
    /// code 1001 (phoenix.js then reconnects).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// The connect hook refused the connection: the upgrade is answered HTTP 403 with an empty
/// body. The reason is only logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection refused: {reason}")]
pub struct ConnectError {
    reason: String,
}

impl ConnectError {
    /// A refusal; `reason` goes to the logs, never to the client.
    pub fn new(reason: impl Into<String>) -> Self {
        ConnectError {
            reason: reason.into(),
        }
    }
}

impl poem::error::ResponseError for ConnectError {
    fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Connected, ConnectError>> + Send>>;
type ConnectFn = dyn Fn(ConnectInfo) -> ConnectFuture + Send + Sync;
type SpawnFn = dyn Fn(Start) -> JoinHandle<()> + Send + Sync;

/// A topic pattern and the channel it routes to.
pub(crate) struct Route {
    pattern: String,
    prefix: bool,
    /// The pattern as given (`"room:*"`): the `route` label of the channel metrics.
    pub(crate) label: Arc<str>,
    pub(crate) spawn: Box<SpawnFn>,
}

impl Route {
    fn matches(&self, topic: &str) -> bool {
        if self.prefix {
            topic.starts_with(&self.pattern)
        } else {
            topic == self.pattern
        }
    }
}

/// Settings shared by every connection of one endpoint.
pub(crate) struct Config {
    pub(crate) check_origin: CheckOrigin,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_channels: usize,
    pub(crate) outbound: Limits,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) websocket: WebSocketConfig,
    pub(crate) max_topic_length: usize,
    pub(crate) message_rate: RateLimit,
    pub(crate) join_rate: RateLimit,
    pub(crate) max_topics: usize,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    /// Batch size, interval, deadline.
    pub(crate) drain: (usize, Duration, Duration),
    pub(crate) trusted_proxies: Vec<(IpAddr, u8)>,
    pub(crate) rebalance: Option<Rebalance>,
}

/// A token bucket's settings: `per_second` on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// The bucket's size: how many may come at once.
    pub burst: u32,
}

impl RateLimit {
    /// A limit of `per_second` on average with bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimit {
            per_second: per_second.max(1),
            burst: burst.max(1),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) routes: Vec<Route>,
    pub(crate) hubs: Hubs,
    pub(crate) drain: Drain,
    /// Set when the long-poll transport is on.
    pub(crate) longpoll: Option<LongPoll>,
    connect: Option<Box<ConnectFn>>,
    /// Set once a channel of a socket that no registry reached has used presence, so the
    /// warning naming `PresenceMiddleware` is logged once per endpoint.
    pub(crate) no_registry_warned: Arc<AtomicBool>,
    /// Channels open and recent closes, for a status page.
    pub(crate) status: Arc<Status>,
    /// The sockets' metric handles, registered when the endpoint is built.
    pub(crate) metrics: Arc<metrics::SocketCounters>,
}

/// The endpoint's drain state: whether it is draining, how many connections are open, and
/// which of them must close (a drain's batches, a rebalance's newest sockets).
pub(crate) struct Drain {
    draining: watch::Sender<bool>,
    open: watch::Sender<usize>,
    /// The open connections. The endpoint closes them itself (a drain's batches, a
    /// rebalance's newest sockets) rather than each connection watching for its turn: a
    /// watch would be a future of 150 bytes waiting in every connection's task.
    open_conns: std::sync::Mutex<Open>,
    next: std::sync::atomic::AtomicU64,
    /// Set once the rebalancer runs (it starts with the endpoint, or with its first
    /// connection when the endpoint was built outside a runtime).
    rebalancing: AtomicBool,
}

/// The open connections, by connect number (given in the order they connected), with the
/// outbox through which each is told to close.
#[derive(Default)]
struct Open {
    conns: std::collections::BTreeMap<u64, Outbox>,
    /// A drain's batches so far: connections numbered below this are told to close,
    /// including any that connects once every one was released.
    below: u64,
}

/// Why the endpoint closes a connection itself (1012, phoenix.js reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The endpoint drains: [`PhoenixSocket::drain`].
    Drain,
    /// Its node holds more than its share of the cluster's sockets: [`Rebalance`].
    Rebalance,
}

impl Release {
    /// Tells each of `outboxes` to close. Called without the registry's lock held.
    fn close(self, outboxes: Vec<Outbox>) {
        let (reason, why) = match self {
            Release::Drain => ("server shutting down", "the endpoint is draining"),
            Release::Rebalance => ("rebalancing", "rebalancing the cluster's sockets"),
        };
        if !outboxes.is_empty() {
            tracing::debug!(count = outboxes.len(), "closing websockets: {why}");
        }
        for outbox in outboxes {
            outbox.close(code::SERVICE_RESTART, reason);
        }
    }
}

impl Drain {
    fn new() -> Self {
        Drain {
            draining: watch::channel(false).0,
            open: watch::channel(0).0,
            open_conns: std::sync::Mutex::default(),
            next: std::sync::atomic::AtomicU64::new(0),
            rebalancing: AtomicBool::new(false),
        }
    }

    fn open_conns(&self) -> std::sync::MutexGuard<'_, Open> {
        // The map stays consistent whatever panicked while it was held.
        self.open_conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a connection as open until the guard drops; a drain or a rebalance closes it
    /// through `outbox`.
    pub(crate) fn enter(inner: &Arc<Inner>, outbox: &Outbox) -> OpenGuard {
        let drain = &inner.drain;
        let number = drain
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let released = {
            let mut open = drain.open_conns();
            open.conns.insert(number, outbox.clone());
            number < open.below
        };
        if released {
            Release::Drain.close(vec![outbox.clone()]);
        }
        drain.open.send_modify(|n| *n += 1);
        inner.metrics.open.increment(1.0);
        Drain::start_rebalancing(inner);
        OpenGuard(inner.clone(), number)
    }

    /// Starts the endpoint's rebalancer, if it is on and not yet started. Needs a runtime.
    fn start_rebalancing(inner: &Arc<Inner>) {
        if inner.config.rebalance.is_some()
            && !inner
                .drain
                .rebalancing
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            crate::rebalance::start(inner);
        }
    }

    /// Releases the next `batch` open connections, oldest first. Returns how many are still
    /// open and not released.
    fn release_batch(&self, batch: usize) -> usize {
        let (released, left) = {
            let mut open = self.open_conns();
            let below = open.below;
            let next = open.conns.range(below..).nth(batch).map(|(n, _)| *n);
            open.below = next.unwrap_or(u64::MAX);
            let released: Vec<Outbox> = open
                .conns
                .range(below..open.below)
                .map(|(_, outbox)| outbox.clone())
                .collect();
            let left = next.map_or(0, |n| open.conns.range(n..).count());
            (released, left)
        };
        Release::Drain.close(released);
        left
    }

    /// Tells the `count` newest open connections to close (a rebalance), and returns how
    /// many that is: fewer when fewer are open.
    pub(crate) fn shed_newest(&self, count: usize) -> usize {
        if count == 0 {
            return 0;
        }
        let shed: Vec<Outbox> = {
            let open = self.open_conns();
            let newest = open.conns.values().rev().take(count);
            newest.cloned().collect()
        };
        let closing = shed.len();
        Release::Rebalance.close(shed);
        closing
    }

    /// The number of open connections.
    pub(crate) fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Whether the endpoint drains.
    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// One open connection (its endpoint, its connect number), counted by
/// [`PhoenixSocket::open_sockets`].
pub(crate) struct OpenGuard(Arc<Inner>, u64);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let drain = &self.0.drain;
        let gone = drain.open_conns().conns.remove(&self.1);
        // Dropped outside the lock.
        drop(gone);
        drain.open.send_modify(|n| *n = n.saturating_sub(1));
        self.0.metrics.open.decrement(1.0);
    }
}

impl Inner {
    /// The route of `topic`. Topics under the long-poll transport's own prefix (`phx:lp:`)
    /// have none, whatever the patterns: a catch-all route must not let a client join the
    /// pub/sub topics that carry other sessions' requests and answers. Nor do the
    /// rebalancing topics (this endpoint's, and the default one), whose counts a channel
    /// broadcast could forge.
    pub(crate) fn route(&self, topic: &str) -> Option<&Route> {
        if topic.starts_with(longpoll::TOPIC_PREFIX)
            || topic == crate::rebalance::DEFAULT_REBALANCE_TOPIC
            || self
                .config
                .rebalance
                .as_ref()
                .is_some_and(|r| *r.topic == *topic)
        {
            return None;
        }
        self.routes.iter().find(|r| r.matches(topic))
    }
}

/// A Phoenix socket endpoint: nest it where phoenix.js's `new Socket(path)` points,
/// `Route::new().nest("/socket", socket)`.
///
/// It serves the websocket transport at `<mount>/websocket`, long poll at `<mount>/longpoll`
/// when [turned on](PhoenixSocketBuilder::longpoll), and answers other paths below its
/// mount 404; mounted directly, `Route::new().at("/socket/websocket", socket)`, it serves
/// any path whose last segment is `websocket` (see the crate docs, "Mounting"). It negotiates the serializer from the `vsn` query parameter (`1.0.x` or absent: V1 JSON
/// objects; `2.0.x`: V2 JSON arrays and binary frames; anything else: HTTP 403), runs the
/// connect hook (refusal: HTTP 403), then upgrades and serves the Phoenix channel protocol.
/// Cloning is cheap and clones share their fastlane hubs.
///
/// # Examples
///
/// ```no_run
/// use poem::{Route, Server, listener::TcpListener};
/// use presence_core::PubSub;
/// use presence_poem::{Channel, ChannelContext, Join, PhoenixSocket};
///
/// struct Lobby;
/// impl Channel for Lobby {
///     async fn join(&mut self, _: &str, _: serde_json::Value, _: &mut ChannelContext) -> Join {
///         Join::ok()
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let socket = PhoenixSocket::builder(PubSub::new("node-a"))
///     .channel("room:*", || Lobby)
///     .build();
/// // phoenix.js: `new Socket("/socket")`, which connects to `/socket/websocket`.
/// let app = Route::new().nest("/socket", socket);
/// Server::new(TcpListener::bind("0.0.0.0:4000")).run(app).await
/// # }
/// ```
#[derive(Clone)]
pub struct PhoenixSocket {
    inner: Arc<Inner>,
}

impl fmt::Debug for PhoenixSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoenixSocket")
            .field(
                "routes",
                &self
                    .inner
                    .routes
                    .iter()
                    .map(|r| &r.pattern)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`PhoenixSocket`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct PhoenixSocketBuilder {
    pubsub: PubSub,
    longpoll: Option<LongPollConfig>,
    routes: Vec<Route>,
    connect: Option<Box<ConnectFn>>,
    config: Config,
}

impl fmt::Debug for PhoenixSocketBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoenixSocketBuilder")
            .field("pubsub", &self.pubsub)
            .field("idle_timeout", &self.config.idle_timeout)
            .field("max_channels", &self.config.max_channels)
            .finish_non_exhaustive()
    }
}

/// Default server idle timeout: a socket that receives nothing for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit of channels joined on one socket.
pub const DEFAULT_MAX_CHANNELS: usize = 100;
/// Default capacity, in frames, of a socket's outbound queue.
pub const DEFAULT_OUTBOUND_CAPACITY: usize = 256;
/// The default byte budget of a socket's outbound queue.
pub const DEFAULT_OUTBOUND_BUDGET: usize = 8 << 20;
/// Default time a channel's `join` may take before the join is answered `join timeout`.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The default longest topic, in bytes.
pub const DEFAULT_MAX_TOPIC_LENGTH: usize = 256;
/// The default rate of messages from one socket.
pub const DEFAULT_MESSAGE_RATE: RateLimit = RateLimit {
    per_second: 100,
    burst: 200,
};
/// The default rate of joins from one socket (a burst covers rejoining 100 channels twice).
pub const DEFAULT_JOIN_RATE: RateLimit = RateLimit {
    per_second: 10,
    burst: 200,
};
/// The default number of topics with joined sockets on one endpoint.
pub const DEFAULT_MAX_TOPICS: usize = 100_000;
/// The default number of open connections of one endpoint.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// The default time the connect hook may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on an incoming message (and frame) size, in bytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

impl PhoenixSocket {
    /// Drains the endpoint, for a graceful shutdown (Phoenix's socket drainer).
    ///
    /// From now on, upgrade requests are answered HTTP 503, and every open socket is closed
    /// with close code **1012** ("service restart"): phoenix.js reconnects with backoff, to
    /// another node when a load balancer sends it there. Sockets close in batches, as
    /// Phoenix's drainer does ([`PhoenixSocketBuilder::drain_batches`]: 10,000 sockets every
    /// 2 s, everyone left at 30 s), so a node's shutdown does not send all its clients to the
    /// other nodes in the same millisecond. Each connection stops its channels as
    /// when the client closes (`terminate` with [`StopReason::Closed`](crate::StopReason),
    /// their [`Owner`](presence_core::Owner)s drop, so their presences leave), within the
    /// connection's 5 s deadline. The future resolves once every connection of this endpoint
    /// (and of its clones) has ended. Calling it again only waits. Stopping poem's listener
    /// is the server's job: call this after (or while) it stops accepting connections.
    ///
    /// Long-poll sessions drain in the same batches: a closed session's next poll gets status
    /// 410 (phoenix.js reconnects), and new sessions get status 500 (it retries later).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use presence_poem::PhoenixSocket;
    /// # async fn stop(socket: PhoenixSocket) {
    /// // On SIGTERM, once the listener stopped accepting connections:
    /// tokio::time::timeout(std::time::Duration::from_secs(10), socket.drain()).await.ok();
    /// assert_eq!(socket.open_sockets(), 0);
    /// # }
    /// ```
    pub async fn drain(&self) {
        let drain = &self.inner.drain;
        let (batch, interval, deadline) = self.inner.config.drain;
        let mut open = drain.open.subscribe();
        if !drain.draining.send_replace(true) {
            let started = tokio::time::Instant::now();
            drain.release_batch(batch);
            loop {
                let next = tokio::time::sleep(interval);
                tokio::select! {
                    _ = open.wait_for(|n| *n == 0) => return,
                    () = next => {}
                }
                if started.elapsed() >= deadline {
                    // The deadline: everyone else at once.
                    drain.release_batch(usize::MAX);
                    break;
                }
                let left = drain.release_batch(batch);
                tracing::debug!(open = *open.borrow(), left, "draining: next batch released");
            }
        }
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.is_draining()
    }

    /// The number of connections of this endpoint that are open: websockets upgraded and not
    /// yet ended, and long-poll sessions not yet expired or closed.
    pub fn open_sockets(&self) -> usize {
        self.inner.drain.open()
    }

    /// The number of channels joined on this endpoint's sockets (joins still running are not
    /// counted).
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::PhoenixSocket;
    ///
    /// let socket = PhoenixSocket::builder(PubSub::new("a")).build();
    /// assert_eq!(socket.open_channels(), 0);
    /// ```
    pub fn open_channels(&self) -> usize {
        self.inner.status.channels()
    }

    /// The last sockets (at most 32, newest first) this endpoint closed because their client
    /// stopped reading (1013) or flooded past its rate limit (1008), for a status page. The
    /// metrics count every close; this keeps a few to show.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::PhoenixSocket;
    ///
    /// let socket = PhoenixSocket::builder(PubSub::new("a")).build();
    /// for close in socket.recent_closes() {
    ///     println!("{:?}: {} {}", close.at, close.code, close.reason);
    /// }
    /// assert!(socket.recent_closes().is_empty());
    /// ```
    pub fn recent_closes(&self) -> Vec<RecentClose> {
        self.inner.status.recent_closes()
    }

    /// A builder for a socket endpoint on the pub/sub that `registry` runs as `server`: the one
    /// the presences declared with `pubsub = AppPubSub` broadcast on, so their
    /// `presence_diff`s reach the sockets.
    ///
    /// # Errors
    ///
    /// [`RegistryError::PubSubNotRunning`] when `registry` holds no pub/sub named `server`.
    ///
    /// # Examples
    ///
    /// ```
    /// use poem::{EndpointExt, Route};
    /// use presence_core::PubSub;
    /// use presence_core::registry::Registry;
    /// use presence_poem::{PhoenixSocket, PresenceMiddleware};
    ///
    /// presence_core::pubsub_server!(pub AppPubSub);
    ///
    /// # fn main() -> Result<(), presence_core::registry::RegistryError> {
    /// let registry = Registry::new();
    /// registry.insert_pubsub(&AppPubSub, PubSub::new("node-a"));
    /// let socket = PhoenixSocket::builder_for(&registry, &AppPubSub)?.build();
    /// let app = Route::new()
    ///     .nest("/socket", socket)
    ///     .with(PresenceMiddleware::new(registry));
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder_for<S: PubSubServer>(
        registry: &Registry,
        server: &S,
    ) -> Result<PhoenixSocketBuilder, RegistryError> {
        Ok(Self::builder(registry.pubsub(server)?))
    }

    /// A builder for a socket endpoint whose channels use `pubsub`: their broadcasts go on
    /// it, and its fastlane hubs deliver its messages (`presence_diff` included) to the
    /// sockets.
    ///
    /// With presence, it must be the pub/sub the presences broadcast on, or their diffs never
    /// reach the sockets; [`builder_for`](Self::builder_for) takes it from the registry, and
    /// [`ChannelContext::push_presence_state`](crate::ChannelContext::push_presence_state)
    /// refuses a socket on another one.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::PhoenixSocket;
    ///
    /// let socket = PhoenixSocket::builder(PubSub::new("node-a")).build();
    /// ```
    pub fn builder(pubsub: PubSub) -> PhoenixSocketBuilder {
        PhoenixSocketBuilder {
            pubsub,
            longpoll: None,
            routes: Vec::new(),
            connect: None,
            config: Config {
                check_origin: CheckOrigin::default(),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_channels: DEFAULT_MAX_CHANNELS,
                outbound: Limits {
                    frames: DEFAULT_OUTBOUND_CAPACITY,
                    bytes: DEFAULT_OUTBOUND_BUDGET,
                },
                shutdown_timeout: Duration::from_secs(5),
                join_timeout: DEFAULT_JOIN_TIMEOUT,
                max_topic_length: DEFAULT_MAX_TOPIC_LENGTH,
                message_rate: DEFAULT_MESSAGE_RATE,
                join_rate: DEFAULT_JOIN_RATE,
                max_topics: DEFAULT_MAX_TOPICS,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                drain: (10_000, Duration::from_secs(2), Duration::from_secs(30)),
                trusted_proxies: Vec::new(),
                websocket: default_websocket_config(DEFAULT_MAX_MESSAGE_SIZE),
                rebalance: None,
            },
        }
    }
}

/// Small buffers: an idle socket should cost a few KiB, not tungstenite's default 128 KiB
/// read buffer. tungstenite only reads (the connection writes its own frames); a write buffer
/// size of 0 keeps the little it writes on its own (answers that go nowhere) unbuffered.
fn default_websocket_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

impl PhoenixSocketBuilder {
    /// Routes topics matching `pattern` to a new channel made by `factory` for every join.
    /// A pattern ending in `*` matches by prefix (`"room:*"`), any other exactly. The first
    /// matching route wins.
    ///
    /// The join params type `P` is inferred from the channel's `Channel` impl: `Value` for
    /// `impl Channel for Room`, `JoinParams` for `impl Channel<JoinParams> for Room` (see
    /// [`Channel`], "Join params"). The factory runs only for joins whose params deserialize.
    pub fn channel<C, F, P>(mut self, pattern: &str, factory: F) -> Self
    where
        C: Channel<P>,
        F: Fn() -> C + Send + Sync + 'static,
        P: DeserializeOwned + Send + 'static,
    {
        let factory = Arc::new(factory);
        let label = Arc::from(pattern);
        let (pattern, prefix) = match pattern.strip_suffix('*') {
            Some(prefix) => (prefix.to_owned(), true),
            None => (pattern.to_owned(), false),
        };
        self.routes.push(Route {
            pattern,
            prefix,
            label,
            spawn: Box::new(move |start| {
                let factory = factory.clone();
                let span = context::channel_span(&start);
                tokio::spawn(
                    context::run::<C, P>(move || factory(), Box::new(start)).instrument(span),
                )
            }),
        });
        self
    }

    /// Sets the connect hook. It sees the [`ConnectInfo`] and accepts with [`Connected`] or
    /// refuses with [`ConnectError`] (HTTP 403). Without a hook every connection is accepted.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::{ConnectError, Connected, PhoenixSocket};
    ///
    /// let socket = PhoenixSocket::builder(PubSub::new("a"))
    ///     .on_connect(|info| async move {
    ///         match info.auth_token.or_else(|| info.params.get("token").cloned()) {
    ///             Some(token) if token == "letmein" => Ok(Connected::new().id("user_socket:1")),
    ///             _ => Err(ConnectError::new("bad token")),
    ///         }
    ///     })
    ///     .build();
    /// ```
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Connected, ConnectError>> + Send + 'static,
    {
        self.connect = Some(Box::new(move |info| Box::pin(hook(info))));
        self
    }

    /// Closes sockets that receive nothing (not even a heartbeat) for `timeout` (default 60 s),
    /// with code 1000.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Limits how long a channel's [`join`](Channel::join) may run (default 15 s, longer than
    /// phoenix.js's 10 s push timeout). A join still running then is aborted (the channel's
    /// [`Owner`](presence_core::Owner) drops, so whatever it tracked leaves) and answered
    /// `error` with `{"reason": "join timeout"}`. The socket serves its other topics and
    /// heartbeats while joins run.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.config.join_timeout = timeout;
        self
    }

    /// Limits topic names to `bytes` (default 256). A longer join is refused with
    /// `{"reason": "topic too long"}`: every topic is copied into several maps and, with
    /// presence, replicated to every node.
    pub fn max_topic_length(mut self, bytes: usize) -> Self {
        self.config.max_topic_length = bytes;
        self
    }

    /// Limits the messages one socket may send (default 100 a second, bursts of 200;
    /// heartbeats are not counted). A message over the limit is not handled: it is answered
    /// `error` with `{"reason": "rate limited"}`. A socket that goes on after more than
    /// twice its burst was refused within 10 s is closed with **1008** (policy violation).
    /// The flood never delays its neighbours: each socket is served on its own.
    pub fn message_rate(mut self, limit: RateLimit) -> Self {
        self.config.message_rate = limit;
        self
    }

    /// Limits the joins one socket may send (default 10 a second, bursts of 200, enough to
    /// rejoin 100 channels after a reconnect, twice). Duplicate joins of one topic count as joins;
    /// each re-lists a room. A join over the limit is answered `error` with
    /// `{"reason": "rate limited"}`; joins also count as messages.
    pub fn join_rate(mut self, limit: RateLimit) -> Self {
        self.config.join_rate = limit;
        self
    }

    /// Limits the topics with joined sockets on this endpoint (default 100,000): a join to a
    /// new topic beyond it is refused with `{"reason": "too many topics"}`. Each such topic
    /// has a hub (a subscription and a task).
    pub fn max_topics(mut self, max: usize) -> Self {
        self.config.max_topics = max;
        self
    }

    /// Limits the open connections of this endpoint (default 100,000), long-poll sessions
    /// included: an upgrade beyond it gets HTTP 503, a new long-poll session status 500
    /// (phoenix.js retries either with backoff).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// How long the [connect hook](Self::on_connect) may take (default 10 s); a hook that
    /// takes longer is dropped and the upgrade gets HTTP 503.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Turns on rebalancing: this node publishes its number of sockets on the pub/sub, and
    /// when it holds well over the cluster's average it asks its newest sockets to reconnect
    /// (close code 1012), so that a node that comes back gets its share again. Every node of
    /// the cluster must turn it on, with the same settings. See [`Rebalance`]. Off by
    /// default.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::{PhoenixSocket, Rebalance};
    ///
    /// let socket = PhoenixSocket::builder(PubSub::new("node-a"))
    ///     .rebalance(Rebalance::new())
    ///     .build();
    /// ```
    pub fn rebalance(mut self, rebalance: Rebalance) -> Self {
        self.config.rebalance = Some(rebalance);
        self
    }

    /// Sets how [`drain`](PhoenixSocket::drain) closes sockets: `batch_size` at once, the next
    /// batch `interval` later, and every socket left once `deadline` has passed since the
    /// drain began (defaults, as Phoenix's drainer: 10,000, 2 s, 30 s).
    pub fn drain_batches(
        mut self,
        batch_size: usize,
        interval: Duration,
        deadline: Duration,
    ) -> Self {
        self.config.drain = (batch_size.max(1), interval, deadline);
        self
    }

    /// The proxies whose `X-Forwarded-For` is believed, as addresses or networks
    /// (`"10.0.0.0/8"`, `"::1"`): [`ConnectInfo::peer_addr`] is then the client behind them.
    /// None by default: a client can write any `X-Forwarded-For` it likes.
    ///
    /// # Errors
    ///
    /// The first entry that is not an address or a network, as given.
    pub fn trusted_proxies<I, S>(mut self, proxies: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for proxy in proxies {
            let proxy = proxy.as_ref();
            let net = parse_net(proxy)
                .ok_or_else(|| format!("not an address or a network: {proxy:?}"))?;
            self.config.trusted_proxies.push(net);
        }
        Ok(self)
    }

    /// Sets which pages may open a socket (default [`CheckOrigin::SameHost`]: the `Origin`
    /// must be the request's own host and port, as a page served by this app sends).
    ///
    /// Browsers send every websocket handshake with the page's `Origin` and the user's
    /// cookies, whatever site the page is on: without this check a page on another site
    /// could open the socket as the user. A handshake whose `Origin` is refused gets HTTP 403
    /// before the connect hook runs, and one warning is logged naming the origin. A request
    /// without an `Origin` header (not a browser: a mobile app, a server, a test) is not
    /// checked.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::{CheckOrigin, PhoenixSocket};
    ///
    /// let socket = PhoenixSocket::builder(PubSub::new("a"))
    ///     .check_origin(CheckOrigin::allow(["https://example.com", "//*.example.com"])?)
    ///     .build();
    /// # Ok::<(), presence_poem::InvalidOrigin>(())
    /// ```
    pub fn check_origin(mut self, check: CheckOrigin) -> Self {
        self.config.check_origin = check;
        self
    }

    /// Limits the channels joined on one socket (default 100).
    pub fn max_channels(mut self, max: usize) -> Self {
        self.config.max_channels = max;
        self
    }

    /// Sets the capacity, in frames, of each socket's outbound queue (default 256). A socket
    /// whose queue is full is closed with code 1013; see the crate docs, "Slow clients".
    pub fn outbound_capacity(mut self, capacity: usize) -> Self {
        self.config.outbound.frames = capacity.max(1);
        self
    }

    /// Sets the byte budget of each socket's outbound queue (default 8 MiB): the encoded
    /// frames waiting to be written. A socket that would pass it is closed with code 1013,
    /// except that one frame of any size fits an empty queue; see the crate docs, "Slow
    /// clients".
    pub fn outbound_budget(mut self, bytes: usize) -> Self {
        self.config.outbound.bytes = bytes.max(1);
        self
    }

    /// Limits incoming messages and frames to `bytes` (default 1 MiB). A larger one closes the
    /// socket with code 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.websocket = self
            .config
            .websocket
            .max_message_size(Some(bytes))
            .max_frame_size(Some(bytes));
        self
    }

    /// Replaces the websocket configuration entirely (buffers and limits). The default uses a
    /// 512-byte read buffer (an idle socket holds it for its life; larger messages take
    /// several reads), and 1 MiB message and frame limits. The socket writes its frames
    /// itself, so the configuration's write settings have no effect: messages longer than
    /// 2 KiB are written as fragments of 2 KiB (see the crate docs, "Memory").
    pub fn websocket_config(mut self, config: WebSocketConfig) -> Self {
        self.config.websocket = config;
        self
    }

    /// Turns on the long-poll transport at `<mount>/longpoll`, beside the websocket, with the
    /// same channels, connect hook, origin check and limits: phoenix.js's `LongPoll`
    /// (`transport: LongPoll`, or the fallback of `longPollFallbackMs`) then works. Off by
    /// default, as in Phoenix. See the crate docs, "Long poll", and [`LongPollConfig`] for
    /// the session key a cluster must share.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    /// use presence_poem::{LongPollConfig, PhoenixSocket};
    ///
    /// // One node: a key is generated at start.
    /// let socket = PhoenixSocket::builder(PubSub::new("a"))
    ///     .longpoll(LongPollConfig::new())
    ///     .build();
    /// ```
    pub fn longpoll(mut self, config: LongPollConfig) -> Self {
        self.longpoll = Some(config);
        self
    }

    /// Builds the endpoint.
    ///
    /// # Panics
    ///
    /// With the long-poll transport on and no session key given, when the operating system
    /// gives no random bytes for one.
    pub fn build(self) -> PhoenixSocket {
        let socket = PhoenixSocket {
            inner: Arc::new(Inner {
                config: self.config,
                routes: self.routes,
                hubs: Hubs::new(self.pubsub),
                drain: Drain::new(),
                longpoll: self.longpoll.map(LongPollConfig::build),
                connect: self.connect,
                no_registry_warned: Arc::new(AtomicBool::new(false)),
                status: Arc::default(),
                metrics: Arc::new(metrics::SocketCounters::register()),
            }),
        };
        // The rebalancer starts now when there is a runtime to run it (a node that comes
        // back empty must publish its count), or else with the first connection.
        if tokio::runtime::Handle::try_current().is_ok() {
            Drain::start_rebalancing(&socket.inner);
        }
        socket
    }
}

const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// Finds and decodes the phoenix.js auth token in `Sec-WebSocket-Protocol`. `Err` when it is
/// present but not valid base64 UTF-8.
fn auth_token(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let engines = [
        GeneralPurpose::new(&base64::alphabet::STANDARD, config),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, config),
    ];
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim) {
            if let Some(encoded) = protocol.strip_prefix(AUTH_TOKEN_PREFIX) {
                let bytes = engines
                    .iter()
                    .find_map(|e| e.decode(encoded).ok())
                    .ok_or(())?;
                return String::from_utf8(bytes).map(Some).map_err(|_| ());
            }
        }
    }
    Ok(None)
}

/// Parses a query string strictly: `None` for a `%` not followed by two hex digits, or an
/// escape that does not decode to UTF-8. A repeated key keeps its last value.
pub(crate) fn parse_query(query: &str) -> Option<HashMap<String, String>> {
    fn decode(part: &str) -> Option<String> {
        let mut bytes = Vec::with_capacity(part.len());
        let mut input = part.bytes();
        while let Some(b) = input.next() {
            match b {
                b'+' => bytes.push(b' '),
                b'%' => {
                    let hex = [input.next()?, input.next()?];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                }
                b => bytes.push(b),
            }
        }
        String::from_utf8(bytes).ok()
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(key)?, decode(value)?))
        })
        .collect()
}

fn forbidden() -> Response {
    Response::builder().status(StatusCode::FORBIDDEN).finish()
}

/// A transport of the socket endpoint, named by the last segment of the request's path, as
/// Phoenix serves `<mount>/websocket` (and `<mount>/longpoll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `<mount>/websocket`.
    WebSocket,
    /// `<mount>/longpoll`.
    LongPoll,
}

impl Transport {
    /// The transport of a request's `path`, whether the endpoint is nested (`/websocket`) or
    /// mounted at its full path (`/socket/websocket`).
    fn of_path(path: &str) -> Option<Transport> {
        match path.rsplit('/').next() {
            Some("websocket") => Some(Transport::WebSocket),
            Some("longpoll") => Some(Transport::LongPoll),
            _ => None,
        }
    }
}

impl Endpoint for PhoenixSocket {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        match Transport::of_path(req.uri().path()) {
            Some(Transport::WebSocket) => self.websocket(req).await,
            Some(Transport::LongPoll) => match &self.inner.longpoll {
                Some(lp) => Ok(longpoll::serve(self, lp, req).await),
                None => {
                    tracing::debug!("long poll is off (see PhoenixSocketBuilder::longpoll)");
                    Err(poem::error::NotFoundError.into())
                }
            },
            None => {
                tracing::debug!(path = req.uri().path(), "not a socket transport path");
                Err(poem::error::NotFoundError.into())
            }
        }
    }
}

/// Why a connect was refused before a connection exists: each transport answers it in its
/// own way (an HTTP status for a websocket upgrade, a JSON status for a long poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The origin, the serializer version, the auth token or the connect hook refused it.
    Forbidden,
    /// The query string does not parse.
    BadRequest,
    /// Draining, at the connection limit, or the connect hook timed out: try again later.
    Unavailable,
}

/// What the checks and the connect hook let through.
pub(crate) struct Admitted {
    pub(crate) vsn: Vsn,
    pub(crate) connected: Connected,
    pub(crate) registry: Option<Registry>,
}

impl PhoenixSocket {
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Whether the request's `Origin`, if any, is allowed (see
    /// [`PhoenixSocketBuilder::check_origin`]); logs a refusal.
    pub(crate) fn origin_allowed(&self, req: &Request, transport: &str) -> bool {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return true;
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let allowed = origin
            .to_str()
            .is_ok_and(|o| self.inner.config.check_origin.allows(o, host));
        if !allowed {
            tracing::warn!(
                ?origin,
                host,
                transport,
                "refusing connection: origin not allowed (see PhoenixSocketBuilder::check_origin)"
            );
        }
        allowed
    }

    /// The checks every new connection passes before its connect hook: drain, connection
    /// limit, origin, query string, serializer version.
    pub(crate) fn check(
        &self,
        req: &Request,
        transport: &str,
    ) -> Result<(HashMap<String, String>, Vsn), Refusal> {
        if self.is_draining() {
            tracing::debug!(transport, "refusing connection: the endpoint is draining");
            metrics::refused(metrics::Refusal::Draining);
            return Err(Refusal::Unavailable);
        }
        if self.open_sockets() >= self.inner.config.max_connections {
            tracing::warn!(
                max = self.inner.config.max_connections,
                transport,
                "refusing connection: too many open connections"
            );
            metrics::refused(metrics::Refusal::Limit);
            return Err(Refusal::Unavailable);
        }
        if !self.origin_allowed(req, transport) {
            metrics::refused(metrics::Refusal::Origin);
            return Err(Refusal::Forbidden);
        }
        let Some(params) = parse_query(req.uri().query().unwrap_or_default()) else {
            // Not silently read as "no params" (which would also mean vsn 1.0.0).
            // Its length only: the query may hold a session token or the app's token param.
            tracing::warn!(
                query_len = req.uri().query().map_or(0, str::len),
                transport,
                "refusing connection: unparsable query string"
            );
            metrics::refused(metrics::Refusal::BadRequest);
            return Err(Refusal::BadRequest);
        };
        let Some(vsn) = Vsn::negotiate(params.get("vsn").map(String::as_str)) else {
            tracing::warn!(vsn = ?params.get("vsn"), transport, "refusing connection: unsupported serializer version");
            metrics::refused(metrics::Refusal::Vsn);
            return Err(Refusal::Forbidden);
        };
        Ok((params, vsn))
    }

    /// Runs the connect hook (within its timeout) for a request that passed
    /// [`check`](Self::check). `auth_token` is the transport's (`Err` when malformed).
    pub(crate) async fn connect(
        &self,
        req: &Request,
        params: HashMap<String, String>,
        vsn: Vsn,
        transport: &str,
        auth_token: Result<Option<String>, ()>,
    ) -> Result<Admitted, Refusal> {
        let Ok(auth_token) = auth_token else {
            tracing::warn!(transport, "refusing connection: malformed auth token");
            metrics::refused(metrics::Refusal::AuthToken);
            return Err(Refusal::Forbidden);
        };
        let connected = match &self.inner.connect {
            None => Connected::new(),
            Some(hook) => {
                let headers = req.headers();
                let remote_ip = req.remote_addr().as_socket_addr().map(SocketAddr::ip);
                let info = ConnectInfo {
                    params,
                    peer_addr: client_addr(remote_ip, headers, &self.inner.config.trusted_proxies),
                    uri: req.uri().clone(),
                    user_agent: headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    x_headers: headers
                        .iter()
                        .filter(|(k, _)| k.as_str().starts_with("x-"))
                        .filter_map(|(k, v)| {
                            Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))
                        })
                        .collect(),
                    headers: headers.clone(),
                    remote_addr: req.remote_addr().clone(),
                    auth_token,
                };
                match tokio::time::timeout(self.inner.config.connect_timeout, hook(info)).await {
                    Ok(Ok(connected)) => connected,
                    Ok(Err(error)) => {
                        tracing::info!(%error, transport, "connect refused");
                        metrics::refused(metrics::Refusal::ConnectHook);
                        return Err(Refusal::Forbidden);
                    }
                    Err(_) => {
                        tracing::warn!(
                            timeout = ?self.inner.config.connect_timeout,
                            transport,
                            "refusing connection: the connect hook timed out"
                        );
                        metrics::refused(metrics::Refusal::ConnectTimeout);
                        return Err(Refusal::Unavailable);
                    }
                }
            }
        };
        Ok(Admitted {
            vsn,
            connected,
            // Put there by `PresenceMiddleware` (or any `.data(registry)`).
            registry: req.data::<Registry>().cloned(),
        })
    }

    /// Serves the websocket transport: checks, the connect hook, then the upgrade.
    async fn websocket(&self, req: Request) -> poem::Result<Response> {
        let refused = |refusal| match refusal {
            Refusal::Forbidden => forbidden(),
            Refusal::BadRequest => Response::builder().status(StatusCode::BAD_REQUEST).finish(),
            Refusal::Unavailable => Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .finish(),
        };
        let (params, vsn) = match self.check(&req, "websocket") {
            Ok(checked) => checked,
            Err(refusal) => return Ok(refused(refusal)),
        };
        let upgrade = match Upgrade::check(&req) {
            Ok(upgrade) => upgrade,
            Err(refusal) => {
                metrics::refused(metrics::Refusal::Upgrade);
                return Ok(refusal.response());
            }
        };
        let token = auth_token(req.headers());
        let Admitted {
            vsn,
            connected,
            registry,
        } = match self.connect(&req, params, vsn, "websocket", token).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Ok(refused(refusal)),
        };
        let inner = self.inner.clone();
        metrics::connected();
        let span = connection::span(&req, vsn, connected.id.as_deref());
        Ok(upgrade.accept(self.inner.config.websocket, move |stream| {
            connection::run(
                stream,
                inner,
                vsn,
                connected.assigns,
                connected.id.map(Arc::from),
                registry,
            )
            .instrument(span)
        }))
    }
}

#[cfg(test)]
mod tests {
    use poem::http::HeaderValue;

    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.0.0.2"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = [parse_net("10.0.0.0/8").unwrap()];
        // From a trusted proxy: the last hop that is not one of ours.
        assert_eq!(
            client_addr(Some(proxy), &headers, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        // From anyone else, the header is ignored.
        let direct: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_addr(Some(direct), &headers, &trusted), Some(direct));
        assert_eq!(client_addr(Some(proxy), &headers, &[]), Some(proxy));
        assert_eq!(parse_net("::1"), Some(("::1".parse().unwrap(), 128)));
        assert!(parse_net("10.0.0.0/33").is_none());
        assert!(parse_net("ten").is_none());
    }

    #[test]
    fn connect_info_debug_redacts_secrets() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("session=s3cr3t"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("test-agent"));
        let info = ConnectInfo {
            params: HashMap::from([
                ("token".to_owned(), "t0k3n".to_owned()),
                ("room".to_owned(), "lobby".to_owned()),
            ]),
            headers,
            remote_addr: RemoteAddr(poem::Addr::Custom("test", "".into())),
            peer_addr: None,
            uri: "/socket/websocket?token=t0k3n".parse().unwrap(),
            user_agent: Some("test-agent".to_owned()),
            x_headers: Vec::new(),
            auth_token: Some("b3ar3r".to_owned()),
        };
        let shown = format!("{info:?}");
        for secret in ["s3cr3t", "t0k3n", "b3ar3r"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("lobby") && shown.contains("test-agent"),
            "{shown}"
        );
    }

    #[test]
    fn parses_queries_strictly() {
        let params = parse_query("vsn=2.0.0&user[name]=a+b%21&empty=&flag").unwrap();
        assert_eq!(params["vsn"], "2.0.0");
        assert_eq!(params["user[name]"], "a b!");
        assert_eq!(params["empty"], "");
        assert_eq!(params["flag"], "");
        assert_eq!(parse_query("").unwrap().len(), 0);
        assert!(parse_query("vsn=%E0%A4%A").is_none(), "truncated escape");
        assert!(parse_query("x=%FF%FE").is_none(), "not UTF-8");
        assert!(parse_query("x=%zz").is_none(), "not hex");
    }

    #[test]
    fn decodes_auth_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(auth_token(&headers), Ok(None));
        // btoa("my-token") = "bXktdG9rZW4=", phoenix.js strips the padding.
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix, base64url.bearer.phx.bXktdG9rZW4"),
        );
        assert_eq!(auth_token(&headers), Ok(Some("my-token".to_owned())));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix, base64url.bearer.phx.!!!"),
        );
        assert_eq!(auth_token(&headers), Err(()));
    }

    #[test]
    fn transports_are_named_by_the_last_path_segment() {
        for path in ["/websocket", "/socket/websocket", "/a/b/websocket"] {
            assert_eq!(
                Transport::of_path(path),
                Some(Transport::WebSocket),
                "{path}"
            );
        }
        for path in [
            "/",
            "",
            "/socket",
            "/websocket/",
            "/websockets",
            "/longpolls",
        ] {
            assert_eq!(Transport::of_path(path), None, "{path}");
        }
    }

    #[test]
    fn routes_by_prefix_or_exactly() {
        let socket = PhoenixSocket::builder(PubSub::new("a"))
            .channel("room:*", || Nop)
            .channel("lobby", || Nop)
            .build();
        assert!(socket.inner.route("room:1").is_some());
        assert!(socket.inner.route("room:").is_some());
        assert!(socket.inner.route("lobby").is_some());
        assert!(socket.inner.route("lobby:1").is_none());
        assert!(socket.inner.route("rooms").is_none());
        let catch_all = PhoenixSocket::builder(PubSub::new("a"))
            .channel("*", || Nop)
            .build();
        assert!(catch_all.inner.route("anything").is_some());
        assert!(catch_all.inner.route("phx:lp:reply:a:1").is_none());
    }

    struct Nop;
    impl Channel for Nop {
        async fn join(
            &mut self,
            _: &str,
            _: serde_json::Value,
            _: &mut crate::ChannelContext,
        ) -> crate::Join {
            crate::Join::ok()
        }
    }
}
