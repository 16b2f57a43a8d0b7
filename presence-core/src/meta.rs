//! Presence metadata and `phx_ref` values.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A presence reference: a unique, opaque, URL-safe string given to every tracked or updated
/// presence (Phoenix's `phx_ref`).
///
/// It is 12 bytes (wall-clock nanoseconds, then a per-process salt mixed with a counter), shown
/// as 16 characters of URL-safe base64. Treat it as opaque.
///
/// # Examples
///
/// ```
/// let r = presence_core::PhxRef::generate();
/// assert_eq!(r.to_string().len(), 16);
/// assert_ne!(r, presence_core::PhxRef::generate());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhxRef([u8; 12]);

impl PhxRef {
    /// Makes a fresh reference, unique across nodes and process restarts.
    pub fn generate() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let low = process_salt().wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        PhxRef(bytes)
    }

    /// The 12 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

/// A random number fixed for the life of the process.
pub(crate) fn process_salt() -> u32 {
    static SALT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SALT.get_or_init(|| random_u64() as u32)
}

/// A random 64-bit number from the standard library's hasher keys (no extra dependency).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl fmt::Display for PhxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 16];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PhxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhxRef({self})")
    }
}

impl std::str::FromStr for PhxRef {
    type Err = InvalidPhxRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 12];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut out) {
            Ok(12) => Ok(PhxRef(out)),
            _ => Err(InvalidPhxRef),
        }
    }
}

/// The error of parsing a [`PhxRef`] from a string that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid phx_ref: expected 16 characters of URL-safe base64")]
pub struct InvalidPhxRef;

impl Serialize for PhxRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PhxRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// The metadata of one tracked presence: the user's JSON object plus its `phx_ref` and, after an
/// update, `phx_ref_prev`.
///
/// Cloning is cheap (one `Arc`). It serializes as one flat JSON object, the user's fields first,
/// then `phx_ref` and `phx_ref_prev`, exactly as Phoenix puts them in `presence_state`.
///
/// # Examples
///
/// ```
/// use presence_core::{Meta, PhxRef};
/// use serde_json::json;
///
/// let r = PhxRef::generate();
/// let meta = Meta::new(json!({"status": "away"}), r, None);
/// assert_eq!(meta.get("status"), Some(&json!("away")));
/// let wire = serde_json::to_value(&meta)?;
/// assert_eq!(wire["phx_ref"], json!(r.to_string()));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Meta(Arc<MetaInner>);

#[derive(PartialEq, Eq)]
struct MetaInner {
    /// The user's top-level fields, sorted by name (the order a JSON object serializes in):
    /// a slice rather than a `Map`, whose smallest tree node takes 640 bytes however few
    /// fields it holds, and every node of the cluster keeps every presence's meta.
    fields: Box<[(Box<str>, Value)]>,
    phx_ref: PhxRef,
    phx_ref_prev: Option<PhxRef>,
}

/// The fields of `map` without the references, in `map`'s (sorted) order.
fn compact(map: Map<String, Value>) -> Box<[(Box<str>, Value)]> {
    // Sized up front: collecting a filtered iterator would grow the buffer and then shrink it.
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        if k != "phx_ref" && k != "phx_ref_prev" {
            fields.push((k.into_boxed_str(), v));
        }
    }
    fields.into_boxed_slice()
}

impl Meta {
    /// Builds a meta from a JSON value. An object gives its fields; `null` gives none; any other
    /// value is kept under the field `"value"`. Any `phx_ref`/`phx_ref_prev` fields in `value`
    /// are replaced by the given references.
    pub fn new(value: Value, phx_ref: PhxRef, phx_ref_prev: Option<PhxRef>) -> Self {
        let fields = match value {
            Value::Object(map) => compact(map),
            Value::Null => Box::default(),
            other => Box::new([(Box::from("value"), other)]),
        };
        Meta(Arc::new(MetaInner {
            fields,
            phx_ref,
            phx_ref_prev,
        }))
    }

    /// This presence's reference.
    pub fn phx_ref(&self) -> PhxRef {
        self.0.phx_ref
    }

    /// The reference this presence had before its last update, if it was updated.
    pub fn phx_ref_prev(&self) -> Option<PhxRef> {
        self.0.phx_ref_prev
    }

    /// The user's fields, without `phx_ref` and `phx_ref_prev`, in name order.
    ///
    /// # Examples
    ///
    /// ```
    /// use presence_core::{Meta, PhxRef};
    /// use serde_json::json;
    ///
    /// let meta = Meta::new(json!({"status": "away", "device": "web"}), PhxRef::generate(), None);
    /// let names: Vec<&str> = meta.fields().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["device", "status"]);
    /// ```
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.0.fields.iter().map(|(k, v)| (&**k, v))
    }

    /// One of the user's fields.
    pub fn get(&self, field: &str) -> Option<&Value> {
        let fields = &self.0.fields;
        let i = fields.binary_search_by(|(k, _)| (**k).cmp(field)).ok()?;
        Some(&fields[i].1)
    }

    /// The user's fields as a JSON object (a copy), without the references.
    pub fn to_value(&self) -> Value {
        Value::Object(self.field_map())
    }

    /// The user's fields as a new map.
    fn field_map(&self) -> Map<String, Value> {
        self.fields()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect()
    }

    /// The full wire object, with `phx_ref` (and `phx_ref_prev`) included (a copy).
    pub fn to_wire_value(&self) -> Value {
        let mut m = self.field_map();
        m.insert(
            "phx_ref".to_owned(),
            Value::String(self.phx_ref().to_string()),
        );
        if let Some(prev) = self.phx_ref_prev() {
            m.insert("phx_ref_prev".to_owned(), Value::String(prev.to_string()));
        }
        Value::Object(m)
    }

    /// Whether two metas share one allocation (a cheap identity check).
    pub fn ptr_eq(&self, other: &Meta) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("phx_ref", &self.0.phx_ref)
            .field("phx_ref_prev", &self.0.phx_ref_prev)
            .field("fields", &FieldsDebug(&self.0.fields))
            .finish()
    }
}

/// Shows the fields as a map, as `Map` did.
struct FieldsDebug<'a>(&'a [(Box<str>, Value)]);

impl fmt::Debug for FieldsDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let extra = 1 + usize::from(self.0.phx_ref_prev.is_some());
        let mut map = s.serialize_map(Some(self.0.fields.len() + extra))?;
        for (k, v) in self.fields() {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("phx_ref", &self.0.phx_ref)?;
        if let Some(prev) = &self.0.phx_ref_prev {
            map.serialize_entry("phx_ref_prev", prev)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(d)?;
        let phx_ref = match fields.remove("phx_ref") {
            Some(Value::String(s)) => s.parse().map_err(D::Error::custom)?,
            _ => return Err(D::Error::missing_field("phx_ref")),
        };
        let phx_ref_prev = match fields.remove("phx_ref_prev") {
            Some(Value::String(s)) => Some(s.parse().map_err(D::Error::custom)?),
            None | Some(Value::Null) => None,
            Some(_) => return Err(D::Error::custom("phx_ref_prev must be a string")),
        };
        Ok(Meta(Arc::new(MetaInner {
            fields: compact(fields),
            phx_ref,
            phx_ref_prev,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_are_unique_url_safe_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let r = PhxRef::generate();
            let s = r.to_string();
            assert_eq!(s.len(), 16);
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(s.parse::<PhxRef>().unwrap(), r);
            assert!(seen.insert(r));
        }
        assert!("short".parse::<PhxRef>().is_err());
    }

    #[test]
    fn fields_are_kept_in_name_order_and_found_by_name() {
        let r = PhxRef::generate();
        let meta = Meta::new(json!({"z": 1, "a": {"n": [1]}, "m": "x"}), r, None);
        assert_eq!(meta.get("a"), Some(&json!({"n": [1]})));
        assert_eq!(meta.get("m"), Some(&json!("x")));
        assert_eq!(meta.get("z"), Some(&json!(1)));
        assert_eq!(meta.get("b"), None);
        assert_eq!(meta.fields().len(), 3);
        assert_eq!(meta.to_value(), json!({"z": 1, "a": {"n": [1]}, "m": "x"}));
        let text = serde_json::to_string(&meta).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"a":{{"n":[1]}},"m":"x","z":1,"phx_ref":"{r}"}}"#)
        );
        assert_eq!(Meta::new(json!(5), r, None).get("value"), Some(&json!(5)));
        assert_eq!(Meta::new(json!(null), r, None).fields().len(), 0);
    }

    #[test]
    fn meta_serializes_flat_and_round_trips() {
        let (a, b) = (PhxRef::generate(), PhxRef::generate());
        let meta = Meta::new(json!({"status": "away", "phx_ref": "spoofed"}), b, Some(a));
        let wire = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            wire,
            json!({"status": "away", "phx_ref": b.to_string(), "phx_ref_prev": a.to_string()})
        );
        assert_eq!(meta.to_wire_value(), wire);
        let back: Meta = serde_json::from_value(wire).unwrap();
        assert_eq!(back, meta);
    }
}
