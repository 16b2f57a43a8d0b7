//! Fastlane: one pub/sub subscription and one fan-out task per topic with joined sockets.
//!
//! A broadcast to a topic reaches this node's [`Hub`] for the topic once. The hub encodes it
//! at most once per serializer (V1 text, V2 text or V2 binary, chosen by the payload) and puts
//! the same encoded frame (a refcounted `Arc<str>` or `Bytes`) in the outbound queue of every
//! registered socket. The hub and its task live exactly as long as some socket is registered:
//! dropping the last [`HubRegistration`] drops the hub, which aborts its task.
//!
//! `broadcast_from` reaches the hub's sockets through a bounded queue to the hub task
//! ([`INJECT_QUEUE`] messages), in order with the topic's other broadcasts; when it is full the
//! message is dropped for them, as when the hub's subscription lags.
//!
//! A hub that falls behind has dropped broadcasts for all its sockets, which would stay out
//! of sync (presence diffs lost) until they rejoin. So it makes them rejoin: it stops every
//! registered channel with [`StopReason::Lagged`], which pushes `phx_error`; phoenix.js
//! rejoins and gets a fresh `presence_state`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use std::time::Duration;

use presence_core::PubSub;
use presence_core::presence::PRESENCE_DIFF;
use presence_core::pubsub::{
    BroadcastError, Message, Payload, RecvError, SubscriberId, Subscription,
};
use presence_core::tracker::PresenceCount;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::StopReason;
use crate::cmdq;
use crate::context::Cmd;
use crate::outbox::{DiffRun, Outbox};
use crate::protocol::{Out, Vsn};

/// Capacity of a hub's `broadcast_from` queue, as the pub/sub's default subscription queue.
pub(crate) const INJECT_QUEUE: usize = presence_core::pubsub::DEFAULT_QUEUE_CAPACITY;

/// The hubs of one socket endpoint on this node, by topic.
#[derive(Debug, Clone)]
pub(crate) struct Hubs {
    inner: Arc<HubsInner>,
}

#[derive(Debug)]
struct HubsInner {
    pubsub: PubSub,
    map: Mutex<HashMap<Arc<str>, Weak<Hub>>>,
    next_key: AtomicU64,
    /// Hubs alive.
    live: AtomicUsize,
}

/// One topic's fan-out.
#[derive(Debug)]
pub(crate) struct Hub {
    topic: Arc<str>,
    sub_id: SubscriberId,
    shared: Arc<HubShared>,
    inject: mpsc::Sender<(Arc<Message>, u64)>,
    task: JoinHandle<()>,
    hubs: Weak<HubsInner>,
}

struct HubShared {
    topic: Arc<str>,
    targets: RwLock<HashMap<u64, Target>>,
    /// Set by the first count-only channel.
    counter: RwLock<Option<Counter>>,
    /// A `broadcast_from` was dropped: its queue was full.
    lagged: AtomicBool,
    counters: crate::metrics::HubCounters,
    #[cfg(test)]
    encodes: AtomicU64,
}

#[derive(Debug)]
struct Target {
    vsn: Vsn,
    outbox: Outbox,
    /// The registered channel's command queue, to stop it when the hub lags.
    channel: cmdq::WeakSender<Box<Cmd>>,
    /// Counts only: the channel gets `presence_count` instead of `presence_diff`.
    counts: bool,
    /// While the channel joins: broadcasts are held here, sent once its join reply is queued.
    holding: AtomicBool,
    held: Mutex<Option<Vec<HeldFrame>>>,
}

/// A broadcast held for a joining channel: its encoding, and the message (for merging).
type HeldFrame = (Out, Arc<Message>);

/// How many broadcasts a joining channel may have held; past it the channel is resynced.
const HOLD_MAX: usize = 1024;

/// How a hub counts the topic's presences for its count-only channels.
pub(crate) type Counter = Arc<dyn Fn() -> PresenceCount + Send + Sync>;

/// The event count-only channels receive.
pub(crate) const PRESENCE_COUNT: &str = "presence_count";

/// The `presence_count` payload.
pub(crate) fn count_payload(count: PresenceCount) -> Payload {
    Payload::Json(serde_json::json!({"keys": count.keys, "metas": count.metas}))
}

/// A socket's registration with a hub; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct HubRegistration {
    hub: Arc<Hub>,
    key: u64,
}

impl Hubs {
    pub(crate) fn new(pubsub: PubSub) -> Self {
        Hubs {
            inner: Arc::new(HubsInner {
                pubsub,
                map: Mutex::new(HashMap::new()),
                next_key: AtomicU64::new(1),
                live: AtomicUsize::new(0),
            }),
        }
    }

    pub(crate) fn pubsub(&self) -> &PubSub {
        &self.inner.pubsub
    }

    /// A fresh key identifying one socket in every hub.
    pub(crate) fn socket_key(&self) -> u64 {
        self.inner.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a socket may join `topic` when at most `max` topics may have a hub: its hub
    /// exists already, or there is room for one more.
    pub(crate) fn has_room_for(&self, topic: &str, max: usize) -> bool {
        if self.inner.live.load(Ordering::Relaxed) < max {
            return true;
        }
        let map = self
            .inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(topic).is_some_and(|w| w.strong_count() > 0)
    }

    /// Registers the socket `key` for broadcasts on `topic`, starting the hub if needed.
    /// Must be called inside a tokio runtime.
    pub(crate) fn register(
        &self,
        topic: &str,
        key: u64,
        vsn: Vsn,
        outbox: Outbox,
        channel: cmdq::WeakSender<Box<Cmd>>,
        holding: bool,
    ) -> HubRegistration {
        let hub = {
            let mut map = self
                .inner
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match map.get(topic).and_then(Weak::upgrade) {
                Some(hub) => hub,
                None => {
                    let hub = Arc::new(Hub::start(&self.inner, topic));
                    map.insert(hub.topic.clone(), Arc::downgrade(&hub));
                    hub
                }
            }
        };
        hub.shared
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key,
                Target {
                    vsn,
                    outbox,
                    channel,
                    counts: false,
                    holding: AtomicBool::new(holding),
                    held: Mutex::new(holding.then(Vec::new)),
                },
            );
        HubRegistration { hub, key }
    }

    /// The number of live hubs (for tests and metrics).
    #[cfg(test)]
    fn len(&self) -> usize {
        let map = self
            .inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

impl Hub {
    fn start(hubs: &Arc<HubsInner>, topic: &str) -> Hub {
        let sub = hubs.pubsub.subscribe(topic);
        let sub_id = sub.id();
        let shared = Arc::new(HubShared {
            topic: Arc::from(topic),
            targets: RwLock::default(),
            counter: RwLock::default(),
            lagged: AtomicBool::default(),
            counters: crate::metrics::HubCounters::register(),
            #[cfg(test)]
            encodes: AtomicU64::default(),
        });
        let (inject, inject_rx) = mpsc::channel(INJECT_QUEUE);
        let task = tokio::spawn(run(sub, inject_rx, shared.clone()));
        hubs.live.fetch_add(1, Ordering::Relaxed);
        Hub {
            topic: Arc::from(topic),
            sub_id,
            shared,
            inject,
            task,
            hubs: Arc::downgrade(hubs),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(hubs) = self.hubs.upgrade() {
            hubs.live.fetch_sub(1, Ordering::Relaxed);
            let mut map = hubs.map.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(&self.topic).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&self.topic);
                shrink_if_sparse(&mut map);
            }
        }
    }
}

impl HubRegistration {
    /// Broadcasts to every subscriber of the topic on every node except the socket that owns
    /// this registration.
    pub(crate) fn broadcast_from(
        &self,
        pubsub: &PubSub,
        message: Arc<Message>,
    ) -> Result<(), BroadcastError> {
        // Other local subscribers and other nodes get it through the pub/sub, skipping the hub;
        // the hub then delivers to its sockets but this one, in order with what it already got.
        let result = pubsub.broadcast_from(self.hub.sub_id, message.clone());
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.hub.inject.try_send((message, self.key))
        {
            // The hub task has a full queue to work through; it resyncs after its next message.
            self.hub.shared.lagged.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl fmt::Debug for HubShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubShared").finish_non_exhaustive()
    }
}

impl HubRegistration {
    /// Makes this socket's channel count-only: from now on it gets `presence_count` (counted
    /// by `counter`) after each `presence_diff` of the topic, instead of the diff.
    pub(crate) fn counts_only(&self, counter: Counter) {
        let shared = &self.hub.shared;
        shared
            .counter
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(counter);
        if let Some(target) = shared
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&self.key)
        {
            target.counts = true;
        }
    }

    /// Sends what was held while the channel joined, then lets broadcasts through.
    pub(crate) fn release(&self) {
        let targets = self
            .hub
            .shared
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(target) = targets.get(&self.key) else {
            return;
        };
        // Under the lock, so that a fan-out running meanwhile waits and sends after these.
        let mut held = target.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.take() {
            Some(frames) if frames.len() > HOLD_MAX => {
                // Too much happened during the join: resync rather than send part of it.
                if let Some(tx) = target.channel.upgrade() {
                    let _ = tx.try_send(Box::new(Cmd::Shutdown(StopReason::Lagged)));
                }
            }
            Some(frames) => {
                for (out, message) in frames {
                    target.outbox.send_broadcast(out, &message);
                }
            }
            None => {}
        }
        target.holding.store(false, Ordering::Release);
    }
}

impl Drop for HubRegistration {
    fn drop(&mut self) {
        let mut targets = self
            .hub
            .shared
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        targets.remove(&self.key);
        shrink_if_sparse(&mut targets);
    }
}

/// Lets a table that emptied after a spike (a reconnect storm's channels) give its memory
/// back: once it is below a quarter of its capacity, down to twice its length. Amortized:
/// each shrink follows at least as many removals as the entries it keeps.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// A `presence_diff` held back to be merged with the next ones (see the module docs).
#[derive(Debug, Default)]
struct Held {
    diff: Option<HeldDiff>,
    /// When the last diff of the topic went out.
    last_flush: Option<Instant>,
}

#[derive(Debug)]
struct HeldDiff {
    run: DiffRun,
    due: Instant,
}

impl Held {
    /// Sends `message` (a mergeable diff) now, or holds it: a diff within `window` of the last
    /// one sent waits until that window ends, merged with those that follow it.
    fn offer(&mut self, message: Arc<Message>, window: Duration, shared: &HubShared) {
        let now = Instant::now();
        if let Some(held) = &mut self.diff {
            if held.run.absorb(&message) {
                shared.counters.coalesced.increment(1);
                return;
            }
            self.flush(shared);
        }
        match self.last_flush {
            Some(last) if now < last + window => {
                self.diff = Some(HeldDiff {
                    run: DiffRun::new(message),
                    due: last + window,
                });
            }
            _ => {
                shared.fanout(&message, None);
                self.last_flush = Some(now);
            }
        }
    }

    /// Sends the held diff, if any.
    fn flush(&mut self, shared: &HubShared) {
        let Some(held) = self.diff.take() else { return };
        shared.fanout(&held.run.into_message(), None);
        self.last_flush = Some(Instant::now());
    }

    /// Resolves when the held diff is due; never without one.
    async fn due(&self) {
        match &self.diff {
            Some(held) => sleep_until(held.due).await,
            None => std::future::pending().await,
        }
    }
}

/// The merge window of `message` if it is a mergeable `presence_diff`.
fn mergeable(message: &Message) -> Option<Duration> {
    let window = message.merge_window()?;
    (message.event() == PRESENCE_DIFF && matches!(message.payload(), Payload::Json(_)))
        .then_some(window)
}

async fn run(
    mut sub: Subscription,
    mut inject: mpsc::Receiver<(Arc<Message>, u64)>,
    shared: Arc<HubShared>,
) {
    let mut held = Held::default();
    loop {
        // Biased towards the held diff, then the subscription: a socket's broadcast followed
        // by its broadcast_from reach the other sockets in that order.
        let (message, skip) = tokio::select! {
            biased;
            () = held.due() => {
                held.flush(&shared);
                continue;
            }
            received = sub.recv() => match received {
                Ok(message) => (message, None),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(topic = sub.topic(), missed,
                        "fastlane hub lagged; broadcasts dropped: erroring the topic's channels so their clients rejoin");
                    shared.resync();
                    continue;
                }
                Err(_) => return,
            },
            Some((message, key)) = inject.recv() => (message, Some(key)),
            else => return,
        };
        match mergeable(&message) {
            Some(window) if skip.is_none() => held.offer(message, window, &shared),
            _ => {
                // Anything else goes out after the held diff, in the order it came.
                held.flush(&shared);
                shared.fanout(&message, skip);
            }
        }
        if shared.lagged.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                topic = sub.topic(),
                capacity = INJECT_QUEUE,
                "fastlane hub's broadcast_from queue was full; broadcasts dropped: erroring the topic's channels so their clients rejoin"
            );
            shared.resync();
        }
    }
}

impl HubShared {
    /// Stops every registered channel with [`StopReason::Lagged`] (`phx_error`).
    fn resync(&self) {
        crate::metrics::hub_lagged();
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        for target in targets.values() {
            if let Some(tx) = target.channel.upgrade() {
                // Fits in the slot kept for stops, unless a leave or stop is already queued:
                // the channel is stopping then anyway.
                let _ = tx.try_send(Box::new(Cmd::Shutdown(StopReason::Lagged)));
            }
        }
    }

    fn fanout(&self, message: &Arc<Message>, skip: Option<u64>) {
        // Encoded lazily, at most once per serializer; `Some(None)` means "cannot be encoded".
        let mut v1: Option<Option<Out>> = None;
        let mut v2: Option<Option<Out>> = None;
        let is_diff = message.event() == PRESENCE_DIFF;
        if is_diff {
            self.counters.diffs.increment(1);
        }
        let mut counted = false;
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        for (key, target) in targets.iter() {
            if Some(*key) == skip {
                continue;
            }
            if is_diff && target.counts {
                counted = true;
                continue;
            }
            let slot = match target.vsn {
                Vsn::V1 => &mut v1,
                Vsn::V2 => &mut v2,
            };
            let encoded = slot.get_or_insert_with(|| self.encode(target.vsn, message));
            let Some(out) = encoded else { continue };
            if target.holding.load(Ordering::Acquire) {
                let mut held = target.held.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(frames) = held.as_mut() {
                    // One past the bound marks the overflow; nothing more is kept.
                    if frames.len() <= HOLD_MAX {
                        frames.push((out.clone(), message.clone()));
                    }
                    continue;
                }
            }
            target.outbox.send_broadcast(out.clone(), message);
        }
        if counted {
            self.send_counts(&targets);
        }
    }

    /// Sends the topic's count to its count-only channels, encoded once per serializer.
    fn send_counts(&self, targets: &HashMap<u64, Target>) {
        let counter = self
            .counter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(counter) = counter else { return };
        let payload = count_payload(counter());
        let mut v1: Option<Option<Out>> = None;
        let mut v2: Option<Option<Out>> = None;
        for target in targets.values().filter(|t| t.counts) {
            let slot = match target.vsn {
                Vsn::V1 => &mut v1,
                Vsn::V2 => &mut v2,
            };
            let encoded = slot.get_or_insert_with(|| {
                target
                    .vsn
                    .broadcast(&self.topic, PRESENCE_COUNT, &payload)
                    .ok()
            });
            if let Some(out) = encoded {
                target.outbox.send(out.clone());
            }
        }
    }

    fn encode(&self, vsn: Vsn, message: &Message) -> Option<Out> {
        #[cfg(test)]
        self.encodes.fetch_add(1, Ordering::Relaxed);
        vsn.broadcast(message.topic(), message.event(), message.payload())
            .map_err(|error| {
                tracing::warn!(topic = message.topic(), event = message.event(), ?vsn, %error,
                    "broadcast cannot be encoded for this serializer; not delivered");
            })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: crate::outbox::Limits = crate::outbox::Limits {
        frames: 8,
        bytes: 1 << 20,
    };

    fn no_channel() -> cmdq::WeakSender<Box<Cmd>> {
        cmdq::WeakSender::default()
    }

    #[tokio::test]
    async fn encodes_once_per_serializer_and_skips_the_sender() {
        let pubsub = PubSub::new("n");
        let hubs = Hubs::new(pubsub.clone());
        let mut rxs = Vec::new();
        let mut regs = Vec::new();
        for i in 0..6 {
            let (outbox, rx) = Outbox::new(LIMITS, Vsn::V2);
            let vsn = if i % 2 == 0 { Vsn::V1 } else { Vsn::V2 };
            regs.push(hubs.register("t", i, vsn, outbox, no_channel(), false));
            rxs.push(rx);
        }
        assert_eq!(hubs.len(), 1);
        let msg = Arc::new(Message::json("t", "e", json!({"a": 1})));
        regs[0].hub.shared.fanout(&msg, Some(0));
        assert_eq!(regs[0].hub.shared.encodes.load(Ordering::Relaxed), 2);
        assert!(rxs[0].frames.try_recv().is_none());
        let mut frames = Vec::new();
        for rx in &mut rxs[1..] {
            frames.push(rx.frames.try_recv().unwrap());
        }
        // Same Arc for every socket of one serializer.
        let (Out::Text(a), Out::Text(b)) = (&frames[1], &frames[3]) else {
            panic!("text frames expected")
        };
        assert!(Arc::ptr_eq(a, b));
        drop(regs);
        assert_eq!(hubs.len(), 0);
    }

    #[tokio::test]
    async fn tables_shrink_after_a_spike() {
        let pubsub = PubSub::new("n");
        let hubs = Hubs::new(pubsub.clone());
        // A storm: 2,000 channels on one topic, and 200 topics of one channel each.
        let mut regs: Vec<_> = (0..2_000)
            .map(|i| {
                let (outbox, _rx) = Outbox::new(LIMITS, Vsn::V2);
                hubs.register("room", i, Vsn::V2, outbox, no_channel(), false)
            })
            .collect();
        let mut others: Vec<_> = (0..200)
            .map(|i| {
                let (outbox, _rx) = Outbox::new(LIMITS, Vsn::V2);
                hubs.register(&format!("t{i}"), i, Vsn::V2, outbox, no_channel(), false)
            })
            .collect();
        let targets = |regs: &[HubRegistration]| {
            let map = regs[0].hub.shared.targets.read().unwrap();
            (map.len(), map.capacity())
        };
        assert!(targets(&regs).1 >= 2_000);
        // It ebbs to 50 channels and 2 other topics.
        regs.truncate(50);
        others.truncate(2);
        let (len, capacity) = targets(&regs);
        assert_eq!(len, 50);
        assert!(
            capacity <= 4 * 50,
            "a topic's table shrinks: capacity {capacity}"
        );
        let topics = hubs.inner.map.lock().unwrap().capacity();
        assert_eq!(hubs.len(), 1 + others.len());
        assert!(
            topics <= 64,
            "the table of topics shrinks: capacity {topics}"
        );
    }

    #[tokio::test]
    async fn hub_task_ends_with_the_last_registration() {
        let pubsub = PubSub::new("n");
        let hubs = Hubs::new(pubsub.clone());
        let (outbox, rx) = Outbox::new(LIMITS, Vsn::V2);
        let reg = hubs.register("t", 1, Vsn::V2, outbox, no_channel(), false);
        assert_eq!(pubsub.subscriber_count("t"), 1);
        pubsub
            .broadcast(Message::json("t", "e", json!({})))
            .unwrap();
        let out = rx.frames.recv().await;
        assert_eq!(out, Out::Text(Arc::from(r#"[null,null,"t","e",{}]"#)));
        drop(reg);
        tokio::task::yield_now().await;
        assert_eq!(pubsub.subscriber_count("t"), 0);
    }
}
