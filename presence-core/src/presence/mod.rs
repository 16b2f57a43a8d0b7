//! The Presence layer, after Phoenix.Presence: presences grouped by key, enriched by an
//! optional fetch, and `presence_diff` broadcasts in tracker order.
//!
//! Most applications declare a presence with [`#[derive(Presence)]`](derive@crate::Presence),
//! which implements [`Presence`] and adds typed helpers. Underneath, a [`PresenceHandle`] runs a
//! [`Tracker`] and turns each of its diffs into a [`PresenceDiff`] per topic, broadcast to the
//! topic's local subscribers as the event `presence_diff` (every node broadcasts its own diffs to
//! its own subscribers).
//!
//! # Fetch and ordering
//!
//! When a presence implements [`Fetch`], each diff is fetched with one call (all its keys,
//! joins and leaves together) in its own task, so fetches of consecutive diffs overlap; the diffs are still broadcast strictly in tracker order. A fetch
//! that fails or panics is logged and its diff goes out unenriched. Diffs wait in an unbounded
//! queue while earlier fetches run: dropping one would desynchronise clients, and blocking
//! would stall the tracker, so a fetch slower than the rate of changes grows the queue (a
//! warning is logged past 10 000 waiting diffs). Use [`PresenceHandle::settled`] in tests to
//! wait for every in-flight fetch.
//!
//! # Big rooms
//!
//! A topic with thousands of members makes every change a message to thousands of sockets.
//! The layer helps in four ways:
//!
//! - **Merged diffs.** Each diff is marked with the presence's
//!   [`diff_window`](PresenceOptions::diff_window) (50 ms by default, zero to turn it off).
//!   A fan-out (presence-poem's topic hubs) sends the first diff after a quiet period at once
//!   and merges those that follow within the window into one, which phoenix.js applies
//!   exactly like the originals in order ([`merge_diff`]). Every node merges the diffs of its
//!   own sockets, local and remote alike.
//! - **Shared states.** [`PresenceHandle::state_json`] lists a topic once for all the joiners
//!   of one window.
//! - **Counts.** [`PresenceHandle::count`] says how many keys and presences a topic has,
//!   cluster-wide, in O(1) while no peer is down.
//! - **Key-level events.** [`PresenceHandle::key_events`] tells server code when a key (a
//!   user) comes online, goes offline or is updated, once per key whatever its devices and
//!   nodes, in tracker order; an unread subscriber's events merge per key.
//!
//! # Examples
//!
//! Without the macro, implementing [`Presence`] by hand:
//!
//! ```
//! use presence_core::presence::{InitError, Presence, PresenceContext, PresenceHandle, PresenceOptions};
//! use presence_core::registry::{Registry, RegistryError};
//! use presence_core::{Owner, PubSub};
//!
//! presence_core::pubsub_server!(pub AppPubSub);
//!
//! struct RoomPresence;
//!
//! impl Presence for RoomPresence {
//!     type Meta = serde_json::Map<String, serde_json::Value>;
//!     type Extra = ();
//!     type State = ();
//!     const NAME: &'static str = "RoomPresence";
//!     fn pubsub(registry: &Registry) -> Result<PubSub, RegistryError> {
//!         registry.pubsub(&AppPubSub)
//!     }
//!     fn run_init(&self, _: &PresenceContext) -> Result<(), InitError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let presence = PresenceHandle::start(RoomPresence, PubSub::new("a"), &PresenceOptions::default())?;
//! let owner = Owner::new();
//! let mut meta = serde_json::Map::new();
//! meta.insert("device".into(), "phone".into());
//! presence.track(&owner, "room:1", "alice", &meta)?;
//! let list = presence.list("room:1").await;
//! let alice = list["alice"].metas()?;
//! assert_eq!(alice[0].meta.get("device"), Some(&serde_json::json!("phone")));
//! # Ok(())
//! # }
//! ```
//!
#![doc = include_str!("../docs/presence_examples.md")]

mod batch;
mod coalesce;
mod entry;
mod keys;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

/// `#[derive(Presence)]`: the trait and its derive share the name, as serde's do.
#[cfg(feature = "macros")]
pub use presence_macros::Presence;

pub use coalesce::{NotADiff, merge_diff};
pub use entry::{PresenceDiff, PresenceEntry, PresenceMap, TopicMetas, TypedMeta};
pub use keys::{KeyChange, KeyEvent, KeyEvents};

use crate::pubsub::Message;
use crate::registry::{Registry, RegistryError};
use crate::tracker::{ConfigError, Diff, PresenceCount, TrackError, UpdateError};
use crate::{Meta, Owner, PhxRef, PubSub, Tracker, TrackerConfig};

/// The event name of diff broadcasts.
pub const PRESENCE_DIFF: &str = "presence_diff";
/// The event name of the state pushed after a join.
pub const PRESENCE_STATE: &str = "presence_state";

/// Past this many diffs waiting for earlier fetches, a warning is logged.
const QUEUE_WARNING: usize = 10_000;

/// A presence helper failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The presence (or its pub/sub) is not running in the registry used.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Tracking failed.
    #[error(transparent)]
    Track(#[from] TrackError),
    /// Updating failed.
    #[error(transparent)]
    Update(#[from] UpdateError),
}

/// The error a [`Fetch`] returns; it is logged and the presences go out unenriched.
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

/// The error [`HandleMetas::init`] returns: the presence does not start.
pub type InitError = Box<dyn std::error::Error + Send + Sync>;

/// Starting a presence failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Invalid tracker options, or no tokio runtime.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The presence's pub/sub is not running in the registry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// [`HandleMetas::init`] failed (or panicked).
    #[error("presence `{presence}`: init failed: {source}")]
    Init {
        /// The presence's name.
        presence: &'static str,
        /// Why.
        #[source]
        source: InitError,
    },
}

/// What the hooks ([`Fetch::fetch`], [`HandleMetas::init`], [`HandleMetas::handle_metas`])
/// get to reach the application: its registry (the running pub/subs and presences) and the
/// pub/sub the presence broadcasts on. Phoenix's hooks reach these through module names; a
/// Rust hook gets them here.
///
/// A presence started by a [`Supervisor`](crate::supervisor::Supervisor) gets the
/// supervisor's registry, which holds, by the time a hook runs, every child started before
/// the presence and the presence itself.
#[derive(Debug, Clone)]
pub struct PresenceContext {
    registry: Registry,
    pubsub: PubSub,
}

impl PresenceContext {
    /// The application's registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The pub/sub the presence broadcasts on (e.g. for
    /// [`PubSub::local_broadcast`](crate::PubSub::local_broadcast) from `handle_metas`).
    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        self.pubsub.node_name()
    }
}

/// A presence: what `#[derive(Presence)]` implements for a struct.
///
/// Implement it by hand only without the derive; the hooks are then the `run_*` methods. With
/// the derive, implement [`Fetch`] and [`HandleMetas`] instead and name them in
/// `#[presence(...)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a presence",
    note = "add `#[derive(presence_core::Presence)]` and `#[presence(pubsub = ...)]` to the struct"
)]
pub trait Presence: Send + Sync + Sized + 'static {
    /// The metadata users track: a serde type that serializes to a JSON object (a struct with
    /// named fields or a map); a JSON value that must be an object by default.
    type Meta: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What [`run_fetch`](Self::run_fetch) adds to each entry, serialized beside `metas`; `()`
    /// when there is no fetch.
    type Extra: Serialize + Clone + Send + Sync + 'static;
    /// The state [`run_handle_metas`](Self::run_handle_metas) threads through; `()` when unused.
    type State: Send + 'static;

    /// The tracker name: presences of the same name replicate across nodes.
    const NAME: &'static str;
    /// Whether [`run_fetch`](Self::run_fetch) is more than a pass-through.
    const FETCHES: bool = false;
    /// Whether [`run_handle_metas`](Self::run_handle_metas) is more than a pass-through.
    const HANDLES_METAS: bool = false;

    /// The running pub/sub this presence broadcasts on.
    ///
    /// # Errors
    ///
    /// [`RegistryError::PubSubNotRunning`] when it was not started.
    fn pubsub(registry: &Registry) -> Result<PubSub, RegistryError>;

    /// The tracker options the declaration sets; child-spec options are merged over them.
    fn options() -> PresenceOptions {
        PresenceOptions::default()
    }

    /// Enriches presences before they are listed or broadcast ([`Fetch::fetch`] with the
    /// derive). Passes them through by default.
    fn run_fetch(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        presences: PresenceMap<Self>,
    ) -> impl Future<Output = Result<PresenceMap<Self>, FetchError>> + Send {
        let _ = (ctx, topic);
        async move { Ok(presences) }
    }

    /// The initial state of [`run_handle_metas`](Self::run_handle_metas), made when the
    /// presence starts ([`HandleMetas::init`] with the derive).
    ///
    /// # Errors
    ///
    /// Any error: the presence does not start, and [`PresenceHandle::start`] returns it.
    fn run_init(&self, ctx: &PresenceContext) -> Result<Self::State, InitError>;

    /// Called after each diff of a topic is broadcast, in order, with the topic's metas as
    /// this node has seen them; returns the new state ([`HandleMetas::handle_metas`] with the
    /// derive).
    fn run_handle_metas(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        diff: &PresenceDiff<Self>,
        presences: &TopicMetas,
        state: Self::State,
    ) -> impl Future<Output = Self::State> + Send {
        let _ = (ctx, topic, diff, presences);
        async move { state }
    }
}

/// Enriches presences, e.g. with user records loaded in one query for all keys: Phoenix's
/// `fetch/2`. Name it in the attribute, `#[presence(pubsub = AppPubSub, fetch)]`; forgetting
/// either half is a compile error.
///
/// # Examples
///
/// ```
/// use presence_core::presence::{Fetch, FetchError, PresenceContext, PresenceMap};
/// use presence_core::{Presence, pubsub_server};
/// use serde::Serialize;
///
/// pubsub_server!(pub AppPubSub);
///
/// #[derive(Clone, Serialize)]
/// struct UserInfo { name: String }
///
/// #[derive(Presence)]
/// #[presence(pubsub = AppPubSub, fetch)]
/// struct RoomPresence;
///
/// impl Fetch for RoomPresence {
///     type Extra = UserInfo;
///
///     async fn fetch(&self, _ctx: &PresenceContext, _topic: &str, mut presences: PresenceMap<Self>)
///         -> Result<PresenceMap<Self>, FetchError>
///     {
///         // One query for every key, then attach each user.
///         for (key, entry) in presences.iter_mut() {
///             entry.extra = Some(UserInfo { name: key.to_uppercase() });
///         }
///         Ok(presences)
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `Fetch`, but `#[presence(...)]` names `fetch`",
    label = "`fetch` here needs `impl Fetch for {Self}`",
    note = "add `impl presence_core::presence::Fetch for {Self}`, or remove `fetch` from `#[presence(...)]`"
)]
pub trait Fetch: Presence {
    /// What is added to each entry; its fields are serialized beside `metas`.
    type Extra: Serialize + Clone + Send + Sync + 'static;

    /// Fills `extra` of the entries of `topic`.
    ///
    /// # Errors
    ///
    /// Any error: it is logged and the presences go out unenriched.
    fn fetch(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        presences: PresenceMap<Self>,
    ) -> impl Future<Output = Result<PresenceMap<Self>, FetchError>> + Send;
}

/// Sees every diff after it is broadcast, with the topic's current metas, threading a state
/// made by `init`: Phoenix's `init/1` and `handle_metas/4` in one trait, so neither can be
/// forgotten. Name it in the attribute, `#[presence(pubsub = AppPubSub, handle_metas)]`;
/// forgetting either half is a compile error.
///
/// Diffs are handled one at a time, in tracker order, on every node for its own view. A
/// panic in `handle_metas` is logged and the state starts over from `init`. `presences` is
/// the topic as this diff left it; a live read from the hook (the presence's `count` or
/// `list`) may already include changes whose diffs come later.
///
/// # Examples
///
/// ```
/// use presence_core::presence::{HandleMetas, InitError, PresenceContext, PresenceDiff, TopicMetas};
/// use presence_core::{Presence, pubsub_server};
///
/// pubsub_server!(pub AppPubSub);
///
/// #[derive(Presence)]
/// #[presence(pubsub = AppPubSub, handle_metas)]
/// struct RoomPresence;
///
/// impl HandleMetas for RoomPresence {
///     /// How many diffs this node has seen.
///     type State = u64;
///
///     fn init(&self, _ctx: &PresenceContext) -> Result<u64, InitError> {
///         Ok(0)
///     }
///
///     async fn handle_metas(&self, _ctx: &PresenceContext, topic: &str, _diff: &PresenceDiff<Self>,
///         presences: &TopicMetas, seen: u64) -> u64
///     {
///         tracing::debug!(topic, users = presences.len(), "presence changed");
///         seen + 1
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `HandleMetas`, but `#[presence(...)]` names `handle_metas`",
    label = "`handle_metas` here needs `impl HandleMetas for {Self}`",
    note = "add `impl presence_core::presence::HandleMetas for {Self}` (with `init` and `handle_metas`), or remove `handle_metas` from `#[presence(...)]`"
)]
pub trait HandleMetas: Presence {
    /// The state threaded through the calls.
    type State: Send + 'static;

    /// The initial state, made when the presence starts (and again after a panic in
    /// `handle_metas`).
    ///
    /// # Errors
    ///
    /// Any error: the presence does not start, and its supervisor (or
    /// [`PresenceHandle::start`]) reports it.
    fn init(&self, ctx: &PresenceContext) -> Result<<Self as HandleMetas>::State, InitError>;

    /// Called after each diff of `topic` is broadcast, with the topic's metas as this node has
    /// seen them; returns the new state.
    fn handle_metas(
        &self,
        ctx: &PresenceContext,
        topic: &str,
        diff: &PresenceDiff<Self>,
        presences: &TopicMetas,
        state: <Self as HandleMetas>::State,
    ) -> impl Future<Output = <Self as HandleMetas>::State> + Send;
}

/// Tracker options for a presence. Unset fields take the value beneath: child-spec options
/// are merged over the attribute's, which are merged over [`TrackerConfig::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceOptions {
    /// See [`TrackerConfig::pool_size`].
    pub pool_size: Option<usize>,
    /// See [`TrackerConfig::broadcast_period`].
    pub broadcast_period: Option<Duration>,
    /// See [`TrackerConfig::max_silent_periods`].
    pub max_silent_periods: Option<u32>,
    /// See [`TrackerConfig::down_period`].
    pub down_period: Option<Duration>,
    /// See [`TrackerConfig::permdown_period`].
    pub permdown_period: Option<Duration>,
    /// See [`TrackerConfig::clock_sample_periods`].
    pub clock_sample_periods: Option<u32>,
    /// See [`TrackerConfig::max_delta_sizes`].
    pub max_delta_sizes: Option<Vec<usize>>,
    /// How long a topic's `presence_diff`s may be held back and merged into one, after a diff
    /// of that topic went out; and how long joiners of a topic may wait to share one
    /// `presence_state` listing. Default [`DEFAULT_DIFF_WINDOW`]; zero turns both off. See
    /// the [module docs](self), "Big rooms".
    pub diff_window: Option<Duration>,
    /// How many of the largest topics to export as the gauge `presence_topic_presences`,
    /// labelled by topic, every [`TOPIC_METRICS_PERIOD`]. Default 0 (none): each topic
    /// exported is a time series of its own in the metrics backend.
    pub topic_metrics: Option<usize>,
}

/// How often the largest topics' gauges are refreshed (see [`PresenceOptions::topic_metrics`]).
pub const TOPIC_METRICS_PERIOD: Duration = Duration::from_secs(10);

/// The default [`PresenceOptions::diff_window`].
pub const DEFAULT_DIFF_WINDOW: Duration = Duration::from_millis(50);

impl PresenceOptions {
    /// No option set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `pool_size`.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = Some(n);
        self
    }

    /// Sets `broadcast_period`.
    pub fn broadcast_period(mut self, d: Duration) -> Self {
        self.broadcast_period = Some(d);
        self
    }

    /// Sets `max_silent_periods`.
    pub fn max_silent_periods(mut self, n: u32) -> Self {
        self.max_silent_periods = Some(n);
        self
    }

    /// Sets `down_period`.
    pub fn down_period(mut self, d: Duration) -> Self {
        self.down_period = Some(d);
        self
    }

    /// Sets `permdown_period`.
    pub fn permdown_period(mut self, d: Duration) -> Self {
        self.permdown_period = Some(d);
        self
    }

    /// Sets `clock_sample_periods`.
    pub fn clock_sample_periods(mut self, n: u32) -> Self {
        self.clock_sample_periods = Some(n);
        self
    }

    /// Sets `max_delta_sizes`.
    pub fn max_delta_sizes(mut self, sizes: Vec<usize>) -> Self {
        self.max_delta_sizes = Some(sizes);
        self
    }

    /// Sets `diff_window` (zero turns merging off).
    pub fn diff_window(mut self, window: Duration) -> Self {
        self.diff_window = Some(window);
        self
    }

    /// Exports the `n` largest topics' presences as the gauge `presence_topic_presences`
    /// (labels `presence` and `topic`), refreshed every [`TOPIC_METRICS_PERIOD`]; a topic
    /// that drops out of the `n` is set to 0 once. Needs a recorder installed (see
    /// OBSERVABILITY.md); [`Tracker::largest_topics`] gives the same list on demand.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::presence::PresenceOptions;
    /// let options = PresenceOptions::new().topic_metrics(10);
    /// assert_eq!(options.topic_metrics, Some(10));
    /// ```
    pub fn topic_metrics(mut self, n: usize) -> Self {
        self.topic_metrics = Some(n);
        self
    }

    /// The diff window these options give: `diff_window`, or [`DEFAULT_DIFF_WINDOW`].
    pub fn effective_diff_window(&self) -> Duration {
        self.diff_window.unwrap_or(DEFAULT_DIFF_WINDOW)
    }

    /// These options, with the unset ones taken from `base`.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::presence::PresenceOptions;
    /// let attribute = PresenceOptions::new().pool_size(2).max_silent_periods(5);
    /// let child = PresenceOptions::new().pool_size(8);
    /// let merged = child.merged_over(&attribute);
    /// assert_eq!((merged.pool_size, merged.max_silent_periods), (Some(8), Some(5)));
    /// ```
    pub fn merged_over(&self, base: &PresenceOptions) -> PresenceOptions {
        PresenceOptions {
            pool_size: self.pool_size.or(base.pool_size),
            broadcast_period: self.broadcast_period.or(base.broadcast_period),
            max_silent_periods: self.max_silent_periods.or(base.max_silent_periods),
            down_period: self.down_period.or(base.down_period),
            permdown_period: self.permdown_period.or(base.permdown_period),
            clock_sample_periods: self.clock_sample_periods.or(base.clock_sample_periods),
            max_delta_sizes: self
                .max_delta_sizes
                .clone()
                .or_else(|| base.max_delta_sizes.clone()),
            diff_window: self.diff_window.or(base.diff_window),
            topic_metrics: self.topic_metrics.or(base.topic_metrics),
        }
    }

    /// The tracker configuration: these options over the defaults.
    pub fn tracker_config(&self) -> TrackerConfig {
        let d = TrackerConfig::default();
        TrackerConfig {
            pool_size: self.pool_size.unwrap_or(d.pool_size),
            broadcast_period: self.broadcast_period.unwrap_or(d.broadcast_period),
            max_silent_periods: self.max_silent_periods.unwrap_or(d.max_silent_periods),
            down_period: self.down_period.or(d.down_period),
            permdown_period: self.permdown_period.unwrap_or(d.permdown_period),
            clock_sample_periods: self.clock_sample_periods.unwrap_or(d.clock_sample_periods),
            max_delta_sizes: self.max_delta_sizes.clone().unwrap_or(d.max_delta_sizes),
        }
    }
}

/// What a channel socket offers to presence helpers: the application's registry, the
/// channel's owner and its topic. presence-poem's channel context implements it.
pub trait PresenceSocket {
    /// The application's running services.
    fn registry(&self) -> &Registry;
    /// The owner of the presences this channel tracks.
    fn owner(&self) -> &Owner;
    /// The channel's topic.
    fn topic(&self) -> &str;
}

/// A running presence. Clones share it; the last one dropped stops it.
///
/// See the [module docs](self).
pub struct PresenceHandle<P: Presence> {
    shared: Arc<Shared<P>>,
    tracker: Tracker,
}

impl<P: Presence> Clone for PresenceHandle<P> {
    fn clone(&self) -> Self {
        PresenceHandle {
            shared: self.shared.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

impl<P: Presence> fmt::Debug for PresenceHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceHandle")
            .field("name", &P::NAME)
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

struct Shared<P: Presence> {
    presence: Arc<P>,
    ctx: PresenceContext,
    runtime: tokio::runtime::Handle,
    queue: mpsc::UnboundedSender<Pending<P>>,
    in_flight: AtomicUsize,
    settled: Notify,
    broadcaster: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task that refreshes the largest topics' gauges, if they are exported.
    topic_gauges: Mutex<Option<tokio::task::JoinHandle<()>>>,
    diff_window: Duration,
    states: batch::StateBatches,
    keys: keys::KeySubscribers,
    metrics: crate::metrics::PresenceMetrics,
}

impl<P: Presence> Drop for Shared<P> {
    fn drop(&mut self) {
        for task in [&mut self.broadcaster, &mut self.topic_gauges] {
            if let Some(task) = task
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                task.abort();
            }
        }
        self.keys.close();
    }
}

/// A diff waiting to be broadcast, with its fetch if one runs.
struct Pending<P: Presence> {
    topic: Arc<str>,
    plain: PresenceDiff<P>,
    fetch: Option<AbortOnDrop<Result<PresenceDiff<P>, FetchError>>>,
}

/// A task handle that aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds tracker diffs into the ordered broadcast queue.
struct Feeder<P: Presence> {
    shared: std::sync::Weak<Shared<P>>,
}

impl<P: Presence> crate::tracker::DiffHandler for Feeder<P> {
    fn handle_diff(&self, diff: Diff) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for (topic, changes) in diff.into_topics() {
            shared.keys.publish(&topic, &changes.keys);
            let (joins, leaves) = (changes.joins.len(), changes.leaves.len());
            shared
                .metrics
                .presences
                .increment(joins as f64 - leaves as f64);
            let plain = PresenceDiff {
                joins: entry::group(changes.joins),
                leaves: entry::group(changes.leaves),
            };
            let fetch = P::FETCHES.then(|| {
                let presence = shared.presence.clone();
                let ctx = shared.ctx.clone();
                let (topic, diff) = (topic.clone(), plain.clone());
                let took = shared.metrics.fetch_duration.clone();
                AbortOnDrop(shared.runtime.spawn(async move {
                    let span = fetch_span(P::NAME, &topic);
                    let started = std::time::Instant::now();
                    let fetched = fetch_diff(&*presence, &ctx, &topic, diff)
                        .instrument(span)
                        .await;
                    took.record(started.elapsed().as_secs_f64());
                    fetched
                }))
            });
            let waiting = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            if waiting == QUEUE_WARNING {
                tracing::warn!(
                    presence = P::NAME,
                    waiting,
                    "presence diffs are queueing behind slow fetches"
                );
            }
            if shared
                .queue
                .send(Pending {
                    topic,
                    plain,
                    fetch,
                })
                .is_err()
            {
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl<P: Presence> PresenceHandle<P> {
    /// Starts `presence` over `pubsub`, with `options` merged over [`Presence::options`].
    ///
    /// The hooks get an empty registry in their [`PresenceContext`]; start the presence with
    /// [`start_in`](Self::start_in) (a supervisor does) for hooks that reach the application.
    ///
    /// # Errors
    ///
    /// [`StartError::Config`] for invalid tracker options or outside a tokio runtime;
    /// [`StartError::Init`] when the presence's `init` fails.
    pub fn start(
        presence: P,
        pubsub: PubSub,
        options: &PresenceOptions,
    ) -> Result<Self, StartError> {
        let ctx = PresenceContext {
            registry: Registry::new(),
            pubsub,
        };
        Self::start_with(Arc::new(presence), ctx, options)
    }

    /// Starts `presence` over its pub/sub in `registry`, with `options` merged over
    /// [`Presence::options`]; the hooks get `registry` in their [`PresenceContext`]. The
    /// handle is not put in the registry: the caller does that (a supervisor's child spec
    /// does, and takes it out when it stops).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), and [`StartError::Registry`] when the presence's pub/sub is
    /// not running in `registry`.
    pub fn start_in(
        registry: &Registry,
        presence: Arc<P>,
        options: &PresenceOptions,
    ) -> Result<Self, StartError> {
        let ctx = PresenceContext {
            registry: registry.clone(),
            pubsub: P::pubsub(registry)?,
        };
        Self::start_with(presence, ctx, options)
    }

    fn start_with(
        presence: Arc<P>,
        ctx: PresenceContext,
        options: &PresenceOptions,
    ) -> Result<Self, StartError> {
        let options = options.merged_over(&P::options());
        let config = options.tracker_config();
        config.validate()?;
        let diff_window = options.effective_diff_window();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let state = if P::HANDLES_METAS {
            Some(init(&*presence, &ctx).map_err(|source| StartError::Init {
                presence: P::NAME,
                source,
            })?)
        } else {
            None
        };
        let pubsub = ctx.pubsub.clone();
        let (queue, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            presence,
            ctx,
            runtime: runtime.clone(),
            queue,
            in_flight: AtomicUsize::new(0),
            settled: Notify::new(),
            broadcaster: Mutex::new(None),
            topic_gauges: Mutex::new(None),
            diff_window,
            states: batch::StateBatches::new(diff_window),
            keys: keys::KeySubscribers::default(),
            metrics: crate::metrics::PresenceMetrics::register(P::NAME),
        });
        let tracker = Tracker::builder(P::NAME, pubsub)
            .config(config)
            .on_diff(Feeder::<P> {
                shared: Arc::downgrade(&shared),
            })
            .start()?;
        let task = runtime.spawn(broadcast_loop(Arc::downgrade(&shared), rx, state));
        *shared
            .broadcaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        if let Some(n) = options.topic_metrics.filter(|&n| n > 0) {
            // Owned by the presence: aborted when its last handle goes.
            let task = runtime.spawn(crate::metrics::refresh_topic_gauges(
                P::NAME,
                tracker.clone(),
                n,
                TOPIC_METRICS_PERIOD,
            ));
            *shared
                .topic_gauges
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
        Ok(PresenceHandle { shared, tracker })
    }

    /// The running presence `P` of `registry`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::PresenceNotRunning`] when it was not started there;
    /// [`RegistryError::NoRegistry`] when `registry` is a
    /// [`not_provided`](Registry::not_provided) stand-in.
    pub fn from_registry(registry: &Registry) -> Result<Self, RegistryError> {
        registry
            .get::<Self>()
            .ok_or_else(|| registry.missing(RegistryError::PresenceNotRunning(P::NAME)))
    }

    /// The user's presence value.
    pub fn presence(&self) -> &P {
        &self.shared.presence
    }

    /// The tracker underneath.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The pub/sub it broadcasts on.
    pub fn pubsub(&self) -> &PubSub {
        &self.shared.ctx.pubsub
    }

    /// Tracks `owner` under `key` in `topic`.
    ///
    /// # Errors
    ///
    /// [`TrackError::AlreadyTracked`], [`TrackError::Stopped`], or
    /// [`TrackError::InvalidMeta`] when `meta` does not serialize to JSON.
    pub fn track(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        meta: &P::Meta,
    ) -> Result<PhxRef, TrackError> {
        let value = meta_object::<P>(meta).map_err(TrackError::InvalidMeta)?;
        self.tracker.track(owner, topic, key, value)
    }

    /// Stops tracking `owner` under `key` in `topic`; a no-op when not tracked.
    pub fn untrack(&self, owner: &Owner, topic: &str, key: &str) {
        self.tracker.untrack(owner, topic, key);
    }

    /// Stops tracking everything `owner` tracks.
    pub fn untrack_all(&self, owner: &Owner) {
        self.tracker.untrack_all(owner);
    }

    /// Replaces the meta of `owner`'s presence under `key` in `topic`.
    ///
    /// # Errors
    ///
    /// [`UpdateError::NoPresence`], [`UpdateError::Stopped`], or
    /// [`UpdateError::InvalidMeta`] when `meta` does not serialize to JSON.
    pub fn update(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        meta: &P::Meta,
    ) -> Result<PhxRef, UpdateError> {
        let value = meta_object::<P>(meta).map_err(UpdateError::InvalidMeta)?;
        self.tracker.update(owner, topic, key, value)
    }

    /// Replaces the meta of `owner`'s presence under `key` in `topic` with what `f` makes of
    /// the current one (Phoenix's `update/4` with a function).
    ///
    /// `f` runs under the lock of the topic's shard, so nothing changes the presence between
    /// reading and replacing it: keep it short, and do not call the presence from it (that
    /// deadlocks).
    ///
    /// # Errors
    ///
    /// As [`update`](Self::update), and [`UpdateError::InvalidMeta`] when the current meta
    /// does not decode into `P::Meta`; nothing changes then.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::presence::{PresenceHandle, PresenceOptions};
    /// use presence_core::{Owner, Presence, PubSub, pubsub_server};
    /// use serde::{Deserialize, Serialize};
    ///
    /// pubsub_server!(pub AppPubSub);
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Status { status: String, typing: bool }
    ///
    /// #[derive(Presence)]
    /// #[presence(pubsub = AppPubSub, meta = Status)]
    /// struct RoomPresence;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rooms = PresenceHandle::start(RoomPresence, PubSub::new("a"), &PresenceOptions::new())?;
    /// let owner = Owner::new();
    /// rooms.track(&owner, "room:1", "alice", &Status { status: "online".into(), typing: false })?;
    /// rooms.update_with(&owner, "room:1", "alice", |old| Status { typing: true, ..old })?;
    /// let alice = rooms.get_by_key("room:1", "alice").await.expect("alice is there");
    /// assert!(alice.metas()?[0].meta.typing);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update_with(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        f: impl FnOnce(P::Meta) -> P::Meta,
    ) -> Result<PhxRef, UpdateError> {
        self.tracker.try_update_with(owner, topic, key, |current| {
            let old: P::Meta = serde_json::from_value(current.to_value()).map_err(|e| {
                UpdateError::InvalidMeta(format!(
                    "the current meta does not decode into the meta type: {e}"
                ))
            })?;
            meta_object::<P>(&f(old)).map_err(UpdateError::InvalidMeta)
        })
    }

    /// The presences of `topic`, grouped by key and fetched.
    pub async fn list(&self, topic: &str) -> PresenceMap<P> {
        let grouped = entry::group(self.tracker.list(topic));
        self.fetch(topic, grouped).await
    }

    /// The entry of `key` in `topic`, fetched; `None` when nobody is there.
    pub async fn get_by_key(&self, topic: &str, key: &str) -> Option<PresenceEntry<P>> {
        let metas: Vec<Meta> = self
            .tracker
            .get_by_key(topic, key)
            .into_iter()
            .map(|(_, meta)| meta)
            .collect();
        if metas.is_empty() {
            return None;
        }
        let mut map = PresenceMap::new();
        map.insert(key.to_owned(), PresenceEntry::new(metas));
        self.fetch(topic, map).await.remove(key)
    }

    /// How many keys and presences `topic` has, cluster-wide, without listing it (see
    /// [`Tracker::count`]).
    pub fn count(&self, topic: &str) -> PresenceCount {
        self.tracker.count(topic)
    }

    /// Subscribes to the key-level events of `topic`: a key came online (its first presence
    /// joined, on any node), went offline (its last presence left), or was updated. See
    /// [`KeyEvents`] for ordering and slow readers.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::presence::{KeyChange, PresenceHandle, PresenceOptions};
    /// use presence_core::{Owner, Presence, PubSub};
    /// # presence_core::pubsub_server!(AppPubSub);
    /// # #[derive(Presence)]
    /// # #[presence(pubsub = AppPubSub)]
    /// # struct Room;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let presence = PresenceHandle::start(Room, PubSub::new("a"), &PresenceOptions::new())?;
    /// let mut events = presence.key_events("room:lobby");
    /// let (phone, laptop) = (Owner::new(), Owner::new());
    /// presence.track(&phone, "room:lobby", "alice", &serde_json::json!({}))?;
    /// let first = events.recv().await.expect("an event");
    /// assert_eq!((&*first.key, first.change), ("alice", KeyChange::Online));
    /// presence.track(&laptop, "room:lobby", "alice", &serde_json::json!({}))?;
    /// assert_eq!(events.recv().await.map(|e| e.change), Some(KeyChange::Updated));
    /// // Unread events merge per key: a second device that comes and goes is nothing.
    /// let tablet = Owner::new();
    /// presence.track(&tablet, "room:lobby", "alice", &serde_json::json!({}))?;
    /// drop(tablet);
    /// drop(laptop);
    /// assert_eq!(events.try_recv().map(|e| e.change), Some(KeyChange::Updated));
    /// drop(phone);
    /// assert_eq!(events.recv().await.map(|e| e.change), Some(KeyChange::Offline));
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_events(&self, topic: &str) -> KeyEvents {
        self.shared.keys.subscribe(Some(topic))
    }

    /// Like [`key_events`](Self::key_events), for every topic.
    pub fn all_key_events(&self) -> KeyEvents {
        self.shared.keys.subscribe(None)
    }

    /// The `presence_state` payload of `topic` (its [`list`](Self::list), fetched), as JSON
    /// text shared by the callers of one batch.
    ///
    /// Meant for a socket that is already subscribed to the topic's diffs: the listing always
    /// starts after the call, so no diff falls between it and the subscription. The first call
    /// after a quiet period lists at once; calls within the diff window after a listing wait
    /// for the window's end and share one listing, one fetch and one encoding. A thousand
    /// joiners of a big room thus cost a few listings instead of a thousand.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled call that was to list hands the listing over to the others.
    pub async fn state_json(&self, topic: &str) -> Arc<str> {
        self.shared
            .states
            .get(topic, || async {
                let state = self.list(topic).await;
                let json = serde_json::to_string(&state).unwrap_or_else(|error| {
                    tracing::error!(presence = P::NAME, topic, %error,
                        "presence state does not serialize; sending an empty state");
                    "{}".to_owned()
                });
                Arc::from(json)
            })
            .await
    }

    /// Runs the fetch in its own task, so that a panic is caught; falls back to `presences`.
    async fn fetch(&self, topic: &str, presences: PresenceMap<P>) -> PresenceMap<P> {
        if !P::FETCHES || presences.is_empty() {
            return presences;
        }
        let presence = self.shared.presence.clone();
        let ctx = self.shared.ctx.clone();
        let (t, plain) = (topic.to_owned(), presences.clone());
        let span = fetch_span(P::NAME, topic);
        let started = std::time::Instant::now();
        let mut task = AbortOnDrop(
            self.shared
                .runtime
                .spawn(async move { presence.run_fetch(&ctx, &t, plain).await }.instrument(span)),
        );
        let fetched = (&mut task.0).await;
        let metrics = &self.shared.metrics;
        metrics
            .fetch_duration
            .record(started.elapsed().as_secs_f64());
        match fetched {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(e)) => {
                metrics.fetch_errors.increment(1);
                tracing::error!(presence = P::NAME, topic, error = %e, "fetch failed; listing presences unenriched");
                presences
            }
            Err(e) => {
                metrics.fetch_panics.increment(1);
                tracing::error!(presence = P::NAME, topic, error = %e, "fetch panicked; listing presences unenriched");
                presences
            }
        }
    }

    /// The number of diffs not yet broadcast (their fetches may be running).
    pub fn pending_diffs(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Waits until every diff so far has been fetched and broadcast (Phoenix's
    /// `fetchers_pids` made into a wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn settled(&self) {
        loop {
            let notified = self.shared.settled.notified();
            if self.shared.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Fetches a diff with one call: every key of the joins and the leaves at once (an update has
/// its key on both sides), then hands each side's entries the extra fetched for their key.
async fn fetch_diff<P: Presence>(
    presence: &P,
    ctx: &PresenceContext,
    topic: &str,
    mut diff: PresenceDiff<P>,
) -> Result<PresenceDiff<P>, FetchError> {
    let mut all: PresenceMap<P> = PresenceMap::new();
    for (key, entry) in diff.joins.iter().chain(diff.leaves.iter()) {
        all.entry(key.clone())
            .or_insert_with(|| PresenceEntry::new(Vec::new()))
            .metas_mut()
            .extend(entry.raw_metas().iter().cloned());
    }
    let fetched = presence.run_fetch(ctx, topic, all).await?;
    for (key, entry) in diff.joins.iter_mut().chain(diff.leaves.iter_mut()) {
        entry.extra = fetched.get(key).and_then(|f| f.extra.clone());
    }
    Ok(diff)
}

/// The span of one fetch: `presence` (the module's name) and `topic`.
fn fetch_span(presence: &'static str, topic: &str) -> tracing::Span {
    tracing::info_span!("fetch", presence, topic)
}

/// Runs `fut`, turning a panic inside it into `Err(())`.
async fn catch_unwind<F: Future>(fut: F) -> Result<F::Output, ()> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    })
    .await
}

/// `init`, with a panic made an error.
fn init<P: Presence>(presence: &P, ctx: &PresenceContext) -> Result<P::State, InitError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| presence.run_init(ctx)))
        .unwrap_or_else(|_| Err("init panicked".into()))
}

/// The meta as a JSON object, or why it is not one.
fn meta_object<P: Presence>(meta: &P::Meta) -> Result<serde_json::Value, String> {
    match serde_json::to_value(meta) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!(
            "a meta must serialize to a JSON object (Phoenix puts `phx_ref` in it), and this one \
             is {}; use a struct with named fields or a map",
            json_kind(&other)
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

async fn broadcast_loop<P: Presence>(
    shared: std::sync::Weak<Shared<P>>,
    mut rx: mpsc::UnboundedReceiver<Pending<P>>,
    mut state: Option<P::State>,
) {
    let Some((presence, ctx)) = shared
        .upgrade()
        .map(|s| (s.presence.clone(), s.ctx.clone()))
    else {
        return;
    };
    let reinit = || match init(&*presence, &ctx) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::error!(
                presence = P::NAME,
                %error,
                "init failed after a handle_metas panic; handle_metas is off for this presence"
            );
            None
        }
    };
    let mut metas: HashMap<Arc<str>, TopicMetas> = HashMap::new();
    while let Some(pending) = rx.recv().await {
        let Pending {
            topic,
            plain,
            fetch,
        } = pending;
        // Not upgraded across the fetch: a dropped presence must not wait for it.
        let mut failed = None;
        let diff = match fetch {
            None => plain,
            Some(mut task) => match (&mut task.0).await {
                Ok(Ok(diff)) => diff,
                Ok(Err(e)) => {
                    failed = Some(false);
                    tracing::error!(presence = P::NAME, topic = %topic, error = %e, "fetch failed; the diff goes out unenriched");
                    plain
                }
                Err(e) => {
                    failed = Some(true);
                    tracing::error!(presence = P::NAME, topic = %topic, error = %e, "fetch panicked; the diff goes out unenriched");
                    plain
                }
            },
        };
        let Some(s) = shared.upgrade() else { return };
        match failed {
            Some(true) => s.metrics.fetch_panics.increment(1),
            Some(false) => s.metrics.fetch_errors.increment(1),
            None => {}
        }
        match serde_json::to_value(&diff) {
            Ok(payload) => {
                s.metrics.diffs.increment(1);
                s.ctx.pubsub.local_broadcast(
                    Message::json(topic.clone(), PRESENCE_DIFF, payload)
                        .with_merge_window(s.diff_window),
                );
            }
            Err(e) => {
                tracing::error!(presence = P::NAME, topic = %topic, error = %e, "presence diff does not serialize; not broadcast")
            }
        }
        if let Some(current) = state.take() {
            let topic_metas = metas.entry(topic.clone()).or_default();
            entry::apply_diff(topic_metas, &diff);
            let span = tracing::info_span!("handle_metas", presence = P::NAME, topic = &*topic);
            let started = std::time::Instant::now();
            let next =
                catch_unwind(presence.run_handle_metas(&ctx, &topic, &diff, topic_metas, current))
                    .instrument(span)
                    .await;
            s.metrics
                .handle_metas_duration
                .record(started.elapsed().as_secs_f64());
            if topic_metas.is_empty() {
                metas.remove(&topic);
            }
            state = match next {
                Ok(next) => Some(next),
                Err(()) => {
                    s.metrics.handle_metas_panics.increment(1);
                    tracing::error!(presence = P::NAME, topic = %topic, "handle_metas panicked; its state starts over from init");
                    reinit()
                }
            };
        }
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.settled.notify_waiters();
        }
    }
}
