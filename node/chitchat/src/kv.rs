//! shoal patch: a node's key-values as one sorted vector.
//!
//! Upstream keeps them in a `BTreeMap<String, VersionedValue>`, whose first
//! leaf holds room for eleven entries (~900 bytes) however few there are.
//! A member publishes a handful of keys, and every member holds every
//! other's: at N members that is N² leaves, the largest single cost of a
//! simulated member's memory after the failure detector's windows. A
//! sorted vector gives the same ordered reads (prefix scans, lookups by
//! binary search) at the size of what is in it.

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::VersionedValue;

/// Sorted by key, keys unique; keys interned (`crate::intern`), and no
/// room kept beyond the entries (a node's keys change rarely).
#[derive(Clone, Default)]
pub(crate) struct KeyValues(Vec<(Arc<str>, VersionedValue)>);

impl KeyValues {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&VersionedValue> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut VersionedValue> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`, replacing what was there.
    pub(crate) fn insert(&mut self, key: &str, value: VersionedValue) {
        match self.find(key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (crate::intern::intern(key), value));
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<VersionedValue> {
        let i = self.find(key).ok()?;
        let (_, value) = self.0.remove(i);
        self.shrink();
        Some(value)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &mut VersionedValue) -> bool) {
        let before = self.0.len();
        self.0.retain_mut(|(k, v)| keep(k, v));
        if self.0.len() != before {
            self.shrink();
        }
    }

    /// Gives back room left by removals (a node's keys are few, and held by
    /// every member).
    fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &VersionedValue)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The entries whose key is `from` or after it, in order.
    pub(crate) fn iter_from(&self, from: &str) -> impl Iterator<Item = (&str, &VersionedValue)> {
        let start = self.find(from).unwrap_or_else(|i| i);
        self.0[start..].iter().map(|(k, v)| (&**k, v))
    }
}

impl fmt::Debug for KeyValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map, like upstream's `BTreeMap`.
impl Serialize for KeyValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, VersionedValue>::deserialize(deserializer)?;
        let mut kv = KeyValues(Vec::with_capacity(map.len()));
        for (k, v) in map {
            kv.0.push((crate::intern::intern(&k), v));
        }
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str, version: u64) -> VersionedValue {
        VersionedValue::for_test(v, version)
    }

    #[test]
    fn keys_stay_sorted_and_unique_whatever_the_order_of_inserts() {
        let mut kv = KeyValues::default();
        for (k, version) in [("m", 1), ("a", 2), ("z", 3), ("m", 4), ("b", 5)] {
            kv.insert(k, value(k, version));
        }
        let keys: Vec<&str> = kv.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "m", "z"]);
        assert_eq!(kv.get("m").map(|v| v.version), Some(4));
        assert!(kv.get("c").is_none());
        let from: Vec<&str> = kv.iter_from("c").map(|(k, _)| k).collect();
        assert_eq!(from, ["m", "z"]);
        let from: Vec<&str> = kv.iter_from("b").map(|(k, _)| k).collect();
        assert_eq!(from, ["b", "m", "z"]);
        assert_eq!(kv.remove("b").map(|v| v.version), Some(5));
        kv.retain(|k, _| k != "z");
        let keys: Vec<&str> = kv.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "m"]);
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn serialized_as_the_map_upstream_wrote() {
        let mut kv = KeyValues::default();
        kv.insert("b", value("2", 2));
        kv.insert("a", value("1", 1));
        let json = serde_json::to_string(&kv).unwrap();
        let map: std::collections::BTreeMap<String, VersionedValue> =
            serde_json::from_str(&json).unwrap();
        assert_eq!(map.len(), 2);
        let back: KeyValues = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get("a").map(|v| &*v.value), Some("1"));
        assert_eq!(back.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
    }
}
