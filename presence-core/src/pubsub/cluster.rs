//! Several nodes in one process: the in-process adapter, with fault injection for tests.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::adapter::{Adapter, Inbound};
use super::error::BroadcastError;

/// Capacity of each node's queue of delayed frames; beyond it frames are dropped (and logged).
const DELAY_QUEUE_CAPACITY: usize = 65_536;

/// Faults applied to the frames on a link between two nodes.
///
/// # Examples
///
/// ```
/// use presence_core::pubsub::LinkFaults;
/// use std::time::Duration;
///
/// let lossy = LinkFaults { drop: 0.2, duplicate: 0.1, jitter: Duration::from_millis(50), ..LinkFaults::NONE };
/// assert!(lossy.reorders());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Probability (0 to 1) that a frame is lost.
    pub drop: f64,
    /// Probability (0 to 1) that a frame is delivered twice.
    pub duplicate: f64,
    /// Fixed delay added to every frame.
    pub delay: Duration,
    /// Random extra delay, up to this much, per frame: frames overtake each other.
    pub jitter: Duration,
}

impl LinkFaults {
    /// A perfect link: frames arrive at once, in order, exactly once.
    pub const NONE: LinkFaults = LinkFaults {
        drop: 0.0,
        duplicate: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// Whether frames on this link can arrive out of order.
    pub fn reorders(&self) -> bool {
        !self.jitter.is_zero()
    }
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self::NONE
    }
}

/// Connects several [`PubSub`](super::PubSub) nodes in one process.
///
/// It is the in-process cluster transport (each frame is encoded and decoded, as over a
/// network) and the test harness for replication: links can drop, delay, duplicate and reorder
/// frames, and nodes can be partitioned from each other. Randomness is seeded
/// ([`seed`](Self::seed)), so a failing run can be replayed. Delays use tokio's clock, so they
/// follow a paused test clock.
///
/// # Examples
///
/// ```
/// use presence_core::pubsub::{LocalCluster, Message, PubSub};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = LocalCluster::new();
/// let a = PubSub::builder("a").adapter(cluster.adapter()).build();
/// let b = PubSub::builder("b").adapter(cluster.adapter()).build();
/// let mut sub = b.subscribe("t");
/// a.broadcast(Message::json("t", "hello", serde_json::json!({})))?;
/// assert_eq!(sub.recv().await?.event(), "hello");
///
/// cluster.partition(&["a"], &["b"]);
/// a.broadcast(Message::json("t", "lost", serde_json::json!({})))?;
/// assert!(sub.try_recv().is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct LocalCluster {
    inner: Arc<ClusterInner>,
}

#[derive(Default)]
struct ClusterInner {
    state: Mutex<ClusterState>,
}

#[derive(Default)]
struct ClusterState {
    nodes: HashMap<Arc<str>, Node>,
    default_faults: LinkFaults,
    link_faults: HashMap<(Arc<str>, Arc<str>), LinkFaults>,
    cut: HashSet<(Arc<str>, Arc<str>)>,
    rng: Rng,
    delivered: u64,
    dropped: u64,
}

struct Node {
    inbound: Inbound,
    delayed: Option<(mpsc::Sender<Delayed>, JoinHandle<()>)>,
}

struct Delayed {
    due: Instant,
    frame: Bytes,
}

impl Drop for ClusterState {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            if let Some((_, task)) = &node.delayed {
                task.abort();
            }
        }
    }
}

impl LocalCluster {
    /// An empty cluster with perfect links.
    pub fn new() -> Self {
        Self::default()
    }

    /// An adapter that joins this cluster; give one to each node's
    /// [`PubSubBuilder::adapter`](super::PubSubBuilder::adapter).
    pub fn adapter(&self) -> ClusterAdapter {
        ClusterAdapter {
            cluster: self.clone(),
            name: std::sync::OnceLock::new(),
        }
    }

    /// Seeds the fault randomness.
    pub fn seed(&self, seed: u64) {
        self.lock().rng = Rng::new(seed);
    }

    /// Sets the faults of every link without its own setting.
    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().default_faults = faults;
    }

    /// Sets the faults of the link from `from` to `to` (one direction).
    pub fn set_link_faults(&self, from: &str, to: &str, faults: LinkFaults) {
        self.lock()
            .link_faults
            .insert((Arc::from(from), Arc::from(to)), faults);
    }

    /// Cuts every link between a node of `left` and a node of `right`, both ways.
    pub fn partition(&self, left: &[&str], right: &[&str]) {
        let mut state = self.lock();
        for l in left {
            for r in right {
                state.cut.insert((Arc::from(*l), Arc::from(*r)));
                state.cut.insert((Arc::from(*r), Arc::from(*l)));
            }
        }
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: &str) {
        let others: Vec<Arc<str>> = self.lock().nodes.keys().cloned().collect();
        let others: Vec<&str> = others.iter().map(|s| &**s).filter(|s| *s != node).collect();
        self.partition(&[node], &others);
    }

    /// Restores every cut link and clears every fault.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.link_faults.clear();
        state.default_faults = LinkFaults::NONE;
    }

    /// The names of the nodes currently joined.
    pub fn nodes(&self) -> Vec<String> {
        let mut state = self.lock();
        state.nodes.retain(|_, n| n.inbound.is_alive());
        let mut names: Vec<String> = state.nodes.keys().map(|s| s.to_string()).collect();
        names.sort();
        names
    }

    /// How many frames were delivered and dropped so far.
    pub fn counters(&self) -> (u64, u64) {
        let state = self.lock();
        (state.delivered, state.dropped)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, from: &Arc<str>, to: Option<&str>, frame: &Bytes) {
        // Decide every delivery under the lock, deliver after releasing it.
        let mut now_list: Vec<Inbound> = Vec::new();
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.nodes.retain(|_, n| n.inbound.is_alive());
            let mut targets: Vec<Arc<str>> = match to {
                Some(name) => state
                    .nodes
                    .keys()
                    .filter(|k| &***k == name)
                    .cloned()
                    .collect(),
                None => state.nodes.keys().filter(|k| *k != from).cloned().collect(),
            };
            // Visit targets in a fixed order: the random draws are taken per target, so the
            // `HashMap`'s (randomly seeded) iteration order would otherwise make a seeded run
            // unreproducible.
            targets.sort_unstable();
            for target in targets {
                let link = (from.clone(), target.clone());
                if state.cut.contains(&link) {
                    state.dropped += 1;
                    continue;
                }
                let faults = state
                    .link_faults
                    .get(&link)
                    .copied()
                    .unwrap_or(state.default_faults);
                if state.rng.chance(faults.drop) {
                    state.dropped += 1;
                    continue;
                }
                let copies = if state.rng.chance(faults.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let extra = state.rng.below(faults.jitter);
                    let delay = faults.delay + extra;
                    let Some(node) = state.nodes.get_mut(&target) else {
                        continue;
                    };
                    state.delivered += 1;
                    if delay.is_zero() {
                        now_list.push(node.inbound.clone());
                        continue;
                    }
                    let (tx, _) = node
                        .delayed
                        .get_or_insert_with(|| spawn_delay_queue(node.inbound.clone()));
                    let item = Delayed {
                        due: Instant::now() + delay,
                        frame: frame.clone(),
                    };
                    if tx.try_send(item).is_err() {
                        state.delivered -= 1;
                        state.dropped += 1;
                        tracing::warn!(node = %target, "local cluster delay queue full; frame dropped");
                    }
                }
            }
        }
        for inbound in now_list {
            if let Err(e) = inbound.deliver(frame.clone()) {
                tracing::warn!(error = %e, "local cluster could not deliver a frame");
            }
        }
    }
}

/// Holds frames until they are due and delivers them in due order.
fn spawn_delay_queue(inbound: Inbound) -> (mpsc::Sender<Delayed>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Delayed>(DELAY_QUEUE_CAPACITY);
    let task = tokio::spawn(async move {
        let mut heap: BinaryHeap<std::cmp::Reverse<(Instant, u64, Bytes)>> = BinaryHeap::new();
        let mut seq = 0u64;
        loop {
            let next_due = heap.peek().map(|std::cmp::Reverse((due, _, _))| *due);
            tokio::select! {
                item = rx.recv() => match item {
                    Some(Delayed { due, frame }) => {
                        seq += 1;
                        heap.push(std::cmp::Reverse((due, seq, frame)));
                    }
                    None => break,
                },
                () = sleep_until_opt(next_due) => {
                    let now = Instant::now();
                    while let Some(std::cmp::Reverse((due, _, _))) = heap.peek() {
                        if *due > now {
                            break;
                        }
                        if let Some(std::cmp::Reverse((_, _, frame))) = heap.pop()
                            && let Err(e) = inbound.deliver(frame)
                        {
                            tracing::warn!(error = %e, "local cluster could not deliver a frame");
                        }
                    }
                    if !inbound.is_alive() {
                        break;
                    }
                }
            }
        }
    });
    (tx, task)
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("nodes", &self.nodes())
            .finish_non_exhaustive()
    }
}

/// One node's attachment to a [`LocalCluster`].
pub struct ClusterAdapter {
    cluster: LocalCluster,
    name: std::sync::OnceLock<Arc<str>>,
}

impl fmt::Debug for ClusterAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAdapter")
            .field("node", &self.name.get())
            .finish_non_exhaustive()
    }
}

impl Adapter for ClusterAdapter {
    fn start(&self, node_name: &str, inbound: Inbound) {
        let name: Arc<str> = Arc::from(node_name);
        let _ = self.name.set(name.clone());
        let mut state = self.cluster.lock();
        let previous = state.nodes.insert(
            name,
            Node {
                inbound,
                delayed: None,
            },
        );
        if let Some(prev) = previous {
            if prev.inbound.is_alive() {
                tracing::error!(
                    node = node_name,
                    "two live nodes share one name in a local cluster; the newer one takes the name"
                );
            }
            if let Some((_, task)) = prev.delayed {
                task.abort();
            }
        }
    }

    fn broadcast(&self, frame: Bytes) -> Result<(), BroadcastError> {
        if let Some(name) = self.name.get() {
            self.cluster.send(name, None, &frame);
        }
        Ok(())
    }

    fn direct_broadcast(&self, node: &str, frame: Bytes) -> Result<(), BroadcastError> {
        if let Some(name) = self.name.get() {
            self.cluster.send(name, Some(node), &frame);
        }
        Ok(())
    }
}

/// A small seeded generator (xorshift64*), enough for fault injection.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // xorshift needs a non-zero state. Mix the seed with splitmix64's finalizer (a
        // bijection) rather than `seed | 1`, which gave seeds 2k and 2k + 1 the same stream.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(z.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % (max.as_nanos() as u64 + 1))
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new(0x9E37_79B9_7F4A_7C15)
    }
}
