//! Wire (de)serialization for [`ChitchatMessage`], via [`ChitchatEnvelope`].
//!
//! This module is deliberately kept separate from the message model
//! (`message.rs`) so that the on-wire format can grow across protocol
//! versions without cluttering the data types.
//!
//! The protocol version is not carried by [`ChitchatMessage`]: it is stamped
//! in [`ChitchatEnvelope`], which owns the wire format below, and it
//! drives the digest encoding (mirroring [`Digest`], whose encoding it
//! selects).

use std::io::BufRead;

use anyhow::{Context, bail};

use crate::delta::Delta;
use crate::digest::Digest;
use crate::message::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use crate::serialize::{Deserializable, Serializable};

const MAGIC_NUMBER: u16 = 45_139;

#[derive(Clone, Copy)]
#[repr(u8)]
enum MessageType {
    Syn = 0,
    SynAck = 1u8,
    Ack = 2u8,
    BadCluster = 3u8,
    Dead = 4u8,
    SynCompact = 5u8,
    SynAckCompact = 6u8,
    Resync = 7u8,
    Pulse = 8u8,
    Verdict = 9u8,
    Direct = 10u8,
    Buckets = 11u8,
    SynScoped = 12u8,
    Probe = 13u8,
    Vouch = 14u8,
    Silent = 15u8,
    SynNamed = 16u8,
    #[cfg(test)]
    PanicForTest = 255u8,
}

impl MessageType {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Syn),
            1 => Some(Self::SynAck),
            2 => Some(Self::Ack),
            3 => Some(Self::BadCluster),
            4 => Some(Self::Dead),
            5 => Some(Self::SynCompact),
            6 => Some(Self::SynAckCompact),
            7 => Some(Self::Resync),
            8 => Some(Self::Pulse),
            9 => Some(Self::Verdict),
            10 => Some(Self::Direct),
            11 => Some(Self::Buckets),
            12 => Some(Self::SynScoped),
            13 => Some(Self::Probe),
            14 => Some(Self::Vouch),
            15 => Some(Self::Silent),
            16 => Some(Self::SynNamed),
            #[cfg(test)]
            255 => Some(Self::PanicForTest),
            _ => None,
        }
    }

    pub fn to_code(self) -> u8 {
        self as u8
    }
}

impl ChitchatEnvelope {
    /// Bytes written before the message body: magic number (2) + protocol
    /// version (1) + message type (1).
    pub(crate) const HEADER_LEN: usize = 2 + 1 + 1;

    /// Serializes the message. The protocol version is stamped in the header
    /// and drives the digest encoding.
    /// (shoal patch: public) Appends the wire form of this envelope to `buf`.
    pub fn serialize(&self, buf: &mut Vec<u8>) {
        buf.extend(MAGIC_NUMBER.to_le_bytes());
        self.version.to_code().serialize(buf);

        match &self.message {
            ChitchatMessage::Syn { cluster_id, digest } => {
                buf.push(MessageType::Syn.to_code());
                digest.serialize(self.version, buf);
                cluster_id.serialize(buf);
            }
            ChitchatMessage::SynAck { digest, delta } => {
                buf.push(MessageType::SynAck.to_code());
                digest.serialize(self.version, buf);
                delta.serialize(buf);
            }
            ChitchatMessage::Ack { delta } => {
                buf.push(MessageType::Ack.to_code());
                delta.serialize(buf);
            }
            ChitchatMessage::BadCluster => {
                buf.push(MessageType::BadCluster.to_code());
            }
            ChitchatMessage::Dead { cluster_id, nodes } => {
                buf.push(MessageType::Dead.to_code());
                cluster_id.serialize(buf);
                (nodes.len() as u16).serialize(buf);
                for node in nodes {
                    node.serialize(buf);
                }
            }
            ChitchatMessage::SynCompact { cluster_id, digest } => {
                buf.push(MessageType::SynCompact.to_code());
                digest.serialize(false, buf);
                cluster_id.serialize(buf);
            }
            ChitchatMessage::SynAckCompact { digest, delta } => {
                buf.push(MessageType::SynAckCompact.to_code());
                digest.serialize(true, buf);
                delta.serialize(buf);
            }
            ChitchatMessage::Resync => {
                buf.push(MessageType::Resync.to_code());
            }
            ChitchatMessage::Pulse {
                state_hash,
                heartbeat,
                echo,
            } => {
                // Heartbeats as varints: a pulse is most of a V4 member's
                // bytes.
                buf.push(MessageType::Pulse.to_code());
                state_hash.serialize(buf);
                crate::compact::put_varint(buf, heartbeat.0);
                crate::compact::put_varint(buf, echo.0);
            }
            ChitchatMessage::Verdict { cluster_id, deaths } => {
                buf.push(MessageType::Verdict.to_code());
                cluster_id.serialize(buf);
                (deaths.len() as u16).serialize(buf);
                for death in deaths {
                    death.serialize(buf);
                }
            }
            ChitchatMessage::Buckets { hashes } => {
                buf.push(MessageType::Buckets.to_code());
                (hashes.len() as u16).serialize(buf);
                for hash in hashes {
                    hash.serialize(buf);
                }
            }
            ChitchatMessage::SynScoped {
                cluster_id,
                scope,
                digest,
            } => {
                buf.push(MessageType::SynScoped.to_code());
                scope.serialize(buf);
                digest.serialize(self.version, buf);
                cluster_id.serialize(buf);
            }
            ChitchatMessage::SynNamed { cluster_id, digest } => {
                buf.push(MessageType::SynNamed.to_code());
                digest.serialize(self.version, buf);
                cluster_id.serialize(buf);
            }
            ChitchatMessage::Probe { node } => {
                buf.push(MessageType::Probe.to_code());
                node.serialize(buf);
            }
            ChitchatMessage::Vouch { node } => {
                buf.push(MessageType::Vouch.to_code());
                node.serialize(buf);
            }
            ChitchatMessage::Silent { node } => {
                buf.push(MessageType::Silent.to_code());
                node.serialize(buf);
            }
            ChitchatMessage::Direct {
                cluster_id,
                payload,
            } => {
                buf.push(MessageType::Direct.to_code());
                cluster_id.serialize(buf);
                (payload.len() as u32).serialize(buf);
                buf.extend_from_slice(payload);
            }
            #[cfg(test)]
            ChitchatMessage::PanicForTest => {
                buf.push(MessageType::PanicForTest.to_code());
            }
        }
    }

    /// (shoal patch: public) The wire form of this envelope.
    pub fn serialize_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.serialize(&mut buf);
        buf
    }

    #[cfg(test)]
    /// (shoal patch: public) The length of the wire form.
    pub fn serialized_len(&self) -> usize {
        Self::HEADER_LEN
            + match &self.message {
                ChitchatMessage::Syn { cluster_id, digest } => {
                    cluster_id.serialized_len() + digest.serialized_len(self.version)
                }
                ChitchatMessage::SynAck { digest, delta } => {
                    digest.serialized_len(self.version) + delta.serialized_len()
                }
                ChitchatMessage::Ack { delta } => delta.serialized_len(),
                ChitchatMessage::BadCluster => 0,
                ChitchatMessage::Dead { cluster_id, nodes } => {
                    cluster_id.serialized_len()
                        + 2
                        + nodes.iter().map(|n| n.serialized_len()).sum::<usize>()
                }
                ChitchatMessage::SynCompact { .. } | ChitchatMessage::SynAckCompact { .. } => {
                    self.serialize_to_vec().len() - Self::HEADER_LEN
                }
                ChitchatMessage::Resync => 0,
                ChitchatMessage::Pulse { .. }
                | ChitchatMessage::Verdict { .. }
                | ChitchatMessage::Direct { .. }
                | ChitchatMessage::Buckets { .. }
                | ChitchatMessage::Probe { .. }
                | ChitchatMessage::Vouch { .. }
                | ChitchatMessage::Silent { .. }
                | ChitchatMessage::SynScoped { .. }
                | ChitchatMessage::SynNamed { .. } => {
                    self.serialize_to_vec().len() - Self::HEADER_LEN
                }
                #[cfg(test)]
                ChitchatMessage::PanicForTest => 0,
            }
    }

    /// Deserializes a message, reading the protocol version from the header.
    /// The version is needed both to decode the digest and by the caller: a
    /// responder echoes it so its reply is encoded with a format the
    /// initiator is guaranteed to understand.
    /// (shoal patch: public) Reads an envelope from its wire form; an error for anything else.
    pub fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        if buf.len() < 3 {
            bail!("buffer too small to store the magic number and the protocol version");
        }
        let magic_number = u16::from_le_bytes(buf[0..2].try_into().unwrap());
        if magic_number != MAGIC_NUMBER {
            bail!("invalid chitchat magic number");
        }
        let version = ProtocolVersion::from_code(buf[2]).context("invalid protocol version")?;
        buf.consume(3);

        let message_type = buf
            .first()
            .copied()
            .and_then(MessageType::from_code)
            .context("invalid message type")?;
        buf.consume(1);

        let message = match message_type {
            MessageType::Syn => {
                let digest = Digest::deserialize(version, buf)?;
                let cluster_id = String::deserialize(buf)?;
                ChitchatMessage::Syn { cluster_id, digest }
            }
            MessageType::SynAck => {
                let digest = Digest::deserialize(version, buf)?;
                let delta = Delta::deserialize(buf)?;
                ChitchatMessage::SynAck { digest, delta }
            }
            MessageType::Ack => {
                let delta = Delta::deserialize(buf)?;
                ChitchatMessage::Ack { delta }
            }
            MessageType::BadCluster => ChitchatMessage::BadCluster,
            MessageType::Dead => {
                let cluster_id = String::deserialize(buf)?;
                let len = u16::deserialize(buf)?;
                let mut nodes = Vec::new();
                for _ in 0..len {
                    nodes.push(crate::ChitchatId::deserialize(buf)?);
                }
                ChitchatMessage::Dead { cluster_id, nodes }
            }
            MessageType::SynCompact => {
                let digest = crate::compact::CompactDigest::deserialize(false, buf)?;
                let cluster_id = String::deserialize(buf)?;
                ChitchatMessage::SynCompact { cluster_id, digest }
            }
            MessageType::SynAckCompact => {
                let digest = crate::compact::CompactDigest::deserialize(true, buf)?;
                let delta = Delta::deserialize(buf)?;
                ChitchatMessage::SynAckCompact { digest, delta }
            }
            MessageType::Resync => ChitchatMessage::Resync,
            MessageType::Pulse => ChitchatMessage::Pulse {
                state_hash: u64::deserialize(buf)?,
                heartbeat: crate::Heartbeat(crate::compact::get_varint(buf)?),
                echo: crate::Heartbeat(crate::compact::get_varint(buf)?),
            },
            MessageType::Verdict => {
                let cluster_id = String::deserialize(buf)?;
                let len = u16::deserialize(buf)?;
                let mut deaths = Vec::new();
                for _ in 0..len {
                    deaths.push(crate::pulse::Death::deserialize(buf)?);
                }
                ChitchatMessage::Verdict { cluster_id, deaths }
            }
            MessageType::Buckets => {
                let len = u16::deserialize(buf)?;
                if usize::from(len) > crate::pulse::BUCKETS {
                    bail!("{len} buckets (at most {})", crate::pulse::BUCKETS);
                }
                let hashes = (0..len)
                    .map(|_| u32::deserialize(buf))
                    .collect::<anyhow::Result<_>>()?;
                ChitchatMessage::Buckets { hashes }
            }
            MessageType::SynScoped => {
                let scope = crate::pulse::Scope::deserialize(buf)?;
                let digest = Digest::deserialize(version, buf)?;
                let cluster_id = String::deserialize(buf)?;
                ChitchatMessage::SynScoped {
                    cluster_id,
                    scope,
                    digest,
                }
            }
            MessageType::SynNamed => {
                let digest = Digest::deserialize(version, buf)?;
                let cluster_id = String::deserialize(buf)?;
                ChitchatMessage::SynNamed { cluster_id, digest }
            }
            MessageType::Probe => ChitchatMessage::Probe {
                node: crate::ChitchatId::deserialize(buf)?,
            },
            MessageType::Vouch => ChitchatMessage::Vouch {
                node: crate::ChitchatId::deserialize(buf)?,
            },
            MessageType::Silent => ChitchatMessage::Silent {
                node: crate::ChitchatId::deserialize(buf)?,
            },
            MessageType::Direct => {
                let cluster_id = String::deserialize(buf)?;
                let len = u32::deserialize(buf)? as usize;
                if buf.len() < len {
                    bail!("direct message: {len} bytes announced, {} left", buf.len());
                }
                let payload = buf[..len].to_vec();
                buf.consume(len);
                ChitchatMessage::Direct {
                    cluster_id,
                    payload,
                }
            }
            #[cfg(test)]
            MessageType::PanicForTest => ChitchatMessage::PanicForTest,
        };
        Ok(ChitchatEnvelope { version, message })
    }
}

#[cfg(test)]
mod tests {
    use crate::message::ChitchatEnvelope;
    use crate::{ChitchatId, Delta, Digest, Heartbeat};

    /// Checks the reported length, then round-trips and asserts both the
    /// message and the version survive.
    fn test_envelope_serdeser_aux(envelope: ChitchatEnvelope, expected_len: usize) {
        let buf = envelope.serialize_to_vec();
        assert_eq!(buf.len(), expected_len);
        assert_eq!(buf.len(), envelope.serialized_len());
        let deserialized = ChitchatEnvelope::deserialize(&mut &buf[..]).unwrap();
        assert_eq!(envelope, deserialized);
    }

    #[test]
    fn test_syn() {
        {
            let envelope = ChitchatEnvelope::new_syn_v0("cluster-a".to_string(), Digest::default());
            test_envelope_serdeser_aux(envelope, 17);
        }
        {
            let mut digest = Digest::default();
            let node = ChitchatId::for_local_test(10_001);
            digest.add_node(node, Heartbeat(0), 0, 0);

            let envelope = ChitchatEnvelope::new_syn_v0("cluster-a".to_string(), digest);
            test_envelope_serdeser_aux(envelope, 68);
        }
    }

    #[test]
    fn test_syn_compressed_digest_roundtrips() {
        let mut digest = Digest::default();
        for i in 0..100 {
            let node = ChitchatId::for_local_test(10_000 + i);
            digest.add_node(node, Heartbeat(i as u64), 0, i as u64);
        }
        // Emit the compressed wire format.
        let envelope = ChitchatEnvelope::new_syn_v1("cluster-a".to_string(), digest);
        let buf = envelope.serialize_to_vec();
        // A peer decodes it transparently, regardless of the encoding used.
        let deserialized = ChitchatEnvelope::deserialize(&mut &buf[..]).unwrap();
        assert_eq!(envelope, deserialized);
    }

    #[test]
    fn test_syn_ack() {
        {
            let envelope = ChitchatEnvelope::new_syn_ack_v0(Digest::default(), Delta::default());
            // 2 (magic number) + 1 (protocol version) + 1 (message tag) + 2 (digest len) + 1 (delta
            // end op)
            test_envelope_serdeser_aux(envelope, 7);
        }
        {
            // 2 bytes.
            let mut digest = Digest::default();
            let node = ChitchatId::for_local_test(10_001);
            // +43 bytes = 27 bytes (ChitchatId) + 8 (hearbeat) + 8 (max_version).
            digest.add_node(node, Heartbeat(0), 0, 0);

            // 4 bytes
            let mut delta = Delta::default();
            let node = ChitchatId::for_local_test(10_001);
            // +27 bytes (ChitchatId)
            // + 2 bytes (node delta len)
            // + 8 bytes (last_gc_version)
            // + 8 bytes (from_version).
            delta.add_node(node.clone(), 0u64, 0u64);
            // +22 bytes.
            delta.add_kv(&node, "key", "value", 1, true);
            // That's compression kicking in.
            delta.set_serialized_len(70);

            let envelope = ChitchatEnvelope::new_syn_ack_v0(digest, delta);
            // 1 byte (protocol version) + 1 byte (message tag) + 53 bytes (digest) + 60 bytes
            // (delta).
            test_envelope_serdeser_aux(envelope, 2 + 1 + 1 + 53 + 70);
        }
    }

    #[test]
    fn test_ack() {
        {
            let envelope = ChitchatEnvelope::new_ack_v0(Delta::default());
            test_envelope_serdeser_aux(envelope, 5);
        }
        {
            // 4 bytes.
            let mut delta = Delta::default();
            let node = ChitchatId::for_local_test(10_001);
            // +37 bytes = 27 bytes (ChitchatId) + 2 bytes (node delta len) + 8 bytes (heartbeat).
            delta.add_node(node.clone(), 0u64, 0u64);
            // +29 bytes.
            delta.add_kv(&node, "key", "value", 1, true);
            delta.set_serialized_len(70);
            let envelope = ChitchatEnvelope::new_ack_v0(delta);
            test_envelope_serdeser_aux(envelope, 2 + 1 + 1 + 70);
        }
    }

    #[test]
    fn test_bad_cluster() {
        test_envelope_serdeser_aux(ChitchatEnvelope::new_bad_cluster_v0(), 4);
    }
}
