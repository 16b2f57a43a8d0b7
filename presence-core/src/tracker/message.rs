//! The messages shards exchange with their peers on `phx_presence:<tracker>_shard<n>`
//! (reference 1.8).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::{Context, ReplicaRef};
use super::state::{Delta, Transfer};

/// The pub/sub event name of every replication message.
pub(crate) const EVENT: &str = "phx_tracker";

/// One replication message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TrackerMsg {
    /// A periodic heartbeat: the local delta since the last one (or none), and the sender's
    /// clock (its context without down replicas).
    Heartbeat {
        from: ReplicaRef,
        delta: Option<Delta>,
        clocks: Context,
        /// When the oldest change the delta carries was made, in ms since the Unix epoch by
        /// the sender's clock: receivers time the change-to-merge latency with it. Absent
        /// without a delta, and from nodes that predate it (unknown fields are ignored, so
        /// older nodes read these heartbeats too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// A request for what the sender lacks, given its context.
    TransferReq { from: ReplicaRef, context: Context },
    /// The answer to a transfer request: a delta generation or the whole state.
    TransferAck {
        from: ReplicaRef,
        transfer: Transfer,
    },
    /// The sender is leaving for good: drop its presences now.
    GracefulPermdown { from: ReplicaRef },
}

impl TrackerMsg {
    pub(crate) fn encode(&self) -> Bytes {
        // Serializing these plain data types to memory cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub(crate) fn sender(&self) -> &ReplicaRef {
        match self {
            TrackerMsg::Heartbeat { from, .. }
            | TrackerMsg::TransferReq { from, .. }
            | TrackerMsg::TransferAck { from, .. }
            | TrackerMsg::GracefulPermdown { from } => from,
        }
    }
}
