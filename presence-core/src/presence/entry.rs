//! The shapes users and clients see: presences grouped by key, and diffs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::Meta;

/// The presences of one key: every meta tracked under it (one per device, tab or owner), plus
/// whatever [`Fetch`](super::Fetch) added.
///
/// It serializes as Phoenix's entry: `{"metas": [...], <extra fields>...}`. The extra value must
/// serialize as a map (a struct or a map type); its fields sit beside `metas`.
///
/// # Examples
///
/// ```
/// use presence_core::presence::PresenceEntry;
/// use presence_core::{Meta, PhxRef};
///
/// let r = PhxRef::generate();
/// let entry: PresenceEntry = PresenceEntry::new(vec![Meta::new(serde_json::json!({"device": "web"}), r, None)]);
/// let wire = serde_json::to_value(&entry)?;
/// assert_eq!(wire["metas"][0]["device"], "web");
/// assert_eq!(wire["metas"][0]["phx_ref"], r.to_string());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEntry<X = ()> {
    /// The metas, each with its `phx_ref`.
    pub metas: Vec<Meta>,
    /// What a fetch added, if it ran and succeeded.
    pub extra: Option<X>,
}

impl<X> PresenceEntry<X> {
    /// An entry with these metas and nothing fetched.
    pub fn new(metas: Vec<Meta>) -> Self {
        PresenceEntry { metas, extra: None }
    }

    /// The metas decoded into the user's meta type.
    ///
    /// # Errors
    ///
    /// The first meta that does not decode.
    pub fn decode_metas<M: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Vec<M>, serde_json::Error> {
        self.metas
            .iter()
            .map(|m| serde_json::from_value(m.to_value()))
            .collect()
    }
}

impl<X: Serialize> Serialize for PresenceEntry<X> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, X> {
            metas: &'a [Meta],
            #[serde(flatten)]
            extra: &'a Option<X>,
        }
        Wire {
            metas: &self.metas,
            extra: &self.extra,
        }
        .serialize(s)
    }
}

/// Presences grouped by key, in key order: Phoenix's `presence_state` payload.
pub type PresenceMap<X = ()> = BTreeMap<String, PresenceEntry<X>>;

/// One `presence_diff`: the presences that joined and left, grouped by key.
///
/// An update shows the new meta (with `phx_ref_prev`) under `joins` and the old one under
/// `leaves`, for the same key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(bound = "X: Serialize")]
pub struct PresenceDiff<X = ()> {
    /// Presences that appeared.
    pub joins: PresenceMap<X>,
    /// Presences that went away.
    pub leaves: PresenceMap<X>,
}

impl<X> Default for PresenceDiff<X> {
    fn default() -> Self {
        PresenceDiff {
            joins: PresenceMap::new(),
            leaves: PresenceMap::new(),
        }
    }
}

/// Groups `(key, meta)` pairs by key, keeping their order within each key.
pub(crate) fn group<X>(rows: impl IntoIterator<Item = (Arc<str>, Meta)>) -> PresenceMap<X> {
    let mut map = PresenceMap::new();
    for (key, meta) in rows {
        map.entry(key.to_string())
            .or_insert_with(|| PresenceEntry::new(Vec::new()))
            .metas
            .push(meta);
    }
    map
}

/// The metas of one topic by key, as [`HandleMetas`](super::HandleMetas) sees them.
pub type TopicMetas = BTreeMap<String, Vec<Meta>>;

/// Applies a diff to a topic's metas: joins first (metas not already present), then leaves
/// (equal metas removed, empty keys dropped).
pub(crate) fn apply_diff<X>(metas: &mut TopicMetas, diff: &PresenceDiff<X>) {
    for (key, entry) in &diff.joins {
        let list = metas.entry(key.clone()).or_default();
        for meta in &entry.metas {
            if !list.contains(meta) {
                list.push(meta.clone());
            }
        }
    }
    for (key, entry) in &diff.leaves {
        if let Some(list) = metas.get_mut(key) {
            list.retain(|m| !entry.metas.contains(m));
            if list.is_empty() {
                metas.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhxRef;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize)]
    struct User {
        name: String,
    }

    #[test]
    fn entries_serialize_like_phoenix_with_extra_fields_beside_metas() {
        let r = PhxRef::generate();
        let mut entry = PresenceEntry::new(vec![Meta::new(json!({"d": 1}), r, None)]);
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            json!({"metas": [{"d": 1, "phx_ref": r.to_string()}]})
        );
        entry.extra = Some(User { name: "Ann".into() });
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            json!({"metas": [{"d": 1, "phx_ref": r.to_string()}], "name": "Ann"})
        );
    }

    #[test]
    fn grouping_and_applying_diffs() {
        let (a, b) = (PhxRef::generate(), PhxRef::generate());
        let ma = Meta::new(json!({}), a, None);
        let mb = Meta::new(json!({}), b, None);
        let grouped: PresenceMap = group([
            (Arc::from("k"), ma.clone()),
            (Arc::from("k"), mb.clone()),
            (Arc::from("j"), ma.clone()),
        ]);
        assert_eq!(grouped["k"].metas, vec![ma.clone(), mb.clone()]);
        assert_eq!(grouped.keys().collect::<Vec<_>>(), ["j", "k"]);

        let mut metas = TopicMetas::new();
        let joins = PresenceDiff {
            joins: grouped.clone(),
            leaves: PresenceMap::new(),
        };
        apply_diff(&mut metas, &joins);
        apply_diff(&mut metas, &joins);
        assert_eq!(metas["k"].len(), 2, "joins are not added twice");
        let leave = PresenceDiff::<()> {
            joins: PresenceMap::new(),
            leaves: group([(Arc::from("j"), ma)]),
        };
        apply_diff(&mut metas, &leave);
        assert!(!metas.contains_key("j"), "an emptied key is dropped");
    }
}
