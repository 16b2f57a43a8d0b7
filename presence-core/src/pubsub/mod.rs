//! Publish/subscribe between tasks and between nodes, after Phoenix.PubSub.
//!
//! A [`PubSub`] is a cheap-to-clone handle to one node's registry of subscriptions. Local
//! delivery hands every subscriber the same [`Arc<Message>`]: nothing is serialized or copied
//! per subscriber. Delivery to other nodes goes through an [`Adapter`], which receives the
//! message serialized once per broadcast. The default adapter connects nothing (a single node);
//! [`LocalCluster`] connects several nodes in one process and can inject faults for tests.
//!
//! # Slow subscribers
//!
//! Every [`Subscription`] has a bounded queue ([`PubSubBuilder::queue_capacity`], 1024 by
//! default). Publishers never wait: when a subscriber's queue is full the message is dropped for
//! that subscriber alone, and its next [`Subscription::recv`] returns
//! [`RecvError::Lagged`] with the number of messages it missed. Other subscribers are not
//! affected.
//!
//! # Examples
//!
//! ```
//! use presence_core::pubsub::{Message, PubSub};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pubsub = PubSub::new("node-a");
//! let mut sub = pubsub.subscribe("room:lobby");
//! pubsub.broadcast(Message::json("room:lobby", "new_msg", json!({"body": "hi"})))?;
//! let msg = sub.recv().await?;
//! assert_eq!(msg.event(), "new_msg");
//! # Ok(())
//! # }
//! ```

mod adapter;
mod cluster;
pub mod error;
pub(crate) mod frame;
mod message;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use tokio::sync::mpsc;

pub use adapter::{Adapter, Inbound, NoAdapter};
pub use cluster::{ClusterAdapter, LinkFaults, LocalCluster};
pub use error::{BroadcastError, RecvError};
pub use message::{Message, Payload};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{
    DEFAULT_REDIS_QUEUE_CAPACITY, RedisAdapter, RedisAdapterError, RedisOptions, RedisStats,
};

/// Default capacity of each subscription's queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// The identity of one subscription, used by [`PubSub::broadcast_from`] to skip the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(u64);

/// A handle to one node's pub/sub. Clone it freely: clones share the registry.
///
/// # Examples
///
/// ```
/// use presence_core::pubsub::{Message, PubSub};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pubsub = PubSub::new("a");
/// let mut me = pubsub.subscribe("t");
/// let mut other = pubsub.subscribe("t");
/// pubsub.broadcast_from(me.id(), Message::json("t", "ping", serde_json::json!({})))?;
/// assert_eq!(other.recv().await?.event(), "ping");
/// assert!(me.try_recv().is_err()); // the sender is skipped
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
}

struct Inner {
    node_name: Arc<str>,
    partitions: Box<[Partition]>,
    hasher: std::collections::hash_map::RandomState,
    adapter: Arc<dyn Adapter>,
    capacity: usize,
    next_id: AtomicU64,
    unknown_trackers: adapter::UnknownTrackers,
    metrics: crate::metrics::PubSubMetrics,
}

/// One slice of the registry: topic to subscribers.
type Partition = RwLock<HashMap<Arc<str>, Vec<Entry>>>;

struct Entry {
    id: SubscriberId,
    tx: mpsc::Sender<Arc<Message>>,
    lagged: Arc<AtomicU64>,
}

/// Configures a [`PubSub`] before it starts.
#[must_use = "a builder does nothing until `build` is called"]
pub struct PubSubBuilder {
    node_name: Arc<str>,
    adapter: Arc<dyn Adapter>,
    capacity: usize,
    partitions: usize,
}

impl fmt::Debug for PubSubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubBuilder")
            .field("node_name", &self.node_name)
            .field("adapter", &self.adapter)
            .field("capacity", &self.capacity)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl PubSubBuilder {
    /// Sets the adapter that reaches other nodes (default: none, a single node).
    pub fn adapter(mut self, adapter: impl Adapter) -> Self {
        self.adapter = Arc::new(adapter);
        self
    }

    /// Sets the capacity of each subscription's queue (default
    /// [`DEFAULT_QUEUE_CAPACITY`]; at least 1).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Sets the number of registry partitions (default: twice the available parallelism).
    /// More partitions mean less lock contention between topics.
    pub fn partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Starts the pub/sub and its adapter.
    pub fn build(self) -> PubSub {
        let inner = Arc::new(Inner {
            node_name: self.node_name,
            partitions: (0..self.partitions)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
            hasher: Default::default(),
            adapter: self.adapter,
            capacity: self.capacity,
            next_id: AtomicU64::new(1),
            unknown_trackers: adapter::UnknownTrackers::default(),
            metrics: crate::metrics::PubSubMetrics::register(),
        });
        let inbound = Inbound::new(Arc::downgrade(&inner));
        inner.adapter.start(&inner.node_name, inbound);
        PubSub { inner }
    }
}

impl PubSub {
    /// A single-node pub/sub named `node_name`, with the default settings.
    pub fn new(node_name: impl Into<Arc<str>>) -> Self {
        Self::builder(node_name).build()
    }

    /// A builder for a pub/sub named `node_name`.
    pub fn builder(node_name: impl Into<Arc<str>>) -> PubSubBuilder {
        PubSubBuilder {
            node_name: node_name.into(),
            adapter: Arc::new(NoAdapter),
            capacity: DEFAULT_QUEUE_CAPACITY,
            partitions: std::thread::available_parallelism().map_or(4, |n| n.get() * 2),
        }
    }

    /// This node's name, as other nodes address it in [`direct_broadcast`](Self::direct_broadcast).
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Whether `self` and `other` are the same pub/sub (one is a clone of the other), rather
    /// than two pub/subs that may share a node name.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::PubSub;
    ///
    /// let a = PubSub::new("node-a");
    /// assert!(a.ptr_eq(&a.clone()));
    /// assert!(!a.ptr_eq(&PubSub::new("node-a")));
    /// ```
    pub fn ptr_eq(&self, other: &PubSub) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the adapter may reach any other node (false for a single node).
    pub fn has_peers(&self) -> bool {
        self.inner.adapter.has_peers()
    }

    /// Subscribes to `topic`. Messages arrive in [`Subscription::recv`]; dropping the
    /// subscription unsubscribes.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let id = SubscriberId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let lagged = Arc::new(AtomicU64::new(0));
        let topic: Arc<str> = Arc::from(topic);
        self.inner
            .partition(&topic)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.clone())
            .or_default()
            .push(Entry {
                id,
                tx,
                lagged: lagged.clone(),
            });
        Subscription {
            pubsub: Arc::downgrade(&self.inner),
            topic,
            id,
            rx,
            lagged,
        }
    }

    /// Ends a subscription (the same as dropping it).
    pub fn unsubscribe(&self, subscription: Subscription) {
        drop(subscription);
    }

    /// The number of local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner
            .partition(topic)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .map_or(0, Vec::len)
    }

    /// Sends `message` to every subscriber of its topic, on this node and on every other.
    ///
    /// # Errors
    ///
    /// [`BroadcastError`] when the adapter could not take the message for the other nodes;
    /// local subscribers have received it all the same.
    pub fn broadcast(&self, message: impl Into<Arc<Message>>) -> Result<(), BroadcastError> {
        let message = message.into();
        let _ = self.inner.dispatch(&message, None);
        self.remote(&message, None)
    }

    /// Like [`broadcast`](Self::broadcast), but skips the local subscription `from`. Other nodes
    /// deliver to all their subscribers.
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub fn broadcast_from(
        &self,
        from: SubscriberId,
        message: impl Into<Arc<Message>>,
    ) -> Result<(), BroadcastError> {
        let message = message.into();
        let _ = self.inner.dispatch(&message, Some(from));
        self.remote(&message, None)
    }

    /// Sends `message` to this node's subscribers only.
    pub fn local_broadcast(&self, message: impl Into<Arc<Message>>) {
        let _ = self.inner.dispatch(&message.into(), None);
    }

    /// Sends `message` to this node's subscribers, except `from`.
    pub fn local_broadcast_from(&self, from: SubscriberId, message: impl Into<Arc<Message>>) {
        let _ = self.inner.dispatch(&message.into(), Some(from));
    }

    /// Sends `message` to the subscribers on the node named `node` only (this node included,
    /// when it is named).
    ///
    /// # Errors
    ///
    /// [`BroadcastError`] when the adapter could not take the message.
    pub fn direct_broadcast(
        &self,
        node: &str,
        message: impl Into<Arc<Message>>,
    ) -> Result<(), BroadcastError> {
        let message = message.into();
        if node == &*self.inner.node_name {
            let _ = self.inner.dispatch(&message, None);
            return Ok(());
        }
        self.remote(&message, Some(node))
    }

    fn remote(&self, message: &Message, target: Option<&str>) -> Result<(), BroadcastError> {
        if !self.inner.adapter.has_peers() {
            return Ok(());
        }
        let frame = frame::encode(message);
        match target {
            None => self.inner.adapter.broadcast(frame),
            Some(node) => self.inner.adapter.direct_broadcast(node, frame),
        }
    }
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("node_name", &self.inner.node_name)
            .field("adapter", &self.inner.adapter)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn partition(&self, topic: &str) -> &Partition {
        let h = self.hasher.hash_one(topic);
        &self.partitions[(h % self.partitions.len() as u64) as usize]
    }

    /// Delivers `message` to the topic's subscribers but `skip`; whether the topic had any.
    fn dispatch(&self, message: &Arc<Message>, skip: Option<SubscriberId>) -> bool {
        self.metrics.broadcasts.increment(1);
        let partition = self.partition(message.topic());
        let mut closed = false;
        {
            let map = partition.read().unwrap_or_else(PoisonError::into_inner);
            let Some(entries) = map.get(message.topic()) else {
                return false;
            };
            for entry in entries {
                if Some(entry.id) == skip {
                    continue;
                }
                match entry.tx.try_send(message.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        entry.lagged.fetch_add(1, Ordering::Relaxed);
                        self.metrics.drops.increment(1);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed {
            let mut map = partition.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(entries) = map.get_mut(message.topic()) {
                entries.retain(|e| !e.tx.is_closed());
                if entries.is_empty() {
                    map.remove(message.topic());
                }
            }
        }
        true
    }

    fn remove(&self, topic: &str, id: SubscriberId) {
        let mut map = self
            .partition(topic)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = map.get_mut(topic) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                map.remove(topic);
            }
        }
    }
}

/// A subscription to one topic. Dropping it unsubscribes.
///
/// See the [module docs](self) for what happens when it does not keep up.
#[must_use = "dropping a Subscription unsubscribes"]
pub struct Subscription {
    pubsub: Weak<Inner>,
    topic: Arc<str>,
    id: SubscriberId,
    rx: mpsc::Receiver<Arc<Message>>,
    lagged: Arc<AtomicU64>,
}

impl Subscription {
    /// This subscription's id, for [`PubSub::broadcast_from`].
    pub fn id(&self) -> SubscriberId {
        self.id
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] once after messages were dropped because the queue was full (the
    /// next call goes on with the queued messages); [`RecvError::Closed`] when the pub/sub is
    /// gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost by dropping the future.
    pub async fn recv(&mut self) -> Result<Arc<Message>, RecvError> {
        let missed = self.lagged.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Err(RecvError::Lagged(missed));
        }
        self.rx.recv().await.ok_or(RecvError::Closed)
    }

    /// Takes the next message if one is queued.
    ///
    /// # Errors
    ///
    /// [`RecvError::Empty`] when nothing is queued; otherwise as [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Arc<Message>, RecvError> {
        let missed = self.lagged.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Err(RecvError::Lagged(missed));
        }
        self.rx.try_recv().map_err(|e| match e {
            mpsc::error::TryRecvError::Empty => RecvError::Empty,
            mpsc::error::TryRecvError::Disconnected => RecvError::Closed,
        })
    }

    /// Polls for the next message, for use in hand-written futures and streams.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Arc<Message>, RecvError>> {
        let missed = self.lagged.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return std::task::Poll::Ready(Err(RecvError::Lagged(missed)));
        }
        self.rx.poll_recv(cx).map(|m| m.ok_or(RecvError::Closed))
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.pubsub.upgrade() {
            inner.remove(&self.topic, self.id);
        }
    }
}
