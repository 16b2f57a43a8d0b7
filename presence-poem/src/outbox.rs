//! The per-socket outbound queue, shared by the connection, its channel tasks and the hubs.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::protocol::Out;

/// Close codes the server uses.
pub(crate) mod code {
    pub(crate) const NORMAL: u16 = 1000;
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const SERVICE_RESTART: u16 = 1012;
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why and how a socket closes: a close code and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    /// Whether a close frame should be written (false when the peer is already gone).
    pub(crate) send_frame: bool,
}

/// A handle to one socket's outbound queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Out>,
    close: Arc<watch::Sender<Option<Close>>>,
}

/// The receiving ends, owned by the connection.
#[derive(Debug)]
pub(crate) struct OutboxRx {
    pub(crate) frames: mpsc::Receiver<Out>,
    pub(crate) close: watch::Receiver<Option<Close>>,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> (Outbox, OutboxRx) {
        let (tx, frames) = mpsc::channel(capacity.max(1));
        let (close_tx, close) = watch::channel(None);
        (
            Outbox {
                tx,
                close: Arc::new(close_tx),
            },
            OutboxRx { frames, close },
        )
    }

    /// Queues a frame without waiting. A full queue means the client does not keep up: the
    /// socket is closed with 1013 (see the crate docs, "Slow clients").
    pub(crate) fn send(&self, out: Out) {
        match self.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close(code::TRY_AGAIN_LATER, "outbound queue full") {
                    tracing::warn!(
                        capacity = self.tx.max_capacity(),
                        "closing a slow websocket client: its outbound queue is full"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Asks the connection to close with `code`. The first request wins; returns whether this
    /// one did.
    pub(crate) fn close(&self, code: u16, reason: &'static str) -> bool {
        self.request_close(Close {
            code,
            reason,
            send_frame: true,
        })
    }

    pub(crate) fn request_close(&self, close: Close) -> bool {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(close);
                true
            } else {
                false
            }
        })
    }
}
