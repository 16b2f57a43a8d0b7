//! Phoenix channels over [poem] websockets: the wire protocol the official `phoenix` npm
//! client speaks, with presence owners from [`presence_core`].
//!
//! Build a [`PhoenixSocket`] with channel routes and mount it at `/socket/websocket`; point
//! phoenix.js at `new Socket("/socket")`.
//!
//! # Examples
//!
//! ```no_run
//! use poem::{Route, Server, listener::TcpListener};
//! use presence_core::PubSub;
//! use presence_core::pubsub::Payload;
//! use presence_poem::{Channel, ChannelContext, Connected, HandleIn, Join, PhoenixSocket};
//! use serde_json::Value;
//!
//! struct Room;
//!
//! impl Channel for Room {
//!     async fn join(&mut self, _topic: &str, _params: Value, _ctx: &mut ChannelContext) -> Join {
//!         Join::ok()
//!     }
//!
//!     async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext) -> HandleIn {
//!         if let ("new_msg", Payload::Json(body)) = (event, payload) {
//!             let _ = ctx.broadcast("new_msg", body);
//!         }
//!         HandleIn::NoReply
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let socket = PhoenixSocket::builder(PubSub::new("node-a"))
//!     .on_connect(|info| async move { Ok(Connected::new().id(format!("user:{}", info.remote_addr))) })
//!     .channel("room:*", || Room)
//!     .build();
//! let app = Route::new().at("/socket/websocket", socket);
//! Server::new(TcpListener::bind("0.0.0.0:4000")).run(app).await
//! # }
//! ```
//!
//! # Protocol
//!
//! Serializers: `vsn=1.0.0` (or none) speaks V1 JSON objects, `vsn=2.0.0` V2 JSON arrays and
//! binary frames; any other `vsn` is refused with HTTP 403, as is a connection the
//! [connect hook](PhoenixSocketBuilder::on_connect) refuses. The socket follows Phoenix.Socket:
//! heartbeats on topic `phoenix` are always answered; joins, leaves, duplicate joins, stale
//! join_refs and unmatched topics behave as in Phoenix; a channel that stops gracefully sends
//! `phx_close`, one that panics `phx_error` (`join crashed` during join).
//!
//! # Channels and isolation
//!
//! Every joined channel runs in its own task, owned by its connection, which waits for (and
//! at a 5 s deadline aborts) its channel tasks when the socket closes. A panic is caught at the
//! task boundary: the client gets `phx_error` for that channel only, the channel's
//! [`Owner`](presence_core::Owner) is dropped (its presences leave) and the socket and its
//! other channels go on.
//!
//! # Fastlane
//!
//! Broadcasts on a channel's topic do not go through the channel tasks. Each node keeps one
//! hub per topic with joined sockets: one pub/sub subscription and one task, which encodes each
//! message at most once per serializer and puts the same encoded frame in every socket's
//! outbound queue. The hub stops when its last socket leaves the topic.
//!
//! # Slow clients
//!
//! Each socket has a bounded outbound queue ([`PhoenixSocketBuilder::outbound_capacity`], 256
//! frames). Nothing ever waits on a client: when a frame does not fit, the socket is closed
//! with code **1013** ("try again later") and a warning is logged; phoenix.js reconnects with
//! backoff and rejoins. Other sockets are not affected.
//!
//! # Limits and close codes
//!
//! - 1000: the client closed, or nothing was received for the idle timeout (60 s);
//! - 1001: a `"disconnect"` broadcast on the socket id;
//! - 1007: an undecodable frame (invalid JSON, wrong shape, invalid UTF-8, a binary frame on V1);
//! - 1009: a message over [`max_message_size`](PhoenixSocketBuilder::max_message_size) (1 MiB);
//! - 1011: an internal error;
//! - 1013: the outbound queue is full (slow client).
//!
//! # Memory
//!
//! The websocket uses a 4 KiB read buffer and no write batching buffer (tungstenite's default
//! is 128 KiB each); the queues allocate as they fill. Poem's websocket messages own their
//! bytes, so each socket copies an encoded frame once when writing it.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

mod channel;
mod connection;
mod context;
mod hub;
mod outbox;
mod protocol;
mod socket;

pub use channel::{
    Channel, HandleIn, Info, IntoPayload, Join, Mailbox, MailboxError, Reply, StopReason,
};
pub use context::{ChannelContext, SocketRef};
pub use socket::{
    ConnectError, ConnectInfo, Connected, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_OUTBOUND_CAPACITY, PhoenixSocket, PhoenixSocketBuilder,
};
