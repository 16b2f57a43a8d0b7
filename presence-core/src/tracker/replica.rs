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

/// The replicas one shard knows, by node name: one incarnation per name.
#[derive(Debug, Default, Clone)]
pub(crate) struct Replicas {
    by_name: HashMap<Arc<str>, Replica>,
    /// The newest incarnation of each name that was replaced by a newer one or left
    /// gracefully: anything from it or older is stale.
    gone: HashMap<Arc<str>, u64>,
}

impl Replicas {
    /// Whether `from` is an incarnation older than one already known or purged: a message
    /// from it was delayed past its successor (or its own permdown) and must be ignored.
    pub(crate) fn is_stale(&self, from: &ReplicaRef) -> bool {
        self.gone.get(&from.name).is_some_and(|v| from.vsn <= *v)
            || self
                .by_name
                .get(&from.name)
                .is_some_and(|r| from.vsn < r.vsn)
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
                self.gone.insert(from.name.clone(), prev.vsn);
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
        out.sort_by(|a, b| transition_order(a).cmp(&transition_order(b)));
        out
    }

    /// Handles a graceful permdown from `from`: when it is the known incarnation, it goes down
    /// (if up) and is purged at once.
    pub(crate) fn graceful_permdown(&mut self, from: &ReplicaRef) -> Vec<Transition> {
        match self.by_name.get(&from.name) {
            Some(known) if known.vsn == from.vsn => {
                let was_up = known.status == ReplicaStatus::Up;
                self.by_name.remove(&from.name);
                self.gone.insert(from.name.clone(), from.vsn);
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
        reps.graceful_permdown(&r("b", 2));
        assert!(reps.is_stale(&r("b", 2)), "b/2 left for good");
        assert!(!reps.is_stale(&r("b", 3)), "a new incarnation is welcome");
    }

    #[test]
    fn graceful_permdown_only_matches_the_known_incarnation() {
        let mut reps = Replicas::default();
        reps.put_heartbeat(&r("b", 2), 0);
        assert!(reps.graceful_permdown(&r("b", 1)).is_empty());
        assert_eq!(
            reps.graceful_permdown(&r("b", 2)),
            vec![Transition::Down(r("b", 2)), Transition::Permdown(r("b", 2))]
        );
        assert!(reps.get("b").is_none());
    }
}
