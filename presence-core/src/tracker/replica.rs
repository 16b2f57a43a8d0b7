//! Replica liveness: who is up, down or gone, from heartbeats and silence (reference 1.7).

use std::collections::HashMap;
use std::sync::Arc;

use super::clock::ReplicaRef;

/// Where a known replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Heartbeats arrive; its presences are listed.
    Up,
    /// Silent for longer than `down_period`; its presences are hidden and were reported as
    /// leaves, but kept in case it comes back with the same incarnation.
    Down,
}

/// A peer incarnation as one shard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replica {
    pub(crate) vsn: u64,
    pub(crate) last_heartbeat_at: u64,
    pub(crate) status: ReplicaStatus,
}

/// What a heartbeat or the passing of time asks the shard to do with the CRDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Bring the incarnation up: report joins of its rows.
    Up(ReplicaRef),
    /// Mark it down: report leaves of its rows, hide them.
    Down(ReplicaRef),
    /// Purge it: delete its rows without reporting.
    Permdown(ReplicaRef),
}

/// At most this many gone incarnations are remembered per node name (the newest).
const GONE_PER_NAME: usize = 8;

/// The replicas one shard knows, by node name: one incarnation per name.
///
/// Incarnations are told apart by equality of their `vsn`, never by its order: a vsn comes
/// from the wall clock, and a node restarted on a host whose clock is behind must still be
/// welcome. An incarnation that was replaced or left gracefully is remembered as gone for a
/// permdown period, so that its delayed messages are ignored; then it is forgotten, so that a
/// long-running node keeps nothing of the thousands of incarnations a cluster goes through.
#[derive(Debug, Default, Clone)]
pub(crate) struct Replicas {
    by_name: HashMap<Arc<str>, Replica>,
    /// Recently gone incarnations of each name, with when they went (ms).
    gone: HashMap<Arc<str>, Vec<(u64, u64)>>,
}

impl Replicas {
    /// Whether a message from `from` must be ignored: `from` is a gone incarnation (its
    /// message was delayed past its successor or its own permdown), or an older incarnation
    /// of a name whose known incarnation is up (a restart with a clock behind waits until
    /// its predecessor is down, then takes over).
    pub(crate) fn is_stale(&self, from: &ReplicaRef) -> bool {
        self.gone
            .get(&from.name)
            .is_some_and(|gone| gone.iter().any(|(vsn, _)| *vsn == from.vsn))
            || self
                .by_name
                .get(&from.name)
                .is_some_and(|r| from.vsn < r.vsn && r.status == ReplicaStatus::Up)
    }

    /// Remembers `vsn` of `name` as gone at `now`.
    fn bury(&mut self, name: &Arc<str>, vsn: u64, now: u64) {
        let gone = self.gone.entry(name.clone()).or_default();
        if !gone.iter().any(|(v, _)| *v == vsn) {
            if gone.len() == GONE_PER_NAME {
                gone.remove(0);
            }
            gone.push((vsn, now));
        }
    }

    /// Forgets gone incarnations older than `ttl` at `now`.
    fn forget_gone(&mut self, now: u64, ttl: u64) {
        self.gone.retain(|_, gone| {
            gone.retain(|(_, at)| now.saturating_sub(*at) <= ttl);
            !gone.is_empty()
        });
        if self.gone.capacity() > 64 && self.gone.len() < self.gone.capacity() / 4 {
            self.gone.shrink_to(self.gone.len() * 2);
        }
    }

    /// How many incarnations are remembered as gone.
    #[cfg(test)]
    pub(crate) fn gone_len(&self) -> usize {
        self.gone.values().map(Vec::len).sum()
    }

    /// Records a heartbeat from `from` at `now` (ms) and returns the transitions to apply, in
    /// order (reference 1.7's table). The caller has checked [`is_stale`](Self::is_stale).
    pub(crate) fn put_heartbeat(&mut self, from: &ReplicaRef, now: u64) -> Vec<Transition> {
        let fresh = Replica {
            vsn: from.vsn,
            last_heartbeat_at: now,
            status: ReplicaStatus::Up,
        };
        match self.by_name.insert(from.name.clone(), fresh) {
            None => vec![Transition::Up(from.clone())],
            Some(prev) if prev.vsn == from.vsn => match prev.status {
                ReplicaStatus::Up => Vec::new(),
                ReplicaStatus::Down => vec![Transition::Up(from.clone())],
            },
            Some(prev) => {
                let old = ReplicaRef {
                    name: from.name.clone(),
                    vsn: prev.vsn,
                };
                self.bury(&from.name, prev.vsn, now);
                let mut out = Vec::with_capacity(3);
                if prev.status == ReplicaStatus::Up {
                    out.push(Transition::Down(old.clone()));
                }
                out.push(Transition::Permdown(old));
                out.push(Transition::Up(from.clone()));
                out
            }
        }
    }

    /// Finds replicas silent for longer than the down or permdown period (strictly) at `now`.
    pub(crate) fn detect_downs(
        &mut self,
        now: u64,
        down_period: u64,
        permdown_period: u64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut purged = Vec::new();
        for (name, replica) in &mut self.by_name {
            let downtime = now.saturating_sub(replica.last_heartbeat_at);
            let r = ReplicaRef {
                name: name.clone(),
                vsn: replica.vsn,
            };
            if downtime > permdown_period {
                if replica.status == ReplicaStatus::Up {
                    out.push(Transition::Down(r.clone()));
                }
                out.push(Transition::Permdown(r));
                purged.push(name.clone());
            } else if downtime > down_period && replica.status == ReplicaStatus::Up {
                replica.status = ReplicaStatus::Down;
                out.push(Transition::Down(r));
            }
        }
        // No tombstone here: a node purged for silence may only have been split off, and is
        // welcome back with the same incarnation when the split heals.
        for name in purged {
            self.by_name.remove(&name);
        }
        if self.by_name.capacity() > 64 && self.by_name.len() < self.by_name.capacity() / 4 {
            self.by_name.shrink_to(self.by_name.len() * 2);
        }
        self.forget_gone(now, permdown_period);
        out.sort_by(|a, b| transition_order(a).cmp(&transition_order(b)));
        out
    }

    /// Handles a graceful permdown from `from` at `now`: when it is the known incarnation, it
    /// goes down (if up) and is purged at once. Either way it is remembered as gone, so that a
    /// heartbeat of it that arrives after its permdown (reordered on the way) is ignored.
    pub(crate) fn graceful_permdown(&mut self, from: &ReplicaRef, now: u64) -> Vec<Transition> {
        self.bury(&from.name, from.vsn, now);
        match self.by_name.get(&from.name) {
            Some(known) if known.vsn == from.vsn => {
                let was_up = known.status == ReplicaStatus::Up;
                self.by_name.remove(&from.name);
                let mut out = Vec::with_capacity(2);
                if was_up {
                    out.push(Transition::Down(from.clone()));
                }
                out.push(Transition::Permdown(from.clone()));
                out
            }
            _ => Vec::new(),
        }
    }

    /// The known incarnation of `name`.
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<&Replica> {
        self.by_name.get(name)
    }

    /// Every known replica.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Replica)> {
        self.by_name.iter()
    }
}

/// Sorts transitions of one detection pass by replica, keeping down before permdown.
fn transition_order(t: &Transition) -> (&ReplicaRef, u8) {
    match t {
        Transition::Down(r) => (r, 0),
        Transition::Permdown(r) => (r, 1),
        Transition::Up(r) => (r, 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, vsn: u64) -> ReplicaRef {
        ReplicaRef {
            name: Arc::from(name),
            vsn,
        }
    }

    #[test]
    fn put_heartbeat_with_no_previously_tracked_name_adds_it_up() {
        let mut reps = Replicas::default();
        assert_eq!(
            reps.put_heartbeat(&r("b", 1), 10),
            vec![Transition::Up(r("b", 1))]
        );
        let b = reps.get("b").unwrap();
        assert_eq!(
            (b.status, b.last_heartbeat_at, b.vsn),
            (ReplicaStatus::Up, 10, 1)
        );
    }

    #[test]
    fn put_heartbeat_with_previously_tracked_name_refreshes_and_brings_up() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        assert!(reps.put_heartbeat(&r("b", 1), 5).is_empty());
        assert_eq!(reps.get("b").unwrap().last_heartbeat_at, 5);
        assert_eq!(
            reps.detect_downs(100, 50, 1000),
            vec![Transition::Down(r("b", 1))]
        );
        assert_eq!(
            reps.put_heartbeat(&r("b", 1), 101),
            vec![Transition::Up(r("b", 1))]
        );
        assert_eq!(reps.get("b").unwrap().status, ReplicaStatus::Up);
    }

    #[test]
    fn new_vsn_of_up_replica_is_down_permdown_then_up() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        assert_eq!(
            reps.put_heartbeat(&r("b", 2), 1),
            vec![
                Transition::Down(r("b", 1)),
                Transition::Permdown(r("b", 1)),
                Transition::Up(r("b", 2))
            ]
        );
    }

    #[test]
    fn new_vsn_of_down_replica_is_permdown_then_up() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        reps.detect_downs(100, 50, 1000);
        assert_eq!(
            reps.put_heartbeat(&r("b", 2), 101),
            vec![Transition::Permdown(r("b", 1)), Transition::Up(r("b", 2))]
        );
    }

    #[test]
    fn detect_down_with_temporarily_downed_node_keeps_it() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        assert!(
            reps.detect_downs(50, 50, 1000).is_empty(),
            "the comparison is strict"
        );
        assert_eq!(
            reps.detect_downs(51, 50, 1000),
            vec![Transition::Down(r("b", 1))]
        );
        assert_eq!(reps.get("b").unwrap().status, ReplicaStatus::Down);
        assert!(
            reps.detect_downs(60, 50, 1000).is_empty(),
            "down is reported once"
        );
    }

    #[test]
    fn detect_down_with_permanently_downed_node_removes_it() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        assert_eq!(
            reps.detect_downs(1001, 50, 1000),
            vec![Transition::Down(r("b", 1)), Transition::Permdown(r("b", 1))]
        );
        assert!(reps.get("b").is_none());
    }

    #[test]
    fn detect_down_with_up_node_changes_nothing() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        assert!(reps.detect_downs(10, 50, 1000).is_empty());
        assert_eq!(reps.get("b").unwrap().status, ReplicaStatus::Up);
    }

    #[test]
    fn messages_of_older_or_purged_incarnations_are_stale() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1), 0);
        reps.put_heartbeat(&r("b", 2), 1);
        assert!(reps.is_stale(&r("b", 1)), "b/1 was replaced by b/2");
        assert!(!reps.is_stale(&r("b", 2)));
        reps.graceful_permdown(&r("b", 2), 2);
        assert!(reps.is_stale(&r("b", 2)), "b/2 left for good");
        assert!(!reps.is_stale(&r("b", 3)), "a new incarnation is welcome");
    }

    #[test]
    fn graceful_permdown_only_matches_the_known_incarnation() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 2), 0);
        assert!(reps.graceful_permdown(&r("b", 1), 1).is_empty());
        assert_eq!(
            reps.graceful_permdown(&r("b", 2), 2),
            vec![Transition::Down(r("b", 2)), Transition::Permdown(r("b", 2))]
        );
        assert!(reps.get("b").is_none());
    }

    #[test]
    fn a_restart_with_a_clock_behind_is_welcome_once_its_predecessor_is_down() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1_000), 0);
        // b restarts on a host whose clock stepped back: its vsn is lower.
        assert!(
            reps.is_stale(&r("b", 900)),
            "b/1000 is up: b/900 may be a delayed message"
        );
        reps.detect_downs(100, 50, 10_000);
        assert!(!reps.is_stale(&r("b", 900)), "b/1000 went silent");
        assert_eq!(
            reps.put_heartbeat(&r("b", 900), 101),
            vec![
                Transition::Permdown(r("b", 1_000)),
                Transition::Up(r("b", 900))
            ]
        );
        assert!(reps.is_stale(&r("b", 1_000)), "the old incarnation is gone");
    }

    #[test]
    fn a_restart_with_a_clock_behind_after_a_graceful_leave_is_welcome_at_once() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 1_000), 0);
        reps.graceful_permdown(&r("b", 1_000), 1);
        assert!(!reps.is_stale(&r("b", 900)));
        assert_eq!(
            reps.put_heartbeat(&r("b", 900), 2),
            vec![Transition::Up(r("b", 900))]
        );
    }

    #[test]
    fn a_forged_huge_vsn_that_leaves_does_not_lock_the_name_out() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", u64::MAX), 0);
        reps.graceful_permdown(&r("b", u64::MAX), 1);
        assert!(!reps.is_stale(&r("b", 5)), "only that incarnation is gone");
        assert_eq!(
            reps.put_heartbeat(&r("b", 5), 2),
            vec![Transition::Up(r("b", 5))]
        );
    }

    #[test]
    fn a_permdown_heard_before_its_incarnation_is_remembered() {
        let mut reps = Replicas::default();
        // b/7's heartbeat and permdown cross on the way: the permdown comes first.
        assert!(reps.graceful_permdown(&r("b", 7), 0).is_empty());
        assert!(reps.is_stale(&r("b", 7)), "its late heartbeat is ignored");
    }

    #[test]
    fn gone_incarnations_are_forgotten_after_a_permdown_period() {
        let mut reps = Replicas::default();
        for vsn in 0..50 {
            reps.put_heartbeat(&r("b", vsn), vsn);
        }
        assert_eq!(reps.gone_len(), GONE_PER_NAME, "bounded per name");
        for i in 0..100 {
            reps.graceful_permdown(&r(&format!("n{i}"), 1), 100);
        }
        assert_eq!(reps.gone_len(), GONE_PER_NAME + 100);
        reps.detect_downs(100 + 1_001, 500, 1_000);
        assert_eq!(reps.gone_len(), 0, "everything gone is forgotten in time");
        assert!(reps.get("b").is_none(), "b went silent for good too");
    }
}
