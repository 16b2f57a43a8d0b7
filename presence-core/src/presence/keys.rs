//! Key-level events: a key came online (its first presence joined, on any node), went offline
//! (its last presence left) or was updated, for server code that cares about users rather than
//! devices.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Notify;

pub use crate::tracker::KeyChange;

/// One key-level event of a topic. See [`PresenceHandle::key_events`](super::PresenceHandle::key_events).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyEvent {
    /// The topic.
    pub topic: Arc<str>,
    /// The key (the user, with the usual grouping).
    pub key: Arc<str>,
    /// What happened to it.
    pub change: KeyChange,
}

/// A subscription to key-level events, from
/// [`PresenceHandle::key_events`](super::PresenceHandle::key_events) or
/// [`all_key_events`](super::PresenceHandle::all_key_events). Dropping it unsubscribes.
///
/// Events come in the order the tracker applied the changes (per topic, and across topics of
/// one shard). A subscriber that reads slower than events arrive is never cut off and never
/// makes anyone wait: the events of one key still unread merge into their net effect (online
/// then offline is nothing, offline then online is an update), so the queue holds at most one
/// event per key.
pub struct KeyEvents {
    queue: Arc<KeyQueue>,
}

impl fmt::Debug for KeyEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEvents")
            .field("topic", &self.queue.topic)
            .finish_non_exhaustive()
    }
}

impl KeyEvents {
    /// The next event; `None` once the presence has stopped and every event was read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<KeyEvent> {
        loop {
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return self.try_recv();
            }
            self.queue.ready.notified().await;
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<KeyEvent> {
        self.queue.lock().pop()
    }
}

pub(crate) struct KeyQueue {
    /// `None`: every topic.
    topic: Option<Arc<str>>,
    pending: Mutex<Pending>,
    ready: Notify,
    closed: AtomicBool,
}

impl KeyQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Unread events, at most one per key: `order` says in which order keys first became pending,
/// `changes` holds each pending key's net change and the sequence number of its `order` entry
/// (older entries of a key are stale and skipped).
#[derive(Default)]
struct Pending {
    order: VecDeque<(Arc<str>, Arc<str>, u64)>,
    changes: HashMap<(Arc<str>, Arc<str>), (KeyChange, u64)>,
    next_seq: u64,
}

/// The net effect of `first` then `then` on one key; `None` when they cancel out.
fn merge(first: KeyChange, then: KeyChange) -> Option<KeyChange> {
    use KeyChange::{Offline, Online, Updated};
    match (first, then) {
        (Online, Offline) => None,
        (Online, _) => Some(Online),
        (Offline, Online | Updated) | (Updated, Online | Updated) => Some(Updated),
        (_, Offline) => Some(Offline),
    }
}

impl Pending {
    fn push(&mut self, topic: &Arc<str>, key: &Arc<str>, change: KeyChange) {
        let id = (topic.clone(), key.clone());
        match self.changes.get(&id).map(|(c, _)| *c) {
            Some(previous) => match merge(previous, change) {
                Some(net) => {
                    if let Some(entry) = self.changes.get_mut(&id) {
                        entry.0 = net;
                    }
                }
                None => {
                    self.changes.remove(&id);
                }
            },
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.push_back((topic.clone(), key.clone(), seq));
                self.changes.insert(id, (change, seq));
            }
        }
        // Cancelled keys leave stale entries behind: keep them from piling up.
        if self.order.len() > 2 * self.changes.len() + 64 {
            let changes = &self.changes;
            self.order.retain(|(t, k, seq)| {
                changes
                    .get(&(t.clone(), k.clone()))
                    .is_some_and(|(_, s)| s == seq)
            });
        }
    }

    fn pop(&mut self) -> Option<KeyEvent> {
        while let Some((topic, key, seq)) = self.order.pop_front() {
            let id = (topic, key);
            if self.changes.get(&id).is_some_and(|(_, s)| *s == seq) {
                let (change, _) = self.changes.remove(&id)?;
                let (topic, key) = id;
                return Some(KeyEvent { topic, key, change });
            }
        }
        None
    }
}

/// The subscribers of one presence.
#[derive(Default)]
pub(crate) struct KeySubscribers {
    subs: Mutex<Vec<Weak<KeyQueue>>>,
}

impl KeySubscribers {
    pub(crate) fn subscribe(&self, topic: Option<&str>) -> KeyEvents {
        let queue = Arc::new(KeyQueue {
            topic: topic.map(Arc::from),
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| s.strong_count() > 0);
        subs.push(Arc::downgrade(&queue));
        KeyEvents { queue }
    }

    /// Hands the key changes of one topic to its subscribers.
    pub(crate) fn publish(&self, topic: &Arc<str>, changes: &[(Arc<str>, KeyChange)]) {
        if changes.is_empty() {
            return;
        }
        let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        for queue in subs.iter().filter_map(Weak::upgrade) {
            if queue.topic.as_ref().is_some_and(|t| t != topic) {
                continue;
            }
            {
                let mut pending = queue.lock();
                for (key, change) in changes {
                    pending.push(topic, key, *change);
                }
            }
            queue.ready.notify_one();
        }
    }

    /// Ends every subscription (the presence stopped).
    pub(crate) fn close(&self) {
        let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        for queue in subs.iter().filter_map(Weak::upgrade) {
            queue.closed.store(true, Ordering::Release);
            queue.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyChange::{Offline, Online, Updated};

    fn drain(events: &mut KeyEvents) -> Vec<(String, KeyChange)> {
        std::iter::from_fn(|| events.try_recv())
            .map(|e| (e.key.to_string(), e.change))
            .collect()
    }

    #[test]
    fn unread_events_merge_per_key_in_first_seen_order() {
        let subs = KeySubscribers::default();
        let mut all = subs.subscribe(None);
        let mut other = subs.subscribe(Some("t2"));
        let t: Arc<str> = Arc::from("t");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
        subs.publish(&t, &[(a.clone(), Online), (b.clone(), Online)]);
        subs.publish(&t, &[(a.clone(), Offline)]); // cancels alice's online
        subs.publish(&t, &[(b.clone(), Updated), (a.clone(), Online)]);
        assert_eq!(
            drain(&mut all),
            [("bob".to_owned(), Online), ("alice".to_owned(), Online)]
        );
        assert!(
            drain(&mut other).is_empty(),
            "other topics are filtered out"
        );
        subs.publish(&t, &[(a.clone(), Offline)]);
        subs.publish(&t, &[(a.clone(), Online)]);
        assert_eq!(drain(&mut all), [("alice".to_owned(), Updated)]);
    }

    #[test]
    fn flapping_keys_do_not_grow_the_queue() {
        let subs = KeySubscribers::default();
        let events = subs.subscribe(None);
        let t: Arc<str> = Arc::from("t");
        let k: Arc<str> = Arc::from("k");
        for _ in 0..10_000 {
            subs.publish(&t, &[(k.clone(), Online)]);
            subs.publish(&t, &[(k.clone(), Offline)]);
        }
        assert!(events.queue.lock().order.len() <= 65);
    }

    #[test]
    fn merging_is_the_net_effect() {
        assert_eq!(merge(Online, Offline), None);
        assert_eq!(merge(Online, Updated), Some(Online));
        assert_eq!(merge(Offline, Online), Some(Updated));
        assert_eq!(merge(Updated, Offline), Some(Offline));
        assert_eq!(merge(Updated, Updated), Some(Updated));
    }
}
