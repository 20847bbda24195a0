use crate::delta::Delta;
use crate::digest::Digest;

/// Chitchat message.
///
/// Each variant represents a step of the gossip "handshake"
/// between node A and node B.
/// The names {SYN, SYN-ACK, ACK} of the different steps are borrowed from
/// TCP handshake.
///
/// The message is a pure data model. The protocol version used to encode it on
/// the wire is not part of the model: it is a (de)serialization parameter (see
/// `message_serialize`), stamped in the message header so peers can decode the
/// digest regardless of the sender's wire format.
#[derive(Debug, Eq, PartialEq)]
pub enum ChitchatMessage {
    /// Scuttlebutt SYN: node A initiates a handshake and sends its digest.
    Syn { cluster_id: String, digest: Digest },
    /// Scuttlebutt SYN-ACK: node B returns a partial update as described in the Scuttlebutt
    /// reconciliation algorithm and its own digest.
    SynAck { digest: Digest, delta: Delta },
    /// Scuttlebutt ACK: node A returns a partial update for B.
    Ack { delta: Delta },
    /// Node B rejects the SYN message because node A and B belong to different clusters.
    BadCluster,
    /// (shoal patch, protocol V2) The sender's failure detector just found
    /// these nodes dead. A receiver that has itself heard nothing of one for
    /// a while (phi at least 3/4 of the threshold) takes it as dead at once
    /// and passes the news on; one that heard from it lately ignores it.
    Dead {
        cluster_id: String,
        nodes: Vec<crate::ChitchatId>,
    },
    /// (shoal patch, protocol V3) A SYN whose digest names no node: entries
    /// by position in the node set both sides share (see `compact`).
    SynCompact {
        cluster_id: String,
        digest: crate::compact::CompactDigest,
    },
    /// (shoal patch, protocol V3) The SYN-ACK to a [`Self::SynCompact`]:
    /// what the initiator needs (a V2 diff), by position.
    SynAckCompact {
        digest: crate::compact::CompactDigest,
        delta: Delta,
    },
    /// (shoal patch, protocol V3) The answer to a [`Self::SynCompact`] from a
    /// member whose node set differs: "send your full digest".
    Resync,
    /// (shoal patch, protocol V4) A member's pulse to one of its
    /// neighbours (see `pulse`): a sign of life that proves the sender
    /// receives (`echo`, the receiver's heartbeat it last heard), and the
    /// hash of the sender's state, so that two members that agree find it
    /// out in 8 bytes.
    Pulse {
        state_hash: u64,
        heartbeat: crate::Heartbeat,
        echo: crate::Heartbeat,
    },
    /// (shoal patch, protocol V4) Votes that nodes are dead: each with the
    /// node's heartbeat when it was last heard and the members that vote
    /// (its neighbours that stopped hearing it). A node is dead where
    /// enough distinct neighbours vote (see `pulse`).
    Verdict {
        cluster_id: String,
        deaths: Vec<crate::pulse::Death>,
    },
    /// (shoal patch, protocol V4) The sender's state hash by bucket of
    /// nodes (see `pulse::BUCKETS`), sent when whole-state hashes differ:
    /// the receiver answers with a [`Self::SynScoped`] over the buckets
    /// that differ.
    Buckets { hashes: Vec<u32> },
    /// (shoal patch, protocol V4) A SYN over the nodes of some buckets only
    /// (`scope`): the digest lists those, and the answer
    /// (a V2 SYN-ACK) and its ACK carry those alone.
    SynScoped {
        cluster_id: String,
        scope: crate::pulse::Scope,
        digest: Digest,
    },
    /// (shoal patch, protocol V4, feature level 5: see
    /// [`crate::NAMED_RUMORS_LEVEL`]) A SYN over the nodes its digest names
    /// and no others: a rumor of news (a new node, newer versions) costs its
    /// few nodes, not the whole buckets they fall in. The answer (a V2
    /// SYN-ACK) and its ACK carry those nodes alone.
    SynNamed { cluster_id: String, digest: Digest },
    /// (shoal patch, protocol V4) "Do you hear `node`?" — asked of a few
    /// members by one that stopped hearing its neighbour `node`, before it
    /// votes (SWIM's indirect probe; see `probe`).
    Probe { node: crate::ChitchatId },
    /// (shoal patch, protocol V4) The answer to a [`Self::Probe`]: the
    /// sender hears `node` steadily; the asker does not vote yet.
    Vouch { node: crate::ChitchatId },
    /// (shoal patch, protocol V4) The other answer to a [`Self::Probe`]:
    /// the sender pinged `node` since the ask and heard nothing back. The
    /// asker's vote, when it goes, carries the sender as a second voter
    /// (the node's other neighbours may have died with it).
    Silent { node: crate::ChitchatId },
    /// (shoal patch) Bytes for one member only, handed to its application
    /// (see `ChitchatHandle::send_direct`): what only some members read
    /// travels to them alone, not into every member's state.
    Direct {
        cluster_id: String,
        payload: Vec<u8>,
    },
    /// A message used by tests to trigger a panic
    #[cfg(test)]
    PanicForTest,
}

/// A [`ChitchatMessage`] paired with the protocol version it is encoded
/// with. The version is not part of the message model (see
/// [`ChitchatMessage`]'s doc); this struct is the unit that actually travels
/// on the wire, see `message_serialize`.
#[derive(Debug, Eq, PartialEq)]
pub struct ChitchatEnvelope {
    pub version: ProtocolVersion,
    pub message: ChitchatMessage,
}

impl ChitchatEnvelope {
    #[cfg(test)]
    pub(crate) fn new_syn_v0(cluster_id: String, digest: Digest) -> Self {
        Self {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn { cluster_id, digest },
        }
    }

    #[cfg(test)]
    pub(crate) fn new_syn_v1(cluster_id: String, digest: Digest) -> Self {
        Self {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::Syn { cluster_id, digest },
        }
    }

    #[cfg(test)]
    pub(crate) fn new_syn_ack_v0(digest: Digest, delta: Delta) -> Self {
        Self {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::SynAck { digest, delta },
        }
    }

    #[cfg(test)]
    pub(crate) fn new_ack_v0(delta: Delta) -> Self {
        Self {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Ack { delta },
        }
    }

    #[cfg(test)]
    pub(crate) fn new_bad_cluster_v0() -> Self {
        Self {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        }
    }

    #[cfg(test)]
    pub(crate) fn new_panic_for_test_v0() -> Self {
        Self {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::PanicForTest,
        }
    }
}

#[derive(Clone, Copy, Debug, Eq, PartialEq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ProtocolVersion {
    /// The digest is serialized using the V0 (uncompressed) wire format.
    V0 = 0,
    /// The digest is serialized using the V1 (compressed) wire format.
    V1 = 1,
    /// (shoal patch) V1's wire format; the digest of a SYN-ACK lists only
    /// what the responder knows newer than the SYN's digest, or lacks: a
    /// node it leaves out, the initiator takes as up to date on its end.
    V2 = 2,
    /// (shoal patch) V2, and a SYN's and a SYN-ACK's digest go by position
    /// in the node set when both sides know the same nodes (see `compact`).
    V3 = 3,
    /// (shoal patch) V3, and liveness from pulses between neighbours with
    /// votes, instead of heartbeats in every digest (see `pulse`); digests
    /// only when two members' state hashes differ.
    V4 = 4,
}

impl ProtocolVersion {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::V0),
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            3 => Some(Self::V3),
            4 => Some(Self::V4),
            _ => None,
        }
    }

    pub fn to_code(self) -> u8 {
        self as u8
    }
}
