//! Merging `presence_diff` payloads, so that a burst of diffs for one topic can go out as one.
//!
//! phoenix.js applies a diff with `Presence.syncDiff`: for each key in `joins` the entry
//! becomes the joined entry, with the metas it already had (those whose `phx_ref` is not
//! joined again) kept in front; then for each key in `leaves` the listed refs are removed, and
//! a key left without metas is deleted. Refs are unique per meta (an update makes a new one),
//! so a diff is a set of ref-level changes, and two of them compose exactly:
//!
//! - joins: the first diff's joins, less the refs the second joins again, then the second's;
//! - leaves: the first diff's leaves, less the refs the second joins again, plus the second's.
//!
//! Applied to any state, the merged diff gives what applying the two in order gives: the same
//! keys, the same metas in the same order, the same fetched fields. A meta that joined and then
//! left inside the merged span is in both maps (joined, then removed, as with the originals),
//! which also removes it from a client whose `presence_state` was listed in between. A meta
//! that left and joined again (a replica that was down and came back) is a join only.

use serde_json::{Map, Value};

/// Why two payloads could not be merged: one of them is not shaped like a `presence_diff`
/// (an object with `joins` and `leaves` objects of `{"metas": [...]}` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a presence_diff payload")]
pub struct NotADiff;

/// Merges the `presence_diff` payload `next` into `acc`: applying the result as phoenix.js does
/// equals applying `acc`, then `next`.
///
/// phoenix.js's `Presence.syncDiff` applies joins (a key's entry becomes the joined entry, its
/// other metas kept in front), then leaves (listed refs removed, an emptied key deleted). Refs
/// are unique per meta, so two diffs compose exactly: the joins are the first diff's, less
/// the refs the second joins again, then the second's; the leaves are the first diff's, less
/// the refs the second joins again, plus the second's. The result gives every client, from
/// any state, the keys, metas (in order) and fetched fields the two diffs give in turn. A meta
/// that joined and then left is in both maps, which also removes it from a client whose
/// `presence_state` was listed in between; one that left and joined again is a join only.
///
/// # Errors
///
/// [`NotADiff`] when `next` is not shaped like a diff, or `acc` has no `joins` and `leaves`
/// objects; `acc` is then unchanged.
///
/// # Examples
///
/// ```
/// use presence_core::presence::merge_diff;
/// use serde_json::json;
///
/// let mut acc = json!({"joins": {"alice": {"metas": [{"phx_ref": "a1"}]}}, "leaves": {}});
/// let next = json!({"joins": {"bob": {"metas": [{"phx_ref": "b1"}]}},
///                   "leaves": {"alice": {"metas": [{"phx_ref": "a1"}]}}});
/// merge_diff(&mut acc, &next)?;
/// // alice joined and left: in both maps, so every client ends without her.
/// assert_eq!(acc["joins"]["alice"]["metas"][0]["phx_ref"], "a1");
/// assert_eq!(acc["leaves"]["alice"]["metas"][0]["phx_ref"], "a1");
/// assert_eq!(acc["joins"]["bob"]["metas"][0]["phx_ref"], "b1");
/// # Ok::<(), presence_core::presence::NotADiff>(())
/// ```
pub fn merge_diff(acc: &mut Value, next: &Value) -> Result<(), NotADiff> {
    let (next_joins, next_leaves) = parts(next)?;
    // Only `acc`'s outline is checked: merging one diff after another into it must not cost
    // a walk of everything merged so far. An entry of `acc` without a `metas` list counts as
    // one without metas.
    if !matches!(acc.get("joins"), Some(Value::Object(_)))
        || !matches!(acc.get("leaves"), Some(Value::Object(_)))
    {
        return Err(NotADiff);
    }
    let Some(acc) = acc.as_object_mut() else {
        return Err(NotADiff);
    };
    // Both were checked: the unwraps below cannot fail, but stay total.
    if let Some(Value::Object(joins)) = acc.get_mut("joins") {
        for (key, entry) in next_joins {
            let joined = refs(entry);
            match joins.get_mut(key) {
                Some(previous) => {
                    let mut merged = entry.clone();
                    let kept: Vec<Value> = metas(previous)
                        .iter()
                        .filter(|m| !contains(&joined, m))
                        .cloned()
                        .collect();
                    if let Some(Value::Array(new)) = merged.get_mut("metas") {
                        let mut all = kept;
                        all.append(new);
                        *new = all;
                    }
                    *previous = merged;
                }
                None => {
                    joins.insert(key.clone(), entry.clone());
                }
            }
        }
    }
    if let Some(Value::Object(leaves)) = acc.get_mut("leaves") {
        // Leaves of refs joined again are void: the meta is back.
        for (key, entry) in next_joins {
            let joined = refs(entry);
            let emptied = match leaves.get_mut(key).and_then(|e| e.get_mut("metas")) {
                Some(Value::Array(left)) => {
                    left.retain(|m| !contains(&joined, m));
                    left.is_empty()
                }
                _ => false,
            };
            if emptied {
                leaves.remove(key);
            }
        }
        for (key, entry) in next_leaves {
            match leaves.get_mut(key) {
                Some(previous) => {
                    let known = refs(previous);
                    let mut merged = entry.clone();
                    if let Some(Value::Array(new)) = merged.get_mut("metas") {
                        let mut all = metas(previous).to_vec();
                        all.extend(new.drain(..).filter(|m| !contains(&known, m)));
                        *new = all;
                    }
                    *previous = merged;
                }
                None => {
                    leaves.insert(key.clone(), entry.clone());
                }
            }
        }
    }
    Ok(())
}

/// One side of a diff: key to entry.
type Side = Map<String, Value>;

/// The `joins` and `leaves` maps of a diff payload, checked.
fn parts(diff: &Value) -> Result<(&Side, &Side), NotADiff> {
    check(diff)?;
    match (&diff["joins"], &diff["leaves"]) {
        (Value::Object(j), Value::Object(l)) => Ok((j, l)),
        _ => Err(NotADiff),
    }
}

fn check(diff: &Value) -> Result<(), NotADiff> {
    let Value::Object(map) = diff else {
        return Err(NotADiff);
    };
    for side in ["joins", "leaves"] {
        let Some(Value::Object(entries)) = map.get(side) else {
            return Err(NotADiff);
        };
        if !entries
            .values()
            .all(|e| matches!(e.get("metas"), Some(Value::Array(_))))
        {
            return Err(NotADiff);
        }
    }
    Ok(())
}

fn metas(entry: &Value) -> &[Value] {
    match entry.get("metas") {
        Some(Value::Array(metas)) => metas,
        _ => &[],
    }
}

/// The refs of an entry's metas (a meta without a `phx_ref` has none, and matches nothing).
fn refs(entry: &Value) -> Vec<&str> {
    metas(entry)
        .iter()
        .filter_map(|m| m.get("phx_ref").and_then(Value::as_str))
        .collect()
}

fn contains(refs: &[&str], meta: &Value) -> bool {
    meta.get("phx_ref")
        .and_then(Value::as_str)
        .is_some_and(|r| refs.contains(&r))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// A client's presences as phoenix.js keeps them: key to its entry, metas in order. A
    /// `BTreeMap` stands for the null-prototype object (key order plays no part here).
    type ClientState = BTreeMap<String, Value>;

    /// phoenix.js's `Presence.syncDiff`, step for step (reference 4.3): joins first, then
    /// leaves; unknown keys in leaves are skipped; an emptied key is deleted.
    fn sync_diff(state: &mut ClientState, diff: &Value) {
        for (key, joined) in diff["joins"].as_object().into_iter().flatten() {
            let mut entry = joined.clone();
            if let Some(current) = state.get(key) {
                let joined_refs = refs(joined);
                let mut kept: Vec<Value> = metas(current)
                    .iter()
                    .filter(|m| !contains(&joined_refs, m))
                    .cloned()
                    .collect();
                kept.extend(metas(&entry).iter().cloned());
                entry["metas"] = Value::Array(kept);
            }
            state.insert(key.clone(), entry);
        }
        for (key, left) in diff["leaves"].as_object().into_iter().flatten() {
            let Some(current) = state.get_mut(key) else {
                continue;
            };
            let left_refs = refs(left);
            let remaining: Vec<Value> = metas(current)
                .iter()
                .filter(|m| !contains(&left_refs, m))
                .cloned()
                .collect();
            if remaining.is_empty() {
                state.remove(key);
            } else {
                current["metas"] = Value::Array(remaining);
            }
        }
    }

    fn meta(r: &str) -> Value {
        json!({"phx_ref": r, "status": format!("s-{r}")})
    }

    #[test]
    fn join_then_leave_is_in_both_maps() {
        let mut acc = json!({"joins": {"k": {"metas": [meta("a")]}}, "leaves": {}});
        merge_diff(
            &mut acc,
            &json!({"joins": {}, "leaves": {"k": {"metas": [meta("a")]}}}),
        )
        .unwrap();
        assert_eq!(acc["joins"]["k"]["metas"], json!([meta("a")]));
        assert_eq!(acc["leaves"]["k"]["metas"], json!([meta("a")]));
        // A client listed before the join and one listed between both end without `a`.
        let mut before = ClientState::new();
        sync_diff(&mut before, &acc);
        assert!(before.is_empty());
        let mut between = ClientState::from([("k".to_owned(), json!({"metas": [meta("a")]}))]);
        sync_diff(&mut between, &acc);
        assert!(between.is_empty());
    }

    #[test]
    fn leave_then_join_again_is_a_join_only() {
        let mut acc = json!({"joins": {}, "leaves": {"k": {"metas": [meta("a")]}}});
        merge_diff(
            &mut acc,
            &json!({"joins": {"k": {"metas": [meta("a")]}}, "leaves": {}}),
        )
        .unwrap();
        assert_eq!(
            acc,
            json!({"joins": {"k": {"metas": [meta("a")]}}, "leaves": {}})
        );
    }

    #[test]
    fn malformed_payloads_are_refused_and_leave_acc_alone() {
        let mut acc = json!({"joins": {}, "leaves": {}});
        let before = acc.clone();
        for bad in [
            json!(null),
            json!({"joins": {}}),
            json!({"joins": [], "leaves": {}}),
            json!({"joins": {"k": {"metas": 1}}, "leaves": {}}),
        ] {
            assert_eq!(merge_diff(&mut acc, &bad), Err(NotADiff));
            assert_eq!(acc, before);
        }
        for bad_outline in [
            json!(null),
            json!({"joins": {}}),
            json!({"joins": [], "leaves": {}}),
        ] {
            let mut bad_acc = bad_outline.clone();
            assert_eq!(merge_diff(&mut bad_acc, &before), Err(NotADiff));
            assert_eq!(bad_acc, bad_outline);
        }
    }

    /// One change a server can report: a join or a leave of a meta under a key, with the
    /// fetched field the entry then carries.
    #[derive(Debug, Clone)]
    enum Change {
        Join { key: u8, r: u8, extra: u8 },
        Leave { key: u8, r: u8 },
    }

    fn change() -> impl Strategy<Value = Change> {
        // Few keys and refs, so that the same ref joins and leaves often, and keys collide.
        prop_oneof![
            (0..4u8, 0..8u8, 0..3u8).prop_map(|(key, r, extra)| Change::Join { key, r, extra }),
            (0..4u8, 0..8u8).prop_map(|(key, r)| Change::Leave { key, r }),
        ]
    }

    /// Builds one diff from changes (several changes of one key share its entry).
    fn diff_of(changes: &[Change]) -> Value {
        let mut joins = Map::new();
        let mut leaves = Map::new();
        for c in changes {
            let (side, key, r, extra) = match c {
                Change::Join { key, r, extra } => (&mut joins, key, r, Some(extra)),
                Change::Leave { key, r } => (&mut leaves, key, r, None),
            };
            let entry = side
                .entry(format!("k{key}"))
                .or_insert_with(|| json!({"metas": []}));
            let m = meta(&format!("r{r}"));
            let list = entry["metas"].as_array_mut().unwrap();
            if !list.contains(&m) {
                list.push(m);
            }
            if let Some(extra) = extra {
                entry["name"] = json!(format!("n{extra}"));
            }
        }
        json!({"joins": joins, "leaves": leaves})
    }

    fn initial_state(keys: &[(u8, Vec<u8>)]) -> ClientState {
        keys.iter()
            .filter(|(_, rs)| !rs.is_empty())
            .map(|(k, rs)| {
                let mut rs = rs.clone();
                rs.dedup();
                let metas: Vec<Value> = rs.iter().map(|r| meta(&format!("r{r}"))).collect();
                (format!("k{k}"), json!({"metas": metas, "name": "n0"}))
            })
            .collect()
    }

    proptest! {
        /// Any sequence of diffs, merged at any boundaries, leaves every client (whatever
        /// state it starts from) exactly where the original sequence does.
        #[test]
        fn merged_diffs_sync_like_the_originals(
            diffs in prop::collection::vec(prop::collection::vec(change(), 1..4), 1..12),
            cuts in prop::collection::vec(any::<bool>(), 12),
            start in prop::collection::vec((0..4u8, prop::collection::vec(0..8u8, 0..3)), 0..4),
        ) {
            let diffs: Vec<Value> = diffs.iter().map(|d| diff_of(d)).collect();
            let initial = initial_state(&start);

            let mut expected = initial.clone();
            for d in &diffs {
                sync_diff(&mut expected, d);
            }

            // Merge runs of consecutive diffs, cutting where `cuts` says.
            let mut merged: Vec<Value> = Vec::new();
            for (i, d) in diffs.iter().enumerate() {
                match merged.last_mut() {
                    Some(acc) if !cuts[i] => merge_diff(acc, d).unwrap(),
                    _ => merged.push(d.clone()),
                }
            }
            let mut got = initial.clone();
            for d in &merged {
                sync_diff(&mut got, d);
            }
            prop_assert_eq!(&got, &expected);

            // Merging everything into one is also exact.
            let mut all = diffs[0].clone();
            for d in &diffs[1..] {
                merge_diff(&mut all, d).unwrap();
            }
            let mut one = initial;
            sync_diff(&mut one, &all);
            prop_assert_eq!(one, expected);
        }
    }
}
