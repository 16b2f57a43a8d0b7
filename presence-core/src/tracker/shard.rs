//! The tokio side of a shard: its lock, its ordered reporting and its task.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::time::Instant;

use super::clock::ReplicaRef;
use super::message::{EVENT, TrackerMsg};
use super::replica::ReplicaStatus;
use super::shard_core::{Effects, Outgoing, ShardCore, Timing};
use super::{Diff, DiffHandler, ReplicaEvent, TrackError, TrackerConfig, UpdateError};
use crate::metrics::TrackerKind;
use crate::pubsub::{Message, Payload, RecvError, SubscriberId};
use crate::{Meta, OwnerId, PhxRef, PubSub};

enum Report {
    Diff(Diff),
    Event(ReplicaEvent),
}

pub(super) struct Shard {
    topic: Arc<str>,
    index: usize,
    core: RwLock<ShardCore>,
    stopped: std::sync::atomic::AtomicBool,
    reporter: Option<Arc<Reporter>>,
    /// Set by the task once subscribed, for `broadcast_from`.
    subscriber: Mutex<Option<SubscriberId>>,
    metrics: crate::metrics::TrackerMetrics,
    /// When the oldest local change not yet in a delta part was made, in ms since the Unix
    /// epoch (0: none). Read and written under the core's write lock only.
    changed_since: AtomicU64,
    /// The same for the delta whose parts are being sent (0: none).
    sending_since: AtomicU64,
}

/// Hands one tracker's reports to its handler: in order per shard, one at a time.
///
/// One delivery lock serves every shard of the tracker, so a handler that calls back into the
/// tracker (any shard) never waits for another thread that is itself delivering and waiting
/// for this one: the thread that holds the turn delivers whatever any shard has queued.
pub(super) struct Reporter {
    handler: Arc<dyn DiffHandler>,
    /// Reports made under each shard's core lock, delivered after it is released.
    pending: Vec<Mutex<VecDeque<Report>>>,
    /// Held while reports are delivered.
    delivery: Mutex<()>,
}

thread_local! {
    /// The reporter whose reports this thread is delivering, to let handlers call back in.
    static DELIVERING: Cell<usize> = const { Cell::new(0) };
}

impl Reporter {
    pub(super) fn new(handler: Arc<dyn DiffHandler>, shards: usize) -> Self {
        Reporter {
            handler,
            pending: (0..shards).map(|_| Mutex::new(VecDeque::new())).collect(),
            delivery: Mutex::new(()),
        }
    }

    fn queue(&self, shard: usize, fx: &mut Effects) {
        if fx.diff.is_empty() && fx.events.is_empty() {
            return;
        }
        let mut pending = self.pending[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.extend(fx.events.drain(..).map(Report::Event));
        if !fx.diff.is_empty() {
            pending.push_back(Report::Diff(std::mem::take(&mut fx.diff)));
        }
    }

    fn deliver(&self) {
        let me = self as *const Reporter as usize;
        if DELIVERING.with(Cell::get) == me {
            // A handler called back into this tracker: the outer delivery loop sends it on.
            return;
        }
        let _turn = self.delivery.lock().unwrap_or_else(PoisonError::into_inner);
        let outer = DELIVERING.with(|d| d.replace(me));
        loop {
            let mut delivered = false;
            for queue in &self.pending {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front();
                    let Some(report) = next else { break };
                    delivered = true;
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| match report {
                        Report::Diff(diff) => self.handler.handle_diff(diff),
                        Report::Event(event) => self.handler.handle_replica_event(&event),
                    }));
                    if result.is_err() {
                        tracing::error!(
                            "a tracker diff handler panicked; the diff was dropped for it"
                        );
                    }
                }
            }
            if !delivered {
                break;
            }
        }
        DELIVERING.with(|d| d.set(outer));
    }
}

impl Shard {
    pub(super) fn new(
        tracker: &str,
        index: usize,
        node: &str,
        vsn: u64,
        config: &TrackerConfig,
        reporter: Option<Arc<Reporter>>,
    ) -> Self {
        let timing = Timing {
            max_silent_periods: config.max_silent_periods,
            down_period: config.effective_down_period().as_millis() as u64,
            permdown_period: config.permdown_period.as_millis() as u64,
            clock_sample_periods: config.clock_sample_periods,
            max_delta_sizes: config.max_delta_sizes.clone(),
            max_delta_part: Timing::DELTA_PART,
        };
        let replica = ReplicaRef {
            name: Arc::from(node),
            vsn,
        };
        Shard {
            topic: Arc::from(format!("phx_presence:{tracker}_shard{index}")),
            index,
            core: RwLock::new(ShardCore::new(replica, timing)),
            stopped: std::sync::atomic::AtomicBool::new(false),
            reporter,
            subscriber: Mutex::new(None),
            metrics: crate::metrics::TrackerMetrics::register(tracker),
            changed_since: AtomicU64::new(0),
            sending_since: AtomicU64::new(0),
        }
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&ShardCore) -> T) -> T {
        f(&self.core.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` under the write lock, queues its reports, then delivers them and returns its
    /// messages for peers.
    fn step<T>(&self, f: impl FnOnce(&mut ShardCore) -> (T, Effects)) -> (T, Vec<Outgoing>) {
        let (value, out) = {
            let mut core = self.core.write().unwrap_or_else(PoisonError::into_inner);
            let (value, mut fx) = f(&mut core);
            if let Some(reporter) = &self.reporter {
                fx.diff.mark_keys(core.state());
                reporter.queue(self.index, &mut fx);
            }
            (value, fx.out)
        };
        if let Some(reporter) = &self.reporter {
            reporter.deliver();
        }
        (value, out)
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn track(
        &self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        meta: Value,
    ) -> Result<PhxRef, TrackError> {
        if self.is_stopped() {
            return Err(TrackError::Stopped);
        }
        self.step(|core| match core.track(owner, topic, key, meta) {
            Ok((r, fx)) => {
                self.note_change(core);
                (Ok(r), fx)
            }
            Err(e) => (Err(e), Effects::default()),
        })
        .0
    }

    pub(super) fn untrack(&self, owner: OwnerId, topic: &str, key: &str) {
        self.step(|core| {
            let fx = core.untrack(owner, topic, key);
            self.note_change(core);
            ((), fx)
        });
    }

    pub(super) fn untrack_all(&self, owner: OwnerId) {
        self.step(|core| {
            let fx = core.untrack_all(owner);
            self.note_change(core);
            ((), fx)
        });
    }

    pub(super) fn update(
        &self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        f: impl FnOnce(&Meta) -> Result<Value, UpdateError>,
    ) -> Result<PhxRef, UpdateError> {
        if self.is_stopped() {
            return Err(UpdateError::Stopped);
        }
        self.step(|core| match core.update(owner, topic, key, f) {
            Ok((r, fx)) => {
                self.note_change(core);
                (Ok(r), fx)
            }
            Err(e) => (Err(e), Effects::default()),
        })
        .0
    }

    pub(super) fn graceful_permdown(&self, pubsub: &PubSub) {
        let msg = self.read(|core| core.graceful_permdown());
        self.send(pubsub, vec![msg], None);
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Sends `out`; a heartbeat with a delta carries `since` (see [`Shard::take_part`]).
    fn send(&self, pubsub: &PubSub, out: Vec<Outgoing>, since: Option<u64>) {
        if out.is_empty() || !pubsub.has_peers() {
            // A single node: nobody to tell, so nothing is encoded.
            return;
        }
        if self.is_stopped() {
            // Gone for good: peers purged this replica, and a heartbeat now would bring it
            // back on a peer that hears it after the permdown. The shard still listens, so
            // its view of the peers stays current.
            return;
        }
        let from = *self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for o in out {
            let result = match o {
                Outgoing::Broadcast(mut msg) => {
                    if let TrackerMsg::Heartbeat {
                        delta: Some(_),
                        since: stamp,
                        ..
                    } = &mut msg
                    {
                        *stamp = since;
                    }
                    let bytes = msg.encode();
                    self.count_sent(&msg, bytes.len());
                    let m = Message::binary(self.topic.clone(), EVENT, bytes);
                    match from {
                        Some(id) => pubsub.broadcast_from(id, m),
                        None => pubsub.broadcast(m),
                    }
                }
                Outgoing::Direct(node, msg) => {
                    let bytes = msg.encode();
                    self.count_sent(&msg, bytes.len());
                    pubsub
                        .direct_broadcast(&node, Message::binary(self.topic.clone(), EVENT, bytes))
                }
            };
            if let Err(e) = result {
                tracing::warn!(shard = %self.topic, error = %e, "could not send a replication message");
            }
        }
    }
}

/// Starts the shard's task: it ticks every `broadcast_period` and handles peer messages.
pub(super) fn spawn(
    runtime: &tokio::runtime::Handle,
    shard: Arc<Shard>,
    pubsub: PubSub,
    config: &TrackerConfig,
) -> tokio::task::JoinHandle<()> {
    let mut sub = pubsub.subscribe(&shard.topic);
    *shard
        .subscriber
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(sub.id());
    let period = config.broadcast_period;
    // The first tick comes after a random stutter of up to a quarter period, so nodes started
    // together do not beat in step.
    let quarter = (period.as_millis() as u64 / 4).max(1);
    let stutter = Duration::from_millis(crate::meta::random_u64() % quarter);
    let epoch = Instant::now();
    runtime.spawn(async move {
        let now_ms = move || epoch.elapsed().as_millis() as u64;
        let mut next_tick = epoch + stutter;
        loop {
            tokio::select! {
                msg = sub.recv() => match msg {
                    Ok(msg) => shard.receive(&pubsub, &msg, now_ms()),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(shard = %shard.topic, missed = n, "shard lagged behind its replication traffic; transfers will catch up");
                    }
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(next_tick) => {
                    // Heartbeats that queued while this task was busy (or descheduled) are
                    // taken first: ticking before them could mark live peers down.
                    for _ in 0..MAX_DRAIN_BEFORE_TICK {
                        match sub.try_recv() {
                            Ok(msg) => shard.receive(&pubsub, &msg, now_ms()),
                            Err(RecvError::Lagged(n)) => {
                                tracing::warn!(shard = %shard.topic, missed = n, "shard lagged behind its replication traffic; transfers will catch up");
                            }
                            Err(_) => break,
                        }
                    }
                    let now = now_ms();
                    let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        shard.step(|core| shard.take_part(core, |core| core.tick(now)))
                    }));
                    match step {
                        Ok((since, out)) => shard.send(&pubsub, out, since),
                        Err(_) => tracing::error!(shard = %shard.topic, "a heartbeat tick panicked; the next tick tries again"),
                    }
                    shard.count_replicas();
                    // The rest of a large pending delta, one part at a time: each is built
                    // and sent before the next, and operations may run in between. What is
                    // still left after MAX_PARTS_PER_TICK goes at the next tick.
                    for _ in 0..MAX_PARTS_PER_TICK {
                        if !shard.read(ShardCore::has_more) {
                            break;
                        }
                        let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            shard.step(|core| shard.take_part(core, ShardCore::send_more))
                        }));
                        match step {
                            Ok((since, out)) => shard.send(&pubsub, out, since),
                            Err(_) => {
                                tracing::error!(shard = %shard.topic, "sending a delta part panicked; the next tick tries again");
                                break;
                            }
                        }
                    }
                    next_tick += period;
                    if next_tick < Instant::now() {
                        next_tick = Instant::now() + period;
                    }
                }
            }
        }
    })
}

/// At most this many parts of a large pending delta are sent per tick (a million rows at the
/// default part size).
const MAX_PARTS_PER_TICK: usize = 100;

/// At most this many queued messages are handled before a tick (the rest after it).
const MAX_DRAIN_BEFORE_TICK: usize = 4096;

/// The metrics' `kind` of a replication message.
fn kind(msg: &TrackerMsg) -> TrackerKind {
    match msg {
        TrackerMsg::Heartbeat { .. } => TrackerKind::Heartbeat,
        TrackerMsg::TransferReq { .. } => TrackerKind::TransferReq,
        TrackerMsg::TransferAck { .. } => TrackerKind::Transfer,
        TrackerMsg::GracefulPermdown { .. } => TrackerKind::Permdown,
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shard {
    /// Notes the time of a local change, unless an older one is still pending. Under the
    /// core's write lock, after the change.
    fn note_change(&self, core: &ShardCore) {
        if self.changed_since.load(Ordering::Relaxed) == 0 && core.has_more() {
            self.changed_since.store(unix_ms(), Ordering::Relaxed);
        }
    }

    /// Runs `take` (a tick, or the next part), which may take a part of the pending delta,
    /// and returns with its effects when the oldest change that part can carry was made: the
    /// batch's oldest change, for every part of it. Under the core's write lock.
    fn take_part(
        &self,
        core: &mut ShardCore,
        take: impl FnOnce(&mut ShardCore) -> Effects,
    ) -> (Option<u64>, Effects) {
        let since = if core.has_more() {
            let changed = self.changed_since.swap(0, Ordering::Relaxed);
            let since = match self.sending_since.load(Ordering::Relaxed) {
                0 => changed,
                older => older,
            };
            self.sending_since.store(since, Ordering::Relaxed);
            (since != 0).then_some(since)
        } else {
            None
        };
        let fx = take(core);
        if !core.has_more() {
            self.sending_since.store(0, Ordering::Relaxed);
        }
        (since, fx)
    }

    fn count_sent(&self, msg: &TrackerMsg, bytes: usize) {
        let delta = matches!(msg, TrackerMsg::Heartbeat { delta: Some(_), .. });
        self.metrics.sent(kind(msg), bytes, delta);
    }

    /// Sets the replica gauges from the first shard (every shard knows the same peers).
    fn count_replicas(&self) {
        if self.index != 0 {
            return;
        }
        let (up, down) = self.read(|core| {
            core.replicas()
                .fold((0, 0), |(up, down), (_, _, status)| match status {
                    ReplicaStatus::Up => (up + 1, down),
                    ReplicaStatus::Down => (up, down + 1),
                })
        });
        self.metrics.replicas(up, down);
    }

    /// Handles one message from the shard's topic at `now` (ms).
    fn receive(&self, pubsub: &PubSub, msg: &Message, now: u64) {
        if msg.event() != EVENT {
            return;
        }
        let Payload::Binary(bytes) = msg.payload() else {
            return;
        };
        match TrackerMsg::decode(bytes) {
            Ok(msg) => {
                self.metrics.received(kind(&msg), bytes.len());
                let since = match &msg {
                    TrackerMsg::Heartbeat {
                        delta: Some(_),
                        since,
                        ..
                    } => *since,
                    _ => None,
                };
                // A message that trips an internal check must not end the shard's task (and
                // with it all replication): it is dropped.
                let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.step(|core| ((), core.handle(now, msg)))
                }));
                match step {
                    Ok(((), out)) => {
                        if let Some(since) = since {
                            self.metrics.change_merged(unix_ms().checked_sub(since));
                        }
                        self.send(pubsub, out, None);
                    }
                    Err(_) => {
                        tracing::error!(shard = %self.topic, "a replication message could not be applied and was dropped")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = %self.topic, error = %e, "malformed replication message ignored")
            }
        }
    }
}
