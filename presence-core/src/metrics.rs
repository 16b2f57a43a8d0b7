//! The core's metrics, through the [`metrics`] facade: a no-op until the application installs
//! a recorder. Every name is a constant here and a row of the table in `OBSERVABILITY.md` (a
//! test checks they agree).
//!
//! Handles are registered once (per tracker shard, pub/sub, Redis adapter, presence) with
//! labels that name a component, never a topic: topic labels would explode cardinality.

use metrics::{Counter, Gauge, Histogram, SharedString, counter, gauge, histogram};

/// Gauge, labels `tracker`, `state` (`up`, `down`): the peers a tracker knows.
pub(crate) const TRACKER_REPLICAS: &str = "presence_tracker_replicas";
/// Counter, labels `tracker`, `kind`: replication messages sent.
pub(crate) const TRACKER_SENT: &str = "presence_tracker_messages_sent_total";
/// Counter, labels `tracker`, `kind`: bytes of replication messages sent.
pub(crate) const TRACKER_SENT_BYTES: &str = "presence_tracker_bytes_sent_total";
/// Counter, labels `tracker`, `kind`: replication messages received.
pub(crate) const TRACKER_RECEIVED: &str = "presence_tracker_messages_received_total";
/// Counter, labels `tracker`, `kind`: bytes of replication messages received.
pub(crate) const TRACKER_RECEIVED_BYTES: &str = "presence_tracker_bytes_received_total";
/// Histogram, label `tracker`: bytes of each heartbeat that carries a delta.
pub(crate) const TRACKER_DELTA_BYTES: &str = "presence_tracker_delta_bytes";
/// Histogram, label `tracker`: seconds from a change on a peer to its merge here, by the
/// peer's and this node's wall clocks.
pub(crate) const TRACKER_CHANGE_TO_MERGE: &str = "presence_tracker_change_to_merge_seconds";
/// Counter: messages broadcast on a pub/sub (local and to peers).
pub(crate) const PUBSUB_BROADCASTS: &str = "presence_pubsub_messages_published_total";
/// Counter: frames received from peers through the adapter.
pub(crate) const PUBSUB_RECEIVED: &str = "presence_pubsub_messages_received_total";
/// Counter: bytes of frames received from peers through the adapter.
pub(crate) const PUBSUB_RECEIVED_BYTES: &str = "presence_pubsub_bytes_received_total";
/// Counter: messages a subscriber missed because its queue was full (it lagged).
pub(crate) const PUBSUB_DROPS: &str = "presence_pubsub_queue_drops_total";
/// Gauge, label `channel`: 1 while both Redis connections are up, else 0.
#[cfg(feature = "redis")]
pub(crate) const REDIS_CONNECTED: &str = "presence_redis_connected";
/// Counter, label `channel`: times the Redis link came back after an outage.
#[cfg(feature = "redis")]
pub(crate) const REDIS_RECONNECTS: &str = "presence_redis_reconnects_total";
/// Counter, label `channel`: times the Redis link was lost.
#[cfg(feature = "redis")]
pub(crate) const REDIS_OUTAGES: &str = "presence_redis_outages_total";
/// Counter, label `channel`: envelopes published to Redis.
#[cfg(feature = "redis")]
pub(crate) const REDIS_PUBLISHED: &str = "presence_redis_messages_published_total";
/// Counter, label `channel`: bytes published to Redis.
#[cfg(feature = "redis")]
pub(crate) const REDIS_PUBLISHED_BYTES: &str = "presence_redis_bytes_published_total";
/// Counter, label `channel`: frames received from Redis and delivered.
#[cfg(feature = "redis")]
pub(crate) const REDIS_RECEIVED: &str = "presence_redis_messages_received_total";
/// Counter, label `channel`: bytes received from Redis.
#[cfg(feature = "redis")]
pub(crate) const REDIS_RECEIVED_BYTES: &str = "presence_redis_bytes_received_total";
/// Counter, label `channel`: envelopes dropped while Redis was unreachable.
#[cfg(feature = "redis")]
pub(crate) const REDIS_DROPS: &str = "presence_redis_drops_total";
/// Gauge, label `presence`: presences tracked by this node's presence module.
pub(crate) const PRESENCES: &str = "presence_presences";
/// Gauge, labels `presence`, `topic`: presences of each of the largest topics (opt-in:
/// `PresenceOptions::topic_metrics`).
pub(crate) const TOPIC_PRESENCES: &str = "presence_topic_presences";
/// Counter, label `presence`: `presence_diff`s broadcast.
pub(crate) const DIFFS: &str = "presence_diffs_broadcast_total";
/// Histogram, label `presence`: seconds a `fetch` took.
pub(crate) const FETCH_DURATION: &str = "presence_fetch_duration_seconds";
/// Counter, labels `presence`, `failure` (`error`, `panic`): fetches that failed.
pub(crate) const FETCH_FAILURES: &str = "presence_fetch_failures_total";
/// Histogram, label `presence`: seconds a `handle_metas` took.
pub(crate) const HANDLE_METAS_DURATION: &str = "presence_handle_metas_duration_seconds";
/// Counter, label `presence`: `handle_metas` calls that panicked.
pub(crate) const HANDLE_METAS_PANICS: &str = "presence_handle_metas_panics_total";

/// The `kind` label of a replication message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TrackerKind {
    Heartbeat = 0,
    TransferReq = 1,
    Transfer = 2,
    Permdown = 3,
}

const KINDS: [&str; 4] = ["heartbeat", "transfer_req", "transfer", "permdown"];

/// One direction's counters, by kind.
#[derive(Debug)]
struct Flow {
    messages: [Counter; 4],
    bytes: [Counter; 4],
}

impl Flow {
    fn register(tracker: &SharedString, messages: &'static str, bytes: &'static str) -> Self {
        let by_kind = |name: &'static str| {
            KINDS.map(|kind| counter!(name, "tracker" => tracker.clone(), "kind" => kind))
        };
        Flow {
            messages: by_kind(messages),
            bytes: by_kind(bytes),
        }
    }

    fn count(&self, kind: TrackerKind, bytes: usize) {
        self.messages[kind as usize].increment(1);
        self.bytes[kind as usize].increment(bytes as u64);
    }
}

/// A tracker shard's metrics, registered when it starts.
#[derive(Debug)]
pub(crate) struct TrackerMetrics {
    sent: Flow,
    received: Flow,
    delta_bytes: Histogram,
    change_to_merge: Histogram,
    up: Gauge,
    down: Gauge,
}

impl TrackerMetrics {
    pub(crate) fn register(tracker: &str) -> Self {
        let tracker = SharedString::from(tracker.to_owned());
        let state =
            |s: &'static str| gauge!(TRACKER_REPLICAS, "tracker" => tracker.clone(), "state" => s);
        TrackerMetrics {
            sent: Flow::register(&tracker, TRACKER_SENT, TRACKER_SENT_BYTES),
            received: Flow::register(&tracker, TRACKER_RECEIVED, TRACKER_RECEIVED_BYTES),
            delta_bytes: histogram!(TRACKER_DELTA_BYTES, "tracker" => tracker.clone()),
            change_to_merge: histogram!(TRACKER_CHANGE_TO_MERGE, "tracker" => tracker.clone()),
            up: state("up"),
            down: state("down"),
        }
    }

    pub(crate) fn sent(&self, kind: TrackerKind, bytes: usize, has_delta: bool) {
        self.sent.count(kind, bytes);
        if has_delta {
            self.delta_bytes.record(bytes as f64);
        }
    }

    pub(crate) fn received(&self, kind: TrackerKind, bytes: usize) {
        self.received.count(kind, bytes);
    }

    /// A peer's delta was merged `elapsed_ms` after its oldest change; `None` when the
    /// peer's clock is ahead of ours (no sample: it would only measure the skew).
    pub(crate) fn change_merged(&self, elapsed_ms: Option<u64>) {
        if let Some(ms) = elapsed_ms {
            self.change_to_merge.record(ms as f64 / 1000.0);
        }
    }

    pub(crate) fn replicas(&self, up: usize, down: usize) {
        self.up.set(up as f64);
        self.down.set(down as f64);
    }
}

/// A pub/sub's counters, registered when it is built.
#[derive(Debug, Clone)]
pub(crate) struct PubSubMetrics {
    pub(crate) broadcasts: Counter,
    pub(crate) received: Counter,
    pub(crate) received_bytes: Counter,
    pub(crate) drops: Counter,
}

impl PubSubMetrics {
    pub(crate) fn register() -> Self {
        PubSubMetrics {
            broadcasts: counter!(PUBSUB_BROADCASTS),
            received: counter!(PUBSUB_RECEIVED),
            received_bytes: counter!(PUBSUB_RECEIVED_BYTES),
            drops: counter!(PUBSUB_DROPS),
        }
    }
}

/// A Redis adapter's metrics, registered when it connects.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct RedisMetrics {
    pub(crate) connected: Gauge,
    pub(crate) reconnects: Counter,
    pub(crate) outages: Counter,
    pub(crate) published: Counter,
    pub(crate) published_bytes: Counter,
    pub(crate) received: Counter,
    pub(crate) received_bytes: Counter,
    pub(crate) drops: Counter,
}

#[cfg(feature = "redis")]
impl RedisMetrics {
    pub(crate) fn register(channel: &str) -> Self {
        let channel = SharedString::from(channel.to_owned());
        let c = |name: &'static str| counter!(name, "channel" => channel.clone());
        let metrics = RedisMetrics {
            connected: gauge!(REDIS_CONNECTED, "channel" => channel.clone()),
            reconnects: c(REDIS_RECONNECTS),
            outages: c(REDIS_OUTAGES),
            published: c(REDIS_PUBLISHED),
            published_bytes: c(REDIS_PUBLISHED_BYTES),
            received: c(REDIS_RECEIVED),
            received_bytes: c(REDIS_RECEIVED_BYTES),
            drops: c(REDIS_DROPS),
        };
        metrics.connected.set(1.0);
        metrics
    }
}

/// A presence module's metrics, registered when it starts.
#[derive(Debug)]
pub(crate) struct PresenceMetrics {
    pub(crate) presences: Gauge,
    pub(crate) diffs: Counter,
    pub(crate) fetch_duration: Histogram,
    pub(crate) fetch_errors: Counter,
    pub(crate) fetch_panics: Counter,
    pub(crate) handle_metas_duration: Histogram,
    pub(crate) handle_metas_panics: Counter,
}

impl PresenceMetrics {
    pub(crate) fn register(presence: &'static str) -> Self {
        PresenceMetrics {
            presences: gauge!(PRESENCES, "presence" => presence),
            diffs: counter!(DIFFS, "presence" => presence),
            fetch_duration: histogram!(FETCH_DURATION, "presence" => presence),
            fetch_errors: counter!(FETCH_FAILURES, "presence" => presence, "failure" => "error"),
            fetch_panics: counter!(FETCH_FAILURES, "presence" => presence, "failure" => "panic"),
            handle_metas_duration: histogram!(HANDLE_METAS_DURATION, "presence" => presence),
            handle_metas_panics: counter!(HANDLE_METAS_PANICS, "presence" => presence),
        }
    }
}

/// Sets the gauges of the `n` largest topics of `tracker` every `period`, for as long as it
/// runs (its owner aborts it); a topic that leaves the `n` is set to 0 once, then forgotten.
pub(crate) async fn refresh_topic_gauges(
    presence: &'static str,
    tracker: crate::Tracker,
    n: usize,
    period: std::time::Duration,
) {
    let mut exported: std::collections::HashMap<std::sync::Arc<str>, Gauge> =
        std::collections::HashMap::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let largest = tracker.largest_topics(n);
        exported.retain(|topic, gauge| {
            let kept = largest.iter().any(|(t, _)| t == topic);
            if !kept {
                gauge.set(0.0);
            }
            kept
        });
        for (topic, count) in largest {
            exported
                .entry(topic)
                .or_insert_with_key(|topic| {
                    gauge!(TOPIC_PRESENCES, "presence" => presence, "topic" => topic.to_string())
                })
                .set(count.metas as f64);
        }
    }
}
