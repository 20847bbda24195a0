use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Serializable;
use crate::intern::{WeakTable, with_table};
use crate::serialize::Deserializable;

/// For the lifetime of a cluster, nodes can go down and come back up multiple times. They may also
/// die permanently. A [`ChitchatId`] is composed of three components:
/// - `node_id`: an identifier unique across the cluster.
/// - `generation_id`: a numeric identifier that distinguishes a node's state between restarts.
/// - `gossip_advertise_addr`: the socket address peers should use to gossip with the node.
///
/// The `generation_id` is used to detect when a node has restarted. It must be monotonically
/// increasing to differentiate the most recent state and must be incremented every time a node
/// leaves and rejoins the cluster. Backends such as Cassandra or Quickwit typically use the node's
/// startup time as the `generation_id`.
///
/// shoal patch: an id is a handle (one pointer) to its fields, interned
/// process-wide — every member holds every other's id in half a dozen
/// maps, and in the simulator thousands of members hold the same ids — with
/// its hash and its places on the V4 rings computed once. Two ids are equal
/// when they are the same handle (interning makes equal fields the same
/// handle); they order by their fields, as upstream's did.
#[derive(Clone)]
pub struct ChitchatId(Arc<Interned>);

/// A [`ChitchatId`]'s fields: read them through the id (`id.node_id`).
#[derive(Clone, Debug, Eq, PartialEq, Hash, Ord, PartialOrd, Serialize, Deserialize)]
pub struct ChitchatIdFields {
    /// An identifier unique across the cluster.
    pub node_id: Arc<str>,
    /// A numeric identifier incremented every time the node leaves and rejoins the cluster.
    pub generation_id: u64,
    /// The socket address peers should use to gossip with the node.
    pub gossip_advertise_addr: SocketAddr,
}

struct Interned {
    fields: ChitchatIdFields,
    /// The id's place on each V4 ring; the first is also its hash.
    ring_keys: [u64; crate::pulse::RINGS],
    /// The node id's first 16 bytes, big-endian (zero-padded): ids whose
    /// prefixes differ are ordered by one integer comparison. Node states
    /// are kept by id in a B-tree, and the comparisons of node ids (the
    /// memcmp of strings with a long common prefix) were ~13 % of the
    /// simulator's time forming a cluster of 600.
    order_prefix: u128,
}

/// See `Interned::order_prefix`. Ordering by it agrees with ordering by
/// the node id wherever they differ: the first differing byte within 16
/// decides both (a shorter id's padding is a zero, below any byte but a
/// zero, and ids alike up to the padding compare whole).
fn order_prefix(node_id: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let head = &node_id.as_bytes()[..node_id.len().min(16)];
    bytes[..head.len()].copy_from_slice(head);
    u128::from_be_bytes(bytes)
}

/// Every live id of the process, by fields.
static IDS: Mutex<Option<WeakTable<ChitchatIdFields, Interned>>> = Mutex::new(None);

impl ChitchatId {
    pub fn new(
        node_id: impl Into<Arc<str>>,
        generation_id: u64,
        gossip_advertise_addr: SocketAddr,
    ) -> Self {
        Self::from_fields(ChitchatIdFields {
            node_id: node_id.into(),
            generation_id,
            gossip_advertise_addr,
        })
    }

    /// The id with these fields: the live handle if there is one.
    pub fn from_fields(fields: ChitchatIdFields) -> Self {
        with_table(&IDS, |ids| {
            if let Some(live) = ids.get(&fields) {
                return ChitchatId(live);
            }
            let ring_keys = crate::pulse::ring_keys_of(&fields);
            let id = Arc::new(Interned {
                order_prefix: order_prefix(&fields.node_id),
                fields: fields.clone(),
                ring_keys,
            });
            ids.insert(fields, &id);
            ChitchatId(id)
        })
    }

    /// The id's place on each V4 ring.
    pub(crate) fn ring_keys(&self) -> &[u64; crate::pulse::RINGS] {
        &self.0.ring_keys
    }

    /// The id's fields, owned (to change one and intern the result).
    pub fn fields(&self) -> ChitchatIdFields {
        self.0.fields.clone()
    }
}

impl std::ops::Deref for ChitchatId {
    type Target = ChitchatIdFields;

    fn deref(&self) -> &ChitchatIdFields {
        &self.0.fields
    }
}

impl PartialEq for ChitchatId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ChitchatId {}

impl Hash for ChitchatId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.ring_keys[0]);
    }
}

impl Ord for ChitchatId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0
            .order_prefix
            .cmp(&other.0.order_prefix)
            .then_with(|| self.0.fields.cmp(&other.0.fields))
    }
}

impl PartialOrd for ChitchatId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for ChitchatId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.fields.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ChitchatId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ChitchatIdFields::deserialize(deserializer).map(ChitchatId::from_fields)
    }
}

impl Debug for ChitchatId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            &*self.node_id, self.generation_id, self.gossip_advertise_addr
        )
    }
}

#[cfg(any(test, feature = "testsuite"))]
impl ChitchatId {
    /// Returns the gossip advertise port for performing assertions during tests.
    pub fn advertise_port(&self) -> u16 {
        self.gossip_advertise_addr.port()
    }

    /// Creates a new [`ChitchatId`] for local testing.
    pub fn for_local_test(port: u16) -> Self {
        Self::new(format!("node-{port}"), 0, ([127, 0, 0, 1], port).into())
    }
}

/// The current status of a key-value pair with regard to deletion.
///
/// In both the `Deleted` and `DeleteAfterTtl` status, the `Instant` is NOT the scheduled
/// time of deletion but the time at which the DeletionStatus was created.
#[derive(Clone, Copy, Debug)]
pub enum DeletionStatus {
    Set,
    /// The key-value pair is not visible but will be GCed only at Instant + grace period
    Deleted(Instant),
    /// The key-value pair is still visible and will be GCed at Instant + grace period
    DeleteAfterTtl(Instant),
}

#[cfg(test)]
impl PartialEq for DeletionStatus {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl DeletionStatus {
    pub fn time_of_start_scheduled_for_deletion(&self) -> Option<Instant> {
        match self {
            DeletionStatus::Set => None,
            DeletionStatus::Deleted(time_of_deletion)
            | DeletionStatus::DeleteAfterTtl(time_of_deletion) => Some(*time_of_deletion),
        }
    }
}

/// A versioned key-value pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    into = "VersionedValueForSerialization",
    from = "VersionedValueForSerialization"
)]
pub struct VersionedValue {
    /// shoal patch: shared (interned), as every member holds the same.
    pub value: Arc<str>,
    pub version: Version,
    // The tombstone instant is transient:
    // Only the presence of a tombstone or not is serialized, and used in partial eq eq.
    pub status: DeletionStatus,
}

impl VersionedValue {
    #[cfg(test)]
    pub fn new(value: String, version: Version, is_tombstone: bool) -> VersionedValue {
        VersionedValue {
            value: crate::intern::intern(&value),
            version,
            status: if is_tombstone {
                DeletionStatus::Deleted(Instant::now())
            } else {
                DeletionStatus::Set
            },
        }
    }

    pub fn is_deleted(&self) -> bool {
        match self.status {
            DeletionStatus::Set => false,
            DeletionStatus::Deleted(_) => true,
            DeletionStatus::DeleteAfterTtl(_) => false,
        }
    }

    #[cfg(test)]
    pub fn for_test(value: &str, version: Version) -> Self {
        Self {
            value: crate::intern::intern(value),
            version,
            status: DeletionStatus::Set,
        }
    }
}

/// This `PartialEq` implementation is for test only.
/// It checks for the equality of value, version and delete_status.
/// However, it does NOT check the timestamp associated with the delete_status.
#[cfg(test)]
impl PartialEq for VersionedValue {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value && self.version == other.version && self.status == other.status
    }
}

#[derive(Debug, Eq, PartialEq, Clone, Serialize, Deserialize)]
pub(crate) struct KeyValueMutation {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) version: Version,
    pub(crate) status: DeletionStatusMutation,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, Eq, PartialEq)]
#[repr(u8)]
pub enum DeletionStatusMutation {
    Set = 0u8,
    Delete = 1u8,
    DeleteAfterTtl = 2u8,
}

impl DeletionStatusMutation {
    pub fn into_status(self, now: Instant) -> DeletionStatus {
        match self {
            DeletionStatusMutation::Set => DeletionStatus::Set,
            DeletionStatusMutation::DeleteAfterTtl => DeletionStatus::DeleteAfterTtl(now),
            DeletionStatusMutation::Delete => DeletionStatus::Deleted(now),
        }
    }

    pub fn scheduled_for_deletion(&self) -> bool {
        match self {
            DeletionStatusMutation::Set => false,
            DeletionStatusMutation::Delete | DeletionStatusMutation::DeleteAfterTtl => true,
        }
    }
}

impl From<DeletionStatus> for DeletionStatusMutation {
    fn from(deletion_status: DeletionStatus) -> Self {
        match deletion_status {
            DeletionStatus::Set => DeletionStatusMutation::Set,
            DeletionStatus::DeleteAfterTtl(_) => DeletionStatusMutation::DeleteAfterTtl,
            DeletionStatus::Deleted(_) => DeletionStatusMutation::Delete,
        }
    }
}

impl TryFrom<u8> for DeletionStatusMutation {
    type Error = ();

    fn try_from(state_code: u8) -> Result<Self, Self::Error> {
        match state_code {
            0u8 => Ok(DeletionStatusMutation::Set),
            1u8 => Ok(DeletionStatusMutation::Delete),
            2u8 => Ok(DeletionStatusMutation::DeleteAfterTtl),
            _ => Err(()),
        }
    }
}

impl From<DeletionStatusMutation> for u8 {
    fn from(state_mutation: DeletionStatusMutation) -> u8 {
        state_mutation as u8
    }
}

impl Serializable for DeletionStatusMutation {
    fn serialize(&self, buf: &mut Vec<u8>) {
        buf.push(u8::from(*self));
    }

    fn serialized_len(&self) -> usize {
        1
    }
}

impl Deserializable for DeletionStatusMutation {
    fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        let deletion_status_code = <u8 as Deserializable>::deserialize(buf)?;
        DeletionStatusMutation::try_from(deletion_status_code)
            .map_err(|_| anyhow::anyhow!("Invalid deletion status code {deletion_status_code}"))
    }
}

impl<'a> From<&'a KeyValueMutation> for KeyValueMutationRef<'a> {
    fn from(mutation: &'a KeyValueMutation) -> KeyValueMutationRef<'a> {
        KeyValueMutationRef {
            key: mutation.key.as_str(),
            value: mutation.value.as_str(),
            version: mutation.version,
            state: mutation.status,
        }
    }
}

#[derive(Debug, Eq, PartialEq, Clone, Serialize)]
pub(crate) struct KeyValueMutationRef<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: &'a str,
    pub(crate) version: Version,
    pub(crate) state: DeletionStatusMutation,
}

impl Serializable for KeyValueMutationRef<'_> {
    fn serialize(&self, buf: &mut Vec<u8>) {
        Serializable::serialize(self.key, buf);
        Serializable::serialize(self.value, buf);
        Serializable::serialize(&self.version, buf);
        Serializable::serialize(&self.state, buf);
    }

    fn serialized_len(&self) -> usize {
        Serializable::serialized_len(self.key)
            + Serializable::serialized_len(self.value)
            + Serializable::serialized_len(&self.version)
            + Serializable::serialized_len(&self.state)
    }
}

impl Deserializable for KeyValueMutation {
    fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        let key: String = Deserializable::deserialize(buf)?;
        let value: String = Deserializable::deserialize(buf)?;
        let version: u64 = Deserializable::deserialize(buf)?;
        let state: DeletionStatusMutation = Deserializable::deserialize(buf)?;
        Ok(KeyValueMutation {
            key,
            value,
            version,
            status: state,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct VersionedValueForSerialization {
    pub value: String,
    pub version: Version,
    pub status: DeletionStatusMutation, /* TODO fixme. Deserialization could result in incorrect
                                         * ttls. */
}

impl From<VersionedValueForSerialization> for VersionedValue {
    fn from(versioned_value: VersionedValueForSerialization) -> Self {
        VersionedValue {
            value: crate::intern::intern(&versioned_value.value),
            version: versioned_value.version,
            status: versioned_value.status.into_status(Instant::now()),
        }
    }
}

impl From<VersionedValue> for VersionedValueForSerialization {
    fn from(versioned_value: VersionedValue) -> Self {
        VersionedValueForSerialization {
            value: versioned_value.value.to_string(),
            version: versioned_value.version,
            status: DeletionStatusMutation::from(versioned_value.status),
        }
    }
}

/// The current version of a key.
pub type Version = u64;

/// The current heartbeat of a node.
#[derive(
    Debug, Clone, Copy, Default, Eq, PartialEq, Hash, Ord, PartialOrd, Serialize, Deserialize,
)]
pub struct Heartbeat(pub(crate) u64);

impl Heartbeat {
    pub(crate) fn inc(&mut self) {
        // Heartbeat is increased everytime we gossip or receive a message. In
        // real-world scenarios, this should not happen more than a few hundred
        // times per second so we should never overflow.
        self.0 = self.0.checked_add(1).expect("Heartbeat overflow");
    }
}

impl From<Heartbeat> for u64 {
    fn from(heartbeat: Heartbeat) -> Self {
        heartbeat.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_equal_fields_are_one_handle_ordered_by_fields_and_swept_once_dropped() {
        let addr: SocketAddr = ([10, 0, 0, 1], 7946).into();
        let a = ChitchatId::new("interned-id-test", 3, addr);
        let b = ChitchatId::new(String::from("interned-id-test"), 3, addr);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        let later = ChitchatId::new("interned-id-test", 4, addr);
        assert_ne!(a, later);
        assert!(a < later, "ordered by fields, generation after name");
        assert!(ChitchatId::new("interned-id-tesa", 9, addr) < a);
        let json = serde_json::to_string(&a).unwrap();
        let back: ChitchatId = serde_json::from_str(&json).unwrap();
        assert!(
            Arc::ptr_eq(&a.0, &back.0),
            "deserialized into the live handle"
        );
        let mut set = std::collections::HashSet::new();
        set.insert(a.clone());
        assert!(set.contains(&b) && !set.contains(&later));
        // Ids made and dropped are swept: the table stays near what is live.
        for i in 0..10_000u64 {
            let _ = ChitchatId::new("interned-id-test-dropped", i, addr);
        }
        let kept = with_table(&IDS, |ids| ids.len());
        assert!(kept < 4_000, "{kept} ids kept after sweeps");
        assert!(Arc::ptr_eq(
            &a.0,
            &ChitchatId::new("interned-id-test", 3, addr).0
        ));
    }

    #[test]
    fn ids_order_as_their_fields_do_whatever_their_common_prefix() {
        let addr: SocketAddr = ([10, 0, 0, 1], 7946).into();
        let names = [
            "",
            "a",
            "ab",
            "ab\0",
            "ab\0x",
            "abc",
            "b",
            "bench@10.0.0.2:9000",
            "bench@10.0.0.20:9000",
            "bench@10.0.0.200:9000",
            "bench@10.0.1.2:9000",
            "sixteen-bytes-id",
            "sixteen-bytes-id-and-more",
            "sixteen-bytes-ic~",
            "é",
            "z\u{10FFFF}",
        ];
        let ids: Vec<ChitchatId> = names
            .iter()
            .flat_map(|n| [ChitchatId::new(*n, 1, addr), ChitchatId::new(*n, 0, addr)])
            .collect();
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.fields.cmp(&b.0.fields), "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn test_deletion_status_to_u8() {
        let mut count_values = 0;
        for deletion_status_code in 0..=u8::MAX {
            let Ok(deletion_status) = DeletionStatusMutation::try_from(deletion_status_code) else {
                continue;
            };
            let deletion_status_code_deser_ser: u8 = deletion_status.into();
            assert_eq!(deletion_status_code, deletion_status_code_deser_ser);
            count_values += 1;
        }
        assert_eq!(count_values, 3);
    }
}
