//! shoal patch (protocol V3): positional digests.
//!
//! Between members that know the same set of nodes — nearly always, once a
//! join or a death has spread — a digest need not name the nodes: both sides
//! sort them the same way (a digest is a `BTreeMap` by `ChitchatId`), so a
//! list of `(heartbeat, max version, last gc version)` in that order says it
//! all, with a hash of the set so that the receiver knows the positions mean
//! the same on its end. Names were ~2/3 of a digest's bytes.
//!
//! A SYN carries every node's entry ([`CompactDigest`] with positions
//! `0..n`); a SYN-ACK only those the initiator needs (its positions listed).
//! A receiver whose set differs answers a SYN with `Resync`, and the
//! initiator sends its full digest (V2) at once: one round trip more, while
//! the sets differ.
//!
//! Wire form: the set hash (8 bytes), then a compressed stream of columns
//! of LEB128 varints: entry count, position gaps (SYN-ACK only),
//! heartbeats, max versions, last gc versions. Columns of small, mostly
//! equal numbers compress to almost nothing.

use anyhow::{Context, bail};

use crate::Heartbeat;
use crate::digest::{Digest, NodeDigest};
use crate::serialize::{CompressedStreamWriter, Deserializable, Serializable, deserialize_stream};

/// Block size of the compressed stream.
const BLOCK_THRESHOLD: u16 = 16_384;

/// A digest by position in a node set both sides share.
#[derive(Debug, Clone, Default, Eq, PartialEq)]
pub struct CompactDigest {
    /// [`Digest::set_hash`] of the node set the positions refer to.
    pub(crate) set_hash: u64,
    /// `(position, entry)`, positions strictly increasing.
    pub(crate) entries: Vec<(u32, NodeDigest)>,
}

impl Digest {
    /// A hash of the digest's node set (ids, in order): equal sets, equal
    /// positions. FNV-1a over the ids' wire form, stable across builds.
    pub(crate) fn set_hash(&self) -> u64 {
        let mut hash = Fnv::default();
        let mut buf = Vec::with_capacity(64);
        hash.write(&(self.node_digests.len() as u64).to_le_bytes());
        for id in self.node_digests.keys() {
            buf.clear();
            id.serialize(&mut buf);
            hash.write(&buf);
        }
        hash.0
    }

    /// Every entry of the digest, by position; `set_hash` is its
    /// [`Self::set_hash`].
    pub(crate) fn to_compact(&self, set_hash: u64) -> CompactDigest {
        CompactDigest {
            set_hash,
            entries: self
                .node_digests
                .values()
                .enumerate()
                .map(|(i, d)| (i as u32, *d))
                .collect(),
        }
    }

    /// The entries of `self` (a subset of `set`'s nodes: a diff against
    /// `set`), by their position in `set`, whose hash is `set_hash`.
    pub(crate) fn to_compact_within(&self, set: &Digest, set_hash: u64) -> CompactDigest {
        let entries = set
            .node_digests
            .keys()
            .enumerate()
            .filter_map(|(i, id)| Some((i as u32, *self.node_digests.get(id)?)))
            .collect();
        CompactDigest { set_hash, entries }
    }
}

impl CompactDigest {
    /// The full digest it stands for, with the ids of `set` (the receiver's
    /// own digest, whose hash is `set_hash`); `None` if `set` is not the
    /// sender's node set.
    pub(crate) fn resolve(&self, set: &Digest, set_hash: u64) -> Option<Digest> {
        if set_hash != self.set_hash || set.node_digests.len() < self.entries.len() {
            return None;
        }
        // Positions increase: one walk down the set's ids, and a map built
        // from sorted entries.
        let mut ids = set.node_digests.keys();
        let mut next = 0u32;
        let node_digests = self
            .entries
            .iter()
            .map(|(position, entry)| {
                let id = ids.nth(position.checked_sub(next)? as usize)?;
                next = position + 1;
                Some((id.clone(), *entry))
            })
            .collect::<Option<std::collections::BTreeMap<_, _>>>()?;
        Some(Digest { node_digests })
    }

    /// Appends the wire form; `positions` false when the entries are
    /// `0..n` (a SYN's), which then go unsaid.
    pub(crate) fn serialize(&self, positions: bool, buf: &mut Vec<u8>) {
        self.set_hash.serialize(buf);
        let mut columns = Vec::with_capacity(self.entries.len() * 6 + 4);
        put_varint(&mut columns, self.entries.len() as u64);
        if positions {
            let mut next = 0u32;
            for (position, _) in &self.entries {
                put_varint(&mut columns, u64::from(position - next));
                next = position + 1;
            }
        }
        for (_, d) in &self.entries {
            put_varint(&mut columns, d.heartbeat.0);
        }
        for (_, d) in &self.entries {
            put_varint(&mut columns, d.max_version);
        }
        for (_, d) in &self.entries {
            put_varint(&mut columns, d.last_gc_version);
        }
        let mut stream = CompressedStreamWriter::with_block_threshold(BLOCK_THRESHOLD);
        for chunk in columns.chunks(usize::from(BLOCK_THRESHOLD)) {
            stream.append(&Raw(chunk));
        }
        buf.extend_from_slice(&stream.finish());
    }

    /// The length of the wire form.
    pub(crate) fn serialized_len(&self, positions: bool) -> usize {
        let mut buf = Vec::new();
        self.serialize(positions, &mut buf);
        buf.len()
    }

    /// Reads the wire form written by [`Self::serialize`] with the same
    /// `positions`.
    pub(crate) fn deserialize(positions: bool, buf: &mut &[u8]) -> anyhow::Result<Self> {
        let set_hash = u64::deserialize(buf)?;
        let columns = deserialize_stream::<u8>(buf)?;
        let mut c = &columns[..];
        let count = get_varint(&mut c)?;
        // Every entry takes at least three bytes: a count beyond that is a lie.
        if count > (c.len() / 3) as u64 {
            bail!("compact digest: {count} entries in {} bytes", c.len());
        }
        let count = count as usize;
        let mut position_list = Vec::with_capacity(count);
        let mut next = 0u64;
        for i in 0..count {
            let position = if positions {
                next + get_varint(&mut c)?
            } else {
                i as u64
            };
            let position =
                u32::try_from(position).context("compact digest: position out of range")?;
            position_list.push(position);
            next = u64::from(position) + 1;
        }
        let mut heartbeats = Vec::with_capacity(count);
        for _ in 0..count {
            heartbeats.push(get_varint(&mut c)?);
        }
        let mut max_versions = Vec::with_capacity(count);
        for _ in 0..count {
            max_versions.push(get_varint(&mut c)?);
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            entries.push((
                position_list[i],
                NodeDigest {
                    heartbeat: Heartbeat(heartbeats[i]),
                    max_version: max_versions[i],
                    last_gc_version: get_varint(&mut c)?,
                },
            ));
        }
        if !c.is_empty() {
            bail!("compact digest: {} bytes left over", c.len());
        }
        Ok(CompactDigest { set_hash, entries })
    }
}

/// Bytes appended as they are (a piece of the column stream).
struct Raw<'a>(&'a [u8]);

impl Serializable for Raw<'_> {
    fn serialize(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.0);
    }

    fn serialized_len(&self) -> usize {
        self.0.len()
    }
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(crate) fn get_varint(buf: &mut &[u8]) -> anyhow::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().context("compact digest: truncated")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("compact digest: varint longer than 64 bits")
}

/// FNV-1a, 64 bits.
pub(crate) struct Fnv(pub(crate) u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChitchatId;

    fn digest(n: u16, heartbeat_base: u64) -> Digest {
        let mut d = Digest::default();
        for i in 0..n {
            let addr =
                std::net::SocketAddr::from(([10, 0, (i / 200) as u8, (i % 200) as u8], 7946));
            let id = ChitchatId::new(
                format!("story-service@10.0.{}.{}:8080", i / 200, i % 200),
                1_790_000_000_000 + u64::from(i) * 7919,
                addr,
            );
            d.add_node(
                id,
                Heartbeat(heartbeat_base + u64::from(i) * 37 % 1000),
                0,
                5 + u64::from(i % 3),
            );
        }
        d
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(get_varint(&mut &buf[..]).unwrap(), v);
        }
        assert!(get_varint(&mut &[0x80u8][..]).is_err());
        assert!(get_varint(&mut &[0xffu8; 11][..]).is_err());
    }

    #[test]
    fn a_syn_digest_round_trips_and_resolves_against_the_same_set() {
        let ours = digest(200, 30_000);
        let compact = ours.to_compact(ours.set_hash());
        let mut buf = Vec::new();
        compact.serialize(false, &mut buf);
        let back = CompactDigest::deserialize(false, &mut &buf[..]).unwrap();
        assert_eq!(back, compact);
        // The receiver's heartbeats differ, its set does not.
        let theirs = digest(200, 29_000);
        assert_eq!(back.resolve(&theirs, theirs.set_hash()), Some(ours));
        // A set with one node more or less resolves nothing.
        for other in [digest(199, 30_000), digest(201, 30_000)] {
            assert_eq!(back.resolve(&other, other.set_hash()), None);
        }
    }

    #[test]
    fn a_diff_travels_by_position() {
        let set = digest(50, 1_000);
        let newer = digest(50, 2_000);
        let mut diff = newer.diff_against(&set);
        diff.node_digests
            .retain(|id, _| id.node_id.ends_with("7:8080"));
        assert!(!diff.node_digests.is_empty());
        let compact = diff.to_compact_within(&set, set.set_hash());
        let mut buf = Vec::new();
        compact.serialize(true, &mut buf);
        let back = CompactDigest::deserialize(true, &mut &buf[..]).unwrap();
        assert_eq!(back.resolve(&set, set.set_hash()), Some(diff));
    }

    #[test]
    fn compact_digests_are_a_fraction_of_full_ones() {
        for n in [50u16, 200, 1000] {
            let d = digest(n, 30_000);
            let mut compact = Vec::new();
            d.to_compact(d.set_hash()).serialize(false, &mut compact);
            let mut full = Vec::new();
            d.serialize(crate::ProtocolVersion::V2, &mut full);
            eprintln!(
                "N = {n}: compact {} B, full {} B",
                compact.len(),
                full.len()
            );
            assert!(
                compact.len() * 2 < full.len(),
                "{} vs {}",
                compact.len(),
                full.len()
            );
        }
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        // A count far beyond the bytes that follow.
        let mut columns = Vec::new();
        put_varint(&mut columns, 1 << 40);
        let mut stream = CompressedStreamWriter::with_block_threshold(BLOCK_THRESHOLD);
        stream.append(&Raw(&columns));
        let mut buf = 7u64.to_le_bytes().to_vec();
        buf.extend(stream.finish());
        assert!(CompactDigest::deserialize(false, &mut &buf[..]).is_err());
        // Truncated.
        let mut ok = Vec::new();
        let d = digest(10, 5);
        d.to_compact(d.set_hash()).serialize(true, &mut ok);
        assert!(CompactDigest::deserialize(true, &mut &ok[..ok.len() - 3]).is_err());
    }
}
