//! Delta generations: recent history kept to answer transfer requests without the whole state
//! (Phoenix's `Tracker.DeltaGeneration`).
//!
//! Slot `i` holds one delta covering a contiguous window of recent history whose size stays
//! under `caps[i]`; slots are ordered smallest cap first. A lagging peer is sent the smallest
//! window that covers what it misses, or the whole state when none does.
#![cfg_attr(not(test), allow(dead_code))]

use super::clock::{self, Context, ReplicaRef};
use super::state::{Delta, State, Transfer, merge_deltas};

/// The delta generations of one shard.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeltaGenerations {
    caps: Vec<usize>,
    gens: Vec<Delta>,
}

impl DeltaGenerations {
    /// Generations with these size caps (smallest first, like Phoenix's `max_delta_sizes`).
    pub(crate) fn new(caps: Vec<usize>) -> Self {
        DeltaGenerations {
            caps,
            gens: Vec::new(),
        }
    }

    /// The current generations (empty before the first push or after a clear).
    pub(crate) fn generations(&self) -> &[Delta] {
        &self.gens
    }

    /// Adds `delta` to every generation it is contiguous with.
    ///
    /// On the first push every slot is seeded with `seed`, the parent state's current (empty)
    /// delta. A merge that fits its slot's cap is kept; one that overflows makes the slot restart
    /// from the previous slot's candidate (for slot 0, `delta` itself). A slot whose range is
    /// not contiguous with `delta` is left unchanged.
    pub(crate) fn push(&mut self, seed: &Delta, delta: &Delta) {
        if self.gens.is_empty() {
            self.gens = self.caps.iter().map(|_| seed.clone()).collect();
        }
        let mut candidate = delta.clone();
        for (slot, &cap) in self.gens.iter_mut().zip(&self.caps) {
            match merge_deltas(slot, delta) {
                Ok(merged) => {
                    if merged.size() <= cap {
                        *slot = merged.clone();
                    } else {
                        *slot = candidate;
                    }
                    candidate = merged;
                }
                Err(_) => candidate = slot.clone(),
            }
        }
    }

    /// What to send `requester` (whose context is `requester_ctx`): the first, smallest
    /// generation that, restricted to the requester's replicas, is non-empty, starts at or before
    /// the requester and is not already fully known by it; otherwise the whole state.
    pub(crate) fn extract(
        &self,
        state: &State,
        requester: &ReplicaRef,
        requester_ctx: &Context,
    ) -> Transfer {
        for g in &self.gens {
            let start = clock::filter_replicas(g.start(), requester_ctx);
            let end = clock::filter_replicas(g.end(), requester_ctx);
            if !clock::dominates_or_equal(&start, &end)
                && clock::dominates_or_equal(requester_ctx, &start)
                && !clock::dominates(requester_ctx, &end)
            {
                return Transfer::Delta(g.restricted(requester_ctx));
            }
        }
        Transfer::State(state.extract(requester, requester_ctx))
    }

    /// Forgets a permanently down replica in every generation.
    pub(crate) fn remove_replica(&mut self, r: &ReplicaRef) {
        for g in &mut self.gens {
            g.remove_replica(r);
        }
    }

    /// Drops every generation (after adopting a whole state).
    pub(crate) fn clear(&mut self) {
        self.gens.clear();
    }
}
