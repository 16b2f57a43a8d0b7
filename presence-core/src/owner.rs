//! Owners of presences: whatever a channel or a task holds.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::{Deserialize, Serialize};

/// The identity of an [`Owner`], unique across nodes and across process incarnations.
///
/// It pairs a random 64-bit number drawn once per process with a per-process counter, so a
/// local owner's exit can never remove a row that another node (or an earlier run of this node)
/// tracked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerId {
    incarnation: u64,
    seq: u64,
}

impl OwnerId {
    fn next() -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(1);
        static INCARNATION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        OwnerId {
            incarnation: *INCARNATION.get_or_init(crate::meta::random_u64),
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Builds an id from its two parts; for tests and for decoding.
    pub const fn from_parts(incarnation: u64, seq: u64) -> Self {
        OwnerId { incarnation, seq }
    }

    /// The two parts: the process incarnation and the sequence number.
    pub const fn to_parts(self) -> (u64, u64) {
        (self.incarnation, self.seq)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerId({:016x}.{})", self.incarnation, self.seq)
    }
}

/// Something that holds presences on behalf of an owner and must drop them when it ends.
pub(crate) trait OwnerRelease: Send + Sync {
    /// Removes every presence of `owner`, reporting them as leaves.
    fn release(&self, owner: OwnerId);
}

/// The owner of tracked presences, like a tracked Phoenix process.
///
/// Hold it in the task or channel the presences belong to. When it is dropped (the task ended,
/// panicked or was aborted), every presence it tracked, in every tracker, leaves.
///
/// # Examples
///
/// ```
/// use presence_core::{Owner, PubSub, Tracker, TrackerConfig};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tracker = Tracker::start("P", PubSub::new("a"), TrackerConfig::default())?;
/// let task = tokio::spawn({
///     let tracker = tracker.clone();
///     async move {
///         let owner = Owner::new();
///         tracker.track(&owner, "room:1", "bob", serde_json::json!({})).unwrap();
///         panic!("the task dies; its owner is dropped while unwinding");
///     }
/// });
/// assert!(task.await.is_err());
/// assert!(tracker.list("room:1").is_empty());
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping an Owner untracks every presence it tracked"]
pub struct Owner {
    id: OwnerId,
    holders: Mutex<Holders>,
}

/// What an owner's presences are held by: nearly always one tracker, kept inline, so that
/// tracking costs the owner no allocation of its own.
enum Holders {
    None,
    One(Weak<dyn OwnerRelease>),
    Many(Vec<Weak<dyn OwnerRelease>>),
}

/// Whether `weak` points to `holder`.
fn is(weak: &Weak<dyn OwnerRelease>, holder: &Arc<dyn OwnerRelease>) -> bool {
    std::ptr::addr_eq(weak.as_ptr(), Arc::as_ptr(holder))
}

impl Owner {
    /// A new owner with a fresh, globally unique id.
    pub fn new() -> Self {
        Owner {
            id: OwnerId::next(),
            holders: Mutex::new(Holders::None),
        }
    }

    /// This owner's id.
    pub fn id(&self) -> OwnerId {
        self.id
    }

    /// Remembers `holder`, so that dropping this owner releases its presences there.
    pub(crate) fn register(&self, holder: &Arc<dyn OwnerRelease>) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *holders {
            Holders::One(w) if is(w, holder) => {}
            Holders::None => *holders = Holders::One(Arc::downgrade(holder)),
            Holders::One(w) if w.strong_count() == 0 => *w = Arc::downgrade(holder),
            Holders::One(w) => {
                let first = w.clone();
                *holders = Holders::Many(vec![first, Arc::downgrade(holder)]);
            }
            Holders::Many(list) => {
                list.retain(|w| w.strong_count() > 0);
                if !list.iter().any(|w| is(w, holder)) {
                    // Keep the list exactly as long as needed.
                    list.reserve_exact(1);
                    list.push(Arc::downgrade(holder));
                }
            }
        }
    }
}

impl Default for Owner {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Owner").field(&self.id).finish()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let holders = std::mem::replace(
            self.holders
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
            Holders::None,
        );
        let (one, more) = match holders {
            Holders::None => (None, Vec::new()),
            Holders::One(w) => (Some(w), Vec::new()),
            Holders::Many(list) => (None, list),
        };
        for holder in one.into_iter().chain(more) {
            if let Some(holder) = holder.upgrade() {
                holder.release(self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder that records the owners it is asked to release.
    #[derive(Default)]
    struct Released(Mutex<Vec<OwnerId>>);

    impl OwnerRelease for Released {
        fn release(&self, owner: OwnerId) {
            self.0.lock().unwrap().push(owner);
        }
    }

    #[test]
    fn dropping_an_owner_releases_each_holder_once() {
        let (a, b) = (Arc::new(Released::default()), Arc::new(Released::default()));
        let (da, db): (Arc<dyn OwnerRelease>, Arc<dyn OwnerRelease>) = (a.clone(), b.clone());
        let owner = Owner::new();
        let id = owner.id();
        owner.register(&da);
        owner.register(&da);
        assert!(matches!(*owner.holders.lock().unwrap(), Holders::One(_)));
        owner.register(&db);
        owner.register(&da);
        drop(owner);
        assert_eq!(*a.0.lock().unwrap(), vec![id]);
        assert_eq!(*b.0.lock().unwrap(), vec![id]);
    }

    #[test]
    fn a_gone_holder_is_replaced_inline() {
        let owner = Owner::new();
        let gone: Arc<dyn OwnerRelease> = Arc::new(Released::default());
        owner.register(&gone);
        drop(gone);
        let a = Arc::new(Released::default());
        let da: Arc<dyn OwnerRelease> = a.clone();
        owner.register(&da);
        assert!(matches!(*owner.holders.lock().unwrap(), Holders::One(_)));
        drop(owner);
        assert_eq!(a.0.lock().unwrap().len(), 1);
    }
}
