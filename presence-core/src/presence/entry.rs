//! The shapes users and clients see: presences grouped by key, and diffs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::Presence;
use crate::{Meta, PhxRef};

/// The presences of one key in a presence `P`: every meta tracked under it (one per device,
/// tab or owner), plus whatever [`Fetch`](super::Fetch) added.
///
/// [`metas`](Self::metas) decodes the metas into `P`'s meta type, each beside its `phx_ref`;
/// [`raw_metas`](Self::raw_metas) gives them as tracked, untyped.
///
/// It serializes as Phoenix's entry: `{"metas": [...], <extra fields>...}`. The extra value must
/// serialize as a map (a struct or a map type); its fields sit beside `metas`.
///
/// # Examples
///
/// ```
/// use presence_core::presence::PresenceEntry;
/// use presence_core::{Meta, PhxRef, Presence, pubsub_server};
/// use serde::{Deserialize, Serialize};
///
/// pubsub_server!(pub AppPubSub);
///
/// #[derive(Serialize, Deserialize)]
/// struct Device { name: String }
///
/// #[derive(Presence)]
/// #[presence(pubsub = AppPubSub, meta = Device)]
/// struct Devices;
///
/// let r = PhxRef::generate();
/// let entry = PresenceEntry::<Devices>::new(vec![Meta::new(serde_json::json!({"name": "web"}), r, None)]);
/// let metas = entry.metas()?;
/// assert_eq!((metas[0].meta.name.as_str(), metas[0].phx_ref), ("web", r));
/// let wire = serde_json::to_value(&entry)?;
/// assert_eq!(wire["metas"][0]["name"], "web");
/// assert_eq!(wire["metas"][0]["phx_ref"], r.to_string());
/// # Ok::<(), serde_json::Error>(())
/// ```
pub struct PresenceEntry<P: Presence> {
    metas: Vec<Meta>,
    /// What a fetch added, if it ran and succeeded.
    pub extra: Option<P::Extra>,
}

/// One meta of a [`PresenceEntry`], decoded into the presence's meta type, with its
/// references.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypedMeta<M> {
    /// The meta as the user tracked it.
    pub meta: M,
    /// This presence's reference.
    pub phx_ref: PhxRef,
    /// The reference it had before its last update, if it was updated.
    pub phx_ref_prev: Option<PhxRef>,
}

impl<M: DeserializeOwned> TypedMeta<M> {
    /// Decodes `meta` into `M`.
    ///
    /// # Errors
    ///
    /// When its fields do not deserialize into `M` (a node running another version of the
    /// meta type, say).
    pub fn decode(meta: &Meta) -> Result<Self, serde_json::Error> {
        Ok(TypedMeta {
            meta: serde_json::from_value(meta.to_value())?,
            phx_ref: meta.phx_ref(),
            phx_ref_prev: meta.phx_ref_prev(),
        })
    }
}

impl<P: Presence> PresenceEntry<P> {
    /// An entry with these metas and nothing fetched.
    pub fn new(metas: Vec<Meta>) -> Self {
        PresenceEntry { metas, extra: None }
    }

    /// The metas, decoded into `P::Meta`, in the order they were tracked.
    ///
    /// # Errors
    ///
    /// The first meta that does not decode (see [`TypedMeta::decode`]).
    pub fn metas(&self) -> Result<Vec<TypedMeta<P::Meta>>, serde_json::Error> {
        self.metas.iter().map(TypedMeta::decode).collect()
    }

    /// The metas as tracked: JSON fields with their references.
    pub fn raw_metas(&self) -> &[Meta] {
        &self.metas
    }

    /// How many metas (devices, tabs, owners) the key has.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the entry has no meta (never true of a listed entry).
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    pub(crate) fn metas_mut(&mut self) -> &mut Vec<Meta> {
        &mut self.metas
    }
}

impl<P: Presence> Clone for PresenceEntry<P> {
    fn clone(&self) -> Self {
        PresenceEntry {
            metas: self.metas.clone(),
            extra: self.extra.clone(),
        }
    }
}

impl<P: Presence> fmt::Debug for PresenceEntry<P>
where
    P::Extra: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceEntry")
            .field("metas", &self.metas)
            .field("extra", &self.extra)
            .finish()
    }
}

impl<P: Presence> PartialEq for PresenceEntry<P>
where
    P::Extra: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.metas == other.metas && self.extra == other.extra
    }
}

impl<P: Presence> Serialize for PresenceEntry<P> {
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

/// The presences of a topic in a presence `P`, grouped by key, in key order: Phoenix's
/// `presence_state` payload.
pub type PresenceMap<P> = BTreeMap<String, PresenceEntry<P>>;

/// One `presence_diff` of a presence `P`: the presences that joined and left, grouped by key.
///
/// An update shows the new meta (with `phx_ref_prev`) under `joins` and the old one under
/// `leaves`, for the same key.
#[derive(Serialize)]
#[serde(bound = "")]
pub struct PresenceDiff<P: Presence> {
    /// Presences that appeared.
    pub joins: PresenceMap<P>,
    /// Presences that went away.
    pub leaves: PresenceMap<P>,
}

impl<P: Presence> Default for PresenceDiff<P> {
    fn default() -> Self {
        PresenceDiff {
            joins: PresenceMap::new(),
            leaves: PresenceMap::new(),
        }
    }
}

impl<P: Presence> Clone for PresenceDiff<P> {
    fn clone(&self) -> Self {
        PresenceDiff {
            joins: self.joins.clone(),
            leaves: self.leaves.clone(),
        }
    }
}

impl<P: Presence> fmt::Debug for PresenceDiff<P>
where
    P::Extra: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceDiff")
            .field("joins", &self.joins)
            .field("leaves", &self.leaves)
            .finish()
    }
}

impl<P: Presence> PartialEq for PresenceDiff<P>
where
    P::Extra: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.joins == other.joins && self.leaves == other.leaves
    }
}

/// Groups `(key, meta)` pairs by key, keeping their order within each key.
pub(crate) fn group<P: Presence>(
    rows: impl IntoIterator<Item = (Arc<str>, Meta)>,
) -> PresenceMap<P> {
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
pub(crate) fn apply_diff<P: Presence>(metas: &mut TopicMetas, diff: &PresenceDiff<P>) {
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

    crate::pubsub_server!(TestPubSub);

    #[derive(crate::Presence)]
    #[presence(pubsub = TestPubSub)]
    struct Plain;

    /// A presence whose fetch adds a `User`.
    struct WithUser;

    impl Presence for WithUser {
        type Meta = serde_json::Value;
        type Extra = User;
        type State = ();
        const NAME: &'static str = "WithUser";
        fn pubsub(
            registry: &crate::Registry,
        ) -> Result<crate::PubSub, crate::registry::RegistryError> {
            registry.pubsub(&TestPubSub)
        }
        fn run_init(
            &self,
            _: &super::super::PresenceContext,
        ) -> Result<(), super::super::InitError> {
            Ok(())
        }
    }

    #[test]
    fn entries_serialize_like_phoenix_with_extra_fields_beside_metas() {
        let r = PhxRef::generate();
        let mut entry = PresenceEntry::<WithUser>::new(vec![Meta::new(json!({"d": 1}), r, None)]);
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
        let grouped: PresenceMap<Plain> = group([
            (Arc::from("k"), ma.clone()),
            (Arc::from("k"), mb.clone()),
            (Arc::from("j"), ma.clone()),
        ]);
        assert_eq!(grouped["k"].raw_metas(), [ma.clone(), mb.clone()]);
        assert_eq!(grouped.keys().collect::<Vec<_>>(), ["j", "k"]);

        let mut metas = TopicMetas::new();
        let joins = PresenceDiff {
            joins: grouped.clone(),
            leaves: PresenceMap::new(),
        };
        apply_diff(&mut metas, &joins);
        apply_diff(&mut metas, &joins);
        assert_eq!(metas["k"].len(), 2, "joins are not added twice");
        let leave = PresenceDiff::<Plain> {
            joins: PresenceMap::new(),
            leaves: group([(Arc::from("j"), ma)]),
        };
        apply_diff(&mut metas, &leave);
        assert!(!metas.contains_key("j"), "an emptied key is dropped");
    }
}
