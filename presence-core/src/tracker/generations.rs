//! Delta generations: recent history kept to answer transfer requests without the whole state
//! (Phoenix's `Tracker.DeltaGeneration`).
//!
//! Slot `i` holds one delta covering a contiguous window of recent history whose size stays
//! under `caps[i]`; slots are ordered smallest cap first. A lagging peer is sent the smallest
//! window that covers what it misses, or the whole state when none does.

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
    #[cfg(test)]
    pub(crate) fn generations(&self) -> &[Delta] {
        &self.gens
    }

    /// Adds `delta` to every generation it is contiguous with.
    ///
    /// On the first push every slot is seeded with what `seed` gives, the parent state's
    /// current delta (read only then: it copies rows). A merge that fits its slot's cap is kept; one that overflows makes the slot restart
    /// from the previous slot's candidate (for slot 0, `delta` itself). A slot whose range is
    /// not contiguous with `delta` is left unchanged.
    pub(crate) fn push(&mut self, seed: impl FnOnce() -> Delta, delta: &Delta) {
        if self.gens.is_empty() {
            let seed = seed();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{Meta, OwnerId, PhxRef};

    fn rr(name: &str) -> ReplicaRef {
        ReplicaRef::new(name, 1)
    }

    fn ctx(pairs: &[(&str, u64)]) -> Context {
        pairs.iter().map(|(n, c)| (rr(n), *c)).collect()
    }

    fn join(s: &mut State, o: u64, key: &str) {
        let meta = Meta::new(json!({}), PhxRef::generate(), None);
        s.join(OwnerId::from_parts(1, o), "t".into(), Arc::from(key), meta);
    }

    /// Broadcasts `s`'s pending delta into `g` the way the shard does; returns the delta.
    fn push_own(s: &mut State, g: &mut DeltaGenerations) -> Delta {
        let d = s.take_delta();
        g.push(|| s.delta(), &d);
        d
    }

    fn sizes(g: &DeltaGenerations) -> Vec<usize> {
        g.generations().iter().map(Delta::size).collect()
    }

    fn ranges(g: &DeltaGenerations) -> Vec<(Context, Context)> {
        g.generations()
            .iter()
            .map(|d| (d.start().clone(), d.end().clone()))
            .collect()
    }

    #[test]
    fn generations() {
        let mut a = State::new(rr("a"));
        let mut g = DeltaGenerations::new(vec![2, 5, 6]);
        assert!(g.generations().is_empty());
        join(&mut a, 1, "k1");
        push_own(&mut a, &mut g);
        assert_eq!(sizes(&g), vec![2, 2, 2], "every slot seeded then filled");
        join(&mut a, 2, "k2");
        push_own(&mut a, &mut g);
        assert_eq!(sizes(&g), vec![2, 4, 4], "slot 0 overflowed and restarted");
        join(&mut a, 3, "k3");
        push_own(&mut a, &mut g);
        assert_eq!(sizes(&g), vec![2, 4, 6]);
        join(&mut a, 4, "k4");
        push_own(&mut a, &mut g);
        assert_eq!(sizes(&g), vec![2, 4, 6], "windows slide");
        assert_eq!(
            ranges(&g),
            vec![
                (ctx(&[("a", 3)]), ctx(&[("a", 4)])),
                (ctx(&[("a", 2)]), ctx(&[("a", 4)])),
                (ctx(&[("a", 1)]), ctx(&[("a", 4)])),
            ]
        );
        // a leave covers its removed dot (a tombstone, counted in the size) and consumes one
        a.leave("t", OwnerId::from_parts(1, 4), "k4");
        push_own(&mut a, &mut g);
        assert_eq!(sizes(&g), vec![2, 4, 6]);
        let slot0 = &g.generations()[0].dots()[&rr("a")];
        assert!(slot0.values.is_empty(), "removed value dropped");
        assert_eq!(slot0.cloud, [4, 5].into(), "its dot kept");
        // remote deltas are pushed too and merged with independent ranges
        let mut b = State::new(rr("b"));
        b.replica_up(&rr("a"));
        join(&mut b, 9, "kb");
        let db = b.take_delta();
        g.push(|| a.delta(), &db);
        assert_eq!(sizes(&g), vec![2, 4, 6]);
        assert_eq!(
            ranges(&g),
            vec![
                (ctx(&[("b", 0)]), ctx(&[("b", 1)])),
                (ctx(&[("a", 3), ("b", 0)]), ctx(&[("a", 5), ("b", 1)])),
                (ctx(&[("a", 2), ("b", 0)]), ctx(&[("a", 5), ("b", 1)])),
            ],
            "ranges unioned"
        );
    }

    #[test]
    fn does_not_include_non_contiguous_deltas() {
        let mut a = State::new(rr("a"));
        let mut g = DeltaGenerations::new(vec![10, 20]);
        join(&mut a, 1, "k1");
        push_own(&mut a, &mut g);
        let before = g.generations().to_vec();
        join(&mut a, 2, "k2");
        a.take_delta(); // lost
        join(&mut a, 3, "k3");
        push_own(&mut a, &mut g);
        assert_eq!(g.generations(), before.as_slice());
    }

    #[test]
    fn remove_down_replicas() {
        let mut a = State::new(rr("a"));
        let mut b = State::new(rr("b"));
        let mut g = DeltaGenerations::new(vec![10]);
        join(&mut a, 1, "ka");
        join(&mut b, 2, "kb");
        push_own(&mut a, &mut g);
        g.push(|| a.delta(), &b.take_delta());
        g.remove_replica(&rr("b"));
        let gen0 = &g.generations()[0];
        assert!(!gen0.dots().contains_key(&rr("b")));
        assert!(!gen0.end().contains(&rr("b")));
        let mut c = State::new(rr("c"));
        c.replica_up(&rr("a"));
        c.replica_up(&rr("b"));
        let ch = c.merge_delta(gen0);
        assert_eq!(ch.joins.len(), 1);
        assert_eq!(ch.joins[0].replica, rr("a"));
    }

    #[test]
    fn whole_state_is_extracted_if_there_are_no_deltas() {
        let mut a = State::new(rr("a"));
        join(&mut a, 1, "k1");
        a.take_delta();
        let g = DeltaGenerations::new(vec![10]);
        let req = ctx(&[("a", 0), ("r", 0)]);
        match g.extract(&a, &rr("r"), &req) {
            Transfer::State(ex) => {
                assert_eq!(ex, a.extract(&rr("r"), &req));
                assert_eq!(ex.len(), 1);
            }
            Transfer::Delta(d) => panic!("expected the whole state, got {d:?}"),
        }
    }

    #[test]
    fn delta_is_extracted_for_the_first_delta_with_dominating_clocks() {
        let mut a = State::new(rr("a"));
        let mut g = DeltaGenerations::new(vec![2, 4, 100]);
        for i in 1..=3 {
            join(&mut a, i, &format!("k{i}"));
            push_own(&mut a, &mut g);
        }
        assert_eq!(
            ranges(&g),
            vec![
                (ctx(&[("a", 2)]), ctx(&[("a", 3)])),
                (ctx(&[("a", 1)]), ctx(&[("a", 3)])),
                (ctx(&[("a", 0)]), ctx(&[("a", 3)])),
            ]
        );
        let pick = |req: &Context| g.extract(&a, &rr("r"), req);
        let req = ctx(&[("a", 1), ("r", 0)]);
        assert_eq!(
            pick(&req),
            Transfer::Delta(g.generations()[1].restricted(&req))
        );
        let req = ctx(&[("a", 2), ("r", 0)]);
        assert_eq!(
            pick(&req),
            Transfer::Delta(g.generations()[0].restricted(&req))
        );
        let req = ctx(&[("a", 0), ("r", 0)]);
        assert_eq!(
            pick(&req),
            Transfer::Delta(g.generations()[2].restricted(&req))
        );
        // already knows everything: whole (empty for it) state
        let req = ctx(&[("a", 3), ("r", 0)]);
        assert!(matches!(pick(&req), Transfer::State(_)));
        // the picked delta brings a requester up to date
        let mut r = State::new(rr("r"));
        r.replica_up(&rr("a"));
        let ch = r.merge(&pick(&r.context()));
        assert_eq!(ch.joins.len(), 3);
        assert_eq!(r.context().get(&rr("a")), Some(3));
    }

    #[test]
    fn an_empty_delta_is_not_extracted() {
        let a = State::new(rr("a"));
        let mut b = State::new(rr("b"));
        let mut g = DeltaGenerations::new(vec![10]);
        join(&mut b, 1, "kb");
        // a relays b's delta; its generation is empty for a requester that only knows a
        g.push(|| a.delta(), &b.take_delta());
        let req = ctx(&[("a", 0), ("r", 0)]);
        assert!(matches!(g.extract(&a, &rr("r"), &req), Transfer::State(_)));
        let req = ctx(&[("a", 0), ("b", 0), ("r", 0)]);
        assert!(matches!(g.extract(&a, &rr("r"), &req), Transfer::Delta(_)));
    }

    #[test]
    fn delta_that_isnt_dominating_on_common_set_of_replicas_is_not_extracted() {
        let mut a = State::new(rr("a"));
        let mut g = DeltaGenerations::new(vec![10]);
        join(&mut a, 1, "k1");
        a.take_delta(); // before the generations existed
        join(&mut a, 2, "k2");
        push_own(&mut a, &mut g);
        // the generation starts at a=1; a requester at a=0 would miss dot 1
        let req = ctx(&[("a", 0), ("b", 7), ("r", 0)]);
        assert!(matches!(g.extract(&a, &rr("r"), &req), Transfer::State(_)));
        // replicas unknown to the generation do not matter
        let req = ctx(&[("a", 1), ("b", 7), ("r", 0)]);
        assert!(matches!(g.extract(&a, &rr("r"), &req), Transfer::Delta(_)));
        g.clear();
        assert!(g.generations().is_empty());
    }
}
