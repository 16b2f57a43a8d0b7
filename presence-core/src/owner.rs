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
    holders: Mutex<Vec<Weak<dyn OwnerRelease>>>,
}

impl Owner {
    /// A new owner with a fresh, globally unique id.
    pub fn new() -> Self {
        Owner {
            id: OwnerId::next(),
            holders: Mutex::new(Vec::new()),
        }
    }

    /// This owner's id.
    pub fn id(&self) -> OwnerId {
        self.id
    }

    /// Remembers `holder`, so that dropping this owner releases its presences there.
    pub(crate) fn register(&self, holder: &Arc<dyn OwnerRelease>) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.retain(|w| w.strong_count() > 0);
        if !holders
            .iter()
            .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(holder)))
        {
            // Most owners use one tracker: keep the list exactly as long as needed.
            holders.reserve_exact(1);
            holders.push(Arc::downgrade(holder));
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
        let holders = std::mem::take(
            self.holders
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for holder in holders {
            if let Some(holder) = holder.upgrade() {
                holder.release(self.id);
            }
        }
    }
}
