//! Phoenix channels over [poem] websockets and long poll: the wire protocol the official
//! `phoenix` npm client speaks, with presence from [`presence_core`].
//!
//! Build a [`PhoenixSocket`] with channel routes and nest it at `/socket`
//! (`Route::new().nest("/socket", socket)`); point phoenix.js at `new Socket("/socket")`,
//! which connects to `/socket/websocket`. Wrap the app in a [`PresenceMiddleware`] with the
//! application's [`Registry`](presence_core::Registry) so channels find their presences.
//!
//! # Examples
//!
//! The whole application, as the README shows it: a presence with a typed meta, a room channel
//! with typed join params that tracks the user and pushes `presence_state` (phoenix.js's
//! `Presence` then stays in sync through the `presence_diff` broadcasts), an HTTP handler
//! that reads the presence, and a supervisor that starts the pub/sub, the presence and the
//! endpoint in order. The endpoint builds the socket and the middleware from the registry it
//! is given, so when the pub/sub restarts, the presence and then the endpoint restart after
//! it, on the new pub/sub.
//!
//! ```no_run
//! use poem::listener::TcpListener;
//! use poem::web::Path;
//! use poem::{EndpointExt, Route, Server, get, handler};
//! use presence_core::presence::{Presence, PresenceOptions};
//! use presence_core::pubsub_server;
//! use presence_core::supervisor::{BoxError, PubSubSpec, Supervisor, TaskSpec};
//! use presence_poem::{
//!     Channel, ChannelContext, HandleIn, Join, Payload, PhoenixSocket, PresenceData,
//!     PresenceMiddleware,
//! };
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//!
//! pubsub_server!(pub AppPubSub);
//!
//! /// What each device of a user shows.
//! #[derive(Serialize, Deserialize)]
//! pub struct UserMeta {
//!     pub online_at: u64,
//!     pub status: String,
//! }
//!
//! /// Who is in which room.
//! #[derive(Presence)]
//! #[presence(pubsub = AppPubSub, meta = UserMeta)]
//! pub struct RoomPresence;
//!
//! /// What `channel.join()` sends: `socket.channel("room:lobby", {user: "alice"})`.
//! #[derive(Deserialize)]
//! struct JoinParams {
//!     user: String,
//! }
//!
//! #[derive(Default)]
//! struct Room {
//!     user: String,
//! }
//!
//! impl Channel<JoinParams> for Room {
//!     async fn join(&mut self, _topic: &str, params: JoinParams, ctx: &mut ChannelContext) -> Join {
//!         let meta = UserMeta { online_at: 0, status: "online".into() };
//!         if let Err(e) = RoomPresence::track(ctx, &params.user, &meta) {
//!             return Join::error(json!({ "reason": e.to_string() }));
//!         }
//!         self.user = params.user;
//!         // Listed and pushed right after the join reply; `presence_diff`s follow by themselves.
//!         match ctx.push_presence_state::<RoomPresence>().await {
//!             Ok(()) => Join::ok(),
//!             Err(e) => Join::error(json!({ "reason": e.to_string() })),
//!         }
//!     }
//!
//!     async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext) -> HandleIn {
//!         let (event, Payload::Json(body)) = (event, payload) else {
//!             return HandleIn::error(json!({ "reason": "JSON only" }));
//!         };
//!         match event {
//!             "status" => {
//!                 let status = body["status"].as_str().unwrap_or("online").to_owned();
//!                 match RoomPresence::update_with(ctx, &self.user, |old| UserMeta { status, ..old }) {
//!                     Ok(_) => HandleIn::ok(json!({})),
//!                     Err(e) => HandleIn::error(json!({ "reason": e.to_string() })),
//!                 }
//!             }
//!             _ => HandleIn::error(json!({ "reason": "unknown event" })),
//!         }
//!     }
//! }
//!
//! /// `GET /rooms/lobby/count`: who is in `room:lobby`, without listing it.
//! #[handler]
//! fn count(Path(room): Path<String>, PresenceData(rooms): PresenceData<RoomPresence>) -> String {
//!     let count = rooms.count(&format!("room:{room}"));
//!     format!("{} users on {} devices", count.keys, count.metas)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), BoxError> {
//!     let app = Supervisor::new() // starts its children in order, restarts them rest-for-one
//!         .child(PubSubSpec::new(AppPubSub)) // one node; a cluster adds an adapter (Redis)
//!         .child(RoomPresence.child_spec(PresenceOptions::new()))
//!         .child(TaskSpec::new("endpoint", |registry| async move {
//!             let socket = PhoenixSocket::builder_for(&registry, &AppPubSub)?
//!                 .channel("room:*", Room::default)
//!                 .build();
//!             let routes = Route::new()
//!                 .nest("/socket", socket) // phoenix.js: `new Socket("/socket")`
//!                 .at("/rooms/:room/count", get(count))
//!                 .with(PresenceMiddleware::new(registry));
//!             Server::new(TcpListener::bind("127.0.0.1:4000")).run(routes).await?;
//!             Ok::<(), BoxError>(())
//!         }))
//!         .start()
//!         .await?;
//!     app.wait().await?; // until the endpoint stops for good
//!     Ok(())
//! }
//! ```
//!
//! # Presence
//!
//! - **Registry.** [`PresenceMiddleware::new(registry)`](PresenceMiddleware) puts the
//!   application's [`Registry`](presence_core::Registry) on every request; the socket takes
//!   it at upgrade time and every [`ChannelContext::registry`] returns it. Without the
//!   middleware, presence use in a channel logs a warning naming it and
//!   [`push_presence_state`](ChannelContext::push_presence_state) fails with
//!   [`RegistryError::NoRegistry`](presence_core::registry::RegistryError::NoRegistry).
//! - **Pub/sub.** The socket's own pub/sub is given when it is built: its fastlane hubs stay
//!   bound to one pub/sub for the endpoint's life. It must be the pub/sub the presences
//!   broadcast on, or `presence_diff` never reaches the sockets:
//!   [`PhoenixSocket::builder_for(&registry, &AppPubSub)`](PhoenixSocket::builder_for) takes
//!   it from the registry, and `push_presence_state` refuses a socket built on another one
//!   ([`RegistryError::PubSubMismatch`](presence_core::registry::RegistryError::PubSubMismatch)).
//! - **HTTP handlers** take a running presence with the [`PresenceData`] extractor
//!   (`PresenceData(rooms): PresenceData<RoomPresence>`), or the registry with
//!   `Data<&Registry>`.
//! - **Owner.** [`ChannelContext`] implements
//!   [`PresenceSocket`](presence_core::presence::PresenceSocket) (registry, owner, topic): the
//!   channel owns what it tracks, and its presences leave when the channel leaves, is
//!   replaced by a duplicate join, crashes, or its socket closes.
//! - **State.** [`ChannelContext::push_presence_state`] pushes `presence_state` (join_ref set,
//!   ref null); called in `join`, it runs right after the join reply, once the channel
//!   receives the topic's broadcasts. Joiners of a topic within the presence's diff window
//!   share one listing, and their frames share its text until written
//!   ([`PresenceHandle::state_json`](presence_core::PresenceHandle::state_json)).
//! - **Diffs.** The presence layer local-broadcasts `presence_diff` on the topic; the
//!   topic's hub delivers it to every joined socket as a fastlane broadcast (join_ref and ref
//!   null). A diff may reach a client before its `presence_state`: phoenix.js queues diffs
//!   until the state arrives.
//! - **Counts.** [`ChannelContext::push_presence_count`] makes a channel of a room above a
//!   size get `presence_count` events instead of lists (see "Big rooms").
//!
//! # Big rooms
//!
//! In a room of N members every change goes to N sockets, and every joiner needs the room's
//! list, so a burst of N joins (a deploy, a network blip, a live event starting) costs O(N²)
//! frames and listings if each is sent on its own. Three mechanisms keep it near O(N):
//!
//! - **Merged diffs.** A topic's hub sends the first `presence_diff` after a quiet period at
//!   once; diffs arriving within the presence's
//!   [`diff_window`](presence_core::presence::PresenceOptions::diff_window) (50 ms by
//!   default) after it are held and merged into one, sent when the window ends, or earlier
//!   when any other broadcast on the topic comes (it follows the merged diff, so order is
//!   kept). phoenix.js applies the merged diff exactly as it would the originals in order
//!   ([`merge_diff`](presence_core::presence::merge_diff)). A small room sees no delay.
//! - **Shared states.** Joiners within one window share one `presence_state` listing, fetch
//!   and encoding.
//! - **Slow readers** get merged diffs instead of being closed (see "Slow clients").
//!
//! With 3,000 clients joining one room of the chat example at full speed on 2 cores, every
//! client lists the whole room 2.7 s after the first connect, with about 37 presence frames
//! each; when half of them close at once the rest converge in 0.3 s, and no socket is closed
//! (BENCHMARKS.md, "Big rooms").
//!
//! # Security
//!
//! What the endpoint does by default, and what each setting protects:
//!
//! | setting | default | protects against |
//! |---|---|---|
//! | [`check_origin`](PhoenixSocketBuilder::check_origin) | same host | a page of another site opening the socket with the user's cookies (403) |
//! | [`HandshakeTimeout`] (on the listener) | 10 s | connections that never finish their request head (closed) |
//! | [`connect_timeout`](PhoenixSocketBuilder::connect_timeout) | 10 s | a connect hook stuck on a slow dependency (503) |
//! | [`max_connections`](PhoenixSocketBuilder::max_connections) | 100,000 | running out of file descriptors and memory (503) |
//! | [`max_message_size`](PhoenixSocketBuilder::max_message_size) | 1 MiB | huge frames (close 1009) |
//! | [`message_rate`](PhoenixSocketBuilder::message_rate) | 100/s, bursts of 200 | one client flooding a room, the tracker and every node (`rate limited` replies, then close 1008) |
//! | [`join_rate`](PhoenixSocketBuilder::join_rate) | 10/s, bursts of 200 | repeated joins, each listing a whole room into the client's queue (`rate limited`) |
//! | [`max_channels`](PhoenixSocketBuilder::max_channels) | 100 | one socket joining everything (`too many channels joined`) |
//! | [`max_topic_length`](PhoenixSocketBuilder::max_topic_length) | 256 bytes | topic names copied into maps and replicated to every node (`topic too long`) |
//! | [`max_topics`](PhoenixSocketBuilder::max_topics) | 100,000 | clients inventing topics, each with a hub (`too many topics`) |
//! | [`outbound_capacity`](PhoenixSocketBuilder::outbound_capacity), [`outbound_budget`](PhoenixSocketBuilder::outbound_budget) | 256 frames, 8 MiB | a client that stops reading (close 1013) |
//! | [`idle_timeout`](PhoenixSocketBuilder::idle_timeout) | 60 s | dead connections (close 1001) |
//!
//! What the application must still do:
//!
//! - **Authenticate in the connect hook.** Verify a signed token ([`TokenSigner`], see
//!   "Authentication") or a session, and assign the user id; refuse otherwise. Never track a
//!   user name a client sent as who it is.
//! - **Authorise topics in `join`.** A route pattern says which channel serves a topic, not
//!   who may join it: check in [`Channel::join`] that the user may see `room:42`.
//! - **Validate every payload** in `handle_in` (lengths, types), and reply with an error that
//!   changes nothing when it is wrong, as the chat example does.
//! - Behind a proxy, list it in [`trusted_proxies`](PhoenixSocketBuilder::trusted_proxies) so
//!   [`ConnectInfo::peer_addr`] is the client, and keep
//!   [`check_origin`](PhoenixSocketBuilder::check_origin) on (list your domains if the page and
//!   the socket are on different hosts).
//!
//! # Authentication
//!
//! The pattern Phoenix apps use with `Phoenix.Token`: an HTTP endpoint of the app, behind its
//! own login, hands the page a token signed with [`TokenSigner`]; the page passes it as a
//! socket param; the [connect hook](PhoenixSocketBuilder::on_connect) verifies it and assigns
//! the user id, which channels read from [`ChannelContext::socket_assigns`]. A channel then
//! tracks the user the server vouched for, never a name the client sent.
//!
//! ```
//! use std::time::Duration;
//! use poem::web::Data;
//! use poem::{EndpointExt, Route, get, handler};
//! use presence_core::PubSub;
//! use presence_poem::{ConnectError, ConnectInfo, Connected, PhoenixSocket, TokenSigner};
//!
//! #[derive(Clone)]
//! struct UserId(u64);
//!
//! /// Behind the app's login (its session says who the user is).
//! #[handler]
//! fn socket_token(Data(signer): Data<&TokenSigner>) -> String {
//!     let user_id = 42_u64; // from the session
//!     signer.sign(&user_id)
//! }
//!
//! # fn main() -> Result<(), presence_poem::TokenError> {
//! let secret = b"from the app's configuration, at least 32 bytes long!";
//! let signer = TokenSigner::new(secret, "user socket")?;
//! let verifier = signer.clone();
//! let socket = PhoenixSocket::builder(PubSub::new("node-a"))
//!     .on_connect(move |info: ConnectInfo| {
//!         // `new Socket("/socket", {params: {token}})` in the page.
//!         let user = info
//!             .params
//!             .get("token")
//!             .ok_or(ConnectError::new("no token"))
//!             .and_then(|t| {
//!                 verifier
//!                     .verify::<u64>(t, Duration::from_secs(14 * 86_400))
//!                     .map_err(|e| ConnectError::new(e.to_string()))
//!             });
//!         async move { Ok(Connected::new().assign(UserId(user?))) }
//!     })
//!     .build();
//! let app = Route::new()
//!     .nest("/socket", socket)
//!     .at("/socket_token", get(socket_token))
//!     .data(signer);
//! # Ok(())
//! # }
//! ```
//!
//! # Mounting
//!
//! A [`PhoenixSocket`] serves its transports under the path it is mounted at, as a Phoenix
//! endpoint's `socket "/socket", ...` does: nested with `Route::new().nest("/socket", socket)`,
//! it answers `/socket/websocket` (what phoenix.js's `new Socket("/socket")` connects to) and
//! 404 for any other path below `/socket` (and `/socket/longpoll` when
//! [long poll](PhoenixSocketBuilder::longpoll) is on). It serves the websocket transport at
//! any path whose last segment is `websocket` (and long poll at `longpoll`), so
//! `Route::new().at("/socket/websocket", socket)` works too.
//!
//! # Long poll
//!
//! [`PhoenixSocketBuilder::longpoll`] turns on `<mount>/longpoll` beside the websocket, what
//! phoenix.js's `LongPoll` speaks (`new Socket("/socket", {transport: LongPoll})`, or
//! `{longPollFallbackMs: 2500}` to fall back when websockets fail behind a proxy). Off by
//! default, as in Phoenix. It serves the same channels, with the same connect hook (the
//! `authToken` arrives in [`ConnectInfo::auth_token`] from the `X-Phoenix-AuthToken` header),
//! origin check, connection limit (a session counts as a connection; sessions also have a
//! [cap of their own](LongPollConfig::max_sessions), 10,000 by default), message and join
//! rates, outbound queue bounds and drain as the websocket; the wire format is the
//! serializer's (V1 or V2 JSON).
//!
//! - **Sessions.** A `GET` without a session token runs the connect hook and starts a
//!   session: a server-side connection whose channels live on between requests. The answer
//!   carries the session token. A `GET` with the token waits up to the
//!   [window](LongPollConfig::window) (10 s; at most 1 hour) for messages and returns them all, in order;
//!   a newer poll of the same session ends the waiting one. A `POST` (ndjson, one message a
//!   line, at most 100, as phoenix.js batches them; a binary V2 message in base64) hands the
//!   messages to the session in order. A `GET` whose token does not verify starts a new
//!   session, as in Phoenix (phoenix.js sends the socket's own params, which may hold a
//!   `token`, on its first poll).
//! - **Statuses.** Every answer is HTTP 200 with JSON `{"status": N, ...}`, the status
//!   phoenix.js acts on: `200` messages, `204` none within the window, `410` a new session
//!   (with its token) or a session that is gone (phoenix.js reconnects and rejoins), `403` a
//!   refused connect (origin, `vsn`, connect hook: phoenix.js stops), `500` try again later
//!   (draining, at the connection limit or the
//!   [session limit](LongPollConfig::max_sessions), connect hook timeout). A `POST` answers `200`,
//!   `410` (no such session), `400` (an undecodable message: **none** of the batch is
//!   handled, and the session goes on), or `413` (over
//!   [`max_message_size`](PhoenixSocketBuilder::max_message_size), or over 100 messages).
//!   Other methods get HTTP 400; `OPTIONS` is a CORS preflight.
//! - **Expiry.** A session closes 1.5 windows after its last poll began (15 s by default)
//!   when no poll or message came since (one window after it started, when its client never
//!   polled at all): its channels stop and their presences leave, as when a websocket
//!   closes. phoenix.js does not tell the server when it disconnects; the
//!   expiry does.
//! - **Slow clients.** A session's queued messages have the websocket's bounds
//!   ([`outbound_capacity`](PhoenixSocketBuilder::outbound_capacity),
//!   [`outbound_budget`](PhoenixSocketBuilder::outbound_budget)) and policy: a slow reader's
//!   presence diffs merge, and a session whose queue overflows is closed (its next poll gets
//!   `410`: phoenix.js reconnects). Messages handed to a poll's answer count against the
//!   budget until the server has taken the answer's last chunk for writing (or dropped it):
//!   a poll gets no more than what is left of the budget, the rest stays queued, so a client
//!   that polls but never reads its answers holds at most the budget (plus a write buffer) in
//!   unread bodies and is then closed as a slow reader. The answer of a poll routed from
//!   another node is bounded by the budget when it is taken, but its reading is not tracked.
//!   Anything that closes a websocket (a `disconnect`
//!   broadcast, rate abuse, a drain) closes a session the same way.
//! - **Tokens.** Session tokens are signed ([`TokenSigner`], HMAC-SHA256) with the long-poll
//!   [key](LongPollConfig::secret), under a salt of their own, and hold the session id (128
//!   random bits) and serializer. A forged, altered, expired (two weeks) or other-purpose
//!   token is refused (a token signed up to [`MAX_CLOCK_SKEW`], 60 s, in the future is
//!   accepted: the signing node's clock may be ahead); a token names one session only. Without a configured key one is
//!   generated when the socket is built: tokens then die with the process, which is fine for
//!   one node.
//! - **Clusters.** Behind a load balancer without sticky sessions, a poll or a send may
//!   reach a node that does not hold its session. That node verifies the token (so **every
//!   node must be given the same key**, e.g. from the same configuration secret) and routes
//!   the request to the owning node over the socket's pub/sub (in-process cluster or Redis):
//!   the token names that node, the request goes to it only
//!   ([`direct_broadcast`](presence_core::PubSub::direct_broadcast)), and it acknowledges
//!   within 2 s (no answer: `410`), serves the request, and sends the answer back to the
//!   asking node only. A token naming the asking node itself for a session it no longer holds
//!   is `410` at once. A node routes at most 4,096 requests at once; more are answered `500`
//!   (phoenix.js retries). Each routed request has its own reply topic (128 random bits), and its
//!   acknowledgement and answer name the request and the session: a node only takes the
//!   answer to its own request. Messages leave the session's queue only in the answer of a poll, so each
//!   is delivered once and in order whichever node the polls reach. As in Phoenix, a poll
//!   whose answer never reaches the client (the connection dropped while it was written)
//!   loses that answer's messages.
//! - **Memory.** An idle session joined to one channel costs about 12.4 KB of server memory
//!   (1,000 sessions; BENCHMARKS.md, "Long-poll sessions: memory").
//! - **Limits.** Binary frames pushed by the server are not sent over long poll (phoenix.js
//!   takes text only there; a warning is logged, once a session). Each message of a `POST` is decoded once to
//!   check the batch, and again by the session.
//!
//! # Join params
//!
//! A channel receives its join params as a [`serde_json::Value`] (`impl Channel for Room`) or
//! as a type of its own (`impl Channel<JoinParams> for Room`), deserialized by the socket;
//! params that do not deserialize are answered `error` with
//! `{"reason": "invalid join params: ..."}` and the channel is not joined. See [`Channel`].
//!
//! # Protocol
//!
//! Serializers: `vsn=1.0.0` (or none) speaks V1 JSON objects, `vsn=2.0.0` V2 JSON arrays and
//! binary frames; any other `vsn` is refused with HTTP 403, as is a connection the
//! [connect hook](PhoenixSocketBuilder::on_connect) refuses, and a browser page of another
//! site ([`check_origin`](PhoenixSocketBuilder::check_origin), on by default: the `Origin`
//! must be the request's own host, as Phoenix checks). The socket follows Phoenix.Socket:
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
//! The socket never waits on a channel, so a slow or stuck channel cannot stop it from
//! answering heartbeats, serving its other topics, noticing the client close or its idle
//! timeout:
//!
//! - **Busy channels.** Each channel has a bounded queue of 16 client messages. A push that
//!   does not fit is not queued: it is answered at once with `phx_reply` status `error`,
//!   `{"reason": "channel busy"}`, so the client learns its push failed (phoenix.js runs the
//!   push's `"error"` callback). One slot is kept for `phx_leave`, so a busy channel can still
//!   be left (or replaced by a duplicate join).
//! - **Joins.** A join runs in the channel's task while the socket goes on. One that has not
//!   returned within the [join timeout](PhoenixSocketBuilder::join_timeout) (15 s) is aborted
//!   and answered `error` with `{"reason": "join timeout"}`. While a topic's join is pending,
//!   its other messages wait (up to 15 of them; more are answered `channel busy`) and are
//!   handled once it has joined, in order, as Phoenix does; if the join fails they are
//!   answered `{"reason": "unmatched topic"}`. A `phx_leave` abandons the join (reply `ok`,
//!   then `phx_close`), as phoenix.js sends when its own join push times out. A join without
//!   a join_ref is answered without one; the channel's join_ref is then the join's ref.
//! - **Duplicate joins.** The old channel is asked to stop and the new join waits for its
//!   `phx_close` (at most 5 s, then the old one is aborted) in the new channel's task, not in
//!   the socket.
//!
//! # Fastlane
//!
//! Broadcasts on a channel's topic do not go through the channel tasks. Each node keeps one
//! hub per topic with joined sockets: one pub/sub subscription and one task, which encodes each
//! message at most once per serializer and puts the same encoded frame in every socket's
//! outbound queue. The hub stops when its last socket leaves the topic. A socket joins the
//! hub once its join reply (and what `join` pushed) is queued, so a client never sees a
//! broadcast on a topic before that topic's join reply.
//!
//! A hub subscribes with the pub/sub's bounded queue
//! ([`queue_capacity`](presence_core::pubsub::PubSubBuilder::queue_capacity)), and takes
//! [`broadcast_from`](ChannelContext::broadcast_from)s through a queue of 1024 messages. When
//! it falls behind and broadcasts are dropped, every client of the topic on this node has missed them
//! (`presence_diff`s included) and would stay out of sync: the hub then stops every channel of
//! the topic on this node ([`StopReason::Lagged`]), which pushes `phx_error` with
//! `{"reason": "lagged"}`. phoenix.js rejoins (after its rejoin backoff, 1 s first) and gets a
//! fresh `presence_state`; meanwhile the channels' [`Owner`](presence_core::Owner)s have dropped,
//! so their presences leave and join again. The sockets and their other channels go on.
//!
//! # Slow clients
//!
//! Each socket has an outbound queue bounded twice: in frames
//! ([`PhoenixSocketBuilder::outbound_capacity`], 256) and in bytes
//! ([`PhoenixSocketBuilder::outbound_budget`], 8 MiB of encoded frames; one frame of any size
//! still fits an empty queue). Nothing ever waits on a client:
//!
//! - a client that reads slowly but steadily falls behind (a quarter of its frames or an
//!   eighth of its bytes queued): from then on a `presence_diff` whose topic's previous diff
//!   is still queued, with nothing queued after it, merges into that diff instead of taking a
//!   slot. The client receives fewer, larger diffs, and catches up;
//! - a client that stops reading fills its queue: the socket is closed with code **1013**
//!   ("try again later") and a warning is logged; its queue is freed at once. phoenix.js
//!   reconnects with backoff and rejoins.
//!
//! Other sockets are not affected either way.
//!
//! # Shutdown
//!
//! poem's graceful shutdown stops accepting connections but does not wait for upgraded
//! websockets. Call [`PhoenixSocket::drain`] after it: new upgrades get HTTP 503, open sockets
//! are closed with code 1012 (phoenix.js reconnects, to another node behind a load balancer),
//! and it resolves once every channel has terminated, so their presences have left. A
//! clustered node then calls the tracker's `graceful_permdown` so peers drop its presences at
//! once.
//!
//! # Rebalancing a cluster
//!
//! Websockets stay where they first connected. After a node restarts, the others keep the
//! clients it had, and it gets only new connections. With
//! [`rebalance`](PhoenixSocketBuilder::rebalance) on, every node publishes its socket count
//! on the pub/sub, and a node well over the average closes its newest sockets with 1012, so
//! that their clients reconnect through the load balancer ([`Rebalance`]).
//!
//! # Limits and close codes
//!
//! - 1000: the client closed;
//! - 1001: a `"disconnect"` broadcast on the socket id, or nothing was received for the idle
//!   timeout (60 s); not 1000, which phoenix.js takes as final;
//! - 1007: an undecodable frame (invalid JSON, wrong shape, invalid UTF-8, a binary frame on V1);
//! - 1009: a message over [`max_message_size`](PhoenixSocketBuilder::max_message_size) (1 MiB);
//! - 1011: an internal error;
//! - 1012: the endpoint is draining for a shutdown ([`PhoenixSocket::drain`]), or
//!   rebalancing moves the socket to a less loaded node (reason `"rebalancing"`;
//!   [`Rebalance`]);
//! - 1008: a client that went on sending far over its
//!   [message rate](PhoenixSocketBuilder::message_rate);
//! - 1013: the outbound queue is full, in frames or bytes (a client that stopped reading).
//!
//! Every close the server starts completes the closing handshake: after its close frame the
//! server reads and discards what the client still sends, until the client's close frame (at
//! most 5 s), so a client that pipelined more frames still sees the server's code rather than
//! a reset (1006).
//!
//! # Metrics and spans
//!
//! The endpoint records metrics through the [`metrics`](https://docs.rs/metrics) facade: a
//! no-op until the application installs a recorder (do it before building the socket: the
//! endpoint registers its counters when it is built, hubs when they start). Sockets open, connects and refusals by
//! reason, closes by code, slow-client closes, rate-limit hits, frames and bytes each way,
//! channels joined and joins by route pattern and outcome, join durations, diffs sent and
//! merged; OBSERVABILITY.md in the repository lists them all. Labels never name a topic.
//! [`PhoenixSocket::open_channels`] and [`PhoenixSocket::recent_closes`] feed a status page.
//!
//! Each socket runs in a `socket` span (`remote_addr`, `socket_id`, `vsn`) and each channel
//! in a `channel` span inside it (`topic`, `join_ref`); no span field holds a token, a cookie,
//! a query string or a header.
//!
//! # Memory
//!
//! The websocket uses a 512-byte read buffer and keeps no write buffer between writes
//! (tungstenite's defaults are 128 KiB each): an idle joined socket costs about 5.2 KB, and
//! 5.7 KB with one tracked presence (10,000 sockets, 100 per room). Phoenix clients send small frames; a
//! larger message is read 512 bytes at a time (raise the buffer with
//! [`PhoenixSocketBuilder::websocket_config`] for clients that send large payloads). The
//! queues allocate as they fill.
//!
//! A message longer than 2 KiB (a big room's `presence_state`, a large reply) is written as
//! websocket fragments of 2 KiB, which browsers and websocket libraries join into one
//! message. Encoded frames are shared between sockets. A socket's writer copies the frames
//! of one write batch into a buffer and writes it 16 KiB at a time, then frees it: no socket
//! keeps a write buffer between batches (tungstenite, which reads the frames, would keep
//! one as large as the largest frame it ever wrote).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

mod channel;
mod cmdq;
mod connection;
mod context;
mod hub;
mod listener;
mod longpoll;
mod metrics;
mod origin;
mod outbox;
mod presence;
mod protocol;
mod rebalance;
mod socket;
mod status;
mod token;
mod upgrade;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;

pub use channel::{
    Channel, HandleIn, Info, IntoPayload, Join, Mailbox, MailboxError, Reply, StopReason,
};
pub use context::{ChannelContext, SocketRef};
pub use listener::{DEFAULT_HANDSHAKE_TIMEOUT, HandshakeTimeout, TimedIo};
pub use longpoll::{DEFAULT_LONGPOLL_MAX_SESSIONS, DEFAULT_LONGPOLL_WINDOW, LongPollConfig};
pub use origin::{CheckOrigin, InvalidOrigin, OriginPattern};
pub use presence::{PresenceData, PresenceEndpoint, PresenceMiddleware};
pub use rebalance::{DEFAULT_REBALANCE_TOPIC, Rebalance};
pub use socket::{
    ConnectError, ConnectInfo, Connected, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_JOIN_RATE, DEFAULT_JOIN_TIMEOUT, DEFAULT_MAX_CHANNELS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_TOPIC_LENGTH, DEFAULT_MAX_TOPICS, DEFAULT_MESSAGE_RATE,
    DEFAULT_OUTBOUND_BUDGET, DEFAULT_OUTBOUND_CAPACITY, PhoenixSocket, PhoenixSocketBuilder,
    RateLimit,
};
pub use status::RecentClose;
pub use token::{MAX_CLOCK_SKEW, MIN_SECRET_LEN, TokenError, TokenSigner};

// In `Channel::handle_in`'s signature: channels need no presence_core import for it.
pub use presence_core::pubsub::Payload;
