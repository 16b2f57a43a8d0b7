//! The server the phoenix.js tests in `tests/js` run against (not an example to copy from:
//! see the crate docs for that).
//!
//! It binds `127.0.0.1:0`, prints `PORT <port>` on stdout, serves `/socket/websocket` and
//! `/socket/longpoll` with a `room:*` channel backed by a presence, and exits when its stdin
//! closes (so a test runner that dies leaves no server behind). With
//! `JS_TEST_REFUSE_WEBSOCKET=1`, `/socket/websocket` answers every request 403, as a proxy
//! that blocks websockets would (for phoenix.js's fallback to long poll).
//!
//! The channel tracks `params.user` with meta `{"device": params.device}` in `join` and pushes
//! `presence_state`. Events:
//!
//! - `update` `{device}`: updates this channel's meta; replies `{"phx_ref": ...}`;
//! - `crash`: panics (the client gets `phx_error` and rejoins);
//! - `close_channel`: stops the channel (`phx_close`: the client does not rejoin);
//! - `disconnect_socket`: broadcasts `disconnect` on the socket id, closing the socket with
//!   1001 (the client reconnects and rejoins);
//! - `ping`: replies `ok` with the payload.
//!
//! Run with `cargo run -p presence-tests --bin js_test_server`; `RUST_LOG` sets the log
//! filter (default `warn`), logs go to stderr.

use std::io::Write;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Route, Server};
use presence_core::presence::{PresenceError, PresenceHandle, PresenceOptions};
use presence_core::pubsub::{Message, Payload};
use presence_core::registry::Registry;
use presence_core::{PhxRef, PubSub};
use presence_poem::{
    Channel, ChannelContext, ConnectError, Connected, HandleIn, Join, LongPollConfig,
    PhoenixSocket, PresenceMiddleware, Reply,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

presence_core::pubsub_server!(AppPubSub);

/// Who is in which room; the meta is any JSON value.
#[presence_core::presence(pubsub = AppPubSub, meta = Value, name = "RoomPresence")]
struct RoomPresence;

#[derive(Clone)]
struct User(String);

struct Room;

impl Room {
    async fn track(
        ctx: &mut ChannelContext,
        user: &str,
        device: &Value,
    ) -> Result<(), PresenceError> {
        RoomPresence::track(ctx, user, &json!({"device": device}))?;
        ctx.push_presence_state::<RoomPresence>().await
    }

    fn update(ctx: &ChannelContext, device: &Value) -> Result<PhxRef, PresenceError> {
        let user = ctx
            .assigns()
            .get::<User>()
            .map(|u| u.0.clone())
            .unwrap_or_default();
        RoomPresence::update(ctx, &user, &json!({"device": device}))
    }
}

impl Channel for Room {
    async fn join(&mut self, _topic: &str, params: Value, ctx: &mut ChannelContext) -> Join {
        let Some(user) = params["user"].as_str() else {
            return Join::error(json!({"reason": "user required"}));
        };
        ctx.assigns_mut().insert(User(user.to_owned()));
        match Self::track(ctx, user, &params["device"]).await {
            Ok(()) => Join::ok(),
            Err(e) => Join::error(json!({"reason": e.to_string()})),
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> HandleIn {
        let payload = match payload {
            Payload::Json(value) => value,
            _ => Value::Null,
        };
        match event {
            "update" => match Self::update(ctx, &payload["device"]) {
                Ok(r) => HandleIn::Reply(Reply::ok(json!({"phx_ref": r.to_string()}))),
                Err(e) => HandleIn::Reply(Reply::error(json!({"reason": e.to_string()}))),
            },
            "crash" => panic!("crash requested by the client"),
            "close_channel" => HandleIn::Stop(Some(Reply::ok(json!({})))),
            "disconnect_socket" => {
                if let Some(id) = ctx.socket_id() {
                    let _ = ctx
                        .pubsub()
                        .broadcast(Message::json(id, "disconnect", json!({})));
                }
                HandleIn::NoReply
            }
            "ping" => HandleIn::Reply(Reply::ok(payload)),
            _ => HandleIn::Reply(Reply::error(json!({"reason": "unknown event"}))),
        }
    }
}

/// What a proxy that blocks websockets answers.
#[poem::handler]
fn refuse_websocket() -> poem::http::StatusCode {
    poem::http::StatusCode::FORBIDDEN
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let registry = Registry::new();
    registry.insert_pubsub(&AppPubSub, PubSub::new("js-test"));
    let pubsub = registry.pubsub(&AppPubSub)?;
    registry.insert(PresenceHandle::start(
        RoomPresence,
        pubsub.clone(),
        &PresenceOptions::new(),
    )?);

    let socket = PhoenixSocket::builder(pubsub)
        .on_connect(|info| async move {
            // A socket id per connection, so `disconnect_socket` closes this socket only.
            match info.params.get("socket_id") {
                Some(id) if !id.is_empty() => Ok(Connected::new().id(format!("socket:{id}"))),
                _ => Err(ConnectError::new("socket_id param required")),
            }
        })
        .channel("room:*", || Room)
        .longpoll(LongPollConfig::new())
        .build();
    let mut routes = Route::new().nest("/socket", socket);
    if std::env::var_os("JS_TEST_REFUSE_WEBSOCKET").is_some() {
        routes = routes.at("/socket/websocket", refuse_websocket);
    }
    let app = routes.with(PresenceMiddleware::new(registry));

    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let port = acceptor.local_addr()[0]
        .as_socket_addr()
        .map(|a| a.port())
        .ok_or("no socket address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "PORT {port}")?;
        stdout.flush()?;
    }

    let server = Server::new_with_acceptor(acceptor).run(app);
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0_u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        served = server => served?,
        () = stdin_closed => {}
    }
    Ok(())
}
