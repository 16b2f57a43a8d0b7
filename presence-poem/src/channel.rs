//! The [`Channel`] trait and the values its callbacks return.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use presence_core::pubsub::{Message, Payload};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ChannelContext;

/// A channel: the server side of one joined topic on one socket, like a Phoenix channel.
///
/// A fresh value is made (by the factory given to
/// [`PhoenixSocketBuilder::channel`](crate::PhoenixSocketBuilder::channel)) for every join and
/// runs in its own task, owned by the connection. Callbacks of one channel never run
/// concurrently. A panic in a callback ends that channel only: the client gets `phx_error`
/// (or, during `join`, an error reply `{"reason": "join crashed"}`), the channel's
/// [`Owner`](presence_core::Owner) is dropped so its presences leave, and the socket and the other
/// channels go on.
///
/// Implement the callbacks with `async fn`; the returned futures must be `Send`.
///
/// # Join params
///
/// `Params` is what [`join`](Self::join) receives: the join message's payload (phoenix.js's
/// `socket.channel(topic, params)`), deserialized by the socket. It defaults to
/// [`serde_json::Value`], which takes any payload; implement `Channel<MyParams>` to get a
/// type of your own instead. Params that do not deserialize into it are refused before the
/// channel is made: the client gets an `error` reply with
/// `{"reason": "invalid join params: <serde's message>"}` and the channel does not join.
/// phoenix.js sends `{}` when given no params, so a struct whose fields are all `Option` or
/// `#[serde(default)]` accepts a join without params; a binary join payload reaches the
/// deserializer as `null`.
///
/// # Examples
///
/// ```
/// use presence_poem::{Channel, ChannelContext, HandleIn, Join, Payload};
/// use serde_json::{Value, json};
///
/// struct Room;
///
/// impl Channel for Room {
///     async fn join(&mut self, topic: &str, params: Value, ctx: &mut ChannelContext) -> Join {
///         if params["token"] == "secret" {
///             ctx.push("welcome", json!({"topic": topic}));
///             Join::ok()
///         } else {
///             Join::error(json!({"reason": "unauthorized"}))
///         }
///     }
///
///     async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelContext) -> HandleIn {
///         match (event, payload) {
///             ("shout", Payload::Json(body)) => {
///                 let _ = ctx.broadcast("shout", body);
///                 HandleIn::NoReply
///             }
///             ("ping", payload) => HandleIn::ok(payload),
///             _ => HandleIn::error(json!({"reason": "unknown event"})),
///         }
///     }
/// }
/// ```
///
/// With typed join params; the socket infers `Params` from the channel's one `Channel` impl:
///
/// ```
/// use presence_poem::{Channel, ChannelContext, Join, PhoenixSocket};
/// use serde::Deserialize;
/// use serde_json::json;
///
/// #[derive(Deserialize)]
/// struct JoinParams {
///     #[serde(default)]
///     status: Option<String>,
/// }
///
/// struct Room;
///
/// impl Channel<JoinParams> for Room {
///     async fn join(&mut self, _: &str, params: JoinParams, ctx: &mut ChannelContext) -> Join {
///         let status = params.status.unwrap_or_else(|| "online".to_owned());
///         Join::ok_with(json!({"status": status}))
///     }
/// }
///
/// let socket = PhoenixSocket::builder(presence_core::PubSub::new("node-a"))
///     .channel("room:*", || Room)
///     .build();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Phoenix channel",
    note = "implement `presence_poem::Channel` for `{Self}`: at least `async fn join(&mut self, topic: &str, params: serde_json::Value, ctx: &mut ChannelContext) -> Join` (or `impl Channel<MyParams>` with `params: MyParams`)"
)]
pub trait Channel<Params = Value>: Send + 'static
where
    Params: DeserializeOwned + Send + 'static,
{
    /// Called for `phx_join`, with the join's params deserialized into `Params` (see
    /// "Join params" above). [`Join::Ok`] joins (replying `ok` with its payload);
    /// [`Join::Error`] replies `error` and ends the channel.
    ///
    /// Pushes made here reach the client right after the join reply.
    fn join(
        &mut self,
        topic: &str,
        params: Params,
        ctx: &mut ChannelContext,
    ) -> impl Future<Output = Join> + Send;

    /// Called for every other event the client sends to this channel. The default replies
    /// nothing.
    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> impl Future<Output = HandleIn> + Send {
        let _ = (event, payload, ctx);
        async { HandleIn::NoReply }
    }

    /// Called for messages sent to the channel: pub/sub messages on topics it
    /// [subscribed](ChannelContext::subscribe) to, and values sent to its
    /// [`Mailbox`]. The mailbox and each subscription are taken in turn, so a busy one does
    /// not starve the others. Return `ControlFlow::Break(())` to stop the channel gracefully
    /// (`phx_close`). The default ignores the message.
    fn handle_info(
        &mut self,
        info: Info,
        ctx: &mut ChannelContext,
    ) -> impl Future<Output = ControlFlow<()>> + Send {
        let _ = (info, ctx);
        async { ControlFlow::Continue(()) }
    }

    /// Called once when the channel stops for any reason but a panic. The default does
    /// nothing.
    fn terminate(
        &mut self,
        reason: StopReason,
        ctx: &mut ChannelContext,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, ctx);
        async {}
    }
}

/// The outcome of [`Channel::join`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Join {
    /// Joined; the reply is `ok` with this response (`{}` for [`Join::ok`]).
    Ok(Payload),
    /// Refused; the reply is `error` with this response, and the channel ends.
    Error(Payload),
}

impl Join {
    /// Joined, replying `ok` with `{}`.
    pub fn ok() -> Self {
        Join::Ok(Payload::Json(json!({})))
    }

    /// Joined, replying `ok` with `response`.
    pub fn ok_with(response: impl IntoPayload) -> Self {
        Join::Ok(response.into_payload())
    }

    /// Refused, replying `error` with `response` (Phoenix apps send `{"reason": ...}`).
    pub fn error(response: impl IntoPayload) -> Self {
        Join::Error(response.into_payload())
    }
}

/// A reply to a client request: `phx_reply` with `{"status", "response"}`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// Status `ok`.
    Ok(Payload),
    /// Status `error`.
    Error(Payload),
}

impl Reply {
    /// Status `ok` with `response`.
    pub fn ok(response: impl IntoPayload) -> Self {
        Reply::Ok(response.into_payload())
    }

    /// Status `error` with `response`.
    pub fn error(response: impl IntoPayload) -> Self {
        Reply::Error(response.into_payload())
    }

    pub(crate) fn into_parts(self) -> (&'static str, Payload) {
        match self {
            Reply::Ok(p) => ("ok", p),
            Reply::Error(p) => ("error", p),
        }
    }
}

/// The outcome of [`Channel::handle_in`]. [`HandleIn::ok`] and [`HandleIn::error`] build the
/// usual replies.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HandleIn {
    /// Reply to the request.
    Reply(Reply),
    /// Do not reply (now; [`ChannelContext::reply`] can reply later).
    NoReply,
    /// Stop the channel gracefully, after an optional reply: the client gets `phx_close`.
    Stop(Option<Reply>),
}

impl HandleIn {
    /// Replies `ok` with `response`: short for `HandleIn::Reply(Reply::ok(response))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_poem::{HandleIn, Reply};
    /// use serde_json::json;
    ///
    /// assert_eq!(HandleIn::ok(json!({"n": 1})), HandleIn::Reply(Reply::ok(json!({"n": 1}))));
    /// ```
    pub fn ok(response: impl IntoPayload) -> Self {
        HandleIn::Reply(Reply::ok(response))
    }

    /// Replies `error` with `response` (Phoenix apps send `{"reason": ...}`): short for
    /// `HandleIn::Reply(Reply::error(response))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_poem::{HandleIn, Reply};
    /// use serde_json::json;
    ///
    /// let refused = HandleIn::error(json!({"reason": "unknown event"}));
    /// assert_eq!(refused, HandleIn::Reply(Reply::error(json!({"reason": "unknown event"}))));
    /// ```
    pub fn error(response: impl IntoPayload) -> Self {
        HandleIn::Reply(Reply::error(response))
    }
}

/// A reply is a [`HandleIn::Reply`], so a helper returning a [`Reply`] can end `handle_in`
/// with `.into()`.
impl From<Reply> for HandleIn {
    fn from(reply: Reply) -> Self {
        HandleIn::Reply(reply)
    }
}

/// A message for [`Channel::handle_info`].
#[non_exhaustive]
pub enum Info {
    /// A pub/sub message on a topic the channel [subscribed](ChannelContext::subscribe) to.
    Message(Arc<Message>),
    /// A value sent to the channel's [`Mailbox`]; downcast it to the type you sent.
    Custom(Box<dyn Any + Send>),
}

impl fmt::Debug for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Info::Message(m) => f.debug_tuple("Message").field(m).finish(),
            Info::Custom(_) => f.debug_tuple("Custom").finish_non_exhaustive(),
        }
    }
}

/// Why a channel stopped, for [`Channel::terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The client sent `phx_leave`.
    Left,
    /// The channel asked to stop ([`HandleIn::Stop`] or `ControlFlow::Break`).
    Stopped,
    /// The client joined the same topic again; this instance is replaced.
    DuplicateJoin,
    /// The socket closed.
    Closed,
    /// This node's fastlane hub for the topic fell behind and dropped broadcasts: the client
    /// gets `phx_error` (not `phx_close`), so phoenix.js rejoins and gets a fresh state. See
    /// the crate docs, "Fastlane".
    Lagged,
}

/// Values usable as a message payload: JSON values, raw bytes (V2 binary frames), or a
/// [`Payload`].
///
/// This trait is sealed.
pub trait IntoPayload: sealed::Sealed {
    /// Converts into a [`Payload`].
    fn into_payload(self) -> Payload;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for serde_json::Value {}
    impl Sealed for bytes::Bytes {}
    impl Sealed for presence_core::pubsub::Payload {}
}

impl IntoPayload for Value {
    fn into_payload(self) -> Payload {
        Payload::Json(self)
    }
}

impl IntoPayload for Bytes {
    fn into_payload(self) -> Payload {
        Payload::Binary(self)
    }
}

impl IntoPayload for Payload {
    fn into_payload(self) -> Payload {
        self
    }
}

/// A handle that sends values to a channel's [`Channel::handle_info`] as [`Info::Custom`].
///
/// Get it with [`ChannelContext::mailbox`]; clone it freely and move it into other tasks.
///
/// # Examples
///
/// ```
/// # use presence_poem::{Channel, ChannelContext, Info, Join};
/// # use std::ops::ControlFlow;
/// struct Ticker;
///
/// impl Channel for Ticker {
///     async fn join(&mut self, _: &str, _: serde_json::Value, ctx: &mut ChannelContext) -> Join {
///         let mailbox = ctx.mailbox();
///         let _ = mailbox.send(42_u32);
///         Join::ok()
///     }
///
///     async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext) -> ControlFlow<()> {
///         if let Info::Custom(value) = info {
///             if let Ok(n) = value.downcast::<u32>() {
///                 ctx.push("tick", serde_json::json!({"n": *n}));
///             }
///         }
///         ControlFlow::Continue(())
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub(crate) tx: mpsc::Sender<Box<dyn Any + Send>>,
}

/// Capacity of a channel's mailbox.
pub(crate) const MAILBOX_CAPACITY: usize = 64;

impl Mailbox {
    /// Sends `value` to the channel without waiting.
    ///
    /// # Errors
    ///
    /// [`MailboxError::Full`] when 64 values are already waiting; [`MailboxError::Closed`] when
    /// the channel has stopped.
    pub fn send<T: Any + Send>(&self, value: T) -> Result<(), MailboxError> {
        self.tx.try_send(Box::new(value)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MailboxError::Full,
            mpsc::error::TrySendError::Closed(_) => MailboxError::Closed,
        })
    }

    /// Whether the channel has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A value could not be sent to a [`Mailbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// The mailbox is full.
    #[error("the channel's mailbox is full")]
    Full,
    /// The channel has stopped.
    #[error("the channel has stopped")]
    Closed,
}
