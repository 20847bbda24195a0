//! Gossip transport: every datagram sealed with the cluster key.
//!
//! Wire format of one datagram:
//!
//! ```text
//! "SH" | version (1) | nonce (12) | ChaCha20-Poly1305(chitchat datagram) + tag (16)
//! ```
//!
//! The header and the cluster id are the associated data, so a packet of
//! another cluster or another format fails to open. A packet that does not
//! open with any key of the ring is dropped and counted, and never reaches
//! chitchat's parser. Replays of a valid packet are harmless: chitchat
//! ignores state older than what it has (versions and heartbeats only grow).
//!
//! The socket is a thin wrapper: chitchat's envelope codec (public in the
//! our chitchat fork, see `node/chitchat/README.md`) turns an envelope
//! into bytes, which are sealed and sent in one datagram; a datagram
//! received is opened, then decoded. One UDP socket per member, one
//! `send_to`/`recv_from` per datagram.
//!
//! The datagrams themselves go through a [`Wire`]: UDP sockets ([`Udp`]) in
//! every member, an in-memory network in the membership simulator
//! (`tests/src/sim.rs`), which runs hundreds of members in one process on
//! tokio's paused clock with exactly this transport.
//!
//! ## Size
//!
//! Sealing adds [`OVERHEAD`] bytes. chitchat is told to fill its messages
//! up to [`max_message_len`] of the gossip MTU (`SHOAL_GOSSIP_MTU`), so a
//! sealed datagram always fits and none is dropped for size. A message that
//! would still not fit (a digest alone larger than the MTU) is sent anyway,
//! up to the UDP limit, and counted as oversized; the IP layer fragments it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use rand::Rng;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::key::KeyRing;

const MAGIC: &[u8; 2] = b"SH";
const WIRE_VERSION: u8 = 1;
const HEADER_LEN: usize = 3;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to chitchat's.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = chitchat::MAX_UDP_DATAGRAM_PAYLOAD_SIZE;

/// Counters of the gossip traffic of one member.
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Datagrams sent.
    pub packets_sent: AtomicU64,
    /// Bytes sent on the wire (sealed).
    pub bytes_sent: AtomicU64,
    /// Datagrams received and accepted.
    pub packets_received: AtomicU64,
    /// Bytes received on the wire (sealed), accepted or not.
    pub bytes_received: AtomicU64,
    /// Datagrams dropped because they did not open (wrong key, truncated,
    /// garbage) or did not decode.
    pub packets_rejected: AtomicU64,
    /// The largest datagram sent, in bytes.
    pub largest_datagram: AtomicU64,
    /// Datagrams sent larger than the gossip MTU (fragmented by IP).
    pub packets_oversized: AtomicU64,
    /// Datagrams not sent because they exceed the UDP limit even alone.
    pub packets_dropped_oversized: AtomicU64,
    /// Bytes sent (sealed) by message kind, indexed by [`MessageKind`]:
    /// where the gossip bytes go.
    pub bytes_sent_by_kind: [AtomicU64; MessageKind::ALL.len()],
    /// Datagrams sent by message kind, indexed the same way.
    pub packets_sent_by_kind: [AtomicU64; MessageKind::ALL.len()],
}

/// The kinds of gossip message, for [`GossipStats::bytes_sent_by_kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A round's opening: the sender's digest.
    Syn,
    /// V4: a SYN over the news' nodes (`SynNamed`), a rumor.
    Rumor,
    /// V4: a SYN over some buckets (`SynScoped`): the buckets that differ,
    /// or a rumor to a member of an earlier release.
    Scoped,
    /// V4: the state hash by bucket, sent when two members' hashes differ.
    Buckets,
    /// The answer: a digest (a diff from V2 on) and a delta.
    SynAck,
    /// The closing delta.
    Ack,
    /// V4's pulses between neighbours.
    Pulse,
    /// What gateways send each other alone (figures, demand).
    Direct,
    /// Death notices (V2), votes (V4), resync requests (V3) and
    /// wrong-cluster refusals.
    Other,
}

impl MessageKind {
    /// Every kind, in index order.
    pub const ALL: [MessageKind; 9] = [
        Self::Syn,
        Self::Rumor,
        Self::Scoped,
        Self::Buckets,
        Self::SynAck,
        Self::Ack,
        Self::Pulse,
        Self::Direct,
        Self::Other,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::Rumor => "rumor",
            Self::Scoped => "scoped",
            Self::Buckets => "buckets",
            Self::SynAck => "syn-ack",
            Self::Ack => "ack",
            Self::Pulse => "pulse",
            Self::Direct => "direct",
            Self::Other => "other",
        }
    }

    fn of(message: &chitchat::ChitchatMessage) -> Self {
        use chitchat::ChitchatMessage as M;
        match message {
            M::Syn { .. } | M::SynCompact { .. } => Self::Syn,
            M::SynNamed { .. } => Self::Rumor,
            M::SynScoped { .. } => Self::Scoped,
            M::Buckets { .. } => Self::Buckets,
            M::SynAck { .. } | M::SynAckCompact { .. } => Self::SynAck,
            M::Ack { .. } => Self::Ack,
            M::Pulse { .. } => Self::Pulse,
            M::Direct { .. } => Self::Direct,
            _ => Self::Other,
        }
    }
}

impl GossipStats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Seals and opens datagrams with a key ring.
#[derive(Clone)]
pub struct Sealer {
    sealing: ChaCha20Poly1305,
    opening: Vec<ChaCha20Poly1305>,
    cluster_id: Arc<[u8]>,
}

/// Why a datagram was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("datagram of {0} bytes is too short to be sealed")]
    Truncated(usize),
    #[error("datagram does not start with a shoal header")]
    NotShoal,
    #[error("datagram does not open with any key of the ring (wrong key or cluster, or tampered)")]
    Unauthenticated,
}

impl Sealer {
    /// A sealer for `cluster_id` with the keys of `ring`.
    pub fn new(ring: &KeyRing, cluster_id: &str) -> Self {
        let cipher = |k: &crate::key::ClusterKey| ChaCha20Poly1305::new(&Key::from(*k.as_bytes()));
        Self {
            sealing: cipher(ring.sealing()),
            opening: ring.all().iter().map(cipher).collect(),
            cluster_id: cluster_id.as_bytes().into(),
        }
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(header.len() + self.cluster_id.len());
        aad.extend_from_slice(header);
        aad.extend_from_slice(&self.cluster_id);
        aad
    }

    /// Seals `plain` into a datagram.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let header = [MAGIC[0], MAGIC[1], WIRE_VERSION];
        let sealed = self
            .sealing
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &self.aad(&header),
                },
            )
            // Encryption only fails for inputs larger than 256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a datagram, trying every key of the ring.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::Truncated(datagram.len()));
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        if header != [MAGIC[0], MAGIC[1], WIRE_VERSION] {
            return Err(OpenError::NotShoal);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        // `split_at(NONCE_LEN)` gave exactly NONCE_LEN bytes.
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError::Truncated(datagram.len()))?;
        let aad = self.aad(header);
        self.opening
            .iter()
            .find_map(|cipher| {
                cipher
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .ok()
            })
            .ok_or(OpenError::Unauthenticated)
    }
}

/// The largest chitchat message that still fits in a datagram of `mtu`
/// bytes once sealed (or in clear, when `sealed` is false).
pub fn max_message_len(mtu: usize, sealed: bool) -> usize {
    let mtu = mtu.min(MAX_DATAGRAM);
    if sealed {
        mtu.saturating_sub(OVERHEAD)
    } else {
        mtu
    }
}

/// Where datagrams go: UDP ([`Udp`]) or, in the simulator, memory.
#[async_trait]
pub trait Wire: Send + Sync + 'static {
    /// A socket bound to `addr`.
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn WireSocket>>;
}

/// One bound datagram socket of a [`Wire`].
#[async_trait]
pub trait WireSocket: Send + Sync + 'static {
    /// The address peers send to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Sends one datagram; `Ok` does not mean it arrives.
    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Receives one datagram into `buf`. Cancel-safe: loses nothing when cancelled.
    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// The real wire: one UDP socket per member.
#[derive(Debug, Clone, Copy, Default)]
pub struct Udp;

#[async_trait]
impl Wire for Udp {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn WireSocket>> {
        Ok(Box::new(UdpSocket::bind(addr).await?))
    }
}

#[async_trait]
impl WireSocket for UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        UdpSocket::send_to(self, datagram, to).await
    }
    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        UdpSocket::recv_from(self, buf).await
    }
}

/// A chitchat [`Transport`] that seals every datagram, or passes them in the
/// clear when no key ring is given (`SHOAL_INSECURE`), counting traffic either way.
#[derive(Clone)]
pub struct SealedTransport {
    sealer: Option<Sealer>,
    stats: Arc<GossipStats>,
    mtu: usize,
    wire: Arc<dyn Wire>,
}

impl SealedTransport {
    /// A transport sealing with `sealer` (or clear when `None`) and counting
    /// into `stats`; `mtu` is the datagram size chitchat's messages are
    /// sized for (see [`max_message_len`]). Datagrams go over `wire`.
    pub fn new(
        sealer: Option<Sealer>,
        stats: Arc<GossipStats>,
        mtu: usize,
        wire: Arc<dyn Wire>,
    ) -> Self {
        Self {
            sealer,
            stats,
            mtu,
            wire,
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let wire =
            self.wire.bind(listen_addr).await.with_context(|| {
                format!("failed to bind the gossip socket to {listen_addr}/udp")
            })?;
        Ok(Box::new(SealedSocket {
            wire,
            sealer: self.sealer.clone(),
            stats: self.stats.clone(),
            mtu: self.mtu,
            plain: Vec::with_capacity(self.mtu),
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

/// One received datagram, read as the gossip socket reads it: opened (when
/// sealed), then decoded as chitchat's message.
fn read_datagram(sealer: Option<&Sealer>, datagram: &[u8]) -> Result<ChitchatEnvelope, String> {
    let opened;
    let mut plain: &[u8] = match sealer {
        Some(sealer) => {
            opened = sealer.open(datagram).map_err(|why| why.to_string())?;
            &opened
        }
        None => datagram,
    };
    ChitchatEnvelope::deserialize(&mut plain)
        .map_err(|err| format!("not a chitchat message: {err}"))
}

/// Whether a datagram would be taken by the gossip socket (`Ok`) or
/// rejected (`Err`, the reason). What the fuzz targets drive: it must never
/// panic, whatever the bytes.
#[cfg(feature = "testing")]
pub fn check_datagram(sealer: Option<&Sealer>, datagram: &[u8]) -> Result<(), String> {
    read_datagram(sealer, datagram).map(drop)
}

struct SealedSocket {
    wire: Box<dyn WireSocket>,
    sealer: Option<Sealer>,
    stats: Arc<GossipStats>,
    mtu: usize,
    /// The envelope being sent, encoded (reused).
    plain: Vec<u8>,
    /// The datagram being received.
    buf: Box<[u8]>,
}

impl SealedSocket {
    fn reject(&self, from: SocketAddr, why: &dyn std::fmt::Display) {
        self.stats.packets_rejected.fetch_add(1, Ordering::Relaxed);
        debug!(%from, %why, "gossip datagram rejected");
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.wire.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.plain.clear();
        envelope.serialize(&mut self.plain);
        let kind = MessageKind::of(&envelope.message);
        let sealed;
        let datagram: &[u8] = match &self.sealer {
            Some(sealer) => {
                sealed = sealer.seal(&self.plain);
                &sealed
            }
            None => &self.plain,
        };
        if datagram.len() > MAX_DATAGRAM {
            // Only a digest larger than the UDP limit gets here (thousands
            // of members): nothing can carry it.
            warn!(bytes = datagram.len(), %to, "gossip datagram over the UDP limit; dropped");
            GossipStats::add(&self.stats.packets_dropped_oversized, 1);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        if datagram.len() > self.mtu {
            GossipStats::add(&self.stats.packets_oversized, 1);
        }
        match self.wire.send_to(datagram, to).await {
            Ok(n) => {
                self.stats
                    .largest_datagram
                    .fetch_max(n as u64, Ordering::Relaxed);
                GossipStats::add(&self.stats.packets_sent, 1);
                GossipStats::add(&self.stats.bytes_sent, n);
                GossipStats::add(&self.stats.bytes_sent_by_kind[kind as usize], n);
                GossipStats::add(&self.stats.packets_sent_by_kind[kind as usize], 1);
                Ok(SendOutcome { num_bytes_sent: n })
            }
            // A peer that went away, or a full buffer: gossip is lossy by design.
            Err(err) => {
                debug!(%to, error = %err, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    /// Cancel-safe: the only await is `recv_from`, which loses nothing when
    /// cancelled.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (n, from) = match self.wire.recv_from(&mut self.buf).await {
                Ok(r) => r,
                // ICMP errors of earlier sends surface here; not fatal.
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(err) => return Err(err).context("gossip socket failed"),
            };
            GossipStats::add(&self.stats.bytes_received, n);
            match read_datagram(self.sealer.as_ref(), &self.buf[..n]) {
                Ok(envelope) => {
                    GossipStats::add(&self.stats.packets_received, 1);
                    return Ok(RecvOutcome {
                        from_addr: from,
                        envelope,
                        num_bytes_received: n,
                    });
                }
                Err(why) => self.reject(from, &why),
            }
        }
    }
}

#[cfg(test)]
mod tests;
