//! Presence on channels: the [`PresenceMiddleware`] that hands the application's [`Registry`]
//! to the socket endpoint, [`PresenceSocket`] for [`ChannelContext`], and
//! [`ChannelContext::push_presence_state`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use poem::error::ResponseError;
use poem::http::StatusCode;
use poem::{Endpoint, FromRequest, Middleware, Request, RequestBody, Response};
use presence_core::presence::{
    PRESENCE_STATE, Presence, PresenceError, PresenceHandle, PresenceSocket,
};
use presence_core::registry::RegistryError;
use presence_core::{Owner, Registry};

use crate::ChannelContext;
use crate::context::{AfterJoin, Deferred};
use crate::hub::{Counter, PRESENCE_COUNT, count_payload};

/// A poem middleware that makes the application's [`Registry`] (its running pub/subs and
/// presences) available to the app: every request carries it as data, so
///
/// - a [`PhoenixSocket`](crate::PhoenixSocket) below it hands it to its channels
///   ([`ChannelContext::registry`]), where presence helpers find their presence, and
/// - handlers extract it with `poem::web::Data<&Registry>`, or a running presence with
///   [`PresenceData`].
///
/// It is `EndpointExt::data(registry)` under a name that says what it is for.
///
/// # Examples
///
/// ```
/// use poem::web::Data;
/// use poem::{EndpointExt, Route, get, handler};
/// use presence_core::registry::Registry;
/// use presence_core::PubSub;
/// use presence_poem::{PhoenixSocket, PresenceMiddleware};
///
/// presence_core::pubsub_server!(pub AppPubSub);
///
/// #[handler]
/// fn health(Data(registry): Data<&Registry>) -> String {
///     format!("{registry:?}")
/// }
///
/// # fn main() -> Result<(), presence_core::registry::RegistryError> {
/// let registry = Registry::new();
/// registry.insert_pubsub(&AppPubSub, PubSub::new("node-a"));
/// let socket = PhoenixSocket::builder_for(&registry, &AppPubSub)?.build();
/// let app = Route::new()
///     .nest("/socket", socket)
///     .at("/health", get(health))
///     .with(PresenceMiddleware::new(registry));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PresenceMiddleware {
    registry: Registry,
}

impl PresenceMiddleware {
    /// A middleware handing `registry` to every request (clones share the registry).
    pub fn new(registry: Registry) -> Self {
        PresenceMiddleware { registry }
    }
}

impl<E: Endpoint> Middleware<E> for PresenceMiddleware {
    type Output = PresenceEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        PresenceEndpoint {
            inner: ep,
            registry: self.registry.clone(),
        }
    }
}

/// The endpoint [`PresenceMiddleware`] wraps around another.
#[derive(Debug)]
pub struct PresenceEndpoint<E> {
    inner: E,
    registry: Registry,
}

impl<E: Endpoint> Endpoint for PresenceEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        req.extensions_mut().insert(self.registry.clone());
        self.inner.call(req).await
    }
}

/// A poem extractor for the running presence `P`, taken from the [`Registry`] that
/// [`PresenceMiddleware`] puts on every request, so a handler reading presences needs no
/// fallible lookup of its own. It derefs to the [`PresenceHandle`].
///
/// It does the lookup of [`PresenceHandle::from_registry`] once per request; a handler that
/// needs a presence on every call should take it this way rather than through
/// `Data<&Registry>`.
///
/// # Errors
///
/// Extraction fails with HTTP 500 (an empty body) and logs an error naming the fix when
/// the request carries no registry (the route is not wrapped in a [`PresenceMiddleware`])
/// or `P` is not running in it (start the presence and insert it in the registry first).
///
/// # Examples
///
/// ```
/// use poem::web::Path;
/// use poem::{EndpointExt, Route, get, handler};
/// use presence_core::presence::{Presence, PresenceHandle, PresenceOptions};
/// use presence_core::registry::Registry;
/// use presence_core::PubSub;
/// use presence_poem::{PresenceData, PresenceMiddleware};
///
/// presence_core::pubsub_server!(pub AppPubSub);
///
/// #[derive(Presence)]
/// #[presence(pubsub = AppPubSub)]
/// struct RoomPresence;
///
/// /// `GET /rooms/lobby/count`: how many users are in `room:lobby`.
/// #[handler]
/// fn count(PresenceData(rooms): PresenceData<RoomPresence>, Path(room): Path<String>) -> String {
///     rooms.count(&format!("room:{room}")).keys.to_string()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::new();
/// registry.insert_pubsub(&AppPubSub, PubSub::new("node-a"));
/// let rooms = PresenceHandle::start(RoomPresence, registry.pubsub(&AppPubSub)?, &PresenceOptions::new())?;
/// registry.insert(rooms);
/// let app = Route::new()
///     .at("/rooms/:room/count", get(count))
///     .with(PresenceMiddleware::new(registry));
/// # Ok(())
/// # }
/// ```
pub struct PresenceData<P: Presence>(pub PresenceHandle<P>);

impl<P: Presence> fmt::Debug for PresenceData<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PresenceData").field(&self.0).finish()
    }
}

impl<P: Presence> Clone for PresenceData<P> {
    fn clone(&self) -> Self {
        PresenceData(self.0.clone())
    }
}

impl<P: Presence> Deref for PresenceData<P> {
    type Target = PresenceHandle<P>;

    fn deref(&self) -> &PresenceHandle<P> {
        &self.0
    }
}

impl<'a, P: Presence> FromRequest<'a> for PresenceData<P> {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        let extracted = match req.data::<Registry>() {
            None => Err(PresenceUnavailable {
                presence: std::any::type_name::<P>(),
                why: "no registry in the request: wrap the routes in \
                      `presence_poem::PresenceMiddleware::new(registry)`"
                    .into(),
            }),
            Some(registry) => {
                PresenceHandle::<P>::from_registry(registry).map_err(|error| PresenceUnavailable {
                    presence: std::any::type_name::<P>(),
                    why: error.to_string().into(),
                })
            }
        };
        match extracted {
            Ok(handle) => Ok(PresenceData(handle)),
            Err(error) => {
                tracing::error!(path = req.uri().path(), %error, "cannot serve the request");
                Err(error.into())
            }
        }
    }
}

/// Why a [`PresenceData`] could not be extracted: a server misconfiguration, answered HTTP
/// 500 without details (they are logged).
#[derive(Debug, thiserror::Error)]
#[error("`PresenceData<{presence}>` is unavailable: {why}")]
struct PresenceUnavailable {
    presence: &'static str,
    why: Cow<'static, str>,
}

impl ResponseError for PresenceUnavailable {
    fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn as_response(&self) -> Response {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .finish()
    }
}

/// A channel is a presence socket: it tracks with its own [`Owner`] on its own topic, so its
/// presences leave when it leaves, crashes, or its socket closes.
impl PresenceSocket for ChannelContext {
    fn registry(&self) -> &Registry {
        ChannelContext::registry(self)
    }

    fn owner(&self) -> &Owner {
        ChannelContext::owner(self)
    }

    fn topic(&self) -> &str {
        ChannelContext::topic(self)
    }
}

impl ChannelContext {
    /// Pushes `presence_state` to this client: the presences of this channel's topic in the
    /// presence `P`, listed (and fetched) from the registry, with this channel's join_ref, as
    /// Phoenix apps do in `handle_info(:after_join, ...)`.
    ///
    /// Called in [`Channel::join`](crate::Channel::join), the state is listed and pushed right
    /// after the join reply, once the channel receives its topic's broadcasts, so no
    /// `presence_diff` can fall between the listing and the subscription (one arriving before
    /// the state is queued by phoenix.js until the state arrives). Called elsewhere, it lists
    /// and pushes at once.
    ///
    /// # Errors
    ///
    /// Checked at once, even in `join`, as [`PresenceError::Registry`] with:
    ///
    /// - [`RegistryError::NoRegistry`] when no registry reached the socket (the routes are not
    ///   wrapped in a [`PresenceMiddleware`]);
    /// - [`RegistryError::PresenceNotRunning`] when `P` is not running in
    ///   [`registry`](Self::registry);
    /// - [`RegistryError::PubSubMismatch`] when the socket was built on another pub/sub than
    ///   `P` broadcasts on, so `presence_diff` would never reach it (build it with
    ///   [`PhoenixSocket::builder_for`](crate::PhoenixSocket::builder_for)).
    ///
    /// A state that does not serialize is logged and not pushed.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::presence::{Presence, PresenceError};
    /// use presence_poem::{Channel, ChannelContext, Join};
    /// # presence_core::pubsub_server!(AppPubSub);
    ///
    /// #[derive(Presence)]
    /// #[presence(pubsub = AppPubSub)]
    /// struct RoomPresence;
    ///
    /// struct Room;
    ///
    /// impl Channel for Room {
    ///     async fn join(&mut self, _: &str, params: serde_json::Value, ctx: &mut ChannelContext) -> Join {
    ///         let user = params["user"].as_str().unwrap_or("anonymous").to_owned();
    ///         match track_and_list(ctx, &user).await {
    ///             Ok(()) => Join::ok(),
    ///             Err(e) => Join::error(serde_json::json!({"reason": e.to_string()})),
    ///         }
    ///     }
    /// }
    ///
    /// async fn track_and_list(ctx: &mut ChannelContext, user: &str) -> Result<(), PresenceError> {
    ///     RoomPresence::track(ctx, user, &serde_json::json!({"online_at": 0}))?;
    ///     ctx.push_presence_state::<RoomPresence>().await
    /// }
    /// ```
    pub async fn push_presence_state<P: Presence>(&mut self) -> Result<(), PresenceError> {
        let handle = self.presence_handle::<P>()?;
        match &mut self.deferred {
            Some(deferred) => deferred.push(Deferred::Run(after_join_state(handle))),
            None => self.push_state_of(&handle).await,
        }
        Ok(())
    }

    /// Like [`push_presence_state`](Self::push_presence_state), for rooms that may be too
    /// big to list to every client: when the topic has more than `above` keys at the time of
    /// the join, this channel gets counts instead of lists.
    ///
    /// A count-only channel receives the event `presence_count` with `{"keys": k, "metas": m}`
    /// (distinct keys and presences, cluster-wide) right after its join reply, then once more
    /// after each `presence_diff` of the topic, in place of the diff; diffs merge within the
    /// presence's diff window, so counts go out at most once per window. A channel below the
    /// threshold gets the state and the diffs as with `push_presence_state`, for as long as it
    /// stays joined (the mode is chosen at the join; a rejoin chooses again).
    ///
    /// Use it for audiences (live streams, webinars, big lobbies) whose clients show "12,345
    /// watching" but never the list: a client of a room of N members that lists costs the
    /// server O(N) per join and O(changes) per diff to every member; one that counts costs
    /// O(1). phoenix.js's `Presence` does not know `presence_count`: listen to it with
    /// `channel.on("presence_count", ...)`.
    ///
    /// # Errors
    ///
    /// As [`push_presence_state`](Self::push_presence_state).
    ///
    /// # Examples
    ///
    /// ```
    /// # use presence_core::presence::Presence;
    /// # use presence_poem::{Channel, ChannelContext, Join};
    /// # presence_core::pubsub_server!(AppPubSub);
    /// # #[derive(Presence)]
    /// # #[presence(pubsub = AppPubSub)]
    /// # struct Audience;
    /// struct Stream;
    ///
    /// impl Channel for Stream {
    ///     async fn join(&mut self, _: &str, _: serde_json::Value, ctx: &mut ChannelContext) -> Join {
    ///         // Lists up to 500 viewers; counts beyond.
    ///         match ctx.push_presence_count::<Audience>(500).await {
    ///             Ok(()) => Join::ok(),
    ///             Err(e) => Join::error(serde_json::json!({"reason": e.to_string()})),
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn push_presence_count<P: Presence>(
        &mut self,
        above: usize,
    ) -> Result<(), PresenceError> {
        let handle = self.presence_handle::<P>()?;
        match &mut self.deferred {
            Some(deferred) => deferred.push(Deferred::Run(after_join_count(handle, above))),
            None => self.push_count_or_state(&handle, above).await,
        }
        Ok(())
    }

    /// The running presence `P`, checked to broadcast on this socket's pub/sub (or its diffs
    /// would never reach the socket).
    fn presence_handle<P: Presence>(&self) -> Result<PresenceHandle<P>, RegistryError> {
        let handle = PresenceHandle::<P>::from_registry(self.reached_registry()?)?;
        if !handle.pubsub().ptr_eq(self.pubsub()) {
            return Err(RegistryError::PubSubMismatch {
                presence: P::NAME,
                presence_pubsub: handle.pubsub().node_name().to_owned(),
                socket_pubsub: self.pubsub().node_name().to_owned(),
            });
        }
        Ok(handle)
    }

    async fn push_count_or_state<P: Presence>(&mut self, handle: &PresenceHandle<P>, above: usize) {
        let count = handle.count(self.topic());
        if count.keys <= above {
            return self.push_state_of(handle).await;
        }
        let counter: Counter = {
            let (handle, topic) = (handle.clone(), self.topic_arc());
            Arc::new(move || handle.count(&topic))
        };
        self.counts_only(counter);
        self.push(PRESENCE_COUNT, count_payload(count));
    }

    /// Pushes the topic's state, listed once for every joiner of the same batch (see
    /// [`PresenceHandle::state_json`]) and shared by their frames until written.
    async fn push_state_of<P: Presence>(&mut self, handle: &PresenceHandle<P>) {
        let state = handle.state_json(self.topic()).await;
        self.push_shared_json(PRESENCE_STATE, &state);
    }
}

fn after_join_state<P: Presence>(handle: PresenceHandle<P>) -> AfterJoin {
    Box::new(
        move |ctx: &mut ChannelContext| -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move { ctx.push_state_of(&handle).await })
        },
    )
}

fn after_join_count<P: Presence>(handle: PresenceHandle<P>, above: usize) -> AfterJoin {
    Box::new(
        move |ctx: &mut ChannelContext| -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move { ctx.push_count_or_state(&handle, above).await })
        },
    )
}
