//! The chat server: a page at `/`, Phoenix channels at `/socket`, presence per room.
//!
//! The contract the tests rely on:
//! - topics `room:<name>`; join params `{"user": <1 to 64 chars>, "status": <optional string>}`,
//!   anything else is refused with `{"reason": ...}`;
//! - after a join, the channel tracks key = user with `{"online_at": <unix seconds>, "status":
//!   <status or "online">}` and pushes `presence_state`;
//! - `"status"` with `{"status": <string>}` updates the meta and replies ok;
//! - `"new_msg"` with `{"body": <string>}` broadcasts `"new_msg"` `{"user", "body"}` and replies ok;
//! - one info line per connect, join and leave.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::web::Html;
use poem::{EndpointExt, Route, Server, get, handler};
use presence_core::presence::PresenceOptions;
use presence_core::pubsub::Payload;
use presence_core::registry::Registry;
use presence_core::supervisor::{BoxError, PubSubSpec, Running, Supervisor, TaskSpec};
use presence_core::{presence, pubsub_server};
use presence_poem::{
    Channel, ChannelContext, Connected, HandleIn, Join, PhoenixSocket, PresenceMiddleware, Reply,
    StopReason,
};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

pubsub_server!(
    /// The chat's pub/sub.
    pub ChatPubSub
);

/// Who is in which room: key = user name, one meta per device.
#[derive(Debug)]
#[presence(pubsub = ChatPubSub)]
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
    /// Tracker options (`PRESENCE_BROADCAST_PERIOD_MS`, `PRESENCE_DOWN_PERIOD_MS`,
    /// `PRESENCE_PERMDOWN_PERIOD_MS`).
    pub presence: PresenceOptions,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            host: "127.0.0.1".to_owned(),
            port: 4000,
            node_name: unique_node_name(),
            presence: PresenceOptions::new(),
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
        Ok(config)
    }
}

/// Installs a log subscriber: `RUST_LOG`, or info by default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
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
    let socket = PhoenixSocket::builder(registry.pubsub(&ChatPubSub)?)
        .on_connect(|info| async move {
            tracing::info!(remote = %info.remote_addr, "connect");
            Ok(Connected::new())
        })
        .channel("room:*", RoomChannel::default)
        .build();
    Ok(Route::new()
        .at("/", get(index))
        .at("/socket/websocket", socket)
        .with(PresenceMiddleware::new(registry.clone())))
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
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"status\" must be a string".to_owned()),
    };
    Ok((user.clone(), status))
}

fn meta(online_at: u64, status: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("online_at".to_owned(), json!(online_at));
    m.insert("status".to_owned(), json!(status));
    m
}

fn error_reply(reason: impl Into<String>) -> HandleIn {
    HandleIn::Reply(Reply::error(json!({ "reason": reason.into() })))
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
                let Some(status) = payload.get("status").and_then(Value::as_str) else {
                    return error_reply("\"status\" must be a string");
                };
                match RoomPresence::update(ctx, &self.user, &meta(self.online_at, status)) {
                    Ok(_) => HandleIn::Reply(Reply::ok(json!({}))),
                    Err(e) => error_reply(e.to_string()),
                }
            }
            "new_msg" => {
                let Some(body) = payload.get("body").and_then(Value::as_str) else {
                    return error_reply("\"body\" must be a string");
                };
                match ctx.broadcast("new_msg", json!({ "user": self.user, "body": body })) {
                    Ok(()) => HandleIn::Reply(Reply::ok(json!({}))),
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

/// A running chat server.
#[derive(Debug)]
pub struct ChatServer {
    addr: SocketAddr,
    node_name: String,
    app: Running,
    stop: watch::Sender<bool>,
}

impl ChatServer {
    /// Starts the pub/sub, the presence and the web endpoint, in that order.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, or a child fails to start.
    pub async fn start(config: ChatConfig) -> Result<ChatServer, BoxError> {
        let acceptor = TcpListener::bind(format!("{}:{}", config.host, config.port))
            .into_acceptor()
            .await?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or("the listener has no socket address")?;
        let (stop, stopped) = watch::channel(false);
        let mut first: Option<TcpAcceptor> = Some(acceptor);
        let endpoint = TaskSpec::new("endpoint", move |registry: Registry| {
            let acceptor = first.take();
            let mut stopped = stopped.clone();
            async move {
                let acceptor = match acceptor {
                    Some(a) => a,
                    None => TcpListener::bind(addr).into_acceptor().await?,
                };
                let app = app(&registry)?;
                let signal = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                Server::new_with_acceptor(acceptor)
                    .run_with_graceful_shutdown(app, signal, Some(Duration::from_secs(2)))
                    .await?;
                Ok::<(), BoxError>(())
            }
        });
        let app = Supervisor::new()
            .child(PubSubSpec::new(ChatPubSub, config.node_name.clone()))
            .child(RoomPresence.child_spec(config.presence.clone()))
            .child(endpoint)
            .start()
            .await?;
        tracing::info!(%addr, node = config.node_name, "chat listening on http://{addr}");
        Ok(ChatServer {
            addr,
            node_name: config.node_name,
            app,
            stop,
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

    /// Stops accepting connections, closes the sockets, tells peers this node's presences are
    /// gone (graceful permdown), then stops everything.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Ok(handle) = RoomPresence::handle(self.app.registry()) {
            handle.tracker().graceful_permdown();
        }
        self.app.shutdown().await;
    }
}

/// Runs the chat server until Ctrl-C or SIGTERM, then shuts it down gracefully.
///
/// # Errors
///
/// As [`ChatServer::start`].
pub async fn run(config: ChatConfig) -> Result<(), BoxError> {
    let server = ChatServer::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
