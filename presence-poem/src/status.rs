//! What an endpoint's status page shows beside its metrics: the channels open and the recent
//! closes of misbehaving clients (see [`PhoenixSocket::recent_closes`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

#[cfg(doc)]
use crate::PhoenixSocket;

/// How many recent closes an endpoint keeps.
pub(crate) const RECENT_CLOSES: usize = 32;

/// A socket the server closed because the client misbehaved: it stopped reading (code 1013)
/// or flooded past its rate limit (code 1008). See [`PhoenixSocket::recent_closes`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecentClose {
    /// When the close was decided.
    pub at: SystemTime,
    /// The close code: 1013 (slow client) or 1008 (rate limited).
    pub code: u16,
    /// The close frame's reason.
    pub reason: &'static str,
    /// The socket's id, when the connect hook gave it one.
    pub socket_id: Option<Arc<str>>,
}

/// Shared by an endpoint's connections.
#[derive(Debug, Default)]
pub(crate) struct Status {
    channels: AtomicUsize,
    recent: Mutex<VecDeque<RecentClose>>,
}

impl Status {
    pub(crate) fn channels(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    pub(crate) fn recent_closes(&self) -> Vec<RecentClose> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }

    /// Remembers a close with `code` if it is one the status page lists.
    pub(crate) fn closed(&self, code: u16, reason: &'static str, socket_id: Option<&Arc<str>>) {
        if code != crate::outbox::code::TRY_AGAIN_LATER && code != crate::outbox::code::POLICY {
            return;
        }
        let close = RecentClose {
            at: SystemTime::now(),
            code,
            reason,
            socket_id: socket_id.cloned(),
        };
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_CLOSES {
            recent.pop_front();
        }
        recent.push_back(close);
    }

    /// Counts a joined channel until the guard drops.
    pub(crate) fn joined(self: &Arc<Self>) -> ChannelGuard {
        self.channels.fetch_add(1, Ordering::Relaxed);
        ChannelGuard(self.clone())
    }
}

/// One joined channel, counted by [`PhoenixSocket::open_channels`].
#[derive(Debug)]
pub(crate) struct ChannelGuard(Arc<Status>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0.channels.fetch_sub(1, Ordering::Relaxed);
    }
}
