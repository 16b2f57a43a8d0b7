//! The replicated presence tracker, after Phoenix.Tracker.
//!
//! A [`Tracker`] keeps, for each topic, the presences `(owner, key, meta)` tracked on every node
//! of a cluster. Each node's copy is a delta-state CRDT (an add-wins observed-remove set over
//! dotted version vectors) split into `pool_size` shards by a stable hash of the topic. Shards
//! gossip over the [`PubSub`]: every `broadcast_period` a shard sends the changes since its last
//! heartbeat; a shard that finds a peer ahead of it asks for a transfer, served from recent delta
//! generations or from the full state. A peer that stays silent for `down_period` is marked down
//! (its presences are reported as leaves and hidden), and purged after `permdown_period`; a peer
//! that comes back with the same incarnation is brought back up, one that restarted (a new
//! `vsn`) replaces its old incarnation.
//!
//! Local changes are applied under a short lock and reported to the [`DiffHandler`] before
//! `track`, `update` and `untrack` return; changes learned from peers are reported by the shard
//! task that merged them. Every node computes its own diffs from its own merges.
//!
//! # Examples
//!
//! ```
//! use presence_core::tracker::{Diff, Tracker};
//! use presence_core::{Owner, PubSub};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let diffs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Diff>::new()));
//! let seen = diffs.clone();
//! let tracker = Tracker::builder("Presence", PubSub::new("a"))
//!     .on_diff(move |diff: Diff| seen.lock().unwrap().push(diff))
//!     .start()?;
//!
//! let owner = Owner::new();
//! let first = tracker.track(&owner, "room:1", "alice", json!({"status": "online"}))?;
//! let second = tracker.update(&owner, "room:1", "alice", json!({"status": "away"}))?;
//! let (_, meta) = &tracker.list("room:1")[0];
//! assert_eq!(meta.phx_ref(), second);
//! assert_eq!(meta.phx_ref_prev(), Some(first));
//! assert_eq!(diffs.lock().unwrap().len(), 2); // reported before the calls returned
//! # Ok(())
//! # }
//! ```

pub(crate) mod clock;
mod diff;
mod generations;
pub(crate) mod message;
mod replica;
mod shard;
pub(crate) mod shard_core;
#[cfg(test)]
mod sim_tests;
pub(crate) mod state;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use diff::{Diff, KeyChange, TopicDiff};
pub use replica::ReplicaStatus;

use crate::owner::OwnerRelease;
use crate::{Meta, Owner, OwnerId, PhxRef, PubSub};
use shard::Shard;

/// Tracker settings, with Phoenix's defaults.
///
/// # Examples
///
/// ```
/// use presence_core::TrackerConfig;
/// use std::time::Duration;
///
/// let config = TrackerConfig {
///     broadcast_period: Duration::from_millis(100),
///     ..TrackerConfig::default()
/// };
/// assert_eq!(config.effective_down_period(), Duration::from_secs(2));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Number of shards; topics are spread over them by a stable hash. Must be the same on
    /// every node of a cluster. Default 1.
    pub pool_size: usize,
    /// Interval of heartbeats. Default 1500 ms.
    pub broadcast_period: Duration,
    /// Ticks without changes after which an empty heartbeat is sent anyway. Default 10.
    pub max_silent_periods: u32,
    /// Silence after which a peer is marked down. Default (`None`):
    /// `broadcast_period * max_silent_periods * 2` (30 s).
    pub down_period: Option<Duration>,
    /// Silence after which a peer is purged. Default 20 minutes.
    pub permdown_period: Duration,
    /// Ticks over which peer clocks are sampled before transfers are requested. Default 2.
    pub clock_sample_periods: u32,
    /// Size caps of the delta generations kept to serve catch-up. Default `[100, 1000, 10000]`.
    pub max_delta_sizes: Vec<usize>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            pool_size: 1,
            broadcast_period: Duration::from_millis(1500),
            max_silent_periods: 10,
            down_period: None,
            permdown_period: Duration::from_secs(20 * 60),
            clock_sample_periods: 2,
            max_delta_sizes: vec![100, 1000, 10_000],
        }
    }
}

impl TrackerConfig {
    /// The down period in force: the configured one, or
    /// `broadcast_period * max_silent_periods * 2`.
    pub fn effective_down_period(&self) -> Duration {
        self.down_period
            .unwrap_or(self.broadcast_period * self.max_silent_periods.max(1) * 2)
    }

    /// Checks the settings, with Phoenix's rules.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first rule broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_size == 0 {
            return Err(ConfigError::PoolSize);
        }
        if self.broadcast_period.is_zero() {
            return Err(ConfigError::BroadcastPeriod);
        }
        if self.clock_sample_periods == 0 {
            return Err(ConfigError::ClockSamplePeriods);
        }
        let down = self.effective_down_period();
        if down < self.broadcast_period * 2 {
            return Err(ConfigError::DownPeriod);
        }
        if self.permdown_period <= down {
            return Err(ConfigError::PermdownPeriod);
        }
        if self.max_delta_sizes.is_empty()
            || self.max_delta_sizes.contains(&0)
            || !self.max_delta_sizes.is_sorted()
        {
            return Err(ConfigError::MaxDeltaSizes);
        }
        Ok(())
    }
}

/// A [`TrackerConfig`] that cannot work, or a tracker started outside a tokio runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `pool_size` is 0.
    #[error("pool_size must be at least 1")]
    PoolSize,
    /// `broadcast_period` is 0.
    #[error("broadcast_period must be greater than zero")]
    BroadcastPeriod,
    /// `clock_sample_periods` is 0.
    #[error("clock_sample_periods must be at least 1")]
    ClockSamplePeriods,
    /// `down_period < 2 * broadcast_period`.
    #[error("down_period must be at least twice as large as the broadcast_period")]
    DownPeriod,
    /// `permdown_period <= down_period`.
    #[error("permdown_period must be larger than the down_period")]
    PermdownPeriod,
    /// `max_delta_sizes` is empty, holds a 0 or is not ascending.
    #[error("max_delta_sizes must be a non-empty ascending list of positive sizes")]
    MaxDeltaSizes,
    /// The tracker was started outside a tokio runtime.
    #[error("a tracker must be started inside a tokio runtime")]
    NoRuntime,
}

/// A presence could not be tracked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// This owner already tracks this key in this topic.
    #[error("already tracked: this owner already tracks key {key:?} in topic {topic:?}")]
    AlreadyTracked {
        /// The topic.
        topic: String,
        /// The key.
        key: String,
    },
    /// The tracker was shut down with [`Tracker::graceful_permdown`].
    #[error("the tracker has been shut down")]
    Stopped,
    /// The meta does not serialize to JSON.
    #[error("invalid meta: {0}")]
    InvalidMeta(String),
}

/// A presence could not be updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// This owner tracks no such key in this topic.
    #[error("no presence: this owner does not track that key in that topic")]
    NoPresence,
    /// The tracker was shut down with [`Tracker::graceful_permdown`].
    #[error("the tracker has been shut down")]
    Stopped,
    /// The meta does not serialize to JSON.
    #[error("invalid meta: {0}")]
    InvalidMeta(String),
}

/// A change in what a shard knows of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// A peer incarnation is up (first heard, or back after being down).
    Up {
        /// The peer's node name.
        name: String,
        /// Its incarnation.
        vsn: u64,
    },
    /// A peer was silent for `down_period`; its presences left.
    Down {
        /// The peer's node name.
        name: String,
        /// Its incarnation.
        vsn: u64,
    },
    /// A peer was purged (silent for `permdown_period`, restarted, or shut down gracefully).
    Permdown {
        /// The peer's node name.
        name: String,
        /// Its incarnation.
        vsn: u64,
    },
}

/// Receives a tracker's diffs (Phoenix's `handle_diff`) and replica events.
///
/// Calls come one at a time, in order per shard. A local change is reported before `track`,
/// `update` or `untrack` returns: by the calling thread, or by the thread delivering this
/// tracker's reports at that moment, which the call waits for. Keep them short and never block
/// in them: hand the work to a queue or a task.
///
/// Calling back into the same tracker (any shard), or dropping an [`Owner`] there, is allowed;
/// the diffs such a call makes are delivered after the handler returns. Calling another
/// tracker whose handler calls back into this one can deadlock. A panic inside is caught and
/// logged, and does not stop the tracker.
///
/// Closures `Fn(Diff)` implement it.
pub trait DiffHandler: Send + Sync + 'static {
    /// Called with the joins and leaves of one change.
    fn handle_diff(&self, diff: Diff);

    /// Called when a peer goes up, down or permanently down. Does nothing by default.
    fn handle_replica_event(&self, event: &ReplicaEvent) {
        let _ = event;
    }
}

impl<F: Fn(Diff) + Send + Sync + 'static> DiffHandler for F {
    fn handle_diff(&self, diff: Diff) {
        self(diff);
    }
}

/// The size of a topic: see [`Tracker::count`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub struct PresenceCount {
    /// Distinct keys (users, with the default grouping).
    pub keys: usize,
    /// Presences (metas): one per tracked device, tab or owner.
    pub metas: usize,
}

/// What one shard knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// The peer's node name.
    pub name: String,
    /// Its incarnation.
    pub vsn: u64,
    /// Whether it is up or down.
    pub status: ReplicaStatus,
}

/// Starts a [`Tracker`].
#[must_use = "a builder does nothing until `start` is called"]
pub struct TrackerBuilder {
    name: Arc<str>,
    pubsub: PubSub,
    config: TrackerConfig,
    handler: Option<Arc<dyn DiffHandler>>,
}

impl fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TrackerBuilder {
    /// Sets the configuration.
    pub fn config(mut self, config: TrackerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the handler of diffs and replica events.
    pub fn on_diff(mut self, handler: impl DiffHandler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Validates the configuration and starts one task per shard.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid configuration, or when called outside a tokio runtime.
    pub fn start(self) -> Result<Tracker, ConfigError> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let vsn = new_vsn();
        let reporter = self
            .handler
            .map(|h| Arc::new(shard::Reporter::new(h, self.config.pool_size)));
        let shards: Vec<Arc<Shard>> = (0..self.config.pool_size)
            .map(|index| {
                Arc::new(Shard::new(
                    &self.name,
                    index,
                    self.pubsub.node_name(),
                    vsn,
                    &self.config,
                    reporter.clone(),
                ))
            })
            .collect();
        let tasks = shards
            .iter()
            .map(|shard| shard::spawn(&runtime, shard.clone(), self.pubsub.clone(), &self.config))
            .collect();
        Ok(Tracker {
            inner: Arc::new(Inner {
                name: self.name,
                pubsub: self.pubsub,
                shards,
                tasks: std::sync::Mutex::new(tasks),
            }),
        })
    }
}

/// A fresh incarnation number: microseconds of wall-clock time mixed with randomness, so that
/// every start of a tracker differs from the ones before it.
fn new_vsn() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    (micros << 12) ^ (crate::meta::random_u64() & 0xfff)
}

/// A handle to a running tracker. Clones share it; when the last clone is dropped, its shard
/// tasks stop.
///
/// See the [module docs](self).
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    pubsub: PubSub,
    shards: Vec<Arc<Shard>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

impl OwnerRelease for Inner {
    fn release(&self, owner: OwnerId) {
        for shard in &self.shards {
            shard.untrack_all(owner);
        }
    }
}

impl Tracker {
    /// Starts a tracker named `name` over `pubsub` with `config`.
    ///
    /// The name identifies the tracker across the cluster: nodes replicate with the trackers of
    /// the same name.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid configuration, or when called outside a tokio runtime.
    pub fn start(
        name: impl Into<Arc<str>>,
        pubsub: PubSub,
        config: TrackerConfig,
    ) -> Result<Tracker, ConfigError> {
        Self::builder(name, pubsub).config(config).start()
    }

    /// A builder, to set a [`DiffHandler`] before starting.
    pub fn builder(name: impl Into<Arc<str>>, pubsub: PubSub) -> TrackerBuilder {
        TrackerBuilder {
            name: name.into(),
            pubsub,
            config: TrackerConfig::default(),
            handler: None,
        }
    }

    /// The tracker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The pub/sub it replicates over.
    pub fn pubsub(&self) -> &PubSub {
        &self.inner.pubsub
    }

    fn shard(&self, topic: &str) -> &Arc<Shard> {
        &self.inner.shards[shard_index(topic, self.inner.shards.len())]
    }

    /// Tracks `owner` under `key` in `topic` with `meta` and returns the new presence's
    /// reference. The presence leaves when the owner is dropped.
    ///
    /// # Errors
    ///
    /// [`TrackError::AlreadyTracked`] when this owner already tracks `key` in `topic`;
    /// [`TrackError::Stopped`] after [`graceful_permdown`](Self::graceful_permdown).
    pub fn track(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        meta: Value,
    ) -> Result<PhxRef, TrackError> {
        owner.register(&(self.inner.clone() as Arc<dyn OwnerRelease>));
        self.shard(topic).track(owner.id(), topic, key, meta)
    }

    /// Stops tracking `owner` under `key` in `topic`. Does nothing when it is not tracked.
    pub fn untrack(&self, owner: &Owner, topic: &str, key: &str) {
        self.shard(topic).untrack(owner.id(), topic, key);
    }

    /// Stops tracking everything `owner` tracks, in every topic.
    pub fn untrack_all(&self, owner: &Owner) {
        self.inner.release(owner.id());
    }

    /// Replaces the meta of `owner`'s presence under `key` in `topic` and returns its new
    /// reference. The new meta's `phx_ref_prev` is the old reference.
    ///
    /// # Errors
    ///
    /// [`UpdateError::NoPresence`] when there is no such presence;
    /// [`UpdateError::Stopped`] after [`graceful_permdown`](Self::graceful_permdown).
    pub fn update(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        meta: Value,
    ) -> Result<PhxRef, UpdateError> {
        self.update_with(owner, topic, key, |_| meta)
    }

    /// Like [`update`](Self::update), with the new meta computed from the current one (which
    /// includes its `phx_ref`).
    ///
    /// `f` runs under the shard's lock, so that nothing changes the presence between reading
    /// and replacing it: keep it short, and do not call the tracker from it (that deadlocks).
    ///
    /// # Errors
    ///
    /// As [`update`](Self::update).
    pub fn update_with(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        f: impl FnOnce(&Meta) -> Value,
    ) -> Result<PhxRef, UpdateError> {
        self.shard(topic)
            .update(owner.id(), topic, key, |m| Ok(f(m)))
    }

    /// Like [`update_with`](Self::update_with), with a computation that may refuse: its error
    /// is returned and nothing changes.
    pub(crate) fn try_update_with(
        &self,
        owner: &Owner,
        topic: &str,
        key: &str,
        f: impl FnOnce(&Meta) -> Result<Value, UpdateError>,
    ) -> Result<PhxRef, UpdateError> {
        self.shard(topic).update(owner.id(), topic, key, f)
    }

    /// The presences of `topic` on live nodes, as `(key, meta)` pairs.
    pub fn list(&self, topic: &str) -> Vec<(Arc<str>, Meta)> {
        self.shard(topic).read(|core| core.state().list(topic))
    }

    /// The presences under `key` in `topic` on live nodes, as `(owner, meta)` pairs; empty when
    /// there are none.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Vec<(OwnerId, Meta)> {
        self.shard(topic)
            .read(|core| core.state().get_by_key(topic, key))
    }

    /// How many keys and presences `topic` has on live nodes, without listing it: O(1) while
    /// no peer is down (the shard keeps the topic's sizes), a walk of the topic's rows
    /// otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// # use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = Tracker::start("T", PubSub::new("a"), TrackerConfig::default())?;
    /// let (phone, laptop) = (Owner::new(), Owner::new());
    /// tracker.track(&phone, "room:1", "alice", serde_json::json!({}))?;
    /// tracker.track(&laptop, "room:1", "alice", serde_json::json!({}))?;
    /// let count = tracker.count("room:1");
    /// assert_eq!((count.keys, count.metas), (1, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn count(&self, topic: &str) -> PresenceCount {
        let (keys, metas) = self.shard(topic).read(|core| core.state().count(topic));
        PresenceCount { keys, metas }
    }

    /// The `n` topics with the most presences, largest first (ties by name), with their
    /// counts: for an operator's view of the biggest rooms, without a metric per topic. Each
    /// shard's topics are scanned once under its read lock: about 1.4 ms for 100k topics of
    /// one presence each, 5 µs for 1,000 topics of 100 (`cargo bench -p presence-core --bench
    /// tracker -- largest`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tracker = Tracker::start("Presence", PubSub::new("node"), TrackerConfig::default())?;
    /// let (a, b) = (Owner::new(), Owner::new());
    /// tracker.track(&a, "room:big", "ann", serde_json::json!({}))?;
    /// tracker.track(&b, "room:big", "bob", serde_json::json!({}))?;
    /// tracker.track(&b, "room:small", "bob", serde_json::json!({}))?;
    /// let largest = tracker.largest_topics(1);
    /// assert_eq!(largest.len(), 1);
    /// assert_eq!((&*largest[0].0, largest[0].1.metas), ("room:big", 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn largest_topics(&self, n: usize) -> Vec<(Arc<str>, PresenceCount)> {
        let mut all: Vec<(Arc<str>, PresenceCount)> = self
            .inner
            .shards
            .iter()
            .flat_map(|shard| shard.read(|core| core.state().largest_topics(n)))
            .map(|(topic, (keys, metas))| (topic, PresenceCount { keys, metas }))
            .collect();
        all.sort_by(|a, b| b.1.metas.cmp(&a.1.metas).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The peers each shard knows, shard by shard.
    pub fn replicas(&self) -> Vec<Vec<ReplicaInfo>> {
        self.inner
            .shards
            .iter()
            .map(|shard| {
                shard.read(|core| {
                    let mut v: Vec<ReplicaInfo> = core
                        .replicas()
                        .map(|(name, vsn, status)| ReplicaInfo {
                            name: name.to_string(),
                            vsn,
                            status,
                        })
                        .collect();
                    v.sort_by(|a, b| a.name.cmp(&b.name));
                    v
                })
            })
            .collect()
    }

    /// Leaves the cluster for good: tells every peer to drop this node's presences now, then
    /// sends nothing more (a heartbeat heard after the permdown would bring the node back on
    /// a peer). Later calls to `track` and `update` fail with `Stopped`. The shards keep
    /// listening, so `list`, `get_by_key` and `count` go on showing the peers as they change,
    /// not a frozen copy; dropping the tracker ends them.
    pub fn graceful_permdown(&self) {
        for shard in &self.inner.shards {
            shard.graceful_permdown(&self.inner.pubsub);
        }
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("name", &self.inner.name)
            .field("node", &self.inner.pubsub.node_name())
            .field("pool_size", &self.inner.shards.len())
            .finish()
    }
}

/// The shard of `topic`: FNV-1a of its bytes, so every node agrees.
pub(crate) fn shard_index(topic: &str, pool_size: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % pool_size as u64) as usize
}
