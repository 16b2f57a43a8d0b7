//! Replica identities and version-vector clocks (Phoenix's `Tracker.Clock`).
//!
//! A [`Context`] maps each replica incarnation to the highest contiguous event counter seen from
//! it. The helpers here compare and combine contexts; they carry over the exact (and slightly
//! asymmetric) semantics of Phoenix, because the catch-up logic of the shard depends on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One incarnation of a replica: its (node/shard) name plus a version chosen at start, so every
/// restart is a fresh replica for the CRDT.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct ReplicaRef {
    /// The replica's stable name.
    pub(crate) name: Arc<str>,
    /// The incarnation, unique per start of that name.
    pub(crate) vsn: u64,
}

impl ReplicaRef {
    /// Builds a replica reference.
    #[cfg(test)]
    pub(crate) fn new(name: impl Into<Arc<str>>, vsn: u64) -> Self {
        ReplicaRef {
            name: name.into(),
            vsn,
        }
    }
}

/// A version vector: replica → highest contiguous counter seen. Serializes as a sequence of
/// `[replica, counter]` pairs, because JSON map keys must be strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Context(#[serde(with = "pairs")] pub(crate) BTreeMap<ReplicaRef, u64>);

impl Context {
    /// An empty context.
    pub(crate) fn new() -> Self {
        Context(BTreeMap::new())
    }

    /// The counter of `r`, if `r` is in the context.
    pub(crate) fn get(&self, r: &ReplicaRef) -> Option<u64> {
        self.0.get(r).copied()
    }

    /// Sets the counter of `r`.
    pub(crate) fn insert(&mut self, r: ReplicaRef, n: u64) {
        self.0.insert(r, n);
    }

    /// Whether `r` is in the context.
    pub(crate) fn contains(&self, r: &ReplicaRef) -> bool {
        self.0.contains_key(r)
    }

    /// Number of replicas in the context.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the context has no replica.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(replica, counter)` pairs, ordered by replica.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ReplicaRef, u64)> {
        self.0.iter().map(|(r, n)| (r, *n))
    }
}

impl FromIterator<(ReplicaRef, u64)> for Context {
    fn from_iter<T: IntoIterator<Item = (ReplicaRef, u64)>>(iter: T) -> Self {
        Context(iter.into_iter().collect())
    }
}

/// Serde helpers writing a `BTreeMap` as a sequence of `[key, value]` pairs.
pub(crate) mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the map as a sequence of pairs.
    pub(crate) fn serialize<S, K, V>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        K: Serialize,
        V: Serialize,
    {
        s.collect_seq(map.iter())
    }

    /// Reads a sequence of pairs into a map (later duplicates win).
    pub(crate) fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Whether `a` dominates `b`: `a` has at least as many entries and every `b[r] <= a[r]`
/// (missing counts as 0).
pub(crate) fn dominates(a: &Context, b: &Context) -> bool {
    a.len() >= b.len() && b.iter().all(|(r, n)| a.get(r).unwrap_or(0) >= n)
}

/// Phoenix's `dominates_or_equal?`: both empty → true; `a` empty → false; otherwise every entry
/// of `a` is `>=` the same entry of `b` (missing counts as 0). Entries only in `b` are ignored.
pub(crate) fn dominates_or_equal(a: &Context, b: &Context) -> bool {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => true,
        (true, false) => false,
        _ => a.iter().all(|(r, n)| n >= b.get(r).unwrap_or(0)),
    }
}

/// Key-wise maximum over the union of keys.
pub(crate) fn upperbound(a: &Context, b: &Context) -> Context {
    let mut out = a.clone();
    for (r, n) in b.iter() {
        let e = out.0.entry(r.clone()).or_insert(n);
        *e = (*e).max(n);
    }
    out
}

/// Key-wise minimum over the union of keys (a key present in one side only keeps its value).
pub(crate) fn lowerbound(a: &Context, b: &Context) -> Context {
    let mut out = a.clone();
    for (r, n) in b.iter() {
        let e = out.0.entry(r.clone()).or_insert(n);
        *e = (*e).min(n);
    }
    out
}

/// `c` restricted to the replicas that are keys of `keep`.
pub(crate) fn filter_replicas(c: &Context, keep: &Context) -> Context {
    c.iter()
        .filter(|(r, _)| keep.contains(r))
        .map(|(r, n)| (r.clone(), n))
        .collect()
}

/// The replicas (keys) of a context.
#[cfg(test)]
pub(crate) fn replicas(c: &Context) -> Vec<ReplicaRef> {
    c.0.keys().cloned().collect()
}

/// A set of clocks sampled from heartbeats, each tagged with the replica that sent it.
pub(crate) type ClockSet = Vec<(ReplicaRef, Context)>;

/// Adds `clock` (sent by `from`) to `set`, keeping only maximal clocks (1.10 of the reference):
/// empty clocks are ignored; a clock dominating the combined upper bound replaces the set; one
/// dominated by the upper bound is ignored; otherwise members it dominates are dropped and it is
/// added unless some remaining member dominates it.
pub(crate) fn append_clock(set: &mut ClockSet, from: ReplicaRef, clock: Context) {
    if clock.is_empty() {
        return;
    }
    let big = set
        .iter()
        .fold(Context::new(), |acc, (_, c)| upperbound(&acc, c));
    if dominates(&clock, &big) {
        set.clear();
        set.push((from, clock));
        return;
    }
    if dominates(&big, &clock) {
        return;
    }
    set.retain(|(_, c)| !dominates(&clock, c));
    if !set.iter().any(|(_, c)| dominates(c, &clock)) {
        set.push((from, clock));
    }
}

/// The replicas owning the clocks of a clock set.
pub(crate) fn clockset_replicas(set: &ClockSet) -> Vec<ReplicaRef> {
    set.iter().map(|(r, _)| r.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> ReplicaRef {
        ReplicaRef::new(name, 1)
    }

    fn ctx(pairs: &[(&str, u64)]) -> Context {
        pairs.iter().map(|(n, c)| (r(n), *c)).collect()
    }

    #[test]
    fn dominates_respects_counts_and_key_count() {
        assert!(dominates(&ctx(&[("a", 1)]), &ctx(&[])));
        assert!(dominates(&ctx(&[]), &ctx(&[])));
        assert!(dominates(&ctx(&[("a", 2)]), &ctx(&[("a", 1)])));
        assert!(dominates(&ctx(&[("a", 1)]), &ctx(&[("a", 1)])));
        assert!(!dominates(&ctx(&[("a", 1)]), &ctx(&[("a", 2)])));
        // fewer entries never dominates, even with larger counters
        assert!(!dominates(&ctx(&[("a", 9)]), &ctx(&[("a", 1), ("b", 1)])));
        assert!(dominates(
            &ctx(&[("a", 1), ("b", 1)]),
            &ctx(&[("a", 1), ("c", 0)])
        ));
        assert!(!dominates(
            &ctx(&[("a", 1), ("b", 1)]),
            &ctx(&[("a", 1), ("c", 1)])
        ));
    }

    #[test]
    fn dominates_or_equal_follows_phoenix() {
        assert!(dominates_or_equal(&ctx(&[]), &ctx(&[])));
        assert!(!dominates_or_equal(&ctx(&[]), &ctx(&[("a", 1)])));
        assert!(dominates_or_equal(&ctx(&[("a", 1)]), &ctx(&[])));
        assert!(dominates_or_equal(&ctx(&[("a", 2)]), &ctx(&[("a", 2)])));
        assert!(!dominates_or_equal(&ctx(&[("a", 1)]), &ctx(&[("a", 2)])));
        // keys only in b are ignored
        assert!(dominates_or_equal(
            &ctx(&[("a", 2)]),
            &ctx(&[("a", 1), ("b", 5)])
        ));
    }

    #[test]
    fn test_the_set_trims() {
        let mut set = ClockSet::new();
        append_clock(&mut set, r("e"), ctx(&[]));
        assert!(set.is_empty(), "empty clocks are ignored");
        append_clock(&mut set, r("a"), ctx(&[("a", 1), ("b", 0)]));
        append_clock(&mut set, r("b"), ctx(&[("a", 0), ("b", 1)]));
        let mut names = clockset_replicas(&set);
        names.sort();
        assert_eq!(names, vec![r("a"), r("b")], "concurrent clocks both kept");
        // dominated by the upper bound: ignored
        append_clock(&mut set, r("c"), ctx(&[("a", 1), ("b", 0)]));
        assert_eq!(set.len(), 2);
        // dominates one member only: that member is dropped
        append_clock(&mut set, r("d"), ctx(&[("a", 2), ("b", 0)]));
        let mut names = clockset_replicas(&set);
        names.sort();
        assert_eq!(names, vec![r("b"), r("d")]);
        // dominates everything: replaces the set
        append_clock(&mut set, r("c"), ctx(&[("a", 2), ("b", 2), ("c", 1)]));
        assert_eq!(clockset_replicas(&set), vec![r("c")]);
    }

    #[test]
    fn upperbound_and_lowerbound() {
        let a = ctx(&[("a", 1), ("b", 5)]);
        let b = ctx(&[("b", 2), ("c", 3)]);
        assert_eq!(upperbound(&a, &b), ctx(&[("a", 1), ("b", 5), ("c", 3)]));
        assert_eq!(lowerbound(&a, &b), ctx(&[("a", 1), ("b", 2), ("c", 3)]));
        assert_eq!(upperbound(&ctx(&[]), &b), b);
        assert_eq!(upperbound(&a, &ctx(&[])), a);
        assert_eq!(lowerbound(&ctx(&[]), &b), b);
        assert_eq!(lowerbound(&ctx(&[]), &ctx(&[])), ctx(&[]));
    }

    #[test]
    fn filter_replicas_and_replicas() {
        let a = ctx(&[("a", 1), ("b", 5), ("c", 2)]);
        assert_eq!(
            filter_replicas(&a, &ctx(&[("a", 0), ("c", 0), ("d", 0)])),
            ctx(&[("a", 1), ("c", 2)])
        );
        assert_eq!(filter_replicas(&a, &ctx(&[])), ctx(&[]));
        assert_eq!(replicas(&a), vec![r("a"), r("b"), r("c")]);
        assert!(replicas(&ctx(&[])).is_empty());
    }

    #[test]
    fn context_round_trips_through_json() {
        let a = ctx(&[("a", 1), ("b", 5)]);
        let json = serde_json::to_string(&a).unwrap();
        let back: Context = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
