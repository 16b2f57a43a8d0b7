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
        let message = frame::decode(frame)?;
        if let Some(inner) = self.pubsub.upgrade() {
            inner.dispatch(&std::sync::Arc::new(message), None);
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
