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
use std::sync::{Arc, Mutex};

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::intern::{WeakTable, with_table};
use crate::{ChitchatId, Version, VersionedValue};

/// Sorted by key, keys unique; keys interned (`crate::intern`), and no
/// room kept beyond the entries (a node's keys change rarely). Shared
/// between the members of one process that hold the same node at the same
/// versions (see [`KeyValues::share`]); written copy-on-write.
#[derive(Clone, Default)]
pub(crate) struct KeyValues(Arc<Vec<Entry>>);

type Entry = (Arc<str>, VersionedValue);

/// The key-values in use in the process, by node and versions: `(node,
/// max_version, last_gc_version)`.
static SHARED: Mutex<Option<WeakTable<(ChitchatId, Version, Version), Vec<Entry>>>> =
    Mutex::new(None);

impl KeyValues {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// The entries, to change: this member's own copy from now on.
    fn entries_mut(&mut self) -> &mut Vec<Entry> {
        Arc::make_mut(&mut self.0)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&VersionedValue> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut VersionedValue> {
        let i = self.find(key).ok()?;
        Some(&mut self.entries_mut()[i].1)
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`, replacing what was there.
    pub(crate) fn insert(&mut self, key: &str, value: VersionedValue) {
        match self.find(key) {
            Ok(i) => self.entries_mut()[i].1 = value,
            Err(i) => {
                let entries = self.entries_mut();
                entries.reserve_exact(1);
                entries.insert(i, (crate::intern::intern(key), value));
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<VersionedValue> {
        let i = self.find(key).ok()?;
        let entries = self.entries_mut();
        let (_, value) = entries.remove(i);
        entries.shrink_to_fit();
        Some(value)
    }

    /// Keeps the entries `keep` says to; a copy of its own only for a
    /// member that drops some (`keep` sees each entry once).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &VersionedValue) -> bool) {
        let kept: Vec<bool> = self.0.iter().map(|(k, v)| keep(k, v)).collect();
        if kept.iter().all(|k| *k) {
            return;
        }
        let entries = self.entries_mut();
        let mut kept = kept.into_iter();
        entries.retain(|_| kept.next().unwrap_or(true));
        entries.shrink_to_fit();
    }

    /// Shares these key-values with another member of this process holding
    /// `node` at the same versions, or offers them to the next one.
    ///
    /// A node's versions name its key-values: two members at the same
    /// `max_version` and `last_gc_version` of a node hold the same keys,
    /// values and versions (checked, as they are cheap to compare: keys
    /// and values are interned). In the simulator thousands of members hold
    /// each node; in a real process there is one member, and this is not
    /// called (`intern::members_share`). What a deletion's mark says beyond "deleted" (when
    /// this member learnt of it, for its grace period) may come from the
    /// member that shared first — the same instant up to the network's
    /// delay.
    pub(crate) fn share(&mut self, node: &ChitchatId, max_version: Version, gc: Version) {
        with_table(&SHARED, |shared| {
            let key = (node.clone(), max_version, gc);
            match shared.get(&key) {
                Some(theirs) => {
                    if !Arc::ptr_eq(&theirs, &self.0) && same_entries(&theirs, &self.0) {
                        self.0 = theirs;
                    }
                }
                None => shared.insert(key, &self.0),
            }
        });
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

/// Same keys, values, versions and kinds of deletion status.
fn same_entries(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            Arc::ptr_eq(ka, kb)
                && Arc::ptr_eq(&va.value, &vb.value)
                && va.version == vb.version
                && std::mem::discriminant(&va.status) == std::mem::discriminant(&vb.status)
        })
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
        for (k, v) in self.0.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, VersionedValue>::deserialize(deserializer)?;
        let entries = map
            .into_iter()
            .map(|(k, v)| (crate::intern::intern(&k), v))
            .collect();
        Ok(KeyValues(Arc::new(entries)))
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
    fn members_at_the_same_versions_share_one_copy_and_write_their_own() {
        let node = ChitchatId::for_local_test(41_000);
        let make = |v: &str| {
            let mut kv = KeyValues::default();
            kv.insert("a", value("1", 1));
            kv.insert("b", value(v, 2));
            kv
        };
        let (mut one, mut two, mut other) = (make("2"), make("2"), make("x"));
        one.share(&node, 2, 0);
        two.share(&node, 2, 0);
        assert!(
            Arc::ptr_eq(&one.0, &two.0),
            "same versions, same entries: shared"
        );
        other.share(&node, 2, 0);
        assert!(
            !Arc::ptr_eq(&one.0, &other.0),
            "same versions, other entries: not"
        );
        two.insert("c", value("3", 3));
        assert!(one.get("c").is_none(), "a write is the writer's own");
        assert_eq!(two.get("c").map(|v| v.version), Some(3));
        if let Some(v) = one.get_mut("a") {
            v.version = 9;
        }
        assert_eq!(two.get("a").map(|v| v.version), Some(1));
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
