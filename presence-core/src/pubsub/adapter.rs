//! The transport between nodes.

use std::fmt;
use std::sync::Weak;

use bytes::Bytes;

use super::error::{BroadcastError, DecodeError};
use super::{Inner, frame};

/// Carries serialized broadcasts between the nodes of a cluster.
///
/// A [`PubSub`](super::PubSub) encodes each remote broadcast once and hands the frame to its
/// adapter. The adapter delivers frames that arrive from other nodes to the [`Inbound`] it was
/// given at start. Implement it to run a cluster over your own transport; the crate ships
/// [`LocalCluster`](super::LocalCluster) (in-process nodes) and, with the `redis` feature, a
/// Redis adapter.
///
/// Sends must not block: queue the frame and return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pubsub adapter",
    note = "implement `presence_core::pubsub::Adapter` for it, or use `LocalCluster::adapter`"
)]
pub trait Adapter: Send + Sync + fmt::Debug + 'static {
    /// Called once when the pub/sub starts, with this node's name and the sink for frames that
    /// arrive from other nodes.
    fn start(&self, node_name: &str, inbound: Inbound);

    /// Whether any other node may be reached. When false, remote broadcasts are skipped
    /// without being encoded.
    fn has_peers(&self) -> bool {
        true
    }

    /// Sends `frame` to every other node.
    ///
    /// # Errors
    ///
    /// [`BroadcastError`] when the frame cannot be queued.
    fn broadcast(&self, frame: Bytes) -> Result<(), BroadcastError>;

    /// Sends `frame` to the node named `node` only.
    ///
    /// # Errors
    ///
    /// [`BroadcastError`] when the frame cannot be queued.
    fn direct_broadcast(&self, node: &str, frame: Bytes) -> Result<(), BroadcastError>;
}

/// Where an [`Adapter`] delivers frames from other nodes.
#[derive(Clone)]
pub struct Inbound {
    pubsub: Weak<Inner>,
}

impl Inbound {
    pub(super) fn new(pubsub: Weak<Inner>) -> Self {
        Inbound { pubsub }
    }

    /// Decodes `frame` and delivers it to this node's local subscribers.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the frame is malformed; nothing is delivered.
    pub fn deliver(&self, frame: Bytes) -> Result<(), DecodeError> {
        let len = frame.len();
        let message = std::sync::Arc::new(frame::decode(frame)?);
        let Some(inner) = self.pubsub.upgrade() else {
            return Ok(());
        };
        inner.metrics.received.increment(1);
        inner.metrics.received_bytes.increment(len as u64);
        if !inner.dispatch(&message, None) {
            inner
                .unknown_trackers
                .undelivered(message.topic(), &inner.node_name);
        }
        Ok(())
    }

    /// Whether the pub/sub this sink feeds still exists.
    pub fn is_alive(&self) -> bool {
        self.pubsub.strong_count() > 0
    }
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// The default adapter: a single node with no peers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAdapter;

impl Adapter for NoAdapter {
    fn start(&self, _node_name: &str, _inbound: Inbound) {}

    fn has_peers(&self) -> bool {
        false
    }

    fn broadcast(&self, _frame: Bytes) -> Result<(), BroadcastError> {
        Ok(())
    }

    fn direct_broadcast(&self, _node: &str, _frame: Bytes) -> Result<(), BroadcastError> {
        Ok(())
    }
}

/// The replication topics' prefix (`phx_presence:<tracker>_shard<n>`).
const TRACKER_TOPIC_PREFIX: &str = "phx_presence:";
/// How long replication for a tracker must keep arriving unheard before it is reported: a
/// node starting its presences just after its pub/sub is not a mistake.
const UNKNOWN_TRACKER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// At most this many tracker names are remembered (hostile or buggy peers cannot grow it).
const UNKNOWN_TRACKERS_MAX: usize = 64;

/// Replication that reached this node for presences it does not run: reported once per
/// name, so that a presence renamed on some nodes (or declared under another name) does not
/// silently stop replicating.
#[derive(Default)]
pub(super) struct UnknownTrackers {
    seen: std::sync::Mutex<std::collections::HashMap<String, Option<tokio::time::Instant>>>,
}

impl UnknownTrackers {
    /// Notes a remote message that had no local subscriber.
    pub(super) fn undelivered(&self, topic: &str, node: &str) {
        let Some(tracker) = tracker_name(topic) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = seen.len() >= UNKNOWN_TRACKERS_MAX;
        match seen.get_mut(tracker) {
            // Reported already.
            Some(None) => {}
            Some(first @ Some(_))
                if first.is_some_and(|t| now.duration_since(t) >= UNKNOWN_TRACKER_GRACE) =>
            {
                *first = None;
                tracing::warn!(
                    presence = tracker,
                    node,
                    "this node receives replication for the presence `{tracker}` but does not \
                     run it: every node of a cluster must run the same presences under the \
                     same names (a derived presence is named after its struct unless \
                     `name = \"...\"` is set)"
                );
            }
            Some(Some(_)) => {}
            None if !full => {
                seen.insert(tracker.to_owned(), Some(now));
            }
            None => {}
        }
    }

    /// Whether `tracker` was reported.
    #[cfg(test)]
    fn reported(&self, tracker: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tracker)
            .is_some_and(Option::is_none)
    }
}

/// The tracker name of a replication topic.
fn tracker_name(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(TRACKER_TOPIC_PREFIX)?;
    let (name, shard) = rest.rsplit_once("_shard")?;
    shard.parse::<usize>().ok().map(|_| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_names_come_from_replication_topics() {
        assert_eq!(
            tracker_name("phx_presence:RoomPresence_shard0"),
            Some("RoomPresence")
        );
        assert_eq!(
            tracker_name("phx_presence:a_shard_b_shard12"),
            Some("a_shard_b")
        );
        assert_eq!(tracker_name("phx_presence:x_shardy"), None);
        assert_eq!(tracker_name("room:lobby"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unheard_replication_is_reported_once_after_a_grace_period() {
        let unknown = UnknownTrackers::default();
        let topic = "phx_presence:Renamed_shard0";
        unknown.undelivered(topic, "a");
        assert!(
            !unknown.reported("Renamed"),
            "a node may be starting its presences"
        );
        tokio::time::advance(UNKNOWN_TRACKER_GRACE).await;
        unknown.undelivered(topic, "a");
        assert!(unknown.reported("Renamed"));
        unknown.undelivered("room:lobby", "a");
        assert_eq!(
            unknown.seen.lock().unwrap().len(),
            1,
            "other topics are not trackers"
        );
        for i in 0..2 * UNKNOWN_TRACKERS_MAX {
            unknown.undelivered(&format!("phx_presence:T{i}_shard0"), "a");
        }
        assert_eq!(unknown.seen.lock().unwrap().len(), UNKNOWN_TRACKERS_MAX);
    }
}
