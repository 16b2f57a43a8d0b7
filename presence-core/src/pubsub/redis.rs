//! The Redis pub/sub adapter (the `redis` feature); see [`RedisAdapter`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::adapter::{Adapter, Inbound};
use super::error::BroadcastError;

/// Default capacity of the outgoing queue, in messages.
pub const DEFAULT_REDIS_QUEUE_CAPACITY: usize = 4096;

const VERSION: u8 = 1;
pub(crate) const KIND_BROADCAST: u8 = 0;
pub(crate) const KIND_DIRECT: u8 = 1;
pub(crate) const KIND_HELLO: u8 = 2;
pub(crate) const KIND_NAME_TAKEN: u8 = 3;
/// One part of an envelope longer than [`MAX_MESSAGE`].
pub(crate) const KIND_PART: u8 = 4;
/// Most envelopes sent in one pipeline.
const MAX_BATCH: usize = 64;
/// The longest envelope published as one Redis message; a longer one (a tracker's state
/// transfer) goes as consecutive parts of at most this many bytes. The Redis client's
/// connections keep buffers as large as the largest message they carried, for their life, so
/// a node publishing or receiving a 500 KB transfer once would otherwise hold twice that
/// until it stops.
pub(crate) const MAX_MESSAGE: usize = 32 * 1024;
/// The bytes of envelopes one pipeline carries, past its first (for the same reason).
const MAX_PIPELINE_BYTES: usize = 32 * 1024;
/// Most parts of one envelope: 4,096 parts of 32 KiB, 128 MiB.
const MAX_PARTS: u32 = 4096;
/// Most envelopes being reassembled at once (one per sending node at a time).
const MAX_PARTIALS: usize = 256;
/// How long an envelope may take to arrive in full: one whose sender died between two parts
/// is dropped after this (checked at each ping of the subscription).
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`RedisAdapter`].
///
/// # Examples
///
/// ```
/// use presence_core::pubsub::RedisOptions;
/// use std::time::Duration;
///
/// let options = RedisOptions::new("node-a")
///     .pubsub_name("MyApp.PubSub")
///     .connect_timeout(Duration::from_secs(2));
/// assert_eq!(options.channel(), "presence:MyApp.PubSub");
/// ```
#[derive(Debug, Clone)]
#[must_use = "options do nothing until passed to `RedisAdapter::connect`"]
pub struct RedisOptions {
    node_name: Arc<str>,
    pubsub_name: String,
    queue_capacity: usize,
    connect_timeout: Duration,
    probe_period: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    ping_interval: Duration,
}

impl RedisOptions {
    /// Options for the node named `node_name`, which must be the name of the
    /// [`PubSub`](super::PubSub) the adapter is given to, and unique on the channel.
    pub fn new(node_name: impl Into<Arc<str>>) -> Self {
        RedisOptions {
            node_name: node_name.into(),
            pubsub_name: "presence".to_owned(),
            queue_capacity: DEFAULT_REDIS_QUEUE_CAPACITY,
            connect_timeout: Duration::from_secs(5),
            probe_period: Duration::from_millis(300),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
        }
    }

    /// Names the pub/sub; the Redis channel is `presence:<name>` (default `presence`). Nodes
    /// with different names do not hear each other, even on one Redis server.
    pub fn pubsub_name(mut self, name: impl Into<String>) -> Self {
        self.pubsub_name = name.into();
        self
    }

    /// Sets the capacity of the outgoing queue (default [`DEFAULT_REDIS_QUEUE_CAPACITY`]; at
    /// least 1). Sends fail with [`BroadcastError::Full`] while it is full.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// Bounds each connection attempt, and each command's reply (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long `connect` listens for a node that already has this name, after its hello came
    /// back (default 300 ms).
    pub fn probe_period(mut self, period: Duration) -> Self {
        self.probe_period = period;
        self
    }

    /// Sets the reconnection backoff: the first retry after `min`, doubling up to `max`
    /// (default 100 ms to 5 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// How often the idle subscription connection is pinged to detect a dead link (default
    /// 5 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The node name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The Redis channel the nodes share.
    pub fn channel(&self) -> String {
        format!("presence:{}", self.pubsub_name)
    }
}

/// [`RedisAdapter::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisAdapterError {
    /// The URL is not a valid Redis URL.
    #[error("invalid redis url {url:?}")]
    InvalidUrl {
        /// The URL, without its password.
        url: String,
        /// What the client said.
        #[source]
        source: RedisError,
    },
    /// Redis refused or dropped the connection.
    #[error("could not connect to redis at {url}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// What the client said.
        #[source]
        source: RedisError,
    },
    /// Redis did not answer in time.
    #[error("redis at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL, without its password.
        url: String,
        /// The connect timeout in force.
        timeout: Duration,
    },
    /// The node name is empty.
    #[error("the node name is empty")]
    EmptyNodeName,
    /// Another node on the channel already uses this node name.
    #[error("node name {node:?} is already used on redis channel {channel:?}")]
    NodeNameTaken {
        /// The node name.
        node: String,
        /// The channel.
        channel: String,
    },
}

/// Connection counters of a [`RedisAdapter`], from [`RedisAdapter::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisStats {
    /// Whether both connections (publish and subscribe) are up.
    pub connected: bool,
    /// Outages seen since `connect`.
    pub outages: u64,
    /// Successful subscriptions: 1 after `connect`, one more per re-subscription.
    pub subscriptions: u64,
    /// Envelopes published.
    pub published: u64,
    /// Envelopes dropped because Redis was unreachable.
    pub dropped: u64,
    /// Frames delivered to the local pub/sub.
    pub delivered: u64,
}

/// A pub/sub [`Adapter`] that clusters nodes over Redis PUBLISH/SUBSCRIBE, after
/// phoenix_pubsub_redis.
///
/// Every node of a cluster connects to the same Redis server and subscribes to one channel,
/// `presence:<pubsub name>`. A broadcast is one `PUBLISH` of an [envelope](#envelope) (one per
/// 32 KiB part of a longer one), whatever the number of nodes; each node decides from the
/// envelope whether the frame is for it.
///
/// # Envelope
///
/// Big-endian, version 1:
///
/// | bytes | field |
/// |---|---|
/// | 1 | format version (`1`); other versions are ignored |
/// | 1 | kind: `0` broadcast (every node but the origin), `1` direct (one node), `2` hello (name probe), `3` name taken, `4` part |
/// | 8 | the sender's instance id, random per [`RedisAdapter::connect`] |
/// | 2 + n | the origin node name (length, UTF-8) |
/// | 2 + n | direct only: the target node name |
/// | 8 | name taken only: the instance id the answer is for |
/// | 8 + 4 + 4 | part only: the sender's number for the envelope in parts, this part's index, the number of parts |
/// | rest | broadcast and direct: the pub/sub frame; part: the part's bytes |
///
/// A node delivers a frame when it is a broadcast from another node name, or a direct message
/// whose target is its own name. Anything else is ignored; malformed envelopes are logged and
/// dropped. The format is not Phoenix's (Erlang terms), so Rust and BEAM nodes do not mix on one
/// channel.
///
/// An envelope longer than 32 KiB (a tracker's state transfer) is published as parts of
/// 32 KiB, one after the other, that its receivers put together again before reading it: the
/// Redis client keeps buffers as large as the largest message each connection carried, for as
/// long as the connection lives, so one 500 KB transfer would otherwise cost every node about
/// 1 MB for good. A part lost to an outage drops its envelope, as an outage drops whole ones;
/// the parts of a sender that stopped halfway are dropped after 30 s.
///
/// # Unique node names
///
/// Node names must be unique on a channel, or direct messages reach the wrong node and each node
/// ignores the other's broadcasts. [`RedisAdapter::connect`] publishes a hello carrying its
/// random instance id, waits for it to come back (so the subscription is live), then listens for
/// [`RedisOptions::probe_period`]: a node already using the name answers "name taken" for that
/// instance id, and `connect` fails with [`RedisAdapterError::NodeNameTaken`]. Two nodes
/// starting together with one name see each other's hello and both fail. Later on, any envelope
/// with this node's name but another instance id is a clash, logged at error level once per
/// foreign instance. A node's own messages always carry its own instance id, across reconnects,
/// so they never count as a clash.
///
/// # Outages
///
/// Sends never wait: [`broadcast`](Adapter::broadcast) and
/// [`direct_broadcast`](Adapter::direct_broadcast) queue the envelope (capacity
/// [`RedisOptions::queue_capacity`], 4096 by default) and return; a full queue is
/// [`BroadcastError::Full`]. A publisher task drains the queue, pipelining what has piled up.
///
/// When Redis goes away, the adapter logs one warning, drops what is sent until it is back
/// (sends still return `Ok`), and reconnects both its connections with a backoff from 100 ms
/// doubling to 5 s, subscribing again; it logs the recovery at info level. A subscription
/// connection that stops answering pings is treated as lost too. Nothing is replayed: a
/// [`Tracker`](crate::Tracker) over this pub/sub heals by itself, because its heartbeats carry
/// its clock. A peer that missed deltas sees a clock ahead of its own in the next heartbeat and
/// asks for a transfer, which also carries the removals it missed. That takes at most
/// `max_silent_periods + clock_sample_periods` broadcast periods after the reconnect; an outage
/// longer than the down period marks peers down, and they come back up with their presences on
/// their next heartbeat.
///
/// # Handles
///
/// A cheap handle: clones share the connections. Its two tasks (publisher and subscriber) are
/// aborted when the last handle is dropped.
///
/// # Examples
///
/// ```no_run
/// use presence_core::pubsub::{Message, PubSub, RedisAdapter, RedisOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let adapter = RedisAdapter::connect("redis://127.0.0.1:6379", RedisOptions::new("node-a")).await?;
/// let pubsub = PubSub::builder("node-a").adapter(adapter.clone()).build();
/// pubsub.broadcast(Message::json("room:lobby", "hello", serde_json::json!({})))?;
/// assert!(adapter.stats().connected);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisAdapter {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Bytes>,
    _tasks: Arc<Tasks>,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Shared {
    client: Client,
    url: String,
    channel: String,
    options: RedisOptions,
    instance: u64,
    node: RwLock<Arc<str>>,
    inbound: OnceLock<Inbound>,
    /// For answering hellos from the subscriber task; `None` once the adapter is dropped.
    replies: OnceLock<mpsc::WeakSender<Bytes>>,
    link: Mutex<Link>,
    hello_echo: Notify,
    name_taken: AtomicBool,
    clashes: Mutex<HashSet<u64>>,
    published: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    /// Times the subscription connection was lost: the publisher's connection, which only
    /// notices a dead server when it next publishes, is replaced too.
    subscriber_losses: AtomicU64,
    /// Envelopes arriving in parts.
    partials: Mutex<Assembler>,
    metrics: crate::metrics::RedisMetrics,
}

/// Puts envelopes that arrive in parts together again, one at a time per sender (node name
/// and instance): a sender publishes the parts of one envelope one after the other, and Redis
/// keeps them in order.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    partials: HashMap<(Box<str>, u64), Partial>,
}

/// What adding a part did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Assembled {
    /// More parts are due.
    Incomplete,
    /// The last part arrived: the whole envelope.
    Whole(Vec<u8>),
    /// The part makes no sense; it was dropped.
    Malformed(&'static str),
    /// A part was lost before this one: the envelope was dropped.
    Lost(&'static str),
}

impl Assembler {
    /// Adds one part of the envelope of `origin`'s `instance`, arrived at `now`.
    pub(crate) fn add(
        &mut self,
        origin: &str,
        instance: u64,
        part: &Part<'_>,
        now: Instant,
    ) -> Assembled {
        let &Part {
            seq,
            index,
            count,
            bytes,
        } = part;
        if !(2..=MAX_PARTS).contains(&count) || index >= count {
            return Assembled::Malformed("part number out of range");
        }
        if bytes.is_empty() || bytes.len() > MAX_MESSAGE {
            return Assembled::Malformed("part of the wrong length");
        }
        let key = (Box::from(origin), instance);
        if index == 0 {
            if self.partials.len() >= MAX_PARTIALS && !self.partials.contains_key(&key) {
                return Assembled::Malformed("too many envelopes in parts at once");
            }
            let partial = Partial {
                seq,
                next: 1,
                count,
                bytes: bytes.to_vec(),
                started: now,
            };
            return match self.partials.insert(key, partial) {
                Some(_) => Assembled::Lost("the previous envelope ended early"),
                None => Assembled::Incomplete,
            };
        }
        let Entry::Occupied(mut entry) = self.partials.entry(key) else {
            return Assembled::Lost("its first part was lost");
        };
        let partial = entry.get_mut();
        if (partial.seq, partial.next, partial.count) != (seq, index, count) {
            entry.remove();
            return Assembled::Lost("a part was lost");
        }
        partial.bytes.extend_from_slice(bytes);
        partial.next += 1;
        if partial.next < count {
            return Assembled::Incomplete;
        }
        Assembled::Whole(entry.remove().bytes)
    }

    /// Drops every envelope begun (their remaining parts are lost).
    pub(crate) fn clear(&mut self) {
        self.partials = HashMap::new();
    }

    /// Drops the envelopes begun [`PARTIAL_TIMEOUT`] or longer before `now` (their senders
    /// died between two parts); how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let before = self.partials.len();
        self.partials
            .retain(|_, p| now.saturating_duration_since(p.started) < PARTIAL_TIMEOUT);
        before - self.partials.len()
    }
}

/// An envelope whose first parts arrived.
#[derive(Debug)]
struct Partial {
    /// The sender's number for this envelope.
    seq: u64,
    /// The part expected next.
    next: u32,
    count: u32,
    bytes: Vec<u8>,
    /// When its first part arrived.
    started: Instant,
}

#[derive(Debug)]
struct Link {
    publisher_up: bool,
    subscriber_up: bool,
    outages: u64,
    subscriptions: u64,
}

impl RedisAdapter {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host[:port][/db]`),
    /// subscribes to the channel and checks that no other node uses the node name.
    ///
    /// # Errors
    ///
    /// - [`RedisAdapterError::InvalidUrl`] for a malformed URL;
    /// - [`RedisAdapterError::Connect`] or [`RedisAdapterError::Timeout`] when Redis cannot be
    ///   reached within [`RedisOptions::connect_timeout`] (5 s by default): there is no retry
    ///   at start;
    /// - [`RedisAdapterError::NodeNameTaken`] when another node on the channel has this name;
    /// - [`RedisAdapterError::EmptyNodeName`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it had opened.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use presence_core::pubsub::{RedisAdapter, RedisAdapterError, RedisOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// match RedisAdapter::connect("redis://127.0.0.1:6379", RedisOptions::new("node-a")).await {
    ///     Ok(adapter) => println!("connected: {adapter:?}"),
    ///     Err(RedisAdapterError::NodeNameTaken { node, .. }) => eprintln!("{node} runs already"),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, RedisAdapterError> {
        let shown = redact(url);
        if options.node_name.is_empty() {
            return Err(RedisAdapterError::EmptyNodeName);
        }
        let client = Client::open(url).map_err(|source| RedisAdapterError::InvalidUrl {
            url: shown.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            client,
            url: shown,
            channel: options.channel(),
            instance: random_instance(),
            node: RwLock::new(options.node_name.clone()),
            inbound: OnceLock::new(),
            replies: OnceLock::new(),
            link: Mutex::new(Link {
                publisher_up: true,
                subscriber_up: true,
                outages: 0,
                subscriptions: 1,
            }),
            hello_echo: Notify::new(),
            name_taken: AtomicBool::new(false),
            clashes: Mutex::new(HashSet::new()),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            subscriber_losses: AtomicU64::new(0),
            partials: Mutex::new(Assembler::default()),
            metrics: crate::metrics::RedisMetrics::register(&options.channel()),
            options,
        });

        let publisher = shared.connect_publisher().await?;
        let subscriber = shared.connect_subscriber().await?;
        let (tx, rx) = mpsc::channel(shared.options.queue_capacity);
        let _ = shared.replies.set(tx.downgrade());
        let tasks = Arc::new(Tasks(vec![
            tokio::spawn(run_publisher(shared.clone(), rx, publisher)),
            tokio::spawn(run_subscriber(shared.clone(), subscriber)),
        ]));
        let adapter = RedisAdapter {
            shared,
            tx,
            _tasks: tasks,
        };
        adapter.probe().await?;
        Ok(adapter)
    }

    /// Publishes a hello and waits for it to come back, then for answers.
    async fn probe(&self) -> Result<(), RedisAdapterError> {
        let shared = &self.shared;
        let echo = shared.hello_echo.notified();
        tokio::pin!(echo);
        echo.as_mut().enable();
        let hello = shared.envelope(KIND_HELLO, None, &[]);
        let _ = self.tx.try_send(hello);
        let timeout = shared.options.connect_timeout;
        if tokio::time::timeout(timeout, echo).await.is_err() {
            return Err(RedisAdapterError::Timeout {
                url: shared.url.clone(),
                timeout,
            });
        }
        tokio::time::sleep(shared.options.probe_period).await;
        if shared.name_taken.load(Ordering::Acquire) {
            return Err(RedisAdapterError::NodeNameTaken {
                node: shared.node_name().to_string(),
                channel: shared.channel.clone(),
            });
        }
        Ok(())
    }

    /// The Redis channel this adapter publishes and listens on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The node name this adapter answers to.
    pub fn node_name(&self) -> Arc<str> {
        self.shared.node_name()
    }

    /// The connection state and counters.
    pub fn stats(&self) -> RedisStats {
        let link = self
            .shared
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        RedisStats {
            connected: link.publisher_up && link.subscriber_up,
            outages: link.outages,
            subscriptions: link.subscriptions,
            published: self.shared.published.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            delivered: self.shared.delivered.load(Ordering::Relaxed),
        }
    }

    fn queue(&self, envelope: Bytes) -> Result<(), BroadcastError> {
        self.tx.try_send(envelope).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BroadcastError::Full,
            mpsc::error::TrySendError::Closed(_) => {
                BroadcastError::Disconnected("the redis publisher task has stopped".to_owned())
            }
        })
    }
}

impl fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdapter")
            .field("url", &self.shared.url)
            .field("channel", &self.shared.channel)
            .field("node", &self.shared.node_name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Adapter for RedisAdapter {
    fn start(&self, node_name: &str, inbound: Inbound) {
        let shared = &self.shared;
        if *shared.node_name() != *node_name {
            tracing::error!(
                configured = %shared.node_name(),
                pubsub = node_name,
                channel = %shared.channel,
                "the PubSub's node name differs from RedisOptions' node name; using the PubSub's, \
                 which was not probed for uniqueness (a clash will be logged as an error)"
            );
            *shared.node.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(node_name);
            let _ = self.tx.try_send(shared.envelope(KIND_HELLO, None, &[]));
        }
        if shared.inbound.set(inbound).is_err() {
            tracing::error!(
                node = node_name,
                "a RedisAdapter serves one PubSub; it was started again and keeps feeding the first"
            );
        }
    }

    fn broadcast(&self, frame: Bytes) -> Result<(), BroadcastError> {
        self.queue(self.shared.envelope(KIND_BROADCAST, None, &frame))
    }

    fn direct_broadcast(&self, node: &str, frame: Bytes) -> Result<(), BroadcastError> {
        self.queue(self.shared.envelope(KIND_DIRECT, Some(node), &frame))
    }
}

impl Shared {
    fn node_name(&self) -> Arc<str> {
        self.node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn envelope(&self, kind: u8, target: Option<&str>, frame: &[u8]) -> Bytes {
        encode(kind, self.instance, &self.node_name(), target, frame)
    }

    async fn connect_publisher(&self) -> Result<MultiplexedConnection, RedisAdapterError> {
        let timeout = self.options.connect_timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        match tokio::time::timeout(
            timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(self.connect_error(source)),
            Err(_) => Err(self.timeout_error()),
        }
    }

    async fn connect_subscriber(&self) -> Result<(PubSubSink, PubSubStream), RedisAdapterError> {
        let timeout = self.options.connect_timeout;
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, RedisError>(pubsub.split())
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(self.connect_error(source)),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn connect_error(&self, source: RedisError) -> RedisAdapterError {
        RedisAdapterError::Connect {
            url: self.url.clone(),
            source,
        }
    }

    fn timeout_error(&self) -> RedisAdapterError {
        RedisAdapterError::Timeout {
            url: self.url.clone(),
            timeout: self.options.connect_timeout,
        }
    }

    /// Records that one connection went down or came back; logs once per outage.
    fn set_link(&self, publisher: bool, up: bool, why: &dyn fmt::Display) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let was_up = link.publisher_up && link.subscriber_up;
        if publisher {
            link.publisher_up = up;
        } else {
            link.subscriber_up = up;
            if up {
                link.subscriptions += 1;
            }
        }
        let is_up = link.publisher_up && link.subscriber_up;
        if was_up && !is_up {
            link.outages += 1;
            self.metrics.outages.increment(1);
            self.metrics.connected.set(0.0);
            tracing::warn!(
                url = %self.url,
                channel = %self.channel,
                node = %self.node_name(),
                error = %why,
                "lost the connection to redis; messages are dropped until it is back, then \
                 trackers resynchronise through transfers"
            );
        } else if !was_up && is_up {
            self.metrics.reconnects.increment(1);
            self.metrics.connected.set(1.0);
            tracing::info!(
                url = %self.url,
                channel = %self.channel,
                node = %self.node_name(),
                "reconnected to redis and subscribed again"
            );
        }
    }

    /// Handles one message from the channel.
    fn receive(&self, payload: &[u8]) {
        let Some(envelope) = self.decode(payload) else {
            return;
        };
        let Some(part) = envelope.part() else {
            self.handle(&envelope);
            return;
        };
        if envelope.origin == &*self.node_name() && envelope.instance == self.instance {
            return; // our own, back from Redis
        }
        let added = self
            .partials()
            .add(envelope.origin, envelope.instance, &part, Instant::now());
        let whole = match added {
            Assembled::Incomplete => return,
            Assembled::Whole(whole) => whole,
            Assembled::Malformed(why) => {
                tracing::warn!(channel = %self.channel, origin = envelope.origin, why, "malformed part on the redis channel dropped");
                return;
            }
            Assembled::Lost(why) => {
                // Redis went away, or the sender's pipeline failed, between two parts.
                tracing::debug!(channel = %self.channel, origin = envelope.origin, why, "an envelope in parts was dropped");
                return;
            }
        };
        match self.decode(&whole) {
            Some(inner) if inner.part().is_some() => {
                tracing::warn!(channel = %self.channel, origin = envelope.origin, "an envelope in parts held another part; dropped");
            }
            Some(inner) => self.handle(&inner),
            None => {}
        }
    }

    /// `bytes` decoded as an envelope; `None`, logged, when they are not one.
    fn decode<'a>(&self, bytes: &'a [u8]) -> Option<Envelope<'a>> {
        decode(bytes)
            .inspect_err(|why| {
                tracing::warn!(channel = %self.channel, why, len = bytes.len(), "malformed message on the redis channel dropped");
            })
            .ok()
    }

    /// The envelopes arriving in parts.
    fn partials(&self) -> MutexGuard<'_, Assembler> {
        self.partials.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one whole envelope.
    fn handle(&self, envelope: &Envelope<'_>) {
        let me = self.node_name();
        let mine = *envelope.origin == *me;
        let clash = mine && envelope.instance != self.instance;
        match envelope.kind {
            Kind::Hello if clash => {
                tracing::warn!(node = %me, channel = %self.channel, "a node tried to join with this node's name; told it the name is taken");
                let answer = encode(
                    KIND_NAME_TAKEN,
                    self.instance,
                    &me,
                    None,
                    &envelope.instance.to_be_bytes(),
                );
                if let Some(tx) = self.replies.get().and_then(mpsc::WeakSender::upgrade) {
                    let _ = tx.try_send(answer);
                }
                // A hello that crosses ours while we probe: both nodes refuse the name.
                self.name_taken.store(true, Ordering::Release);
            }
            Kind::Hello => {
                if envelope.instance == self.instance {
                    self.hello_echo.notify_one();
                }
            }
            Kind::NameTaken(instance) => {
                if instance == self.instance {
                    self.name_taken.store(true, Ordering::Release);
                    tracing::error!(node = %me, channel = %self.channel, "another node on the redis channel already uses this node name");
                }
            }
            Kind::Broadcast | Kind::Direct(_) if clash => {
                self.name_taken.store(true, Ordering::Release);
                let first = self
                    .clashes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(envelope.instance);
                if first {
                    tracing::error!(node = %me, channel = %self.channel, "another node on the redis channel uses this node name: its broadcasts are ignored and direct messages may reach either node");
                }
                if let Kind::Direct(target) = envelope.kind
                    && *target == *me
                {
                    self.deliver(envelope.frame);
                }
            }
            Kind::Broadcast => {
                if !mine {
                    self.deliver(envelope.frame);
                }
            }
            Kind::Direct(target) => {
                if *target == *me {
                    self.deliver(envelope.frame);
                }
            }
            Kind::Part { .. } => {} // taken apart by `receive`
        }
    }

    fn deliver(&self, frame: &[u8]) {
        let Some(inbound) = self.inbound.get() else {
            // Not started yet: nothing to deliver to. Trackers catch up by transfer.
            return;
        };
        match inbound.deliver(Bytes::copy_from_slice(frame)) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.received.increment(1);
                self.metrics.received_bytes.increment(frame.len() as u64);
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "malformed frame from redis dropped");
            }
        }
    }
}

/// Drains the queue into PUBLISH pipelines; reconnects with backoff, dropping meanwhile.
async fn run_publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Bytes>,
    conn: MultiplexedConnection,
) {
    let mut conn = Some(conn);
    let mut seen_losses = 0;
    let mut backoff = Backoff::new(&shared.options);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // What the batch is published as (see `split`), and the number of the last envelope sent
    // in parts.
    let mut messages = Vec::with_capacity(MAX_BATCH);
    let mut seq = 0;
    loop {
        let Some(c) = conn.as_mut() else {
            let retry_at = Instant::now() + backoff.next();
            if drop_until(&shared, &mut rx, tokio::time::sleep_until(retry_at))
                .await
                .is_none()
            {
                return;
            }
            seen_losses = shared.subscriber_losses.load(Ordering::Acquire);
            let connect = shared.connect_publisher();
            match drop_until(&shared, &mut rx, connect).await {
                None => return,
                Some(Ok(c)) => {
                    conn = Some(c);
                    backoff.reset();
                    shared.set_link(true, true, &"publisher reconnected");
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "redis publisher reconnect failed");
                }
            }
            continue;
        };
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let losses = shared.subscriber_losses.load(Ordering::Acquire);
        if losses != seen_losses {
            // Redis went away since this connection was made: it is probably dead even if it
            // has not said so yet. Replace it before publishing, without a second warning.
            seen_losses = losses;
            match shared.connect_publisher().await {
                Ok(fresh) => *c = fresh,
                Err(e) => {
                    shared
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    shared.metrics.drops.increment(batch.len() as u64);
                    batch.clear();
                    conn = None;
                    shared.set_link(true, false, &e);
                    continue;
                }
            }
        }
        for envelope in batch.drain(..) {
            split(&shared, &mut seq, envelope, &mut messages);
        }
        // Pipelines of at most MAX_PIPELINE_BYTES past their first message (see MAX_MESSAGE).
        let mut sent = 0;
        let mut failed = None;
        while sent < messages.len() {
            let mut pipe = redis::pipe();
            let (mut end, mut bytes) = (sent, 0);
            while end < messages.len()
                && (end == sent || bytes + messages[end].0.len() <= MAX_PIPELINE_BYTES)
            {
                pipe.cmd("PUBLISH")
                    .arg(&shared.channel)
                    .arg(&messages[end].0[..])
                    .ignore();
                bytes += messages[end].0.len();
                end += 1;
            }
            if let Err(e) = pipe.query_async::<()>(c).await {
                failed = Some(e);
                break;
            }
            let envelopes = whole_envelopes(&messages[sent..end]);
            shared.published.fetch_add(envelopes, Ordering::Relaxed);
            shared.metrics.published.increment(envelopes);
            shared.metrics.published_bytes.increment(bytes as u64);
            sent = end;
        }
        if let Some(e) = failed {
            // Whatever was not sent is lost, and with it an envelope cut between its parts
            // (its receivers drop the parts they got).
            let lost = whole_envelopes(&messages[sent..]);
            shared.dropped.fetch_add(lost, Ordering::Relaxed);
            shared.metrics.drops.increment(lost);
            conn = None;
            shared.set_link(true, false, &e);
        }
        messages.clear();
    }
}

/// How many envelopes end among `messages` (see [`split`]).
fn whole_envelopes(messages: &[(Bytes, bool)]) -> u64 {
    messages.iter().filter(|(_, last)| *last).count() as u64
}

/// Appends `envelope` to `out` as one message, or as parts of [`MAX_MESSAGE`] bytes if it is
/// longer, numbered by `seq`; the flag marks the last message of each envelope. An envelope
/// of more than [`MAX_PARTS`] parts is dropped.
fn split(shared: &Shared, seq: &mut u64, envelope: Bytes, out: &mut Vec<(Bytes, bool)>) {
    if envelope.len() <= MAX_MESSAGE {
        out.push((envelope, true));
        return;
    }
    let count = envelope.len().div_ceil(MAX_MESSAGE);
    let Some(count) = u32::try_from(count).ok().filter(|&n| n <= MAX_PARTS) else {
        tracing::warn!(channel = %shared.channel, len = envelope.len(), "a message too long for the redis channel was dropped");
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        shared.metrics.drops.increment(1);
        return;
    };
    *seq += 1;
    let origin = shared.node_name();
    for (index, bytes) in (0..count).zip(envelope.chunks(MAX_MESSAGE)) {
        let part = Part {
            seq: *seq,
            index,
            count,
            bytes,
        };
        out.push((
            encode_part(shared.instance, &origin, &part),
            index + 1 == count,
        ));
    }
}

/// Runs `fut` while dropping whatever is queued; `None` when the queue is closed.
async fn drop_until<F: Future>(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Bytes>,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            msg = rx.recv() => match msg {
                Some(_) => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.drops.increment(1);
                }
                None => return None,
            },
        }
    }
}

/// Reads the channel; on loss, subscribes again with backoff.
async fn run_subscriber(shared: Arc<Shared>, first: (PubSubSink, PubSubStream)) {
    let mut conn = Some(first);
    let mut backoff = Backoff::new(&shared.options);
    loop {
        let (mut sink, mut stream) = match conn.take() {
            Some(c) => c,
            None => {
                tokio::time::sleep(backoff.next()).await;
                match shared.connect_subscriber().await {
                    Ok(c) => {
                        backoff.reset();
                        shared.set_link(false, true, &"subscribed again");
                        c
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis subscriber reconnect failed");
                        continue;
                    }
                }
            }
        };
        let interval = shared.options.ping_interval;
        let mut ping_at = Instant::now() + interval;
        let why: String = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => shared.receive(msg.get_payload_bytes()),
                    None => break "the subscription connection closed".to_owned(),
                },
                () = tokio::time::sleep_until(ping_at) => {
                    let expired = shared.partials().expire(Instant::now());
                    if expired > 0 {
                        tracing::debug!(channel = %shared.channel, expired, "envelopes in parts whose senders stopped halfway were dropped");
                    }
                    let ping = sink.ping::<redis::Value>();
                    match tokio::time::timeout(shared.options.connect_timeout, ping).await {
                        Ok(Ok(_)) => ping_at = Instant::now() + interval,
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "redis did not answer a ping".to_owned(),
                    }
                }
            }
        };
        shared.subscriber_losses.fetch_add(1, Ordering::AcqRel);
        // Parts published while this node is away are lost: the envelopes they began are.
        shared.partials().clear();
        shared.set_link(false, false, &why);
    }
}

/// 100 ms doubling to 5 s (by default).
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(options: &RedisOptions) -> Self {
        Backoff {
            min: options.backoff_min,
            max: options.backoff_max,
            next: options.backoff_min,
        }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    Broadcast,
    Direct(&'a str),
    Hello,
    NameTaken(u64),
    /// Part `index` of `count` of the sender's envelope number `seq`; the frame holds its
    /// bytes.
    Part {
        seq: u64,
        index: u32,
        count: u32,
    },
}

/// One part of an envelope, as received.
#[derive(Debug)]
pub(crate) struct Part<'a> {
    pub(crate) seq: u64,
    pub(crate) index: u32,
    pub(crate) count: u32,
    pub(crate) bytes: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) kind: Kind<'a>,
    pub(crate) instance: u64,
    pub(crate) origin: &'a str,
    pub(crate) frame: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// The part it is, if it is one.
    pub(crate) fn part(&self) -> Option<Part<'a>> {
        match self.kind {
            Kind::Part { seq, index, count } => Some(Part {
                seq,
                index,
                count,
                bytes: self.frame,
            }),
            _ => None,
        }
    }
}

pub(crate) fn encode(
    kind: u8,
    instance: u64,
    origin: &str,
    target: Option<&str>,
    rest: &[u8],
) -> Bytes {
    let target = target.unwrap_or("");
    let mut buf = BytesMut::with_capacity(14 + origin.len() + target.len() + rest.len());
    buf.put_u8(VERSION);
    buf.put_u8(kind);
    buf.put_u64(instance);
    put_str(&mut buf, origin);
    if kind == KIND_DIRECT {
        put_str(&mut buf, target);
    }
    buf.put_slice(rest);
    buf.freeze()
}

/// One part of a long envelope (see [`MAX_MESSAGE`]).
pub(crate) fn encode_part(instance: u64, origin: &str, part: &Part<'_>) -> Bytes {
    let mut buf = BytesMut::with_capacity(28 + origin.len() + part.bytes.len());
    buf.put_u8(VERSION);
    buf.put_u8(KIND_PART);
    buf.put_u64(instance);
    put_str(&mut buf, origin);
    buf.put_u64(part.seq);
    buf.put_u32(part.index);
    buf.put_u32(part.count);
    buf.put_slice(part.bytes);
    buf.freeze()
}

fn put_str(buf: &mut BytesMut, s: &str) {
    // Node names longer than 64 KiB are cut; `decode` then rejects the envelope.
    let len = s.len().min(u16::MAX as usize);
    buf.put_u16(len as u16);
    buf.put_slice(&s.as_bytes()[..len]);
}

pub(crate) fn decode(mut buf: &[u8]) -> Result<Envelope<'_>, &'static str> {
    if buf.remaining() < 10 {
        return Err("truncated header");
    }
    if buf.get_u8() != VERSION {
        return Err("unknown envelope version");
    }
    let kind = buf.get_u8();
    let instance = buf.get_u64();
    let origin = take_str(&mut buf)?;
    let kind = match kind {
        KIND_BROADCAST => Kind::Broadcast,
        KIND_DIRECT => Kind::Direct(take_str(&mut buf)?),
        KIND_HELLO => Kind::Hello,
        KIND_NAME_TAKEN => {
            if buf.remaining() != 8 {
                return Err("bad name-taken answer");
            }
            Kind::NameTaken(buf.get_u64())
        }
        KIND_PART => {
            if buf.remaining() < 16 {
                return Err("truncated part header");
            }
            Kind::Part {
                seq: buf.get_u64(),
                index: buf.get_u32(),
                count: buf.get_u32(),
            }
        }
        _ => return Err("unknown envelope kind"),
    };
    Ok(Envelope {
        kind,
        instance,
        origin,
        frame: buf,
    })
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, &'static str> {
    if buf.remaining() < 2 {
        return Err("truncated name length");
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return Err("truncated name");
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    std::str::from_utf8(s).map_err(|_| "node name is not UTF-8")
}

fn random_instance() -> u64 {
    // Two draws: the process-wide counter keeps instances in one process apart.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    crate::meta::random_u64() ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let b = encode(KIND_BROADCAST, 7, "a", None, b"frame");
        let e = decode(&b).unwrap();
        assert_eq!(
            e,
            Envelope {
                kind: Kind::Broadcast,
                instance: 7,
                origin: "a",
                frame: b"frame",
            }
        );
        let d = encode(KIND_DIRECT, 8, "a", Some("bé"), b"");
        assert_eq!(decode(&d).unwrap().kind, Kind::Direct("bé"));
        let t = encode(KIND_NAME_TAKEN, 9, "a", None, &42u64.to_be_bytes());
        assert_eq!(decode(&t).unwrap().kind, Kind::NameTaken(42));
        let h = encode(KIND_HELLO, 9, "a", None, &[]);
        assert_eq!(decode(&h).unwrap().kind, Kind::Hello);
    }

    /// `envelope` in parts of `size` bytes, as [`split`] publishes it in parts of
    /// [`MAX_MESSAGE`].
    fn parts_of(instance: u64, origin: &str, seq: u64, envelope: &[u8], size: usize) -> Vec<Bytes> {
        let count = envelope.len().div_ceil(size) as u32;
        (0..count)
            .zip(envelope.chunks(size))
            .map(|(index, bytes)| {
                let part = Part {
                    seq,
                    index,
                    count,
                    bytes,
                };
                encode_part(instance, origin, &part)
            })
            .collect()
    }

    fn add(assembler: &mut Assembler, message: &[u8]) -> Assembled {
        let e = decode(message).unwrap();
        let part = e.part().unwrap_or_else(|| panic!("not a part: {e:?}"));
        assembler.add(e.origin, e.instance, &part, Instant::now())
    }

    #[test]
    fn long_envelopes_are_put_together_again() {
        let frame: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let whole = encode(KIND_BROADCAST, 7, "a", None, &frame);
        let parts = parts_of(7, "a", 1, &whole, MAX_MESSAGE);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.len() <= MAX_MESSAGE + 28 + 1));
        // Another sender's parts in between do not mix with them.
        let other = encode(KIND_DIRECT, 9, "b", Some("a"), &frame[..40_000]);
        let others = parts_of(9, "b", 5, &other, MAX_MESSAGE);
        let mut assembler = Assembler::default();
        assert_eq!(add(&mut assembler, &parts[0]), Assembled::Incomplete);
        assert_eq!(add(&mut assembler, &others[0]), Assembled::Incomplete);
        assert_eq!(add(&mut assembler, &parts[1]), Assembled::Incomplete);
        assert_eq!(
            add(&mut assembler, &others[1]),
            Assembled::Whole(other.to_vec())
        );
        assert_eq!(add(&mut assembler, &parts[2]), Assembled::Incomplete);
        assert_eq!(
            add(&mut assembler, &parts[3]),
            Assembled::Whole(whole.to_vec())
        );
        assert!(assembler.partials.is_empty());
        // The same sender's next instance (a restart) is another sender.
        let again = parts_of(8, "a", 1, &whole, MAX_MESSAGE);
        assert_eq!(add(&mut assembler, &parts[0]), Assembled::Incomplete);
        assert_eq!(add(&mut assembler, &again[0]), Assembled::Incomplete);
        assert_eq!(assembler.partials.len(), 2);
    }

    #[test]
    fn a_lost_part_drops_its_envelope_only() {
        let whole = encode(KIND_BROADCAST, 7, "a", None, &[1u8; 70_000]);
        let first = parts_of(7, "a", 1, &whole, MAX_MESSAGE);
        let second = parts_of(7, "a", 2, &whole, MAX_MESSAGE);
        assert_eq!(first.len(), 3);
        let mut assembler = Assembler::default();
        // Part 1 lost: part 2 drops the envelope.
        assert_eq!(add(&mut assembler, &first[0]), Assembled::Incomplete);
        assert!(matches!(add(&mut assembler, &first[2]), Assembled::Lost(_)));
        assert!(assembler.partials.is_empty());
        // Part 0 lost: the others are dropped as they come.
        assert!(matches!(add(&mut assembler, &first[1]), Assembled::Lost(_)));
        assert!(matches!(add(&mut assembler, &first[2]), Assembled::Lost(_)));
        // The sender's next envelope begins before the last one ended: the next one counts.
        assert_eq!(add(&mut assembler, &first[0]), Assembled::Incomplete);
        assert!(matches!(
            add(&mut assembler, &second[0]),
            Assembled::Lost(_)
        ));
        assert_eq!(add(&mut assembler, &second[1]), Assembled::Incomplete);
        assert_eq!(
            add(&mut assembler, &second[2]),
            Assembled::Whole(whole.to_vec())
        );
        // A part of another envelope in the middle (same sender, another number).
        assert_eq!(add(&mut assembler, &first[0]), Assembled::Incomplete);
        assert!(matches!(
            add(&mut assembler, &second[1]),
            Assembled::Lost(_)
        ));
        assert!(assembler.partials.is_empty());
        // An outage drops what was begun.
        assert_eq!(add(&mut assembler, &first[0]), Assembled::Incomplete);
        assembler.clear();
        assert!(matches!(add(&mut assembler, &first[1]), Assembled::Lost(_)));
        // So does its sender's death halfway, once PARTIAL_TIMEOUT has passed.
        let start = Instant::now();
        assert_eq!(add(&mut assembler, &first[0]), Assembled::Incomplete);
        assert_eq!(assembler.expire(start + PARTIAL_TIMEOUT / 2), 0);
        assert_eq!(assembler.expire(start + PARTIAL_TIMEOUT * 2), 1);
        assert!(assembler.partials.is_empty());
    }

    #[test]
    fn malformed_parts_are_refused() {
        let mut assembler = Assembler::default();
        let long = vec![0u8; MAX_MESSAGE + 1];
        for (index, count, bytes) in [
            (0, 1, &b"x"[..]),
            (2, 2, b"x"),
            (0, 0, b"x"),
            (0, MAX_PARTS + 1, b"x"),
            (0, 3, b""),
            (0, 3, &long[..]),
        ] {
            let part = Part {
                seq: 1,
                index,
                count,
                bytes,
            };
            let added = assembler.add("a", 1, &part, Instant::now());
            assert!(
                matches!(added, Assembled::Malformed(_)),
                "{index}/{count}: {added:?}"
            );
        }
        assert!(assembler.partials.is_empty());
        // At most MAX_PARTIALS senders at once; those begun go on.
        let first = |seq| Part {
            seq,
            index: 0,
            count: 2,
            bytes: b"x",
        };
        for n in 0..MAX_PARTIALS {
            assert_eq!(
                assembler.add(&format!("n{n}"), 1, &first(1), Instant::now()),
                Assembled::Incomplete
            );
        }
        assert!(matches!(
            assembler.add("late", 1, &first(1), Instant::now()),
            Assembled::Malformed(_)
        ));
        let last = Part {
            seq: 1,
            index: 1,
            count: 2,
            bytes: b"y",
        };
        assert_eq!(
            assembler.add("n0", 1, &last, Instant::now()),
            Assembled::Whole(b"xy".to_vec())
        );
        // A truncated part header.
        assert!(decode(&encode(KIND_PART, 1, "a", None, &[0; 15])).is_err());
        let part = encode_part(1, "a", &last);
        assert_eq!(
            decode(&part).unwrap().kind,
            Kind::Part {
                seq: 1,
                index: 1,
                count: 2
            }
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [&b""[..], b"\x02", b"\x01\x09", b"hello world!!"] {
            assert!(decode(bad).is_err());
        }
        let good = encode(KIND_DIRECT, 1, "origin", Some("target"), b"xyz");
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
        assert!(decode(&good[..good.len() - 4]).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::new(&RedisOptions::new("a"));
        let seq: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
