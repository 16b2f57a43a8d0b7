//! [`ChannelContext`]: what a channel's callbacks can do, and the task that runs a channel.

use std::any::Any;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use poem::http::Extensions;
use presence_core::pubsub::{BroadcastError, Message, Payload, RecvError, Subscription};
use presence_core::registry::RegistryError;
use presence_core::{Owner, PubSub, Registry};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::channel::{HandleIn, Info, IntoPayload, MAILBOX_CAPACITY, Mailbox, Reply, StopReason};
use crate::cmdq;
use crate::hub::{HubRegistration, Hubs};
use crate::outbox::Outbox;
use crate::protocol::{Out, Vsn, event};
use crate::{Channel, Join};

/// What one socket shares with all its channels.
#[derive(Debug)]
pub(crate) struct SocketShared {
    pub(crate) assigns: Extensions,
    pub(crate) id: Option<Arc<str>>,
    pub(crate) vsn: Vsn,
    pub(crate) outbox: Outbox,
    pub(crate) hubs: Hubs,
    /// The application's registry, taken from the upgrade request (see
    /// [`PresenceMiddleware`](crate::PresenceMiddleware)).
    pub(crate) registry: SocketRegistry,
    /// The endpoint's channel count and recent closes.
    pub(crate) status: Arc<crate::status::Status>,
}

/// The registry a socket's channels see: the one the upgrade request carried, or an empty
/// one that warns (once per endpoint) when a channel first uses it.
#[derive(Debug)]
pub(crate) struct SocketRegistry {
    registry: Registry,
    /// The endpoint's "warned" flag when no registry reached the socket (`registry` is then
    /// empty); `None` when one did.
    missing: Option<Arc<AtomicBool>>,
}

impl SocketRegistry {
    pub(crate) fn new(registry: Option<Registry>, warned: &Arc<AtomicBool>) -> Self {
        match registry {
            Some(registry) => SocketRegistry {
                registry,
                missing: None,
            },
            None => SocketRegistry {
                registry: Registry::not_provided(),
                missing: Some(warned.clone()),
            },
        }
    }

    /// The registry, empty when none reached the socket (the first use then warns).
    fn get(&self) -> &Registry {
        if let Some(warned) = &self.missing
            && !warned.load(Ordering::Relaxed)
            && !warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "a channel used the registry, but no registry reached its socket: presences \
                 cannot be found; wrap the routes in `presence_poem::PresenceMiddleware::new(registry)`"
            );
        }
        &self.registry
    }

    /// The registry that reached the socket.
    fn reached(&self) -> Result<&Registry, RegistryError> {
        let registry = self.get();
        match self.missing {
            None => Ok(registry),
            Some(_) => Err(RegistryError::NoRegistry),
        }
    }
}

/// Work a channel's `join` left for right after its join reply, once the channel receives
/// its topic's broadcasts.
pub(crate) type AfterJoin = Box<
    dyn for<'a> FnOnce(&'a mut ChannelContext) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>
        + Send,
>;

/// Something done during `join` that waits for the join reply.
pub(crate) enum Deferred {
    /// A frame pushed during `join`.
    Frame(Out),
    /// Work to run after the join reply (e.g. listing the presence state).
    Run(AfterJoin),
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deferred::Frame(out) => f.debug_tuple("Frame").field(out).finish(),
            Deferred::Run(_) => f.debug_tuple("Run").finish_non_exhaustive(),
        }
    }
}

/// The request a reply answers: a channel's join_ref and the request's ref.
///
/// Get it with [`ChannelContext::socket_ref`] inside [`Channel::handle_in`] and keep it to
/// [reply](ChannelContext::reply) later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRef {
    join_ref: Arc<str>,
    reference: Option<Arc<str>>,
}

/// The handle a channel's callbacks get: push, reply and broadcast, assigns, the channel's
/// presence [`Owner`], its topic and join_ref, the [`PubSub`] and the application's
/// [`Registry`].
///
/// It implements [`PresenceSocket`](presence_core::presence::PresenceSocket), so presence
/// helpers (`RoomPresence::track(ctx, key, &meta)`) track with this channel as the owner; see
/// [`push_presence_state`](Self::push_presence_state) and the crate docs, "Presence".
///
/// One context lives as long as one joined channel.
pub struct ChannelContext {
    topic: Arc<str>,
    join_ref: Arc<str>,
    socket: Arc<SocketShared>,
    assigns: Extensions,
    owner: Owner,
    registration: Option<HubRegistration>,
    subscriptions: Vec<Subscription>,
    mailbox: Option<(Mailbox, mpsc::Receiver<Box<dyn Any + Send>>)>,
    /// Where [`next_info`](Self::next_info) looks first: 0 the mailbox, `i` subscription
    /// `i - 1`. It moves past the source just taken, so no source starves the others.
    next_source: usize,
    current: Option<SocketRef>,
    /// What `join` pushed (or left to do), sent (or run) after the join reply.
    pub(crate) deferred: Option<Vec<Deferred>>,
}

impl fmt::Debug for ChannelContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelContext")
            .field("topic", &self.topic)
            .field("join_ref", &self.join_ref)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl ChannelContext {
    pub(crate) fn new(topic: Arc<str>, join_ref: Arc<str>, socket: Arc<SocketShared>) -> Self {
        ChannelContext {
            topic,
            join_ref,
            socket,
            assigns: Extensions::new(),
            owner: Owner::new(),
            registration: None,
            subscriptions: Vec::new(),
            mailbox: None,
            next_source: 0,
            current: None,
            deferred: Some(Vec::new()),
        }
    }

    /// The channel's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The join_ref of this join (the client's `phx_join` join_ref, or its ref).
    pub fn join_ref(&self) -> &str {
        &self.join_ref
    }

    /// The pub/sub this socket endpoint uses.
    pub fn pubsub(&self) -> &PubSub {
        self.socket.hubs.pubsub()
    }

    /// The owner of this channel's presences: track with it, and they leave when the channel
    /// leaves, crashes or its socket closes.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The application's [`Registry`] (pub/subs and presences), as the
    /// [`PresenceMiddleware`](crate::PresenceMiddleware) put it on the upgrade request.
    ///
    /// Without the middleware it is a
    /// [`not_provided`](Registry::not_provided) stand-in: the first use logs a warning
    /// naming `PresenceMiddleware`, and [`push_presence_state`](Self::push_presence_state)
    /// and every lookup in it (the presence helpers) fail with [`RegistryError::NoRegistry`].
    pub fn registry(&self) -> &Registry {
        self.socket.registry.get()
    }

    /// The registry that reached this channel's socket.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NoRegistry`] without a [`PresenceMiddleware`](crate::PresenceMiddleware).
    pub(crate) fn reached_registry(&self) -> Result<&Registry, RegistryError> {
        self.socket.registry.reached()
    }

    /// The socket id set by the connect hook, if any.
    pub fn socket_id(&self) -> Option<&str> {
        self.socket.id.as_deref()
    }

    /// The socket-level assigns set by the connect hook, shared by all the socket's channels.
    pub fn socket_assigns(&self) -> &Extensions {
        &self.socket.assigns
    }

    /// This channel's own assigns.
    pub fn assigns(&self) -> &Extensions {
        &self.assigns
    }

    /// This channel's own assigns, mutably.
    pub fn assigns_mut(&mut self) -> &mut Extensions {
        &mut self.assigns
    }

    /// The request being handled, inside [`Channel::handle_in`]; `None` elsewhere.
    pub fn socket_ref(&self) -> Option<SocketRef> {
        self.current.clone()
    }

    /// Pushes `event` to this client on this channel (join_ref set, ref null). A binary payload
    /// goes out as a V2 binary frame; on a V1 socket it is dropped with a warning.
    ///
    /// Pushes made in [`Channel::join`] are sent right after the join reply.
    pub fn push(&mut self, event: &str, payload: impl IntoPayload) {
        let payload = payload.into_payload();
        let encoded =
            self.socket
                .vsn
                .message(Some(&self.join_ref), None, &self.topic, event, &payload);
        self.send(encoded, event);
    }

    /// The topic, shared.
    pub(crate) fn topic_arc(&self) -> Arc<str> {
        self.topic.clone()
    }

    /// Makes this channel count-only in its topic's hub (see
    /// [`push_presence_count`](Self::push_presence_count)).
    pub(crate) fn counts_only(&self, counter: crate::hub::Counter) {
        if let Some(registration) = &self.registration {
            registration.counts_only(counter);
        }
    }

    /// Pushes `event` whose payload is the JSON text `body`, shared with other sockets'
    /// frames instead of copied into this one's queue.
    pub(crate) fn push_shared_json(&mut self, event: &str, body: &Arc<str>) {
        let out = self
            .socket
            .vsn
            .push_json(Some(&self.join_ref), &self.topic, event, body);
        self.send(Ok(out), event);
    }

    /// Replies to the request `to` (see [`socket_ref`](Self::socket_ref)), now or later.
    pub fn reply(&mut self, to: &SocketRef, reply: Reply) {
        let (status, payload) = reply.into_parts();
        let encoded = self.socket.vsn.reply(
            Some(&to.join_ref),
            to.reference.as_deref(),
            &self.topic,
            status,
            &payload,
        );
        self.send(encoded, event::REPLY);
    }

    /// Broadcasts `event` to every subscriber of this channel's topic, on every node (this
    /// client included).
    ///
    /// # Errors
    ///
    /// [`BroadcastError`] when the pub/sub adapter could not take the message for other nodes;
    /// this node's subscribers got it all the same.
    pub fn broadcast(&self, event: &str, payload: impl IntoPayload) -> Result<(), BroadcastError> {
        let message = Message::new(self.topic.clone(), event, payload.into_payload());
        self.pubsub().broadcast(message)
    }

    /// Like [`broadcast`](Self::broadcast), but not to this socket.
    ///
    /// This node's sockets get it through the topic's hub, whose queue for these holds 1024
    /// messages; a burst it cannot queue is handled as a lagging hub (see the crate docs,
    /// "Fastlane").
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub fn broadcast_from(
        &self,
        event: &str,
        payload: impl IntoPayload,
    ) -> Result<(), BroadcastError> {
        let message = Arc::new(Message::new(
            self.topic.clone(),
            event,
            payload.into_payload(),
        ));
        match &self.registration {
            Some(registration) => registration.broadcast_from(self.pubsub(), message),
            // Not registered yet (inside `join`): this socket would not receive it anyway.
            None => self.pubsub().broadcast(message),
        }
    }

    /// Subscribes this channel to a pub/sub `topic`: its messages arrive in
    /// [`Channel::handle_info`] as [`Info::Message`] until the channel stops.
    pub fn subscribe(&mut self, topic: &str) {
        let subscription = self.pubsub().subscribe(topic);
        self.subscriptions.push(subscription);
    }

    /// Ends the subscriptions made with [`subscribe`](Self::subscribe) to `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        self.subscriptions.retain(|s| s.topic() != topic);
    }

    /// A handle other tasks can use to send values to [`Channel::handle_info`].
    pub fn mailbox(&mut self) -> Mailbox {
        self.mailbox
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
                (Mailbox { tx }, rx)
            })
            .0
            .clone()
    }

    fn send(&mut self, encoded: Result<Out, crate::protocol::CodecError>, event: &str) {
        match encoded {
            Ok(out) => match &mut self.deferred {
                Some(deferred) => deferred.push(Deferred::Frame(out)),
                None => self.socket.outbox.send(out),
            },
            Err(error) => tracing::warn!(topic = %self.topic, event, %error,
                "message cannot be encoded for this socket's serializer; not sent"),
        }
    }

    fn send_now(&self, encoded: Result<Out, crate::protocol::CodecError>) {
        match encoded {
            Ok(out) => self.socket.outbox.send(out),
            Err(error) => tracing::warn!(topic = %self.topic, %error, "reply cannot be encoded"),
        }
    }

    /// The next message from the mailbox or a subscription, taking the sources in turn.
    async fn next_info(&mut self) -> Info {
        poll_fn(|cx| {
            let sources = 1 + self.subscriptions.len();
            let first = self.next_source % sources;
            for source in (first..sources).chain(0..first) {
                let info = match source {
                    0 => match &mut self.mailbox {
                        Some((_, rx)) => match rx.poll_recv(cx) {
                            Poll::Ready(Some(value)) => Some(Info::Custom(value)),
                            _ => None,
                        },
                        None => None,
                    },
                    i => poll_subscription(&mut self.subscriptions[i - 1], cx),
                };
                if let Some(info) = info {
                    self.next_source = source + 1;
                    return Poll::Ready(info);
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The next message of `sub`, if one is queued (a lag is logged and skipped).
fn poll_subscription(sub: &mut Subscription, cx: &mut std::task::Context<'_>) -> Option<Info> {
    loop {
        match sub.poll_recv(cx) {
            Poll::Ready(Ok(message)) => return Some(Info::Message(message)),
            Poll::Ready(Err(RecvError::Lagged(missed))) => {
                tracing::warn!(topic = sub.topic(), missed, "channel subscription lagged");
            }
            Poll::Ready(Err(_)) | Poll::Pending => return None,
        }
    }
}

/// A command from the connection to a channel task.
#[derive(Debug)]
pub(crate) enum Cmd {
    In {
        event: String,
        reference: Option<String>,
        payload: Payload,
    },
    Leave {
        reference: Option<String>,
    },
    Shutdown(StopReason),
}

/// Everything a channel task starts with.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) ctx: ChannelContext,
    pub(crate) params: Value,
    pub(crate) reference: Option<String>,
    /// The join message's own join_ref, for the join's reply (null when it had none).
    pub(crate) reply_join_ref: Option<Arc<str>>,
    /// Settles the join with the connection: `true` joined, `false` refused or crashed. Sent
    /// before the join reply; when the connection has given up on the join (join timeout,
    /// leave, duplicate join) the send fails and the task replies nothing and stops.
    pub(crate) joined: oneshot::Sender<bool>,
    pub(crate) cmds: cmdq::Receiver<Box<Cmd>>,
    /// This channel's own command queue, for its hub to stop it (weak: the channel stops when
    /// the connection drops its sender).
    pub(crate) this: cmdq::WeakSender<Box<Cmd>>,
    /// The channel this join replaces (duplicate join), to wait for before joining.
    pub(crate) replaces: Option<Replaced>,
    /// The route's pattern, the `route` label of the channel metrics.
    pub(crate) route: Arc<str>,
}

/// A channel replaced by a duplicate join, already asked to stop. The new channel's task owns
/// it: it waits for it to end (at most `deadline`) and aborts it if dropped first.
#[derive(Debug)]
pub(crate) struct Replaced {
    join_ref: Arc<str>,
    task: JoinHandle<()>,
    deadline: std::time::Duration,
}

impl Replaced {
    pub(crate) fn new(
        join_ref: Arc<str>,
        task: JoinHandle<()>,
        deadline: std::time::Duration,
    ) -> Self {
        Replaced {
            join_ref,
            task,
            deadline,
        }
    }

    /// Waits for the old channel to end, so its `phx_close` reaches the client first; at the
    /// deadline aborts it and pushes the `phx_close` itself.
    async fn stopped(mut self, socket: &SocketShared, topic: &str) {
        if timeout(self.deadline, &mut self.task).await.is_ok() {
            return;
        }
        self.task.abort();
        // Wait (briefly) for the abort to take effect, so the old channel's registration and
        // presences are gone before the new one joins.
        let _ = timeout(self.deadline, &mut self.task).await;
        tracing::warn!(topic, "replaced channel did not stop in time; aborted");
        let close = socket.vsn.message(
            Some(&self.join_ref),
            Some(&self.join_ref),
            topic,
            event::CLOSE,
            &Payload::Json(json!({})),
        );
        if let Ok(out) = close {
            socket.outbox.send(out);
        }
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reports a panic to the client: `join crashed` during join, `phx_error` afterwards (when
/// the [`Running`] it is part of drops while the thread panics).
struct CrashGuard {
    reply_join_ref: Option<Arc<str>>,
    reference: Option<String>,
    joined: Option<oneshot::Sender<bool>>,
    joining: bool,
    done: bool,
}

impl CrashGuard {
    /// Settles the join with the connection; false when it gave up on the join and answered
    /// the client itself.
    fn settle(&mut self, joined: bool) -> bool {
        self.joined.take().is_some_and(|tx| tx.send(joined).is_ok())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.guard.done || !std::thread::panicking() {
            return; // finished, or aborted by the connection
        }
        // Off the topic's hub before the error goes out, as when the context dropped first:
        // no broadcast of the topic reaches the client after its `phx_error`.
        self.ctx.registration = None;
        let (guard, ctx) = (&mut self.guard, &self.ctx);
        let vsn = ctx.socket.vsn;
        let encoded = if guard.joining {
            if !guard.settle(false) {
                return;
            }
            tracing::warn!(topic = %ctx.topic, "channel join crashed");
            vsn.reply(
                guard.reply_join_ref.as_deref(),
                guard.reference.as_deref(),
                &ctx.topic,
                "error",
                &Payload::Json(json!({"reason": "join crashed"})),
            )
        } else {
            tracing::warn!(topic = %ctx.topic, "channel crashed");
            vsn.message(
                Some(&ctx.join_ref),
                Some(&ctx.join_ref),
                &ctx.topic,
                event::ERROR,
                &Payload::Json(json!({"reason": "channel_crash"})),
            )
        };
        if let Ok(out) = encoded {
            ctx.socket.outbox.send(out);
        }
    }
}

/// The span of one channel, inside its socket's: `topic` and `join_ref`.
pub(crate) fn channel_span(start: &Start) -> tracing::Span {
    tracing::info_span!(
        "channel",
        topic = &*start.ctx.topic,
        join_ref = &*start.ctx.join_ref,
    )
}

/// What a channel's task keeps for its whole life, in one allocation of its own.
///
/// A task's future keeps room, at fixed places, for what it captured and for every local it
/// holds across an await: held there, these made each channel's task a 2 KB allocation.
/// Boxed (and the join's one-time work boxed while it runs), the task is a few hundred bytes,
/// and the channels of a reconnect storm leave smaller holes in the allocator's pages when
/// they go.
struct Running {
    ctx: ChannelContext,
    guard: CrashGuard,
    cmds: cmdq::Receiver<Box<Cmd>>,
    /// Taken by the hub registration.
    this: Option<cmdq::WeakSender<Box<Cmd>>>,
    /// Taken when the join waits for it. Boxed: only a duplicate join has one.
    replaces: Option<Box<Replaced>>,
    route: Arc<str>,
}

impl Running {
    /// The running state, and the join's params (used once, so not kept).
    fn new(start: Box<Start>) -> (Box<Running>, Value) {
        let Start {
            ctx,
            params,
            reference,
            reply_join_ref,
            joined,
            cmds,
            this,
            replaces,
            route,
        } = *start;
        let guard = CrashGuard {
            reply_join_ref,
            reference,
            joined: Some(joined),
            joining: true,
            done: false,
        };
        let running = Box::new(Running {
            ctx,
            guard,
            cmds,
            this: Some(this),
            replaces: replaces.map(Box::new),
            route,
        });
        (running, params)
    }

    /// Answers the join message (`ok` or `error`) with `response`.
    fn reply_to_join(&mut self, status: &str, response: &Payload) {
        let reply = self.ctx.socket.vsn.reply(
            self.guard.reply_join_ref.as_deref(),
            self.guard.reference.as_deref(),
            &self.ctx.topic,
            status,
            response,
        );
        self.ctx.send_now(reply);
    }
}

/// Counted as joined (metrics, status) from its `ok` until the task ends, however it ends.
type JoinedGuards = (crate::metrics::JoinedChannel, crate::status::ChannelGuard);

/// Runs the join: the params' decoding, `make` (only for params that decode), `join`, its
/// reply, and the work it deferred. `None` when the channel did not join (refused, or given up
/// by the connection), and the task is to end.
async fn join<C, P>(
    st: &mut Running,
    params: Value,
    make: impl FnOnce() -> C,
) -> Option<(C, JoinedGuards)>
where
    C: Channel<P>,
    P: DeserializeOwned + Send + 'static,
{
    if let Some(old) = st.replaces.take() {
        old.stopped(&st.ctx.socket, &st.ctx.topic).await;
    }
    let params = match serde_json::from_value::<P>(params) {
        Ok(params) => params,
        Err(error) => {
            tracing::debug!(topic = %st.ctx.topic, %error, "join refused: invalid join params");
            if st.guard.settle(false) {
                let reason = format!("invalid join params: {error}");
                st.reply_to_join("error", &Payload::Json(json!({ "reason": reason })));
            }
            return None;
        }
    };
    let mut channel = make();
    let topic = st.ctx.topic.clone();
    // Registered with the topic's hub before `join` runs, as Phoenix subscribes before it
    // tracks: a broadcast made during the join (the `presence_diff` of the join's own track
    // above all) is held for this socket and sent after the join reply, never missed.
    let socket = &st.ctx.socket;
    let this = st.this.take()?;
    st.ctx.registration = Some(socket.hubs.register(
        &topic,
        // A key of its own: when a duplicate join replaced a stuck channel, the old
        // registration's late drop must not remove this one.
        socket.hubs.socket_key(),
        socket.vsn,
        socket.outbox.clone(),
        this,
        true,
    ));
    match channel.join(&topic, params, &mut st.ctx).await {
        Join::Ok(response) => {
            if !st.guard.settle(true) {
                st.ctx.registration = None;
                return None;
            }
            let joined = (
                crate::metrics::JoinedChannel::enter(&st.route),
                st.ctx.socket.status.joined(),
            );
            // The reply (and what `join` pushed) is queued before the broadcasts held during
            // the join are released, so no broadcast reaches the client before its join
            // reply; then the deferred work (e.g. the presence state) runs, registered, so no
            // diff after its listing is missed.
            st.reply_to_join("ok", &response);
            st.guard.joining = false;
            let mut deferred = st
                .ctx
                .deferred
                .take()
                .unwrap_or_default()
                .into_iter()
                .peekable();
            while let Some(Deferred::Frame(_)) = deferred.peek() {
                if let Some(Deferred::Frame(out)) = deferred.next() {
                    st.ctx.socket.outbox.send(out);
                }
            }
            if let Some(registration) = &st.ctx.registration {
                registration.release();
            }
            for deferred in deferred {
                match deferred {
                    Deferred::Frame(out) => st.ctx.socket.outbox.send(out),
                    Deferred::Run(work) => work(&mut st.ctx).await,
                }
            }
            Some((channel, joined))
        }
        Join::Error(response) => {
            st.ctx.registration = None;
            if st.guard.settle(false) {
                st.reply_to_join("error", &response);
            }
            None
        }
    }
}

/// Handles one command from the connection; the reason to stop, if it is one.
async fn handle_cmd<C, P>(
    channel: &mut C,
    cmd: Box<Cmd>,
    ctx: &mut ChannelContext,
) -> Option<StopReason>
where
    C: Channel<P>,
    P: DeserializeOwned + Send + 'static,
{
    match *cmd {
        Cmd::Shutdown(reason) => Some(reason),
        Cmd::Leave { reference } => {
            let to = SocketRef {
                join_ref: ctx.join_ref.clone(),
                reference: reference.map(Arc::from),
            };
            ctx.reply(&to, Reply::ok(json!({})));
            Some(StopReason::Left)
        }
        Cmd::In {
            event,
            reference,
            payload,
        } => {
            let to = SocketRef {
                join_ref: ctx.join_ref.clone(),
                reference: reference.map(Arc::from),
            };
            ctx.current = Some(to.clone());
            let outcome = channel.handle_in(&event, payload, ctx).await;
            ctx.current = None;
            match outcome {
                HandleIn::Reply(reply) => {
                    ctx.reply(&to, reply);
                    None
                }
                HandleIn::NoReply => None,
                HandleIn::Stop(reply) => {
                    if let Some(reply) = reply {
                        ctx.reply(&to, reply);
                    }
                    Some(StopReason::Stopped)
                }
            }
        }
    }
}

/// Runs one joined channel to its end. Spawned by the connection, which owns the task.
pub(crate) async fn run<C, P>(make: impl FnOnce() -> C, start: Box<Start>)
where
    C: Channel<P>,
    P: DeserializeOwned + Send + 'static,
{
    let (mut st, params) = Running::new(start);
    let Some((mut channel, _joined)) = Box::pin(join::<C, P>(&mut st, params, make)).await else {
        st.guard.done = true;
        return;
    };
    let reason = loop {
        tokio::select! {
            cmd = st.cmds.recv() => {
                let Some(cmd) = cmd else { break StopReason::Closed };
                // Boxed, command and all: what a command holds while `handle_in` runs would
                // otherwise be room kept in every channel's task.
                let handled = Box::pin(handle_cmd(&mut channel, cmd, &mut st.ctx));
                if let Some(reason) = handled.await {
                    break reason;
                }
            }
            info = st.ctx.next_info() => {
                if Box::pin(channel.handle_info(info, &mut st.ctx)).await.is_break() {
                    break StopReason::Stopped;
                }
            }
        }
    };
    // From here on the connection sees this channel as gone.
    st.cmds.close();
    while st.cmds.try_recv().is_some() {}
    st.ctx.registration = None;
    Box::pin(channel.terminate(reason, &mut st.ctx)).await;
    let last = match reason {
        StopReason::Closed => None,
        // Errored, not closed: phoenix.js rejoins and resyncs.
        StopReason::Lagged => Some((event::ERROR, json!({"reason": "lagged"}))),
        _ => Some((event::CLOSE, json!({}))),
    };
    if let Some((event, payload)) = last {
        let vsn = st.ctx.socket.vsn;
        st.ctx.send_now(vsn.message(
            Some(&st.ctx.join_ref),
            Some(&st.ctx.join_ref),
            &st.ctx.topic,
            event,
            &Payload::Json(payload),
        ));
    }
    st.guard.done = true;
}
