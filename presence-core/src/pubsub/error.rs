//! The errors of the pub/sub.

/// A broadcast could not be handed to the other nodes. Local subscribers still received it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The adapter's outgoing queue is full; the message was not sent to other nodes.
    #[error("the pubsub adapter's outgoing queue is full")]
    Full,
    /// The adapter has stopped or lost its connection.
    #[error("the pubsub adapter is disconnected: {0}")]
    Disconnected(String),
    /// The message is too large for the adapter.
    #[error("the message is too large for the pubsub adapter ({0} bytes)")]
    TooLarge(usize),
}

/// A subscription could not return a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The subscriber did not keep up and this many messages were dropped for it.
    #[error("the subscriber lagged behind and missed {0} messages")]
    Lagged(u64),
    /// The pub/sub is gone; no more messages will come.
    #[error("the pubsub is closed")]
    Closed,
    /// Nothing is queued (from `try_recv` only).
    #[error("no message is queued")]
    Empty,
}

/// A frame from another node could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pubsub frame: {0}")]
pub struct DecodeError(pub(crate) &'static str);
