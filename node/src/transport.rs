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
//! ## The codec bridge
//!
//! chitchat 0.13 keeps the (de)serialization of its envelope private: a
//! custom [`Transport`] receives typed envelopes but cannot turn them into
//! bytes. So each sealed socket keeps a private chitchat [`UdpSocket`] bound
//! to 127.0.0.1 as its codec: to send, chitchat's socket encodes the envelope
//! to a local "encoder" socket of ours, which seals the bytes and sends them
//! to the peer; to receive, the opened bytes are relayed to the codec socket
//! from a relay socket dedicated to that peer, so the decoded envelope comes
//! back tagged with an address we map back to the peer. Loopback datagrams
//! are delivered synchronously, so this costs two local syscalls per packet
//! (measured in docs/membership.md) and keeps chitchat unmodified.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use rand::RngCore;
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
const MAX_DATAGRAM: usize = 65_507;
/// Peers with a relay socket at once; the least recently used is dropped past this.
const MAX_RELAYS: usize = 1024;

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
    /// Datagrams dropped because they did not open (wrong key, truncated, garbage).
    pub packets_rejected: AtomicU64,
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
        let cipher =
            |k: &crate::key::ClusterKey| ChaCha20Poly1305::new(Key::from_slice(k.as_bytes()));
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
                Nonce::from_slice(&nonce),
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
        let aad = self.aad(header);
        self.opening
            .iter()
            .find_map(|cipher| {
                cipher
                    .decrypt(
                        Nonce::from_slice(nonce),
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

/// A chitchat [`Transport`] that seals every datagram, or passes them in the
/// clear when no key ring is given (`SHOAL_INSECURE`), counting traffic either way.
#[derive(Clone)]
pub struct SealedTransport {
    sealer: Option<Sealer>,
    stats: Arc<GossipStats>,
}

impl SealedTransport {
    /// A transport sealing with `sealer` (or clear when `None`) and counting into `stats`.
    pub fn new(sealer: Option<Sealer>, stats: Arc<GossipStats>) -> Self {
        Self { sealer, stats }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let wire = UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind the gossip socket to {listen_addr}/udp"))?;
        let local: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let codec = CodecSocket::open(local).await?;
        let encoder = UdpSocket::bind(local)
            .await
            .context("failed to bind the gossip encoder socket")?;
        Ok(Box::new(SealedSocket {
            codec_addr: codec.local_addr()?,
            encoder_addr: encoder.local_addr()?,
            wire,
            codec,
            encoder,
            relays: HashMap::new(),
            peer_of_relay: HashMap::new(),
            sealer: self.sealer.clone(),
            stats: self.stats.clone(),
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

struct Relay {
    socket: UdpSocket,
    last_used: Instant,
}

struct SealedSocket {
    wire: UdpSocket,
    codec: CodecSocket,
    codec_addr: SocketAddr,
    encoder: UdpSocket,
    encoder_addr: SocketAddr,
    relays: HashMap<SocketAddr, Relay>,
    peer_of_relay: HashMap<SocketAddr, SocketAddr>,
    sealer: Option<Sealer>,
    stats: Arc<GossipStats>,
    buf: Box<[u8]>,
}

impl SealedSocket {
    /// Encodes an envelope with chitchat's own codec, through the bridge.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        self.codec.send(self.encoder_addr, envelope).await?;
        loop {
            let (n, from) = self.encoder.recv_from(&mut self.buf).await?;
            if from == self.codec_addr {
                return Ok(self.buf[..n].to_vec());
            }
            // Something else on this host wrote to our encoder port: ignore it.
        }
    }

    /// Hands opened bytes from `peer` to the codec socket via that peer's relay.
    async fn relay(&mut self, peer: SocketAddr, plain: &[u8]) -> anyhow::Result<()> {
        if !self.relays.contains_key(&peer) {
            if self.relays.len() >= MAX_RELAYS {
                self.evict_oldest_relay();
            }
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            self.peer_of_relay.insert(socket.local_addr()?, peer);
            self.relays.insert(
                peer,
                Relay {
                    socket,
                    last_used: Instant::now(),
                },
            );
        }
        if let Some(relay) = self.relays.get_mut(&peer) {
            relay.last_used = Instant::now();
            relay.socket.send_to(plain, self.codec_addr).await?;
        }
        Ok(())
    }

    fn evict_oldest_relay(&mut self) {
        let oldest = self
            .relays
            .iter()
            .min_by_key(|(_, r)| r.last_used)
            .map(|(p, _)| *p);
        if let Some(peer) = oldest {
            if let Some(relay) = self.relays.remove(&peer) {
                if let Ok(addr) = relay.socket.local_addr() {
                    self.peer_of_relay.remove(&addr);
                }
            }
        }
    }

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
        let plain = self.encode(envelope).await?;
        let datagram = match &self.sealer {
            Some(sealer) => sealer.seal(&plain),
            None => plain,
        };
        if datagram.len() > MAX_DATAGRAM {
            warn!(bytes = datagram.len(), %to, "gossip datagram too large once sealed; dropped");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        match self.wire.send_to(&datagram, to).await {
            Ok(n) => {
                GossipStats::add(&self.stats.packets_sent, 1);
                GossipStats::add(&self.stats.bytes_sent, n);
                Ok(SendOutcome { num_bytes_sent: n })
            }
            // A peer that went away, or a full buffer: gossip is lossy by design.
            Err(err) => {
                debug!(%to, error = %err, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    /// Cancel-safe: a datagram relayed before a cancellation is picked up by
    /// the next call, still mapped to its peer.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            tokio::select! {
                biased;
                decoded = self.codec.recv() => {
                    let outcome = decoded?;
                    if let Some(peer) = self.peer_of_relay.get(&outcome.from_addr) {
                        GossipStats::add(&self.stats.packets_received, 1);
                        return Ok(RecvOutcome { from_addr: *peer, ..outcome });
                    }
                    // Not from one of our relays: a local process wrote to the codec port.
                    self.reject(outcome.from_addr, &"codec datagram from outside the bridge");
                }
                received = self.wire.recv_from(&mut self.buf) => {
                    let (n, from) = match received {
                        Ok(r) => r,
                        // ICMP errors of earlier sends surface here; not fatal.
                        Err(err) if matches!(err.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) => continue,
                        Err(err) => return Err(err).context("gossip socket failed"),
                    };
                    GossipStats::add(&self.stats.bytes_received, n);
                    let plain = match &self.sealer {
                        Some(sealer) => match sealer.open(&self.buf[..n]) {
                            Ok(plain) => plain,
                            Err(why) => {
                                self.reject(from, &why);
                                continue;
                            }
                        },
                        None => self.buf[..n].to_vec(),
                    };
                    self.relay(from, &plain).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
