//! The chat server: a page at `/`, Phoenix channels at `/socket`, presence per room.
//!
//! The contract the tests rely on:
//! - topics `room:<name>`; join params `{"user": <1 to 64 chars>, "status": <optional string>}`,
//!   anything else is refused with `{"reason": ...}`;
//! - after a join, the channel tracks key = user with `{"online_at": <unix seconds>, "status":
//!   <status or "online">}` and pushes `presence_state`;
//! - `"status"` with `{"status": <1 to 32 chars>}` updates the meta and replies ok (the join's
//!   optional status is checked the same way);
//! - `"new_msg"` with `{"body": <1 to 4,000 chars>}` broadcasts `"new_msg"` `{"user", "body"}`
//!   and replies ok;
//! - anything else gets an error reply `{"reason": ...}` and changes nothing;
//! - one info line per connect, join and leave, and one per user coming online or going
//!   offline in a room (`alice is online in room:lobby`), whatever their devices and nodes.
//!
//! # Running it
//!
//! [`run`] reads nothing itself: [`ChatConfig::from_env`] reads `HOST`, `PORT`,
//! `PRESENCE_NODE`, `PRESENCE_REDIS_URL`, `PRESENCE_PUBSUB_NAME` and the tracker settings
//! `PRESENCE_BROADCAST_PERIOD_MS`, `PRESENCE_DOWN_PERIOD_MS`, `PRESENCE_PERMDOWN_PERIOD_MS`,
//! `PRESENCE_MAX_SILENT_PERIODS` and `PRESENCE_DIFF_WINDOW_MS` (how long presence diffs of a
//! busy room may be held and merged; 0 turns merging off), and the long-poll settings
//! `PRESENCE_LONGPOLL_SECRET` (the session key every node of a cluster must share) and
//! `PRESENCE_LONGPOLL_WINDOW_MS`; and `PRESENCE_REBALANCE_PERIOD_MS` (a cluster's
//! rebalancing, below).
//! Once it listens, [`run`] prints one machine-readable line on stdout,
//! `LISTENING <ip>:<port>` (useful with `PORT=0`); logs go to stderr.
//!
//! # Cluster
//!
//! With `PRESENCE_REDIS_URL` set, the node joins the cluster of every chat node on that Redis
//! server with the same `PRESENCE_PUBSUB_NAME` (default `chat`; the Redis channel is
//! `presence:<name>`), under its `PRESENCE_NODE` name, which must be unique there (by default
//! it is generated). An unreachable Redis, or a name already in use, is an error at start.
//! Presences and `new_msg` broadcasts then reach the clients of every node.
//!
//! The nodes rebalance their sockets ([`Rebalance`]): every 5 s
//! (`PRESENCE_REBALANCE_PERIOD_MS`; 0 turns it off) each publishes how many it holds, and one
//! more than 10 % over the average for three rounds asks its newest clients to reconnect
//! (close code 1012), so that a node that restarted gets its share back instead of only the
//! clients that happen to connect later.
//!
//! # Shutdown
//!
//! On Ctrl-C or SIGTERM, [`ChatServer::shutdown`] runs, in this order:
//! 1. the listener stops accepting connections;
//! 2. every socket is closed with code 1012 ([`PhoenixSocket::drain`]): phoenix.js reconnects,
//!    to another node behind a load balancer. Each channel terminates and its presences leave
//!    locally (peers learn it from the next heartbeat, or from step 3, whichever comes first:
//!    one leave either way);
//! 3. a graceful permdown tells the peers to drop this node's presences now, rather than after
//!    the down period;
//! 4. the node waits (up to 2 s) until Redis has published everything queued, the permdown
//!    included;
//! 5. the pub/sub and the presence stop. [`run`] then returns `Ok` (exit code 0).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::web::Html;
use poem::{EndpointExt, Route, Server, get, handler};
use presence_core::presence::{KeyChange, PresenceOptions};
use presence_core::pubsub::{Adapter, BroadcastError, Inbound, RedisAdapter, RedisOptions};
use presence_core::registry::Registry;
use presence_core::supervisor::{BoxError, PubSubSpec, Running, Supervisor, TaskSpec};
use presence_core::tracker::TrackerConfig;
use presence_core::{Presence, pubsub_server};
use presence_poem::{
    Channel, ChannelContext, Connected, HandleIn, HandshakeTimeout, Join, LongPollConfig, Payload,
    PhoenixSocket, PresenceMiddleware, Rebalance, StopReason,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

pubsub_server!(
    /// The chat's pub/sub.
    pub ChatPubSub
);

/// What each device of a user shows in a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMeta {
    /// When the device joined, in seconds since the epoch.
    pub online_at: u64,
    /// The user's status, e.g. `online` or `away`.
    pub status: String,
}

/// Who is in which room: key = user name, one meta per device.
#[derive(Debug, Presence)]
#[presence(pubsub = ChatPubSub, meta = UserMeta)]
pub struct RoomPresence;

/// The chat page.
pub const INDEX_HTML: &str = include_str!("../chat/index.html");

/// Where and how the chat server runs.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Address to listen on (`HOST`, default 127.0.0.1).
    pub host: String,
    /// Port (`PORT`, default 4000; 0 picks a free one).
    pub port: u16,
    /// This node's name (`PRESENCE_NODE`, default a unique generated name).
    pub node_name: String,
    /// Presence options (`PRESENCE_BROADCAST_PERIOD_MS`, `PRESENCE_DOWN_PERIOD_MS`,
    /// `PRESENCE_PERMDOWN_PERIOD_MS`, `PRESENCE_DIFF_WINDOW_MS` (0 turns diff merging off),
    /// and `PRESENCE_MAX_SILENT_PERIODS`, which by default is lowered to fit two silent
    /// heartbeats in a short down period). By default the ten largest rooms are exported as
    /// `presence_topic_presences` at `/metrics`.
    pub presence: PresenceOptions,
    /// The Redis server to cluster over (`PRESENCE_REDIS_URL`); `None`: a single node.
    pub redis_url: Option<String>,
    /// The cluster's pub/sub name (`PRESENCE_PUBSUB_NAME`, default `chat`): nodes on one Redis
    /// server form a cluster per name (Redis channel `presence:<name>`).
    pub pubsub_name: String,
    /// The key long-poll session tokens are signed with (`PRESENCE_LONGPOLL_SECRET`, at least
    /// 32 bytes); `None`: one is generated at start. Every node of a cluster needs the same
    /// key, since a client's polls may reach any node.
    pub longpoll_secret: Option<String>,
    /// How long a long poll waits for messages (`PRESENCE_LONGPOLL_WINDOW_MS`, default 10 s);
    /// a session ends 1.5 windows after its client's last poll.
    pub longpoll_window: Option<Duration>,
    /// How often the nodes of a cluster compare their socket counts to rebalance them
    /// (`PRESENCE_REBALANCE_PERIOD_MS`, default 5 s; 0 turns rebalancing off). Only with
    /// `redis_url`: a single node has nobody to rebalance with. See [`Rebalance`].
    pub rebalance_period: Option<Duration>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            host: "127.0.0.1".to_owned(),
            port: 4000,
            node_name: unique_node_name(),
            presence: PresenceOptions::new().topic_metrics(10),
            redis_url: None,
            pubsub_name: "chat".to_owned(),
            longpoll_secret: None,
            longpoll_window: None,
            rebalance_period: Some(Duration::from_secs(5)),
        }
    }
}

fn unique_node_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("chat-{}-{nanos:x}", std::process::id())
}

impl ChatConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    ///
    /// A message naming the variable that does not parse.
    pub fn from_env() -> Result<Self, String> {
        let mut config = ChatConfig::default();
        if let Ok(host) = std::env::var("HOST") {
            config.host = host;
        }
        if let Ok(port) = std::env::var("PORT") {
            config.port = port
                .parse()
                .map_err(|_| format!("PORT must be a port number, got {port:?}"))?;
        }
        if let Ok(node) = std::env::var("PRESENCE_NODE") {
            if node.is_empty() {
                return Err("PRESENCE_NODE must not be empty".to_owned());
            }
            config.node_name = node;
        }
        let ms = |name: &str| -> Result<Option<Duration>, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse::<u64>()
                    .map(|ms| Some(Duration::from_millis(ms)))
                    .map_err(|_| format!("{name} must be a number of milliseconds, got {v:?}")),
                Err(_) => Ok(None),
            }
        };
        if let Some(d) = ms("PRESENCE_BROADCAST_PERIOD_MS")? {
            config.presence = config.presence.broadcast_period(d);
        }
        if let Some(d) = ms("PRESENCE_DOWN_PERIOD_MS")? {
            config.presence = config.presence.down_period(d);
        }
        if let Some(d) = ms("PRESENCE_PERMDOWN_PERIOD_MS")? {
            config.presence = config.presence.permdown_period(d);
        }
        if let Some(d) = ms("PRESENCE_DIFF_WINDOW_MS")? {
            config.presence = config.presence.diff_window(d);
        }
        if let Ok(v) = std::env::var("PRESENCE_MAX_SILENT_PERIODS") {
            let n: u32 = v.parse().map_err(|_| {
                format!("PRESENCE_MAX_SILENT_PERIODS must be a positive number, got {v:?}")
            })?;
            config.presence = config.presence.max_silent_periods(n);
        }
        config.presence = fit_silent_periods(config.presence);
        if let Ok(url) = std::env::var("PRESENCE_REDIS_URL")
            && !url.is_empty()
        {
            config.redis_url = Some(url);
        }
        if let Ok(name) = std::env::var("PRESENCE_PUBSUB_NAME") {
            if name.is_empty() {
                return Err("PRESENCE_PUBSUB_NAME must not be empty".to_owned());
            }
            config.pubsub_name = name;
        }
        if let Ok(secret) = std::env::var("PRESENCE_LONGPOLL_SECRET") {
            if secret.len() < presence_poem::MIN_SECRET_LEN {
                return Err(format!(
                    "PRESENCE_LONGPOLL_SECRET must be at least {} bytes long",
                    presence_poem::MIN_SECRET_LEN
                ));
            }
            config.longpoll_secret = Some(secret);
        }
        config.longpoll_window = ms("PRESENCE_LONGPOLL_WINDOW_MS")?;
        if let Some(period) = ms("PRESENCE_REBALANCE_PERIOD_MS")? {
            config.rebalance_period = (!period.is_zero()).then_some(period);
        }
        Ok(config)
    }
}

/// A node that has nothing to say still heartbeats every `max_silent_periods` broadcast
/// periods (10 by default). With a down period shorter than two such silences, live peers
/// would be marked down between heartbeats; so, unless it is set, `max_silent_periods` is
/// lowered to fit two silent heartbeats in the down period.
fn fit_silent_periods(options: PresenceOptions) -> PresenceOptions {
    let (Some(down), None) = (options.down_period, options.max_silent_periods) else {
        return options;
    };
    let defaults = TrackerConfig::default();
    let broadcast = options
        .broadcast_period
        .unwrap_or(defaults.broadcast_period)
        .as_millis()
        .max(1);
    let fit =
        (down.as_millis() / (2 * broadcast)).clamp(1, u128::from(defaults.max_silent_periods));
    if fit < u128::from(defaults.max_silent_periods) {
        options.max_silent_periods(fit as u32)
    } else {
        options
    }
}

/// Starts jemalloc's background thread, which returns freed pages to the system on time, also
/// when the server goes quiet (without it jemalloc returns them only as it allocates, so a
/// server that goes quiet after a reconnect storm keeps them). Call it once at start-up, after
/// [`init_tracing`], from a binary whose global allocator is `tikv_jemallocator::Jemalloc`.
/// Where jemalloc has no background thread (macOS, for one) it logs so and changes nothing.
/// A `background_thread` setting in jemalloc's own `_RJEM_MALLOC_CONF` (e.g.
/// `background_thread:false`) is left to stand.
#[cfg(not(target_env = "msvc"))]
pub fn start_jemalloc_background_thread() {
    if std::env::var("_RJEM_MALLOC_CONF").is_ok_and(|conf| sets_background_thread(&conf)) {
        return;
    }
    match tikv_jemalloc_ctl::background_thread::write(true) {
        Ok(()) => tracing::debug!("jemalloc's background thread is on"),
        Err(e) => tracing::info!(
            error = %e,
            "jemalloc has no background thread here; freed pages return as the server allocates"
        ),
    }
}

/// Whether jemalloc's `conf` string (`key:value,key:value`) sets `background_thread`.
#[cfg(not(target_env = "msvc"))]
fn sets_background_thread(conf: &str) -> bool {
    conf.split(',')
        .any(|option| option.split(':').next().map(str::trim) == Some("background_thread"))
}

/// Installs a log subscriber writing to stderr: `RUST_LOG`, or info by default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[handler]
fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// The chat's routes: the page, and the Phoenix socket with the room channel.
///
/// # Errors
///
/// When the pub/sub is not running in `registry`.
pub fn app(registry: &Registry) -> Result<impl poem::Endpoint + use<>, BoxError> {
    Ok(app_and_socket(registry, LongPollConfig::new(), None)?.0)
}

/// The routes, and their socket endpoint (to drain it at shutdown).
fn app_and_socket(
    registry: &Registry,
    longpoll: LongPollConfig,
    rebalance: Option<Rebalance>,
) -> Result<(impl poem::Endpoint + use<>, PhoenixSocket), BoxError> {
    let mut socket = PhoenixSocket::builder_for(registry, &ChatPubSub)?;
    if let Some(rebalance) = rebalance {
        socket = socket.rebalance(rebalance);
    }
    let socket = socket
        .on_connect(|info| async move {
            tracing::info!(remote = %info.remote_addr, "connect");
            Ok(Connected::new())
        })
        .channel("room:*", RoomChannel::default)
        // The page falls back to `/socket/longpoll` when websockets fail.
        .longpoll(longpoll)
        .build();
    let status = crate::status::Status {
        registry: registry.clone(),
        socket: socket.clone(),
    };
    let app = Route::new()
        .at("/", get(index))
        // phoenix.js's `new Socket("/socket")` connects to `/socket/websocket`, and its
        // `LongPoll` to `/socket/longpoll`.
        .nest("/socket", socket.clone())
        // Prometheus text, and the node's status page (OBSERVABILITY.md).
        .at("/metrics", get(crate::status::metrics_text))
        .at("/presence", get(crate::status::presence_page.data(status)))
        .with(PresenceMiddleware::new(registry.clone()));
    Ok((app, socket))
}

/// The channel of one room.
#[derive(Debug, Default)]
pub struct RoomChannel {
    user: String,
    online_at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks the join params: `user` of 1 to 64 characters, an optional string `status`.
fn parse_join(params: &Value) -> Result<(String, String), String> {
    let Value::Object(map) = params else {
        return Err("join params must be an object with a \"user\"".to_owned());
    };
    if let Some(extra) = map.keys().find(|k| *k != "user" && *k != "status") {
        return Err(format!(
            "unexpected join param {extra:?}; expected \"user\" and optional \"status\""
        ));
    }
    let user = match map.get("user") {
        Some(Value::String(u)) => u,
        Some(_) => return Err("\"user\" must be a string".to_owned()),
        None => return Err("\"user\" is required".to_owned()),
    };
    let chars = user.chars().count();
    if chars == 0 || chars > 64 {
        return Err(format!("\"user\" must be 1 to 64 characters, got {chars}"));
    }
    let status = match map.get("status") {
        None | Some(Value::Null) => "online".to_owned(),
        Some(_) => checked(params, "status", STATUS_CHARS)?.to_owned(),
    };
    Ok((user.clone(), status))
}

fn meta(online_at: u64, status: &str) -> UserMeta {
    UserMeta {
        online_at,
        status: status.to_owned(),
    }
}

/// How long a status may be, in characters.
const STATUS_CHARS: std::ops::RangeInclusive<usize> = 1..=32;
/// How long a message may be, in characters.
const BODY_CHARS: std::ops::RangeInclusive<usize> = 1..=4000;

/// The string field `name` of `payload`, if its length in characters is within `chars`.
fn checked<'a>(
    payload: &'a Value,
    name: &str,
    chars: std::ops::RangeInclusive<usize>,
) -> Result<&'a str, String> {
    let Some(value) = payload.get(name).and_then(Value::as_str) else {
        return Err(format!("{name:?} must be a string"));
    };
    let n = value.chars().count();
    if !chars.contains(&n) {
        return Err(format!(
            "{name:?} must be {} to {} characters, got {n}",
            chars.start(),
            chars.end()
        ));
    }
    Ok(value)
}

fn error_reply(reason: impl Into<String>) -> HandleIn {
    HandleIn::error(json!({ "reason": reason.into() }))
}

impl Channel for RoomChannel {
    async fn join(&mut self, topic: &str, params: Value, ctx: &mut ChannelContext) -> Join {
        let (user, status) = match parse_join(&params) {
            Ok(ok) => ok,
            Err(reason) => {
                tracing::info!(topic, %reason, "join refused");
                return Join::error(json!({ "reason": reason }));
            }
        };
        self.online_at = now_secs();
        if let Err(e) = RoomPresence::track(ctx, &user, &meta(self.online_at, &status)) {
            tracing::warn!(topic, user, error = %e, "join refused: could not track");
            return Join::error(json!({ "reason": e.to_string() }));
        }
        if let Err(e) = ctx.push_presence_state::<RoomPresence>().await {
            tracing::warn!(topic, user, error = %e, "could not push presence_state");
        }
        tracing::info!(topic, user, status, "join");
        self.user = user;
        Join::ok()
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> HandleIn {
        let Payload::Json(payload) = payload else {
            return error_reply("binary payloads are not supported");
        };
        match event {
            "status" => {
                let status = match checked(&payload, "status", STATUS_CHARS) {
                    Ok(status) => status,
                    Err(reason) => return error_reply(reason),
                };
                let status = status.to_owned();
                match RoomPresence::update_with(ctx, &self.user, |old| UserMeta { status, ..old }) {
                    Ok(_) => HandleIn::ok(json!({})),
                    Err(e) => error_reply(e.to_string()),
                }
            }
            "new_msg" => {
                let body = match checked(&payload, "body", BODY_CHARS) {
                    Ok(body) => body,
                    Err(reason) => return error_reply(reason),
                };
                match ctx.broadcast("new_msg", json!({ "user": self.user, "body": body })) {
                    Ok(()) => HandleIn::ok(json!({})),
                    Err(e) => error_reply(e.to_string()),
                }
            }
            other => error_reply(format!("unknown event {other:?}")),
        }
    }

    async fn terminate(&mut self, reason: StopReason, ctx: &mut ChannelContext) {
        tracing::info!(topic = ctx.topic(), user = self.user, ?reason, "leave");
    }
}

/// Logs users coming online and going offline in each room: once per user, not once per
/// device or tab, cluster-wide (key-level events of the presence).
async fn log_online_users(registry: Registry) -> Result<(), BoxError> {
    let mut events = RoomPresence::running(&registry)?.all_key_events();
    while let Some(event) = events.recv().await {
        match event.change {
            KeyChange::Online => tracing::info!("{} is online in {}", event.key, event.topic),
            KeyChange::Offline => tracing::info!("{} went offline in {}", event.key, event.topic),
            KeyChange::Updated => {}
        }
    }
    Ok(())
}

/// The Redis adapter, counting what it was given to send so that a shutdown can wait until
/// Redis has published it (the graceful permdown above all).
#[derive(Debug, Clone)]
struct ClusterLink {
    redis: RedisAdapter,
    queued: Arc<AtomicU64>,
    /// Published or dropped by the adapter before the pub/sub started (its name probe).
    baseline: u64,
}

impl ClusterLink {
    fn new(redis: RedisAdapter) -> Self {
        let stats = redis.stats();
        ClusterLink {
            redis,
            queued: Arc::new(AtomicU64::new(0)),
            baseline: stats.published + stats.dropped,
        }
    }

    fn count<T>(&self, sent: Result<T, BroadcastError>) -> Result<T, BroadcastError> {
        if sent.is_ok() {
            self.queued.fetch_add(1, Ordering::AcqRel);
        }
        sent
    }

    /// Waits until the adapter has published (or, Redis being down, dropped) everything queued
    /// so far; `false` after `within`. The adapter's own answers to other nodes' name probes
    /// count as published too, so in a rare race this returns a message early.
    async fn flush(&self, within: Duration) -> bool {
        let target = self.baseline + self.queued.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.redis.stats();
            if stats.published + stats.dropped >= target {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Adapter for ClusterLink {
    fn start(&self, node_name: &str, inbound: Inbound) {
        self.redis.start(node_name, inbound);
    }

    fn has_peers(&self) -> bool {
        self.redis.has_peers()
    }

    fn broadcast(&self, frame: bytes::Bytes) -> Result<(), BroadcastError> {
        self.count(self.redis.broadcast(frame))
    }

    fn direct_broadcast(&self, node: &str, frame: bytes::Bytes) -> Result<(), BroadcastError> {
        self.count(self.redis.direct_broadcast(node, frame))
    }
}

/// Connects to Redis, with an error that says what failed and why.
async fn connect_redis(url: &str, config: &ChatConfig) -> Result<RedisAdapter, BoxError> {
    let options =
        RedisOptions::new(config.node_name.as_str()).pubsub_name(config.pubsub_name.as_str());
    RedisAdapter::connect(url, options).await.map_err(|e| {
        let mut message = format!("cannot join the cluster: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message.push_str(&format!(": {cause_text}"));
            }
            source = cause.source();
        }
        message.into()
    })
}

/// A running chat server.
#[derive(Debug)]
pub struct ChatServer {
    addr: SocketAddr,
    node_name: String,
    app: Running,
    stop: watch::Sender<bool>,
    /// Every socket endpoint the endpoint task built (one per start).
    sockets: Arc<Mutex<Vec<PhoenixSocket>>>,
    cluster: Option<ClusterLink>,
}

impl ChatServer {
    /// Connects to Redis when [`ChatConfig::redis_url`] is set, then starts the pub/sub, the
    /// presence and the web endpoint, in that order.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or the node name is taken there, when the address cannot
    /// be bound, or when a child fails to start.
    pub async fn start(config: ChatConfig) -> Result<ChatServer, BoxError> {
        let cluster = match &config.redis_url {
            Some(url) => Some(ClusterLink::new(connect_redis(url, &config).await?)),
            None => None,
        };
        let mut longpoll = match &config.longpoll_secret {
            Some(secret) => LongPollConfig::new().secret(secret.as_bytes())?,
            None => {
                if cluster.is_some() {
                    // Each node would sign with a key of its own: a poll that reaches another
                    // node than its session's is refused, and its client starts over.
                    tracing::warn!(
                        "PRESENCE_LONGPOLL_SECRET is not set in a Redis cluster: each node \
                         signs long-poll session tokens with a random key of its own, so \
                         long-poll clients break whenever a request reaches another node; \
                         give every node the same secret"
                    );
                }
                LongPollConfig::new()
            }
        };
        if let Some(window) = config.longpoll_window {
            longpoll = longpoll.window(window);
        }
        // Rebalancing needs peers: only in a cluster.
        let rebalance = config
            .rebalance_period
            .filter(|_| config.redis_url.is_some())
            .map(|period| Rebalance::new().period(period));
        let acceptor = TcpListener::bind(format!("{}:{}", config.host, config.port))
            .into_acceptor()
            .await?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or("the listener has no socket address")?;
        let (stop, stopped) = watch::channel(false);
        let sockets: Arc<Mutex<Vec<PhoenixSocket>>> = Arc::default();
        let mut first: Option<TcpAcceptor> = Some(acceptor);
        let built = sockets.clone();
        let endpoint = TaskSpec::new("endpoint", move |registry: Registry| {
            let acceptor = first.take();
            let mut stopped = stopped.clone();
            let built = built.clone();
            let longpoll = longpoll.clone();
            let rebalance = rebalance.clone();
            async move {
                if *stopped.borrow() {
                    // Restarted while shutting down: serve nothing.
                    return std::future::pending().await;
                }
                let acceptor = match acceptor {
                    Some(a) => a,
                    None => TcpListener::bind(addr).into_acceptor().await?,
                };
                let (app, socket) = app_and_socket(&registry, longpoll, rebalance)?;
                built
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(socket);
                let signal = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                // A connection must send its request head within 10 s (slow handshakes).
                Server::new_with_acceptor(HandshakeTimeout::new(acceptor))
                    .run_with_graceful_shutdown(app, signal, Some(Duration::from_secs(2)))
                    .await?;
                // Stopped by `shutdown`, which drains the sockets and stops the supervisor:
                // ending here would look like a crash and restart the endpoint.
                std::future::pending::<Result<(), BoxError>>().await
            }
        });
        let mut pubsub = PubSubSpec::new(ChatPubSub).node_name(config.node_name.clone());
        if let Some(link) = &cluster {
            // The pub/sub is a service without a task: it is never restarted, so the one
            // adapter (which feeds one pub/sub for its life) is never handed out twice.
            let link = link.clone();
            pubsub = pubsub.with_adapter(move || link.clone());
        }
        // Installed before the pub/sub, the presence and the socket register their metrics.
        crate::status::prometheus();
        let app = Supervisor::new()
            .child(pubsub)
            .child(RoomPresence.child_spec(config.presence.clone()))
            .child(TaskSpec::new("online-log", log_online_users))
            .child(TaskSpec::new("metrics-upkeep", crate::status::upkeep))
            .child(endpoint)
            .start()
            .await?;
        tracing::info!(
            %addr,
            node = config.node_name,
            cluster = cluster.as_ref().map(|c| c.redis.channel()),
            "chat listening on http://{addr}"
        );
        Ok(ChatServer {
            addr,
            node_name: config.node_name,
            app,
            stop,
            sockets,
            cluster,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The running services.
    pub fn registry(&self) -> &Registry {
        self.app.registry()
    }

    /// Stops accepting connections, closes the sockets with 1012, tells peers this node's
    /// presences are gone (graceful permdown) and waits until Redis has published that, then
    /// stops everything. See the [module docs](self#shutdown) for the order and why.
    pub async fn shutdown(self) {
        let started = tokio::time::Instant::now();
        let _ = self.stop.send(true);
        let sockets: Vec<PhoenixSocket> = self
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let open: usize = sockets.iter().map(PhoenixSocket::open_sockets).sum();
        for socket in &sockets {
            // Each connection stops its channels within 5 s; this bounds a stuck writer.
            if tokio::time::timeout(Duration::from_secs(10), socket.drain())
                .await
                .is_err()
            {
                tracing::warn!("some sockets did not close within 10 s; shutting down anyway");
            }
        }
        tracing::info!(sockets = open, elapsed = ?started.elapsed(), "sockets drained");
        if let Ok(handle) = RoomPresence::running(self.app.registry()) {
            handle.tracker().graceful_permdown();
        }
        if let Some(link) = &self.cluster {
            if link.flush(Duration::from_secs(2)).await {
                tracing::info!(elapsed = ?started.elapsed(), "graceful permdown published");
            } else {
                tracing::warn!(
                    "redis did not publish the graceful permdown within 2 s; peers will drop this node's presences after their down period"
                );
            }
        }
        self.app.shutdown().await;
    }
}

/// Runs the chat server until Ctrl-C or SIGTERM, then shuts it down gracefully.
///
/// # Errors
///
/// As [`ChatServer::start`].
///
/// Once listening, prints `LISTENING <ip>:<port>` on stdout (the only thing it prints there).
pub async fn run(config: ChatConfig) -> Result<(), BoxError> {
    // The handlers are installed before the node says it listens: a SIGTERM right after the
    // LISTENING line is a graceful shutdown, not the default (immediate) exit.
    let signal = shutdown_signal()?;
    let server = ChatServer::start(config).await?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "LISTENING {}", server.local_addr())?;
        stdout.flush()?;
    }
    signal.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are registered when this is called.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(target_env = "msvc"))]
    #[test]
    fn a_background_thread_setting_is_found_among_the_options() {
        assert!(sets_background_thread("background_thread:false"));
        assert!(sets_background_thread("narenas:1, background_thread:true"));
        assert!(!sets_background_thread("max_background_threads:1"));
        assert!(!sets_background_thread(
            "dirty_decay_ms:1000,stats_print:true"
        ));
        assert!(!sets_background_thread(""));
    }

    #[test]
    fn a_short_down_period_lowers_the_silent_periods() {
        let ms = Duration::from_millis;
        let fit = |o: PresenceOptions| fit_silent_periods(o).max_silent_periods;
        let fast = PresenceOptions::new().broadcast_period(ms(100));
        assert_eq!(fit(fast.clone().down_period(ms(1000))), Some(5));
        assert_eq!(fit(fast.clone().down_period(ms(250))), Some(1));
        assert_eq!(
            fit(fast.clone().down_period(ms(5000))),
            None,
            "default fits"
        );
        assert_eq!(fit(fast.clone()), None, "default down period");
        assert_eq!(
            fit(fast.down_period(ms(1000)).max_silent_periods(8)),
            Some(8)
        );
        // Default broadcast period 1.5 s: a 6 s down period fits 2.
        assert_eq!(fit(PresenceOptions::new().down_period(ms(6000))), Some(2));
    }

    #[test]
    fn join_params_are_checked() {
        assert_eq!(
            parse_join(&json!({"user": "ann"})).unwrap(),
            ("ann".into(), "online".into())
        );
        assert_eq!(
            parse_join(&json!({"user": "ann", "status": "away"}))
                .unwrap()
                .1,
            "away"
        );
        assert!(
            parse_join(&json!({"user": ""}))
                .unwrap_err()
                .contains("1 to 64")
        );
        assert!(
            parse_join(&json!({"user": "x".repeat(65)}))
                .unwrap_err()
                .contains("65")
        );
        assert!(
            parse_join(&json!({"user": "é".repeat(64)})).is_ok(),
            "characters, not bytes"
        );
        assert!(
            parse_join(&json!({"user": 7}))
                .unwrap_err()
                .contains("string")
        );
        assert!(parse_join(&json!({})).unwrap_err().contains("required"));
        assert!(
            parse_join(&json!({"user": "a", "status": 1}))
                .unwrap_err()
                .contains("status")
        );
        assert!(
            parse_join(&json!({"user": "a", "admin": true}))
                .unwrap_err()
                .contains("admin")
        );
        assert!(parse_join(&json!("ann")).is_err());
    }
}
