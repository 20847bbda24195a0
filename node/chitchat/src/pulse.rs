//! shoal patch (protocol V4): liveness from pulses between neighbours.
//!
//! Up to V3, liveness travels in digests: every digest carries a heartbeat
//! of every member, heartbeats change every round, so two members never
//! agree and every exchange carries one entry per member — bytes per member
//! grow with N, the cluster's with N².
//!
//! From V4 on, liveness is judged only where it is observed:
//! - **Neighbours.** Each member hashes every id onto [`RINGS`] rings; its
//!   neighbours are its predecessor and successor on each ring (among the
//!   members it holds live), so each member has at most `2 × RINGS`
//!   neighbours, and the graph they form is an expander (Rapid's K rings).
//! - **Pulses.** Every round a member sends each neighbour a [`Pulse`]: its
//!   heartbeat, the neighbour's heartbeat it last heard (the *echo*, proof
//!   that it receives), and the hash of its state. A neighbour's pulse
//!   whose echo is one of our last [`ECHO_ROUNDS`] heartbeats feeds our
//!   failure detector for it; one that sends but cannot receive echoes
//!   nothing recent and goes silent to us.
//! - **Votes.** A member whose detector finds a neighbour silent votes it
//!   dead and tells the node's other neighbours ([`Verdict`]). A node is
//!   dead where [`QUORUM`] distinct members vote (fewer if it has fewer
//!   neighbours): one member that loses its own packets accuses its
//!   neighbours alone and removes nobody. A death, with its voters, is then
//!   passed on as news, and sent to any member whose state hash differs
//!   while it is recent, so a member that missed the rumor catches up at
//!   its next pulse.
//! - **Agreement in 8 bytes.** The state hash covers each live member's id
//!   and versions, not heartbeats: members that agree exchange pulses and
//!   nothing else; a mismatch starts a V3 exchange with that peer.
//! - **Back from the dead.** A node taken for dead that is alive keeps
//!   pulsing; a member answers a pulse from anyone not its neighbour with
//!   its own, and revives the node when its pulse echoes (it receives) with
//!   a heartbeat newer than the one it died with. The revival is news.
//!
//! [`Pulse`]: crate::ChitchatMessage::Pulse
//! [`Verdict`]: crate::ChitchatMessage::Verdict

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::compact::Fnv;
use crate::serialize::{Deserializable, Serializable};
use crate::{Chitchat, ChitchatId, ChitchatIdFields, ChitchatMessage, Heartbeat};

/// Buckets of nodes (by the id's place on the first ring) whose hashes two
/// members compare when their whole-state hashes differ: an exchange then
/// carries the nodes of the buckets that differ, not every node.
pub(crate) const BUCKETS: usize = 256;
/// Most nodes one scoped exchange names (whole buckets, one at least), so
/// that its digest fits a datagram; the other buckets wait for the next.
const SCOPE_NODES: u32 = 24;
/// Rings of the neighbour graph: up to two neighbours per ring.
pub(crate) const RINGS: usize = 2;
/// Most nodes a rumor names (`SynNamed`); news past it goes by bucket.
const NAMED_NEWS: usize = 256;
/// Nodes a catch-up SYN names, and most catch-up SYNs a round (see
/// `catch_up`): as many as the nodes known by name only need, so that a
/// member joining a cluster of 5,000 has their keys within a few rounds,
/// not a hundred.
const CATCH_UP_NODES: usize = 8;
const CATCH_UP_PULLS: usize = 24;
/// Distinct voters that make a node dead (all its neighbours, if fewer).
pub(crate) const QUORUM: usize = 2;
/// Changes of the deaths remembered (`Pulses::death_changes`); more at once
/// and the live set is recomputed whole.
const DEATH_CHANGES: usize = 256;

/// Random draws from the ring per peer wanted before `keyed_peers` walks
/// it whole (draws find a keyed member at least a quarter of the time
/// when a quarter of the members' keys are here).
const KEYED_DRAWS: usize = 4;

/// A pulse proves its sender receives if it echoes one of our heartbeats
/// of the last that many rounds: a member that stops receiving stops
/// counting after as many rounds, on top of the silence that makes a vote.
const ECHO_ROUNDS: usize = 4;
/// A node voted dead comes back on that many pulses that echo within
/// `REVIVAL_ROUNDS` rounds: one that loses most of its packets does not
/// flap in and out of every view.
const REVIVAL_PULSES: usize = 8;
const REVIVAL_ROUNDS: u32 = 10;
/// A node dead here of which a newer heartbeat arrives second-hand (so it
/// lives somewhere) is pinged for `REVIVAL_PING_ROUNDS` rounds, again
/// after `REVIVAL_GAP` (doubling) while the news keeps coming: if it
/// answers steadily it comes back (`REVIVAL_PULSES`). A member can hold a
/// node dead that the rest of the cluster holds live — dead in its V3
/// failure detector at the switch to V4, or voted dead while it starved —
/// and a heartbeat second-hand revives only `REFUTE` past the death, which
/// takes the node hearing of a death no one else believes (at N = 500 and
/// 1,000 in the simulator, a member or a few missed a live node for good).
/// A node truly dead sends no newer heartbeat: never pinged.
const REVIVAL_PING_ROUNDS: u32 = 12;
const REVIVAL_GAP: u32 = 100;
/// Most dead nodes pinged in one round (a Swarm node's death is many).
const MAX_REVIVAL_PINGS: usize = 4;
/// A member that still finds a neighbour silent votes again every that
/// many rounds (a vote is one datagram to each of the node's other
/// neighbours, and may be lost).
const REVOTE_ROUNDS: u32 = 3;
/// What a member voted dead adds to its heartbeat when it hears of it: a
/// heartbeat second-hand brings a dead node back only if that much newer.
pub(crate) const REFUTE: u64 = 1 << 20;
/// Most voters a death carries on the wire.
const MAX_VOTERS: usize = 16;
/// Two members whose state hashes differ, where one had the other's hash
/// within that many rounds, wait for the news in flight instead of
/// comparing buckets; a difference older than that is looked for (a news
/// datagram lost, a member that missed a rumor).
const IN_FLIGHT_ROUNDS: u32 = 2;

/// A node voted dead: its heartbeat when last heard, and who voted.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Death {
    pub node: ChitchatId,
    pub heartbeat: Heartbeat,
    pub voters: Vec<SocketAddr>,
}

impl Serializable for Death {
    fn serialize(&self, buf: &mut Vec<u8>) {
        self.node.serialize(buf);
        self.heartbeat.serialize(buf);
        let voters = &self.voters[..self.voters.len().min(MAX_VOTERS)];
        (voters.len() as u8).serialize(buf);
        for voter in voters {
            voter.serialize(buf);
        }
    }

    fn serialized_len(&self) -> usize {
        self.node.serialized_len()
            + self.heartbeat.serialized_len()
            + 1
            + self
                .voters
                .iter()
                .take(MAX_VOTERS)
                .map(Serializable::serialized_len)
                .sum::<usize>()
    }
}

impl Deserializable for Death {
    fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        let node = ChitchatId::deserialize(buf)?;
        let heartbeat = Heartbeat::deserialize(buf)?;
        let len = u8::deserialize(buf)? as usize;
        if len > MAX_VOTERS {
            anyhow::bail!("a death with {len} voters (at most {MAX_VOTERS})");
        }
        let voters = (0..len)
            .map(|_| SocketAddr::deserialize(buf))
            .collect::<anyhow::Result<_>>()?;
        Ok(Death {
            node,
            heartbeat,
            voters,
        })
    }
}

/// What a V4 member keeps to judge liveness (see the module's doc).
#[derive(Default)]
pub(crate) struct Pulses {
    /// The live set the neighbours were computed for: `(set epoch, deaths
    /// epoch)`.
    computed_for: Option<(u64, u64)>,
    /// The live set (self included), as of `computed_for`.
    live: Vec<ChitchatId>,
    /// The live set sorted by place on each ring: a node's neighbours by
    /// binary search (votes ask for them, a node's at a time).
    rings: [Vec<(u64, ChitchatId)>; RINGS],
    neighbours: Vec<ChitchatId>,
    /// When each neighbour became one: a neighbour never heard is judged
    /// from then.
    assigned: HashMap<ChitchatId, Instant>,
    /// When each neighbour's last pulse that echoed came.
    last_heard: HashMap<ChitchatId, Instant>,
    /// Pulses that echoed from nodes voted dead (see `REVIVAL_PULSES`).
    evidence: HashMap<ChitchatId, VecDeque<Instant>>,
    /// The newest id known at each address.
    by_addr: HashMap<SocketAddr, ChitchatId>,
    /// The heartbeat each peer last pulsed us (what we echo).
    heard: HashMap<SocketAddr, Heartbeat>,
    /// Our heartbeat at each of the last `ECHO_ROUNDS` rounds.
    history: VecDeque<Heartbeat>,
    /// Votes against nodes not (yet) dead here: voter → when.
    votes: HashMap<ChitchatId, HashMap<SocketAddr, Instant>>,
    /// When we last voted against each node, and with how many helpers.
    voted_at: HashMap<ChitchatId, (Instant, usize)>,
    /// Nodes dead by votes, and when they died here.
    deaths: HashMap<ChitchatId, (Death, Instant)>,
    deaths_epoch: u64,
    /// The nodes of the last `DEATH_CHANGES` changes of `deaths` (each
    /// one epoch): the live set, the rings, the state hash and the live
    /// marks follow a death or a return node by node, as they follow the
    /// node set's changes — recomputed over every node, each of a tenth
    /// killed at once cost every member a pass over all nodes (at N =
    /// 600, 33,000 such passes in one trial of the simulator).
    death_changes: VecDeque<ChitchatId>,
    /// Nodes back from the dead: the heartbeat they came back with (votes
    /// against them from before it are stale), and when (their own votes
    /// count again only a vote's lifetime later: see `count_votes`).
    revived: HashMap<ChitchatId, (Heartbeat, Instant)>,
    /// When we last answered, synced with, or sent deaths to each peer.
    answered_at: HashMap<SocketAddr, Instant>,
    synced_at: HashMap<SocketAddr, Instant>,
    /// When we last sent our hashes by bucket to anyone.
    synced_any_at: Option<Instant>,
    /// Our state hashes of the last `IN_FLIGHT_ROUNDS` rounds, and each
    /// peer's from its pulses: a peer whose hash we had lately is behind
    /// us by news on its way, one that had ours lately is ahead by news on
    /// its way to us — neither is a difference to look for by buckets.
    our_hashes: VecDeque<(u64, Instant)>,
    their_hashes: HashMap<SocketAddr, VecDeque<(u64, Instant)>>,
    deaths_sent_at: HashMap<SocketAddr, Instant>,
    /// The state hash, its buckets' and their sizes, until something they
    /// cover changes: the live set (computed again whole) or one node's
    /// versions (that node's share redone, in `dirty`).
    hash: Option<StateHashes>,
    /// Nodes whose versions changed since the hash was brought up to date.
    dirty: Vec<ChitchatId>,
    /// The buckets of the nodes that were news since the server last asked.
    news_scope: Scope,
    /// Those nodes themselves, up to [`NAMED_NEWS`] (none past it: the
    /// rumor goes by bucket).
    news_nodes: BTreeSet<ChitchatId>,
    news_overflow: bool,
    /// Nodes known by name only, their keys not here yet (see
    /// `catch_up`).
    pub(crate) keyless: BTreeSet<ChitchatId>,
    /// Where the next scoped exchange starts among the buckets that differ.
    scope_cursor: usize,
    /// The `(set epoch, deaths epoch, cut off)` the failure detector's live
    /// and dead sets were last marked for.
    marked_for: Option<(u64, u64, bool)>,
    /// Indirect probes, ours and those we help with (see `probe`).
    pub(crate) probes: crate::probe::Probes,
    /// The share of our neighbours' pulses lost on the way (see `probe`:
    /// on a lossy network probes start later).
    pub(crate) loss: LossMeter,
    /// Dead nodes heard of second-hand (see `REVIVAL_PING_ROUNDS`).
    revival: HashMap<ChitchatId, Revival>,
    /// This member's own hearing, checked before it declares a death (see
    /// `hearing`).
    pub(crate) hearing: crate::hearing::Hearing,
}

/// The pings of a dead node heard of second-hand.
#[derive(Debug)]
struct Revival {
    /// Pinged until then.
    until: Option<Instant>,
    /// The next pings may start then…
    next: Instant,
    /// …and the ones after that this much later.
    gap: Duration,
}

/// How many of our neighbours' pulses are lost on the way, from the time
/// between two pulses of a neighbour in rounds: a neighbour pulses once a
/// round, so over a span the rounds that passed against the pulses heard
/// give the share lost — whatever the timing (a late pulse and the early
/// one after it, or a burst after a stall, add up to the rounds that
/// passed). A gap longer than [`LOSS_GAP`] rounds is a silence (a pause, a
/// cut, a new neighbour), not loss. Sums decay by [`LOSS_DECAY`] a pulse,
/// so the figure follows the last few hundred pulses (a few seconds).
#[derive(Debug, Default)]
pub(crate) struct LossMeter {
    /// When each neighbour's last pulse came.
    last: HashMap<SocketAddr, Instant>,
    /// Rounds that passed between pulses (decayed sum).
    rounds: f64,
    /// Pulses heard (decayed sum).
    heard: f64,
}

/// Gaps between a neighbour's pulses beyond this many rounds are
/// silences, not losses.
const LOSS_GAP: f64 = 4.5;
/// Decay of the loss meter's sums per pulse heard.
const LOSS_DECAY: f64 = 1.0 - 1.0 / 256.0;

impl LossMeter {
    /// A pulse from our neighbour at `from`, now; a round is `interval`.
    pub(crate) fn observe(&mut self, from: SocketAddr, now: Instant, interval: Duration) {
        let Some(last) = self.last.insert(from, now) else {
            return;
        };
        let gap = now.duration_since(last).as_secs_f64() / interval.as_secs_f64();
        if gap > LOSS_GAP {
            return;
        }
        self.rounds = self.rounds * LOSS_DECAY + gap;
        self.heard = self.heard * LOSS_DECAY + 1.0;
        // Former neighbours' entries go once they are silences anyway.
        if self.last.len() > 64 {
            let silence = interval.mul_f64(LOSS_GAP);
            self.last.retain(|_, at| now.duration_since(*at) <= silence);
        }
    }

    /// The share of pulses lost, 0 to 1 (0 until enough were heard).
    pub(crate) fn share(&self) -> f64 {
        if self.rounds < 50.0 {
            return 0.0;
        }
        (1.0 - self.heard / self.rounds).max(0.0)
    }
}

/// The hash of a member's state, whole and by bucket (see
/// `Chitchat::hashes`).
struct StateHashes {
    sum: u64,
    buckets: Vec<u64>,
    counts: Vec<u32>,
    /// Each live node's share: its bucket and what it adds to it.
    shares: HashMap<ChitchatId, (usize, u64)>,
}

impl StateHashes {
    fn add(&mut self, id: ChitchatId, bucket: usize, share: u64) {
        self.buckets[bucket] = self.buckets[bucket].wrapping_add(share);
        self.counts[bucket] += 1;
        self.sum = self.sum.wrapping_add(share);
        self.shares.insert(id, (bucket, share));
    }

    fn remove(&mut self, id: &ChitchatId) {
        if let Some((bucket, share)) = self.shares.remove(id) {
            self.buckets[bucket] = self.buckets[bucket].wrapping_sub(share);
            self.counts[bucket] -= 1;
            self.sum = self.sum.wrapping_sub(share);
        }
    }
}

/// A node's share of the state hash: its place and its versions (not its
/// heartbeat), mixed.
///
/// The mix matters: FNV's last steps over zero bytes are multiplications
/// only, so raw FNV shares move linearly with a version's low bit, and two
/// nodes each raising their version by one could cancel out in the sum (it
/// happened, in this module's test): two members would take themselves for
/// in agreement while they differ. `fmix64` (MurmurHash3's finaliser) is
/// not linear.
fn share_of(key: u64, state: &crate::state::NodeState) -> (usize, u64) {
    let mut h = Fnv(key);
    h.write(&state.max_version().to_le_bytes());
    h.write(&state.last_gc_version().to_le_bytes());
    (bucket_of(key), fmix64(h.0))
}

/// MurmurHash3's 64-bit finaliser: every input bit moves every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bucket of a node whose place on the first ring is `key`.
fn bucket_of(key: u64) -> usize {
    (key >> (64 - BUCKETS.trailing_zeros())) as usize
}

/// The nodes a SYN covers and its answer with it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Over {
    All,
    /// Those of the buckets in the scope.
    Buckets(Scope),
    /// Those the SYN's digest names.
    Named,
}

/// A set of buckets, a bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scope(pub [u64; BUCKETS / 64]);

impl Scope {
    /// Every bucket.
    pub(crate) const ALL: Scope = Scope([u64::MAX; BUCKETS / 64]);

    pub(crate) fn insert(&mut self, bucket: usize) {
        self.0[bucket / 64] |= 1 << (bucket % 64);
    }

    pub(crate) fn contains(&self, bucket: usize) -> bool {
        self.0[bucket / 64] & (1 << (bucket % 64)) != 0
    }

    /// No bucket.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// How many buckets.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

impl Serializable for Scope {
    fn serialize(&self, buf: &mut Vec<u8>) {
        for word in self.0 {
            word.serialize(buf);
        }
    }

    fn serialized_len(&self) -> usize {
        8 * self.0.len()
    }
}

impl Deserializable for Scope {
    fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        let mut scope = Scope::default();
        for word in &mut scope.0 {
            *word = u64::deserialize(buf)?;
        }
        Ok(scope)
    }
}

/// Whether `id`'s bucket is in `scope`.
#[cfg(test)]
pub(crate) fn in_scope(id: &ChitchatId, scope: &Scope) -> bool {
    *scope == Scope::ALL || scope.contains(bucket_of(id.ring_keys()[0]))
}

/// `true` (and notes `now`) if nothing was noted for `key` within `every`.
fn due(
    map: &mut HashMap<SocketAddr, Instant>,
    key: SocketAddr,
    now: Instant,
    every: Duration,
) -> bool {
    match map.get(&key) {
        Some(at) if now.duration_since(*at) < every => false,
        _ => {
            map.insert(key, now);
            true
        }
    }
}

/// Adds `hash` to a member's recent state hashes (when it changed) and
/// forgets those older than `window`.
fn note_hash(hashes: &mut VecDeque<(u64, Instant)>, hash: u64, now: Instant, window: Duration) {
    if hashes.back().is_none_or(|(h, _)| *h != hash) {
        hashes.push_back((hash, now));
    }
    while hashes
        .front()
        .is_some_and(|(_, at)| now.duration_since(*at) > window)
    {
        hashes.pop_front();
    }
}

/// An id's place on each ring: FNV-1a over the ring's number and the id's
/// fields, computed once when the id is made (`ChitchatId::ring_keys`).
pub(crate) fn ring_keys_of(id: &ChitchatIdFields) -> [u64; RINGS] {
    std::array::from_fn(|ring| ring_key(id, ring))
}

fn ring_key(id: &ChitchatIdFields, ring: usize) -> u64 {
    let mut hash = Fnv::default();
    hash.write(&[ring as u8]);
    hash.write(id.node_id.as_bytes());
    hash.write(&id.generation_id.to_le_bytes());
    match id.gossip_advertise_addr.ip() {
        std::net::IpAddr::V4(ip) => hash.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash.write(&ip.octets()),
    }
    hash.write(&id.gossip_advertise_addr.port().to_le_bytes());
    hash.0
}

impl Pulses {
    /// Our pulse to `id`: `state_hash`, `heartbeat`, and the last heartbeat
    /// we heard from it.
    pub(crate) fn pulse_to(
        &self,
        id: &ChitchatId,
        state_hash: u64,
        heartbeat: Heartbeat,
    ) -> (SocketAddr, ChitchatMessage) {
        let addr = id.gossip_advertise_addr;
        let echo = self.heard.get(&addr).copied().unwrap_or(Heartbeat(0));
        let pulse = ChitchatMessage::Pulse {
            state_hash,
            heartbeat,
            echo,
        };
        (addr, pulse)
    }

    /// The dead nodes to ping this round (see `REVIVAL_PING_ROUNDS`).
    fn revival_pings(&mut self, now: Instant, round: Duration) -> Vec<ChitchatId> {
        let Self {
            deaths, revival, ..
        } = self;
        revival.retain(|id, _| deaths.contains_key(id));
        let mut out = Vec::new();
        for (id, r) in revival.iter_mut() {
            if out.len() >= MAX_REVIVAL_PINGS {
                break;
            }
            match r.until {
                Some(end) if now < end => out.push(id.clone()),
                Some(_) => r.until = None,
                None => {}
            }
        }
        for (id, r) in revival.iter_mut() {
            if out.len() >= MAX_REVIVAL_PINGS {
                break;
            }
            if r.until.is_none() && now >= r.next {
                r.until = Some(now + round * REVIVAL_PING_ROUNDS);
                r.next = now + r.gap;
                r.gap = (r.gap * 2).min(round * REVIVAL_GAP * 8);
                out.push(id.clone());
            }
        }
        out
    }

    /// A newer heartbeat of `id`, dead here, came second-hand: ping it
    /// (see `REVIVAL_PING_ROUNDS`).
    fn heard_of_dead(&mut self, id: &ChitchatId, now: Instant, round: Duration) {
        self.revival.entry(id.clone()).or_insert_with(|| Revival {
            until: None,
            next: now,
            gap: round * REVIVAL_GAP,
        });
    }

    /// Whether this member suspects `id` itself: it probes it, or holds its
    /// death. (Not votes from others: a deaf node's members vote against
    /// healthy ones, and a hearing check that left those out would ask
    /// the deaf node's members alone.)
    pub(crate) fn suspects(&self, id: &ChitchatId) -> bool {
        self.probes.probing(id) || self.hearing.doubts(id)
    }

    /// Whether `id` is one of our neighbours.
    pub(crate) fn is_neighbour(&self, id: &ChitchatId) -> bool {
        self.neighbours.contains(id)
    }

    /// The live set (self included).
    pub(crate) fn live(&self) -> &[ChitchatId] {
        &self.live
    }

    /// This member's neighbours.
    pub(crate) fn own_neighbours(&self) -> &[ChitchatId] {
        &self.neighbours
    }

    /// `id` was dead before V4 (see `upgrade`): dead here, with no voters.
    pub(crate) fn seed_death(&mut self, id: ChitchatId, heartbeat: Heartbeat, now: Instant) {
        let death = Death {
            node: id.clone(),
            heartbeat,
            voters: Vec::new(),
        };
        self.deaths.insert(id.clone(), (death, now));
        self.death_changed(id);
    }

    /// `id` died here or came back: one epoch more, journaled.
    fn death_changed(&mut self, id: ChitchatId) {
        self.deaths_epoch += 1;
        self.death_changes.push_back(id);
        if self.death_changes.len() > DEATH_CHANGES {
            self.death_changes.pop_front();
        }
    }

    /// The nodes whose deaths changed since `epoch`, if all are journaled.
    fn death_changes_since(&self, epoch: u64) -> Option<Vec<ChitchatId>> {
        let missing = self.deaths_epoch.checked_sub(epoch)?;
        if missing > self.death_changes.len() as u64 {
            return None;
        }
        let skip = self.death_changes.len() - missing as usize;
        Some(self.death_changes.iter().skip(skip).cloned().collect())
    }

    /// `id`'s death changed (`known`: it is still in the node set): on the
    /// live set and the rings if it is known and not dead, off them if not.
    fn death_toggled(&mut self, id: &ChitchatId, known: bool) {
        let live = known && !self.deaths.contains_key(id);
        let on_rings = self.rings[0]
            .binary_search(&(id.ring_keys()[0], id.clone()))
            .is_ok();
        if live && !on_rings {
            self.add_live(id);
        } else if !live && on_rings {
            self.remove_live(id);
        }
    }

    /// `id` on the live set and the rings, its share of the hash redone.
    fn add_live(&mut self, id: &ChitchatId) {
        self.live.push(id.clone());
        for (ring, &key) in id.ring_keys().iter().enumerate() {
            let place = (key, id.clone());
            let r = &mut self.rings[ring];
            if let Err(at) = r.binary_search(&place) {
                r.insert(at, place);
            }
        }
        self.touch_node(id);
    }

    /// `id` off the live set and the rings, its share of the hash redone.
    fn remove_live(&mut self, id: &ChitchatId) {
        if let Some(at) = self.live.iter().position(|live| live == id) {
            self.live.swap_remove(at);
        }
        for (ring, &key) in id.ring_keys().iter().enumerate() {
            let place = (key, id.clone());
            let r = &mut self.rings[ring];
            if let Ok(at) = r.binary_search(&place) {
                r.remove(at);
            }
        }
        self.touch_node(id);
    }

    /// The node's death, if it died here.
    pub(crate) fn death(&self, id: &ChitchatId) -> Option<&Death> {
        self.deaths.get(id).map(|(death, _)| death)
    }

    /// The state hash changes: recompute on next use.
    pub(crate) fn touch(&mut self) {
        self.hash = None;
        self.dirty.clear();
    }

    /// `id`'s versions changed: its share is redone on next use.
    pub(crate) fn touch_node(&mut self, id: &ChitchatId) {
        if self.hash.is_some() {
            self.dirty.push(id.clone());
        }
    }

    /// `id` is news (new here, back, newer versions): it goes in the
    /// rumor, and its bucket.
    pub(crate) fn note_news(&mut self, id: &ChitchatId) {
        let keys = id.ring_keys();
        self.news_scope.insert(bucket_of(keys[0]));
        if self.news_nodes.len() < NAMED_NEWS {
            self.news_nodes.insert(id.clone());
        } else if !self.news_nodes.contains(id) {
            self.news_overflow = true;
        }
    }

    /// The live set, the rings and the addresses from the whole node set
    /// (`nodes`, in order); the state hash is recomputed on next use.
    fn recompute_live<'a>(&mut self, nodes: impl Iterator<Item = &'a ChitchatId>) {
        let nodes: Vec<ChitchatId> = nodes.cloned().collect();
        self.by_addr.clear();
        for id in &nodes {
            self.note_addr(id);
        }
        self.forget_unknown_addrs();
        let known: HashSet<&ChitchatId> = nodes.iter().collect();
        self.probes.retain_known(|id| known.contains(id));
        self.live = nodes
            .into_iter()
            .filter(|id| !self.deaths.contains_key(id))
            .collect();
        let mut rings: [Vec<(u64, ChitchatId)>; RINGS] =
            std::array::from_fn(|_| Vec::with_capacity(self.live.len()));
        for id in &self.live {
            for (ring, &key) in id.ring_keys().iter().enumerate() {
                rings[ring].push((key, id.clone()));
            }
        }
        for ring in &mut rings {
            ring.sort_unstable();
        }
        self.rings = rings;
        self.touch();
    }

    /// `id` joined the node set: in the live set and on the rings unless
    /// it died here, and its share of the state hash added.
    fn node_added(&mut self, id: &ChitchatId) {
        self.note_addr(id);
        if self.deaths.contains_key(id) {
            return;
        }
        self.add_live(id);
    }

    /// `id` left the node set (`nodes`, what is left of it).
    fn node_removed<'a>(&mut self, id: &ChitchatId, nodes: impl Iterator<Item = &'a ChitchatId>) {
        let addr = id.gossip_advertise_addr;
        if self.by_addr.get(&addr) == Some(id) {
            // Another generation at the same address, if one is known.
            self.by_addr.remove(&addr);
            for other in nodes.filter(|other| other.gossip_advertise_addr == addr) {
                self.note_addr(other);
            }
            if !self.by_addr.contains_key(&addr) {
                self.forget_unknown_addrs();
            }
        }
        self.probes.retain_known(|known| known != id);
        self.remove_live(id);
    }

    /// `id` is the newest known at its address unless a later generation is.
    fn note_addr(&mut self, id: &ChitchatId) {
        let newest = self
            .by_addr
            .get(&id.gossip_advertise_addr)
            .is_none_or(|known| known.generation_id <= id.generation_id);
        if newest {
            self.by_addr.insert(id.gossip_advertise_addr, id.clone());
        }
    }

    /// What is kept by address, for addresses no node has any more.
    fn forget_unknown_addrs(&mut self) {
        let known = &self.by_addr;
        self.heard.retain(|addr, _| known.contains_key(addr));
        self.answered_at.retain(|addr, _| known.contains_key(addr));
        self.synced_at.retain(|addr, _| known.contains_key(addr));
        self.their_hashes.retain(|addr, _| known.contains_key(addr));
        self.deaths_sent_at
            .retain(|addr, _| known.contains_key(addr));
    }

    /// `of`'s neighbours among `self.live` (it need not be live itself): on
    /// each ring, the next live node after its place and the one before
    /// (wrapping around).
    pub(crate) fn neighbours_of(&mut self, of: &ChitchatId) -> Vec<ChitchatId> {
        let mine = of.ring_keys();
        let mut out: Vec<ChitchatId> = Vec::with_capacity(RINGS * 2);
        for (ring, &me) in mine.iter().enumerate() {
            let r = &self.rings[ring];
            let len = r.len();
            if len == 0 {
                continue;
            }
            let place = (me, of);
            let after = r.partition_point(|(k, id)| (*k, id) <= place);
            let at = r.partition_point(|(k, id)| (*k, id) < place);
            let succ = &r[after % len].1;
            let mut before = (at + len - 1) % len;
            if r[before].1 == *of {
                before = (before + len - 1) % len;
            }
            let pred = &r[before].1;
            for id in [succ, pred] {
                if id != of && !out.contains(id) {
                    out.push(id.clone());
                }
            }
        }
        out
    }
}

impl Chitchat {
    /// The death this member holds for `id` (V4): the heartbeat it died
    /// with, its voters, and how long ago — for diagnostics (the
    /// simulator explains differing state hashes with it).
    #[doc(hidden)]
    pub fn death_record(&self, id: &ChitchatId) -> Option<(Heartbeat, usize, Duration)> {
        let (death, at) = self.pulses.as_ref()?.deaths.get(id)?;
        Some((death.heartbeat, death.voters.len(), at.elapsed()))
    }

    /// The heartbeat `addr` last pulsed us (what a pulse to it echoes).
    pub(crate) fn heard_from(&self, addr: SocketAddr) -> Heartbeat {
        self.pulses
            .as_ref()
            .and_then(|p| p.heard.get(&addr).copied())
            .unwrap_or(Heartbeat(0))
    }

    /// Recomputes the live set and the neighbours when the node set or the
    /// deaths changed.
    fn refresh_neighbours(&mut self) {
        let signature = (
            self.cluster_state.set_epoch(),
            self.pulses.as_ref().map_or(0, |p| p.deaths_epoch),
        );
        if self
            .pulses
            .as_ref()
            .is_none_or(|p| p.computed_for == Some(signature))
        {
            return;
        }
        let me = self.config.chitchat_id.clone();
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        // The node set's and the deaths' changes since the last time, one
        // by one, when they are all remembered (a cluster forming changes
        // the set once per join, a tenth killed at once the deaths once per
        // death: recomputing over every node each time is N² per member);
        // else the whole set again. Each change is judged by what holds
        // now (a node joined and then died is added, then taken off).
        let since = p.computed_for;
        p.computed_for = Some(signature);
        // (A block: the journal's iterator borrows the cluster state.)
        {
            let changes = since.and_then(|(set, deaths)| {
                Some((
                    self.cluster_state.set_changes_since(set)?,
                    p.death_changes_since(deaths)?,
                ))
            });
            match changes {
                Some((set_changes, death_changes)) => {
                    for (id, added) in set_changes {
                        if added {
                            p.node_added(id);
                        } else {
                            p.node_removed(id, self.cluster_state.nodes());
                        }
                    }
                    for id in death_changes {
                        let known = self.cluster_state.node_state(&id).is_some();
                        p.death_toggled(&id, known);
                    }
                }
                None => p.recompute_live(self.cluster_state.nodes()),
            }
        }
        let neighbours = p.neighbours_of(&me);
        let now = Instant::now();
        p.assigned.retain(|id, _| neighbours.contains(id));
        p.last_heard.retain(|id, _| neighbours.contains(id));
        let deaths = &p.deaths;
        p.evidence.retain(|id, _| deaths.contains_key(id));
        let mut new = Vec::new();
        for id in &neighbours {
            if !p.assigned.contains_key(id) {
                p.assigned.insert(id.clone(), now);
                new.push(id.clone());
            }
        }
        p.neighbours = neighbours;
        // A new neighbour is judged from now: pulses heard from it when it
        // was one before say nothing of the gap since.
        for id in new {
            self.failure_detector.forget(&id);
        }
        if !self.bridging() {
            self.keep_neighbours_windows();
        }
    }

    /// Drops the failure detector's windows of every node but our
    /// neighbours (see the failure detector's `retain_windows`).
    pub(crate) fn keep_neighbours_windows(&mut self) {
        let Some(p) = self.pulses.as_ref() else {
            return;
        };
        self.failure_detector
            .retain_windows(|id| p.neighbours.contains(id));
    }

    /// The hash of the state — each live member's id and versions (not its
    /// heartbeat), order-free — with its buckets' (they sum to it) and how
    /// many nodes each holds; computed again only once something it covers
    /// changed.
    fn hashes(&mut self) -> Option<&StateHashes> {
        self.refresh_neighbours();
        let p = self.pulses.as_mut()?;
        match &mut p.hash {
            None => {
                let mut hashes = StateHashes {
                    sum: 0,
                    buckets: vec![0u64; BUCKETS],
                    counts: vec![0u32; BUCKETS],
                    shares: HashMap::with_capacity(p.live.len()),
                };
                for id in &p.live {
                    let Some(state) = self.cluster_state.node_state(id) else {
                        continue;
                    };
                    let key = id.ring_keys()[0];
                    let (bucket, share) = share_of(key, state);
                    hashes.add(id.clone(), bucket, share);
                }
                p.hash = Some(hashes);
                p.dirty.clear();
            }
            // Only the nodes whose versions changed: their shares redone
            // (the live set is the same, or refresh_neighbours would have
            // dropped the hash).
            Some(hashes) => {
                for id in p.dirty.drain(..) {
                    hashes.remove(&id);
                    if p.deaths.contains_key(&id) {
                        continue;
                    }
                    let Some(state) = self.cluster_state.node_state(&id) else {
                        continue;
                    };
                    let key = id.ring_keys()[0];
                    let (bucket, share) = share_of(key, state);
                    hashes.add(id, bucket, share);
                }
            }
        }
        p.hash.as_ref()
    }

    /// The hash of the state (see [`Self::hashes`]).
    pub fn state_hash(&mut self) -> u64 {
        self.hashes().map_or(0, |h| h.sum)
    }

    /// Our bucket hashes, as a [`ChitchatMessage::Buckets`] carries them
    /// (32 bits each: a bucket is a few nodes).
    pub(crate) fn bucket_hashes(&mut self) -> Vec<u32> {
        self.hashes()
            .map(|h| h.buckets.iter().map(|b| *b as u32).collect())
            .unwrap_or_default()
    }

    /// This member's own heartbeat.
    pub(crate) fn own_heartbeat(&self) -> Heartbeat {
        self.cluster_state
            .node_state(&self.config.chitchat_id)
            .map_or(Heartbeat(0), |s| s.heartbeat())
    }

    /// Bucket hashes from `from`, whose state hash differs from ours: a SYN
    /// over buckets that differ, as many as fit [`SCOPE_NODES`].
    pub(crate) fn on_buckets(&mut self, from: SocketAddr, theirs: &[u32]) {
        // The buckets that differ, with their sizes here.
        let differ: Vec<(usize, u32)> = match self.hashes() {
            Some(ours) => ours
                .buckets
                .iter()
                .zip(theirs)
                .enumerate()
                .filter(|(_, (a, b))| **a as u32 != **b)
                .map(|(i, _)| (i, ours.counts[i]))
                .collect(),
            None => return,
        };
        if differ.is_empty() {
            return;
        }
        // From a point that moves, so that every bucket gets its turn.
        let start = self.pulses.as_mut().map_or(0, |p| {
            p.scope_cursor = p.scope_cursor.wrapping_add(1);
            p.scope_cursor
        });
        let mut scope = Scope::default();
        let mut named = 0;
        for i in 0..differ.len() {
            let (bucket, count) = differ[(start + i) % differ.len()];
            if !scope.is_empty() && named + count > SCOPE_NODES {
                break;
            }
            named += count;
            scope.insert(bucket);
        }
        let syn = self.scoped_syn(scope);
        self.outbox.push((from, syn));
    }

    /// The live nodes of the buckets in `scope`, found on the first ring
    /// (sorted by the key whose top bits are the bucket): a scoped exchange
    /// costs its few nodes, not a pass over all of them. `None` for every
    /// bucket, or before V4.
    pub(crate) fn scope_ids(&mut self, scope: &Scope) -> Option<Vec<ChitchatId>> {
        if *scope == Scope::ALL {
            return None;
        }
        self.refresh_neighbours();
        let p = self.pulses.as_ref()?;
        let ring = &p.rings[0];
        let shift = 64 - BUCKETS.trailing_zeros();
        let mut ids = Vec::new();
        for bucket in (0..BUCKETS).filter(|b| scope.contains(*b)) {
            let first = (bucket as u64) << shift;
            let start = ring.partition_point(|(key, _)| *key < first);
            ids.extend(
                ring[start..]
                    .iter()
                    .take_while(|(key, _)| bucket_of(*key) == bucket)
                    .map(|(_, id)| id.clone()),
            );
        }
        Some(ids)
    }

    /// A SYN over the nodes of the buckets in `scope`.
    pub(crate) fn scoped_syn(&mut self, scope: Scope) -> ChitchatMessage {
        ChitchatMessage::SynScoped {
            cluster_id: self.config.cluster_id.clone(),
            scope,
            digest: self.scoped_digest(&scope),
        }
    }

    /// The digest of the nodes of the buckets in `scope`.
    fn scoped_digest(&mut self, scope: &Scope) -> crate::digest::Digest {
        let ids = self.scope_ids(scope);
        let out: HashSet<&ChitchatId> = self.scheduled_for_deletion_nodes().collect();
        self.digest_over(ids.as_deref(), &out)
    }

    /// The buckets of the news since the last call (all, if the news named
    /// no node).
    #[cfg(test)]
    pub(crate) fn take_news_scope(&mut self) -> Scope {
        self.take_news_items().0
    }

    /// The news since the last call: its buckets (all, if it named no
    /// node), and its nodes (none past [`NAMED_NEWS`]).
    fn take_news_items(&mut self) -> (Scope, Vec<ChitchatId>) {
        let Some(p) = self.pulses.as_mut() else {
            return (Scope::ALL, Vec::new());
        };
        let nodes = std::mem::take(&mut p.news_nodes);
        let overflow = std::mem::take(&mut p.news_overflow);
        if p.news_scope.is_empty() {
            return (Scope::ALL, Vec::new());
        }
        let scope = std::mem::take(&mut p.news_scope);
        let nodes = if overflow {
            Vec::new()
        } else {
            nodes.into_iter().collect()
        };
        (scope, nodes)
    }

    /// The rumor of the news since the last call, for each of `peers`: a
    /// `SynNamed` over the news' nodes to a member whose feature level
    /// takes it, a `SynScoped` over their buckets to others (each message
    /// built once, if needed). A rumor is one per news burst per member:
    /// by node, it costs the news, where by bucket it cost every node of
    /// the buckets the news fell in (at N = 5,000, hundreds a rumor). A
    /// peer whose keys have not reached us yet (its level unknown: a
    /// newcomer) is taken to have the lowest level among the live members
    /// (see `assumed_level`): a member of an earlier release cannot read
    /// `SynNamed` (it drops the datagram as undecodable).
    pub(crate) fn news_rumors(
        &mut self,
        peers: &[SocketAddr],
    ) -> Vec<(SocketAddr, ChitchatMessage)> {
        let (scope, nodes) = self.take_news_items();
        let out: HashSet<&ChitchatId> = self.scheduled_for_deletion_nodes().collect();
        let named =
            (!nodes.is_empty()).then(|| self.cluster_state.compute_digest_over(&nodes, &out));
        let mut scoped = None;
        let mut rumors = Vec::with_capacity(peers.len());
        let assumed = self.assumed_level();
        for &peer in peers {
            let level = self.level_of(peer).unwrap_or(assumed);
            let cluster_id = self.config.cluster_id.clone();
            let message = match &named {
                Some(digest) if level >= crate::NAMED_RUMORS_LEVEL => ChitchatMessage::SynNamed {
                    cluster_id,
                    digest: digest.clone(),
                },
                _ => ChitchatMessage::SynScoped {
                    cluster_id,
                    scope,
                    digest: scoped
                        .get_or_insert_with(|| self.scoped_digest(&scope))
                        .clone(),
                },
            };
            rumors.push((peer, message));
        }
        rumors
    }

    /// `count` random live members' addresses (not us, not `except`),
    /// drawn from the first ring without walking the live set; `None`
    /// before V4.
    pub(crate) fn sample_live_addrs<R: rand::Rng + ?Sized>(
        &mut self,
        rng: &mut R,
        count: usize,
        except: Option<SocketAddr>,
    ) -> Option<Vec<SocketAddr>> {
        self.refresh_neighbours();
        let me = self.config.chitchat_id.gossip_advertise_addr;
        let ring = &self.pulses.as_ref()?.rings[0];
        let draw = (count + 2).min(ring.len());
        Some(
            rand::seq::index::sample(rng, ring.len(), draw)
                .into_iter()
                .map(|i| ring[i].1.gossip_advertise_addr)
                .filter(|addr| *addr != me && Some(*addr) != except)
                .take(count)
                .collect(),
        )
    }

    /// The feature level of the member at `addr` (the value of its first
    /// key, [`crate::PROTOCOL_KEY`]), if its keys have reached us.
    fn level_of(&self, addr: SocketAddr) -> Option<u8> {
        let id = self.pulses.as_ref()?.by_addr.get(&addr)?;
        let state = self.cluster_state.node_state(id)?;
        crate::upgrade::level(state.get(crate::PROTOCOL_KEY))
    }

    /// Whether the member at `addr` reads `SynNamed` (its keys are here
    /// and say so).
    fn reads_named(&self, addr: SocketAddr) -> bool {
        self.level_of(addr)
            .is_some_and(|level| level >= crate::NAMED_RUMORS_LEVEL)
    }

    /// A round: our pulse to each neighbour.
    pub(crate) fn pulse_round(&mut self) -> Vec<(SocketAddr, ChitchatMessage)> {
        let heartbeat = self.own_heartbeat();
        let state_hash = self.state_hash();
        let Some(p) = self.pulses.as_mut() else {
            return Vec::new();
        };
        p.history.push_back(heartbeat);
        while p.history.len() > ECHO_ROUNDS {
            p.history.pop_front();
        }
        let now = Instant::now();
        let window = self.config.gossip_interval * IN_FLIGHT_ROUNDS;
        note_hash(&mut p.our_hashes, state_hash, now, window);
        // Our neighbours, and the nodes others asked us to probe.
        let mut pings = p
            .probes
            .pings(&p.neighbours, now, self.config.gossip_interval);
        for id in p.revival_pings(now, self.config.gossip_interval) {
            if !pings.contains(&id) {
                pings.push(id);
            }
        }
        let mut out: Vec<_> = p
            .neighbours
            .iter()
            .chain(pings.iter().filter(|id| !p.neighbours.contains(id)))
            .map(|id| p.pulse_to(id, state_hash, heartbeat))
            .collect();
        out.extend(self.silences(now));
        out.extend(self.catch_up());
        out
    }

    /// SYNs naming nodes this member knows by name only (from a digest:
    /// a newcomer learns every name in its first exchange, and the keys of
    /// those that fit in one datagram), 2 to [`CATCH_UP_NODES`] to a peer
    /// (fewer when few are missing), to up to [`CATCH_UP_PULLS`] peers a
    /// round (neighbours first, then random live members whose keys are
    /// here and say they read `SynNamed`): each answers with their keys in
    /// a datagram. Before, a newcomer of a forming cluster was left to the
    /// rumors and the buckets' comparison for the rest — at N = 2,000
    /// members' states still differed 20 s after every view was whole; and
    /// at 16 nodes to each of three peers a round, drawn from every live
    /// member, a new member of a cluster of 1,000 held every record only
    /// after 5 s (docs/membership.md).
    fn catch_up(&mut self) -> Vec<(SocketAddr, ChitchatMessage)> {
        let Some(p) = self.pulses.as_mut() else {
            return Vec::new();
        };
        if p.keyless.is_empty() {
            return Vec::new();
        }
        let mut keyless = std::mem::take(&mut p.keyless);
        keyless.retain(|id| {
            self.cluster_state
                .node_state(id)
                .is_some_and(|state| state.max_version() == 0)
        });
        // Spread over as many peers as we may ask: the last few missing
        // take a round too, not one per few nodes.
        let per_pull = keyless
            .len()
            .div_ceil(CATCH_UP_PULLS)
            .clamp(2, CATCH_UP_NODES);
        let ids: Vec<ChitchatId> = keyless
            .iter()
            .take(per_pull * CATCH_UP_PULLS)
            .cloned()
            .collect();
        let mut neighbours: Vec<SocketAddr> = Vec::new();
        if let Some(p) = self.pulses.as_mut() {
            p.keyless = keyless;
            neighbours = p
                .neighbours
                .iter()
                .map(|id| id.gossip_advertise_addr)
                .collect();
        }
        // Neighbours first, those whose keys say they read `SynNamed`.
        let pulls = ids.len().div_ceil(per_pull);
        let mut peers: Vec<SocketAddr> = neighbours
            .into_iter()
            .filter(|peer| self.reads_named(*peer))
            .collect();
        // Then others at random among the live members whose keys are
        // here: a newcomer's neighbours may be newcomers too, and early on
        // it holds the keys of a datagram's worth of members only — drawn
        // from every live member, most pulls would find no peer to ask.
        if peers.len() < pulls {
            self.refresh_neighbours();
            for addr in self.keyed_peers(2 * pulls) {
                if !peers.contains(&addr) {
                    peers.push(addr);
                }
            }
        }
        peers.truncate(pulls);
        let out: HashSet<&ChitchatId> = self.scheduled_for_deletion_nodes().collect();
        peers
            .iter()
            .zip(ids.chunks(per_pull))
            .map(|(peer, ids)| {
                let digest = self.cluster_state.compute_digest_over(ids, &out);
                let message = ChitchatMessage::SynNamed {
                    cluster_id: self.config.cluster_id.clone(),
                    digest,
                };
                (*peer, message)
            })
            .collect()
    }

    /// Up to `want` live members at random (not us) whose keys are here
    /// and say they read `SynNamed`. Random draws from the ring first:
    /// once most keys are here, a few draws find them; a walk of the
    /// whole ring only when the draws found too few (early in a catch-up,
    /// when we hold the keys of a datagram's worth of members). The walk
    /// every round was a tenth of the simulator's time forming 2,000.
    fn keyed_peers(&self, want: usize) -> Vec<SocketAddr> {
        let Some(p) = self.pulses.as_ref() else {
            return Vec::new();
        };
        let me = self.config.chitchat_id.gossip_advertise_addr;
        let ring = &p.rings[0];
        let mut rng = rand::rng();
        let mut found: Vec<SocketAddr> = Vec::with_capacity(want);
        if ring.is_empty() || want == 0 {
            return found;
        }
        for _ in 0..KEYED_DRAWS * want {
            let addr = ring[rand::RngExt::random_range(&mut rng, ..ring.len())]
                .1
                .gossip_advertise_addr;
            if addr != me && !found.contains(&addr) && self.reads_named(addr) {
                found.push(addr);
                if found.len() == want {
                    return found;
                }
            }
        }
        let keyed: Vec<SocketAddr> = ring
            .iter()
            .map(|(_, id)| id.gossip_advertise_addr)
            .filter(|addr| *addr != me && self.reads_named(*addr))
            .collect();
        rand::seq::IndexedRandom::sample(&keyed[..], &mut rng, want)
            .copied()
            .collect()
    }

    /// A pulse from `from`.
    pub(crate) fn on_pulse(
        &mut self,
        from: SocketAddr,
        their_hash: u64,
        heartbeat: Heartbeat,
        echo: Heartbeat,
    ) {
        let now = Instant::now();
        let interval = self.config.gossip_interval;
        let me = self.config.chitchat_id.gossip_advertise_addr;
        let our_hash = self.state_hash();
        let our_heartbeat = self.own_heartbeat();
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        p.heard.insert(from, heartbeat);
        let receives = echo.0 > 0 && p.history.front().is_some_and(|oldest| echo >= *oldest);
        let id = p.by_addr.get(&from).cloned();
        let neighbour = id.as_ref().is_some_and(|id| p.neighbours.contains(id));
        if neighbour {
            p.loss.observe(from, now, interval);
        }
        // A node we ping for a probe is not answered: we ping it anyway.
        // Others are answered at most every third of a round (a helper
        // pings every half round; the rest is room for jitter).
        let watched = id.as_ref().is_some_and(|id| p.probes.watching(id));
        let mut out = Vec::new();
        if !neighbour && !watched && due(&mut p.answered_at, from, now, interval / 3) {
            out.push(ChitchatMessage::Pulse {
                state_hash: our_hash,
                heartbeat: our_heartbeat,
                echo: heartbeat,
            });
        }
        let mut sync = false;
        let mut deaths = Vec::new();
        let window = interval * IN_FLIGHT_ROUNDS;
        note_hash(
            p.their_hashes.entry(from).or_default(),
            their_hash,
            now,
            window,
        );
        if their_hash != our_hash {
            let lately = |hashes: &VecDeque<(u64, Instant)>, hash: u64| {
                hashes
                    .iter()
                    .any(|(h, at)| *h == hash && now.duration_since(*at) <= window)
            };
            // News on its way, one way or the other: no buckets for it.
            let in_flight = lately(&p.our_hashes, their_hash)
                || p.their_hashes
                    .get(&from)
                    .is_some_and(|theirs| lately(theirs, our_hash));
            // And at most once a round in all: while a cluster forms (a
            // join every few milliseconds) hashes differ at every pulse,
            // each peer's in its own way, and every member compared
            // buckets with each peer every other round — half the bytes of
            // forming 600 members, for what the rumors were bringing.
            let round_due = p
                .synced_any_at
                .is_none_or(|at| now.duration_since(at) >= interval);
            if !in_flight
                && round_due
                && (!neighbour || me < from)
                && due(&mut p.synced_at, from, now, interval * 2)
            {
                p.synced_any_at = Some(now);
                sync = true;
            }
            let recent: Vec<Death> = p
                .deaths
                .values()
                .filter(|(_, at)| now.duration_since(*at) < interval * 100)
                .map(|(death, _)| death.clone())
                .collect();
            if !recent.is_empty() && due(&mut p.deaths_sent_at, from, now, interval * 5) {
                deaths = recent;
            }
        }
        // A node voted dead proves it is back by pulsing steadily, not once.
        let counts = match &id {
            Some(id) if receives && p.deaths.contains_key(id) => {
                let seen = p.evidence.entry(id.clone()).or_default();
                seen.push_back(now);
                while seen
                    .front()
                    .is_some_and(|at| now.duration_since(*at) > interval * REVIVAL_ROUNDS)
                {
                    seen.pop_front();
                }
                seen.len() >= REVIVAL_PULSES
            }
            _ => receives,
        };
        if counts {
            self.answered.insert(from, now);
            if let Some(id) = &id {
                if neighbour {
                    self.failure_detector.report_heartbeat(id);
                    p.last_heard.insert(id.clone(), now);
                }
                self.probe_heard(id, neighbour, echo, now);
                self.note_heartbeat(id, heartbeat, true);
            }
        }
        if sync {
            let hashes = self.bucket_hashes();
            out.push(ChitchatMessage::Buckets { hashes });
        }
        if !deaths.is_empty() {
            out.push(ChitchatMessage::Verdict {
                cluster_id: self.config.cluster_id.clone(),
                deaths,
            });
        }
        self.outbox.extend(out.into_iter().map(|m| (from, m)));
    }

    /// A heartbeat of `id` heard first- or second-hand: newer than the one it
    /// died with, it is back.
    ///
    /// `direct`: from the node's own pulses (that echoed, steadily): any
    /// heartbeat newer than its death's. Second-hand (a digest): only one
    /// the node raised by [`REFUTE`] on hearing of its death — a heartbeat
    /// a little newer than the voters last saw may be from before it died.
    pub(crate) fn note_heartbeat(&mut self, id: &ChitchatId, heartbeat: Heartbeat, direct: bool) {
        let Some(state) = self.cluster_state.node_state_mut(id) else {
            return;
        };
        if !state.try_set_heartbeat(heartbeat) {
            return;
        }
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let back = |death: &Death| {
            if direct {
                heartbeat > death.heartbeat
            } else {
                heartbeat.0 >= death.heartbeat.0.saturating_add(REFUTE)
            }
        };
        let Some((death, _)) = p.deaths.get(id) else {
            return;
        };
        if !back(death) {
            if heartbeat > death.heartbeat {
                p.heard_of_dead(id, Instant::now(), self.config.gossip_interval);
            }
            return;
        }
        p.deaths.remove(id);
        p.votes.remove(id);
        p.revived.insert(id.clone(), (heartbeat, Instant::now()));
        p.note_news(id);
        p.death_changed(id.clone());
        self.news = true;
    }

    /// Votes received.
    pub(crate) fn on_verdict(&mut self, deaths: Vec<Death>) {
        // Voted dead ourselves (we stalled, or our packets were lost): we
        // refute it, stalled or not, with a heartbeat raised by `REFUTE`,
        // which brings us back in every view it reaches.
        let me = self.config.chitchat_id.clone();
        if let Some(death) = deaths.iter().find(|d| d.node == me) {
            let state = self.cluster_state.node_state_mut_or_init(&me);
            let raised = state
                .heartbeat()
                .0
                .max(death.heartbeat.0)
                .saturating_add(REFUTE);
            if state.heartbeat().0 < death.heartbeat.0.saturating_add(REFUTE) {
                state.try_set_heartbeat(Heartbeat(raised));
                debug!(heartbeat = raised, "voted dead: refuted");
            }
        }
        if self.stalled {
            return;
        }
        let now = Instant::now();
        for death in deaths {
            if death.node == self.config.chitchat_id {
                continue;
            }
            if self.cluster_state.node_state(&death.node).is_none() {
                continue;
            }
            let Some(p) = self.pulses.as_mut() else {
                return;
            };
            // Dead here already, or a vote from before it came back.
            let stale = p
                .revived
                .get(&death.node)
                .is_some_and(|(back, _)| death.heartbeat < *back);
            if p.deaths.contains_key(&death.node) || stale {
                continue;
            }
            let votes = p.votes.entry(death.node.clone()).or_default();
            for voter in &death.voters {
                votes.insert(*voter, now);
            }
            self.count_votes(&death.node, death.heartbeat);
        }
    }

    /// Takes `node` as dead if enough fresh votes say so.
    fn count_votes(&mut self, node: &ChitchatId, heartbeat: Heartbeat) {
        let ttl = self.config.gossip_interval * 30;
        let now = Instant::now();
        let known = self
            .cluster_state
            .node_state(node)
            .map_or(heartbeat, |s| s.heartbeat());
        self.refresh_neighbours();
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let Some(votes) = p.votes.get_mut(node) else {
            p.hearing.retain_doubts(|id| id != node);
            return;
        };
        votes.retain(|_, at| now.duration_since(*at) < ttl);
        // Only live members' votes count: one taken for dead (that may have
        // been paused, and hears no one) judges no one here — nor, for a
        // vote's lifetime, one back from the dead: what it voted while cut
        // off (every member on the other side of the cut dead) reaches us
        // the moment the cut heals.
        let me = self.config.chitchat_id.gossip_advertise_addr;
        let voters: Vec<SocketAddr> = votes
            .keys()
            .copied()
            .filter(|voter| {
                *voter == me
                    || p.by_addr.get(voter).is_some_and(|id| {
                        !p.deaths.contains_key(id)
                            && p.revived
                                .get(id)
                                .is_none_or(|(_, at)| now.duration_since(*at) >= ttl)
                    })
            })
            .collect();
        let need = QUORUM.min(p.neighbours_of(node).len()).max(1);
        if voters.len() < need {
            return;
        }
        // First-hand evidence over hearsay: a node whose pulses echo ours
        // steadily is alive, whoever voted (the voters may be deaf).
        let round = self.config.gossip_interval;
        if p.probes.steady(node, now, round) {
            debug!(node = %node.node_id, "votes against a node heard steadily: ignored");
            p.hearing.retain_doubts(|id| id != node);
            return;
        }
        // Where this member would make the death (its neighbour, or a
        // voter), it first makes sure it is not the deaf one (`hearing`).
        let originates = p.is_neighbour(node) || voters.contains(&me);
        if originates && !self.hears_enough_to_declare(node, now) {
            return;
        }
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        debug!(node = %node.node_id, voters = voters.len(), need, "dead by votes");
        let death = Death {
            node: node.clone(),
            heartbeat: heartbeat.max(known),
            voters,
        };
        p.votes.remove(node);
        p.deaths.insert(node.clone(), (death, now));
        p.death_changed(node.clone());
        self.failure_detector.mark_dead(node);
        self.newly_dead.push(node.clone());
    }

    /// Liveness, V4: votes against silent neighbours, deaths by quorum;
    /// every other known node is live — unless this member has heard from
    /// no one at all for as long as makes a vote: cut off (or alone), it
    /// holds no one live in its own view (a gateway answers 503 at once
    /// rather than wait on members it cannot reach), and passes no death
    /// on; the first message from anyone brings its view back.
    pub(crate) fn update_liveness_by_pulses(&mut self, threshold: f64) {
        self.refresh_neighbours();
        let now = Instant::now();
        let silence = self
            .config
            .failure_detector_config
            .initial_interval
            .mul_f64(threshold);
        let isolated = !self.stalled
            && self.cluster_state.nodes().nth(1).is_some()
            && self
                .last_message_at
                .is_some_and(|at| now.duration_since(at) > silence);
        let me = self.config.chitchat_id.gossip_advertise_addr;
        let prior = self
            .config
            .failure_detector_config
            .initial_interval
            .as_secs_f64();
        let cluster_id = self.config.cluster_id.clone();
        let Some(p) = self.pulses.as_ref() else {
            return;
        };
        // A member whose own round came late (paused, starved) heard
        // nothing meanwhile through no fault of its neighbours: it votes
        // against none until it is on time again.
        let neighbours = if self.stalled {
            Vec::new()
        } else {
            p.neighbours.clone()
        };
        for id in neighbours {
            let silent = match self.failure_detector.phi(&id) {
                Some(phi) => phi,
                None => {
                    let since = self
                        .pulses
                        .as_ref()
                        .and_then(|p| p.assigned.get(&id))
                        .copied()
                        .unwrap_or(now);
                    now.duration_since(since).as_secs_f64() / prior
                }
            };
            // Past a third of the threshold the node is probed through
            // others; the vote goes only if nobody hears it (see `probe`).
            if !self.may_vote(&id, silent, threshold, now) {
                continue;
            }
            // Helpers that heard nothing either vote with us: the node's
            // other neighbours may have died with it.
            let helpers = self.silent_helpers(&id, now);
            let heartbeat = self
                .cluster_state
                .node_state(&id)
                .map_or(Heartbeat(0), |s| s.heartbeat());
            let Some(p) = self.pulses.as_mut() else {
                return;
            };
            // Again every few rounds, or at once when helpers' word joins.
            let round = self.config.gossip_interval;
            if p.voted_at.get(&id).is_some_and(|(at, with)| {
                !crate::probe::rounds_past(now.duration_since(*at), round, REVOTE_ROUNDS)
                    && *with >= helpers.len()
            }) {
                continue;
            }
            debug!(node = %id.node_id, silent, helpers = helpers.len(), "vote");
            p.voted_at.insert(id.clone(), (now, helpers.len()));
            let voters: Vec<SocketAddr> = std::iter::once(me).chain(helpers).collect();
            let votes = p.votes.entry(id.clone()).or_default();
            votes.extend(voters.iter().map(|voter| (*voter, now)));
            let vote = Death {
                node: id.clone(),
                heartbeat,
                voters,
            };
            for other in p.neighbours_of(&id) {
                if other.gossip_advertise_addr != me {
                    let deaths = vec![vote.clone()];
                    let cluster_id = cluster_id.clone();
                    self.outbox.push((
                        other.gossip_advertise_addr,
                        ChitchatMessage::Verdict { cluster_id, deaths },
                    ));
                }
            }
            self.count_votes(&id, heartbeat);
        }
        // Deaths held while our hearing was in doubt: counted again.
        let doubted = self
            .pulses
            .as_ref()
            .map(|p| p.hearing.doubted())
            .unwrap_or_default();
        for id in doubted {
            let heartbeat = self
                .cluster_state
                .node_state(&id)
                .map_or(Heartbeat(0), |s| s.heartbeat());
            self.count_votes(&id, heartbeat);
        }
        // Every known node is live but those dead by votes.
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        p.voted_at.retain(|id, (at, _)| {
            now.duration_since(*at) < self.config.gossip_interval * REVOTE_ROUNDS
                && !p.deaths.contains_key(id)
        });
        // Live and dead as the votes say: only when the node set or the
        // deaths changed, or this member was cut off or is back (this runs
        // every round).
        let marks = (self.cluster_state.set_epoch(), p.deaths_epoch, isolated);
        if p.marked_for == Some(marks) {
            return;
        }
        if p.marked_for.is_some_and(|(_, _, was)| was && !isolated) {
            // Back: its neighbours are judged from now, not from before.
            for at in p.assigned.values_mut() {
                *at = now;
            }
        }
        // Only the node set's and the deaths' changes when the member was
        // not cut off or back meanwhile (see `refresh_neighbours`).
        let since = p
            .marked_for
            .filter(|(_, _, was)| *was == isolated)
            .and_then(|(set, deaths, _)| Some((set, p.death_changes_since(deaths)?)));
        p.marked_for = Some(marks);
        let me = &self.config.chitchat_id;
        let mark =
            |fd: &mut crate::failure_detector::FailureDetector, p: &Pulses, id: &ChitchatId| {
                if id == me {
                    return;
                }
                if isolated || p.deaths.contains_key(id) {
                    fd.mark_dead(id);
                } else {
                    fd.mark_live(id);
                }
            };
        match since.and_then(|(set, died)| Some((self.cluster_state.set_changes_since(set)?, died)))
        {
            Some((changes, died)) => {
                for (id, added) in changes {
                    if added {
                        mark(&mut self.failure_detector, p, id);
                    } else {
                        p.deaths.remove(id);
                        p.revived.remove(id);
                        p.votes.remove(id);
                    }
                }
                for id in died {
                    if self.cluster_state.node_state(&id).is_some() {
                        mark(&mut self.failure_detector, p, &id);
                    }
                }
            }
            None => {
                let nodes: HashSet<&ChitchatId> = self.cluster_state.nodes().collect();
                p.deaths.retain(|id, _| nodes.contains(id));
                p.revived.retain(|id, _| nodes.contains(id));
                p.votes.retain(|id, _| nodes.contains(id));
                for id in nodes {
                    mark(&mut self.failure_detector, p, id);
                }
            }
        }
    }

    /// The deaths of `nodes` (those that died here by votes), to pass on.
    pub(crate) fn deaths_of(&self, nodes: &[ChitchatId]) -> Vec<Death> {
        let Some(p) = self.pulses.as_ref() else {
            return Vec::new();
        };
        nodes.iter().filter_map(|id| p.death(id).cloned()).collect()
    }

    /// The addresses of this member's neighbours (none before V4).
    pub(crate) fn neighbour_addrs(&mut self) -> Vec<SocketAddr> {
        self.refresh_neighbours();
        self.pulses.as_ref().map_or_else(Vec::new, |p| {
            p.neighbours
                .iter()
                .map(|id| id.gossip_advertise_addr)
                .collect()
        })
    }

    /// Messages V4 queued for peers (pulses answered, votes, syncs).
    pub(crate) fn take_outbox(&mut self) -> Vec<(SocketAddr, ChitchatMessage)> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether the pulses are on (protocol V4).
    pub(crate) fn pulses_on(&self) -> bool {
        self.pulses.is_some()
    }

    #[cfg(test)]
    pub(crate) fn neighbours(&mut self) -> Vec<ChitchatId> {
        self.refresh_neighbours();
        self.pulses
            .as_ref()
            .map(|p| p.neighbours.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tokio::sync::watch;

    use super::*;
    use crate::{ChitchatConfig, ProtocolVersion};

    fn member(port: u16) -> Chitchat {
        member_with(port, |_| {})
    }

    fn member_with(port: u16, tune: impl FnOnce(&mut ChitchatConfig)) -> Chitchat {
        let mut config = ChitchatConfig::for_test(port);
        config.protocol_version = ProtocolVersion::V4;
        tune(&mut config);
        let seeds = watch::channel(HashSet::new()).1;
        Chitchat::with_chitchat_id_and_seeds(config, seeds, Vec::new())
    }

    /// `me` knowing `others` (live, each with a first heartbeat).
    fn knowing(port: u16, others: &[u16]) -> Chitchat {
        knowing_with(member(port), others)
    }

    fn knowing_with(mut chitchat: Chitchat, others: &[u16]) -> Chitchat {
        for &other in others {
            let id = ChitchatId::for_local_test(other);
            chitchat.report_heartbeat(&id, Heartbeat(5));
            // As the other holds itself: its first key says it speaks V4.
            if let Some(state) = chitchat.cluster_state.node_state_mut(&id) {
                state.set(crate::PROTOCOL_KEY, "4");
            }
        }
        chitchat.update_nodes_liveness();
        chitchat
    }

    /// The end of an exchange `a` answered: `b` takes a's SYN-ACK and
    /// answers with an ACK, which `a` takes.
    fn ack_round(
        a: &mut Chitchat,
        b: &mut Chitchat,
        digest: crate::digest::Digest,
        delta: crate::delta::Delta,
    ) {
        let ack = b.process_message_from(
            ChitchatMessage::SynAck { digest, delta },
            Some(addr(32_000)),
            ProtocolVersion::V4,
        );
        let Some(ChitchatMessage::Ack { delta }) = ack else {
            panic!("not an ACK: {ack:?}");
        };
        a.process_message_from(
            ChitchatMessage::Ack { delta },
            Some(addr(33_000)),
            ProtocolVersion::V4,
        );
    }

    /// `a`'s SYN-ACK to a `SynNamed` over `digest` from the member at
    /// `from`.
    fn answer_named(
        a: &mut Chitchat,
        from: u16,
        digest: crate::digest::Digest,
    ) -> (crate::digest::Digest, crate::delta::Delta) {
        let reply = a.process_message_from(
            ChitchatMessage::SynNamed {
                cluster_id: a.cluster_id().to_string(),
                digest,
            },
            Some(addr(from)),
            ProtocolVersion::V4,
        );
        let Some(ChitchatMessage::SynAck { digest, delta }) = reply else {
            panic!("not a SYN-ACK: {reply:?}");
        };
        (digest, delta)
    }

    /// The nodes the `SynNamed`s among `messages` name.
    fn named_in(messages: Vec<(SocketAddr, ChitchatMessage)>) -> Vec<ChitchatId> {
        messages
            .into_iter()
            .filter_map(|(_, message)| match message {
                ChitchatMessage::SynNamed { digest, .. } => Some(digest),
                _ => None,
            })
            .flat_map(|digest| digest.node_digests.into_keys().collect::<Vec<_>>())
            .collect()
    }

    /// A newcomer (port 32,500) that `b` heard of, with the key `service`.
    fn newcomer_with_a_key(b: &mut Chitchat) -> ChitchatId {
        let newcomer = ChitchatId::for_local_test(32_500);
        b.report_heartbeat(&newcomer, Heartbeat(3));
        b.cluster_state
            .node_state_mut(&newcomer)
            .expect("the newcomer's state")
            .set("service", "orders");
        newcomer
    }

    fn addr(port: u16) -> SocketAddr {
        ChitchatId::for_local_test(port).gossip_advertise_addr
    }

    fn vote(node: u16, heartbeat: u64, voters: &[u16]) -> Vec<Death> {
        vec![Death {
            node: ChitchatId::for_local_test(node),
            heartbeat: Heartbeat(heartbeat),
            voters: voters.iter().map(|&v| addr(v)).collect(),
        }]
    }

    fn is_live(chitchat: &Chitchat, port: u16) -> bool {
        let id = ChitchatId::for_local_test(port);
        chitchat.live_nodes().any(|live| *live == id)
    }

    /// Pulses from three neighbours, one a round each for `rounds` rounds,
    /// each lost when `lost(round, neighbour)`, each late by `late(round,
    /// neighbour)` (under a round): the meter's share at the end.
    fn metered(
        rounds: u32,
        lost: impl Fn(u32, u16) -> bool,
        late: impl Fn(u32, u16) -> Duration,
    ) -> f64 {
        let interval = Duration::from_millis(100);
        let start = Instant::now();
        let mut pulses = vec![];
        for round in 0..rounds {
            for n in 0..3u16 {
                if !lost(round, n) {
                    pulses.push((start + interval * round + late(round, n), addr(n)));
                }
            }
        }
        pulses.sort();
        let mut meter = LossMeter::default();
        for (at, from) in pulses {
            meter.observe(from, at, interval);
        }
        meter.share()
    }

    #[test]
    fn the_loss_meter_counts_lost_pulses_not_late_ones_nor_silences() {
        let never = |_, _| false;
        let on_time = |_, _| Duration::ZERO;
        assert_eq!(metered(500, never, on_time), 0.0);
        // One pulse in twenty lost: 5 %.
        let share = metered(500, |r, n| (r + u32::from(n) * 7) % 20 == 0, on_time);
        assert!((0.04..0.06).contains(&share), "{share}");
        // Late by up to 90 % of a round, at random: nothing lost.
        let jitter =
            |r: u32, n: u16| Duration::from_millis(u64::from((r * 37 + u32::from(n) * 11) % 90));
        let share = metered(500, never, jitter);
        assert!(share < 0.005, "{share}");
        // A neighbour silent for 3 s (paused, cut off) is no loss.
        let share = metered(500, |r, n| n == 0 && (100..130).contains(&r), on_time);
        assert!(share < 0.005, "{share}");
        // Too few pulses yet to say.
        assert_eq!(metered(10, |r, _| r % 2 == 0, on_time), 0.0);
    }

    #[test]
    fn a_member_that_hears_it_was_voted_dead_refutes_it() {
        let mut chitchat = knowing(36_000, &[36_001, 36_002]);
        let before = chitchat.self_node_state().heartbeat().0;
        chitchat.on_verdict(vote(36_000, before, &[36_001, 36_002]));
        let after = chitchat.self_node_state().heartbeat().0;
        assert!(after >= before + REFUTE, "{before} → {after}");
        // Once: the same verdict again raises nothing more.
        chitchat.on_verdict(vote(36_000, before, &[36_001, 36_002]));
        assert_eq!(chitchat.self_node_state().heartbeat().0, after);
    }

    #[test]
    fn a_death_round_trips_and_too_many_voters_are_refused() {
        let death = vote(7, 42, &[1, 2, 3]).remove(0);
        let mut buf = Vec::new();
        death.serialize(&mut buf);
        assert_eq!(buf.len(), death.serialized_len());
        assert_eq!(Death::deserialize(&mut &buf[..]).unwrap(), death);

        let mut forged = Vec::new();
        death.node.serialize(&mut forged);
        death.heartbeat.serialize(&mut forged);
        (MAX_VOTERS as u8 + 1).serialize(&mut forged);
        let err = Death::deserialize(&mut &forged[..]).unwrap_err();
        assert!(err.to_string().contains("voters"), "{err}");
    }

    #[test]
    fn neighbours_are_mutual_and_few() {
        let ports: Vec<u16> = (20_000..20_060).collect();
        let mut members: Vec<Chitchat> = ports
            .iter()
            .map(|&me| {
                let others: Vec<u16> = ports.iter().copied().filter(|&p| p != me).collect();
                knowing(me, &others)
            })
            .collect();
        let neighbours: Vec<Vec<ChitchatId>> =
            members.iter_mut().map(Chitchat::neighbours).collect();
        for (i, of) in neighbours.iter().enumerate() {
            assert!(
                (2..=2 * RINGS).contains(&of.len()),
                "{} neighbours",
                of.len()
            );
            let me = ChitchatId::for_local_test(ports[i]);
            for n in of {
                let j = ports
                    .iter()
                    .position(|&p| p == n.gossip_advertise_addr.port())
                    .unwrap();
                assert!(
                    neighbours[j].contains(&me),
                    "{me:?} ∈ N({n:?}) but not back"
                );
            }
        }
    }

    /// A node dead here that the rest of the cluster holds live: a newer
    /// heartbeat of it comes second-hand (not `REFUTE` newer: it never
    /// heard of its death), so it is pinged, answers, and is back. A dead
    /// node nobody hears of is never pinged.
    #[tokio::test(start_paused = true)]
    async fn a_node_held_dead_here_alone_is_pinged_and_comes_back_when_it_answers() {
        let mut a = knowing(39_000, &[39_001, 39_002, 39_003, 39_004]);
        let round = a.config.gossip_interval;
        let (x, y) = (
            ChitchatId::for_local_test(39_003),
            ChitchatId::for_local_test(39_004),
        );
        let now = Instant::now();
        for id in [&x, &y] {
            a.pulses
                .as_mut()
                .expect("V4")
                .seed_death(id.clone(), Heartbeat(5), now);
        }
        a.update_nodes_liveness();
        assert!(!is_live(&a, 39_003) && !is_live(&a, 39_004));
        let pinged = |out: &[(SocketAddr, ChitchatMessage)], port: u16| {
            out.iter()
                .any(|(to, m)| *to == addr(port) && matches!(m, ChitchatMessage::Pulse { .. }))
        };
        let mut pings = (0, 0);
        for _ in 0..20 {
            tokio::time::advance(round).await;
            let out = a.pulse_round();
            pings = (
                pings.0 + usize::from(pinged(&out, 39_003)),
                pings.1 + usize::from(pinged(&out, 39_004)),
            );
        }
        assert_eq!(pings, (0, 0), "nothing heard of either: not pinged");
        // x's heartbeat, second-hand, newer than its death (not by REFUTE):
        // still dead, pinged from the next round; it answers each ping.
        a.note_heartbeat(&x, Heartbeat(50), false);
        assert!(!is_live(&a, 39_003));
        let mut heartbeat = 100;
        for _ in 0..REVIVAL_PING_ROUNDS {
            tokio::time::advance(round).await;
            let out = a.pulse_round();
            pings.1 += usize::from(pinged(&out, 39_004));
            if pinged(&out, 39_003) {
                pings.0 += 1;
                heartbeat += 1;
                let echo = a.own_heartbeat();
                a.on_pulse(addr(39_003), 0, Heartbeat(heartbeat), echo);
            }
            a.update_nodes_liveness();
        }
        assert!(pings.0 >= REVIVAL_PULSES, "{pings:?}");
        assert!(is_live(&a, 39_003), "x answered: back");
        assert!(a.death_record(&x).is_none());
        assert!(!is_live(&a, 39_004), "y: still dead");
        assert_eq!(pings.1, 0, "y never heard of: never pinged");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_hears_no_one_holds_no_one_live_until_it_hears_again() {
        let mut a = knowing(37_000, &[37_001, 37_002, 37_003]);
        let pulse = |heartbeat| ChitchatMessage::Pulse {
            state_hash: 0,
            heartbeat: Heartbeat(heartbeat),
            echo: Heartbeat(0),
        };
        // Heard from lately: everyone live.
        a.process_message_from(pulse(6), Some(addr(37_001)), crate::ProtocolVersion::V4);
        a.update_nodes_liveness();
        assert!(is_live(&a, 37_001) && is_live(&a, 37_003));
        // Nothing from anyone for longer than a vote takes (the prior
        // interval × phi): cut off. Rounds on time, so not stalled.
        let fd = a.config.failure_detector_config.clone();
        let silence = fd.initial_interval.mul_f64(fd.phi_threshold);
        let round = a.config.gossip_interval;
        let mut waited = std::time::Duration::ZERO;
        while waited <= silence + round * 2 {
            tokio::time::advance(round).await;
            waited += round;
            a.update_nodes_liveness();
        }
        assert!(!is_live(&a, 37_001) && !is_live(&a, 37_002) && !is_live(&a, 37_003));
        assert!(a.take_newly_dead().is_empty(), "no death passed on");
        assert!(
            a.pulses.as_ref().expect("V4").deaths.is_empty(),
            "no death recorded: the others are not dead, this member is cut off"
        );
        // A message from anyone: back.
        a.process_message_from(pulse(7), Some(addr(37_002)), crate::ProtocolVersion::V4);
        a.update_nodes_liveness();
        assert!(is_live(&a, 37_001) && is_live(&a, 37_002) && is_live(&a, 37_003));
    }

    /// A silent neighbour whose other neighbours died with it: a helper
    /// that hears nothing from it either votes with us — once the wider ask
    /// its silence set off had its rounds and nobody vouched.
    #[tokio::test(start_paused = true)]
    async fn a_helper_that_hears_nothing_votes_with_us_unless_someone_vouches() {
        for vouch in [false, true] {
            let others: Vec<u16> = (38_001..38_010).collect();
            // shoal's timing: a round's silence is a unit of phi, a vote
            // at six.
            let a = member_with(38_000, |config| {
                let fd = &mut config.failure_detector_config;
                fd.initial_interval = config.gossip_interval;
                fd.phi_threshold = 6.0;
            });
            let mut a = knowing_with(a, &others);
            let x = a.neighbours()[0].clone();
            let live: Vec<SocketAddr> = others
                .iter()
                .map(|&o| addr(o))
                .filter(|o| *o != x.gossip_advertise_addr)
                .collect();
            let (helper, voucher) = (live[0], live[1]);
            let probes_of_x = |out: &[(SocketAddr, ChitchatMessage)]| {
                out.iter()
                    .filter(|(_, m)| matches!(m, ChitchatMessage::Probe { node } if *node == x))
                    .count()
            };
            let round = a.config.gossip_interval;
            let mut wider = None;
            for _ in 0..400 {
                tokio::time::advance(round).await;
                // Others are heard from: this member is not cut off.
                let pulse = ChitchatMessage::Pulse {
                    state_hash: 0,
                    heartbeat: Heartbeat(6),
                    echo: Heartbeat(0),
                };
                a.process_message_from(pulse, Some(voucher), ProtocolVersion::V4);
                a.update_nodes_liveness();
                let out = a.take_outbox();
                if wider.is_none() && probes_of_x(&out) > 0 {
                    a.on_silent(helper, x.clone());
                    wider = Some(probes_of_x(&a.take_outbox()));
                    if vouch {
                        a.on_vouch(voucher, x.clone());
                    }
                }
                if !a.live_nodes().any(|n| *n == x) {
                    break;
                }
            }
            assert!(
                wider.is_some_and(|n| n >= 6),
                "the first silence asks more members: {wider:?}"
            );
            let dead = a.take_newly_dead();
            if vouch {
                assert!(a.live_nodes().any(|n| *n == x), "vouched for: live");
                assert!(dead.is_empty());
                continue;
            }
            assert_eq!(dead, vec![x.clone()], "dead by our vote and the helper's");
            let deaths = a.deaths_of(&dead);
            let mut voters = deaths[0].voters.clone();
            voters.sort();
            let mut expected = vec![a.config.chitchat_id.gossip_advertise_addr, helper];
            expected.sort();
            assert_eq!(voters, expected);
        }
    }

    #[test]
    fn one_vote_removes_nobody_two_do_and_a_newer_heartbeat_brings_it_back() {
        let mut chitchat = knowing(30_000, &[30_001, 30_002, 30_003, 30_004]);
        // A member that loses its own packets accuses alone: nothing happens.
        chitchat.on_verdict(vote(30_004, 5, &[30_001]));
        chitchat.update_nodes_liveness();
        assert!(is_live(&chitchat, 30_004));
        // A second voter: dead, and passed on with both voters.
        chitchat.on_verdict(vote(30_004, 5, &[30_002]));
        chitchat.update_nodes_liveness();
        assert!(!is_live(&chitchat, 30_004));
        let dead = chitchat.take_newly_dead();
        let deaths = chitchat.deaths_of(&dead);
        assert_eq!(deaths.len(), 1);
        assert_eq!(deaths[0].voters.len(), 2);
        // Second-hand, its heartbeat of before does not bring it back, nor
        // one a little newer (it may be from just before it died); one it
        // raised on hearing of its death does.
        let id = ChitchatId::for_local_test(30_004);
        chitchat.take_news();
        for stale in [5, 9] {
            chitchat.report_heartbeat(&id, Heartbeat(stale));
            chitchat.update_nodes_liveness();
            assert!(!is_live(&chitchat, 30_004), "back on {stale}");
        }
        chitchat.report_heartbeat(&id, Heartbeat(5 + REFUTE));
        chitchat.update_nodes_liveness();
        assert!(is_live(&chitchat, 30_004));
        assert!(chitchat.take_news());
        // Votes from before it came back are stale.
        chitchat.on_verdict(vote(30_004, 5, &[30_001, 30_002]));
        chitchat.update_nodes_liveness();
        assert!(is_live(&chitchat, 30_004));
    }

    #[test]
    fn a_pulse_counts_only_when_it_echoes_and_a_differing_hash_starts_an_exchange() {
        let mut a = knowing(31_000, &[31_001]);
        let mut b = knowing(31_001, &[31_000]);
        let a_pulse = a.pulse_round();
        let b_pulse = b.pulse_round();
        assert_eq!(a_pulse.len(), 1);
        let pulse_of = |out: &[(SocketAddr, ChitchatMessage)]| match &out[0].1 {
            ChitchatMessage::Pulse {
                state_hash,
                heartbeat,
                echo,
            } => (*state_hash, *heartbeat, *echo),
            other => panic!("not a pulse: {other:?}"),
        };
        let (hash_a, hb_a, echo_a) = pulse_of(&a_pulse);
        let (hash_b, _, _) = pulse_of(&b_pulse);
        assert_eq!(echo_a, Heartbeat(0), "a has heard nothing of b yet");
        // Each knows only the other and itself, with the same versions:
        // the hashes agree, and nothing but pulses is sent.
        assert_eq!(hash_a, hash_b);
        b.on_pulse(addr(31_000), hash_a, hb_a, echo_a);
        assert!(b.take_outbox().is_empty());
        assert!(!b.answered.contains_key(&addr(31_000)), "no echo, no proof");
        // b's next pulse echoes a's heartbeat: a takes it as a sign of life.
        let b_pulse = b.pulse_round();
        let (hash_b, hb_b, echo_b) = pulse_of(&b_pulse);
        assert_eq!(echo_b, hb_a);
        a.on_pulse(addr(31_001), hash_b, hb_b, echo_b);
        assert!(a.answered.contains_key(&addr(31_001)));
        // A key set on b: its hash differs, and the member with the lower
        // address sends its hashes by bucket; b answers with a SYN over the
        // one bucket that differs (its own node's), naming b alone.
        b.self_node_state().set("k", "v");
        let (hash_b, hb_b, echo_b) = pulse_of(&b.pulse_round());
        assert_ne!(hash_b, hash_a);
        a.on_pulse(addr(31_001), hash_b, hb_b, echo_b);
        // b had a's hash a moment ago: news on its way, no buckets yet.
        assert!(
            !a.take_outbox()
                .iter()
                .any(|(_, m)| matches!(m, ChitchatMessage::Buckets { .. })),
            "buckets for a difference in flight"
        );
        // Still different after the news had time to come: buckets.
        #[allow(
            clippy::disallowed_methods,
            reason = "a test's own thread; the window is in real time here"
        )]
        std::thread::sleep(a.config.gossip_interval * (IN_FLIGHT_ROUNDS + 1));
        let (hash_b, hb_b, echo_b) = pulse_of(&b.pulse_round());
        a.pulse_round();
        a.on_pulse(addr(31_001), hash_b, hb_b, echo_b);
        let out = a.take_outbox();
        let hashes = out
            .iter()
            .find_map(|(to, m)| match m {
                ChitchatMessage::Buckets { hashes } if *to == addr(31_001) => Some(hashes.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no bucket hashes to b: {out:?}"));
        assert_eq!(hashes.len(), BUCKETS);
        b.on_buckets(addr(31_000), &hashes);
        let out = b.take_outbox();
        match &out[..] {
            [(to, ChitchatMessage::SynScoped { scope, digest, .. })] => {
                assert_eq!(*to, addr(31_000));
                assert_eq!(scope.len(), 1, "{scope:?}");
                let named: Vec<u16> = digest
                    .node_digests
                    .keys()
                    .map(|id| id.gossip_advertise_addr.port())
                    .collect();
                assert!(named.contains(&31_001), "{named:?}");
            }
            other => panic!("not one scoped SYN: {other:?}"),
        }
    }

    #[test]
    fn buckets_then_a_scoped_exchange_bring_a_stale_member_up_to_date() {
        let others: Vec<u16> = (34_001..34_100).collect();
        let mut a = knowing(34_000, &others);
        let mut b = knowing(35_000, &others);
        // Both have node X at 1 key; a has 3 more of them.
        let x = ChitchatId::for_local_test(34_050);
        for (c, n) in [(&mut a, 4), (&mut b, 1)] {
            let state = c.cluster_state.node_state_mut(&x).expect("x");
            for k in 0..n {
                state.set(format!("k{k}"), "v");
            }
            c.pulses.as_mut().expect("V4").touch();
        }
        for round in 0..3 {
            let theirs = a.bucket_hashes();
            b.on_buckets(addr(34_000), &theirs);
            let Some((_, syn)) = b.take_outbox().pop() else {
                break;
            };
            let reply = a.process_message_from(syn, Some(addr(35_000)), ProtocolVersion::V4);
            let ack = b.process_message_from(
                reply.expect("a SYN-ACK"),
                Some(addr(34_000)),
                ProtocolVersion::V4,
            );
            if let Some(ack) = ack {
                a.process_message_from(ack, Some(addr(35_000)), ProtocolVersion::V4);
            }
            eprintln!(
                "round {round}: b has x at {:?}",
                b.node_state(&x).map(|s| s.max_version())
            );
        }
        assert_eq!(
            b.node_state(&x).map(|s| s.max_version()),
            a.node_state(&x).map(|s| s.max_version())
        );
    }

    /// What `refresh_neighbours` derives from the node set, comparable.
    fn derived(
        a: &mut Chitchat,
    ) -> (
        u64,
        Vec<u32>,
        Vec<ChitchatId>,
        Vec<ChitchatId>,
        Vec<(SocketAddr, ChitchatId)>,
        Vec<ChitchatId>,
    ) {
        let hash = a.state_hash();
        let buckets = a.bucket_hashes();
        let mut neighbours = a.neighbours();
        neighbours.sort();
        a.update_nodes_liveness();
        let p = a.pulses.as_ref().expect("V4");
        let mut live = p.live.clone();
        live.sort();
        let mut by_addr: Vec<_> = p.by_addr.iter().map(|(k, v)| (*k, v.clone())).collect();
        by_addr.sort();
        let mut marked: Vec<ChitchatId> = a.live_nodes().cloned().collect();
        marked.sort();
        (hash, buckets, neighbours, live, by_addr, marked)
    }

    #[test]
    fn the_node_set_followed_change_by_change_is_the_set_recomputed_whole() {
        let mut a = knowing(37_000, &[37_001, 37_002]);
        let check = |a: &mut Chitchat, what: &str| {
            let incremental = derived(a);
            let p = a.pulses.as_mut().expect("V4");
            p.computed_for = None;
            p.marked_for = None;
            let whole = derived(a);
            assert_eq!(incremental, whole, "after {what}");
            assert!(incremental.3.len() >= 3, "after {what}");
        };
        // Joins one at a time, each seen.
        for port in 37_003..37_040 {
            a.report_heartbeat(&ChitchatId::for_local_test(port), Heartbeat(5));
            derived(&mut a);
        }
        check(&mut a, "joins one at a time");
        // Removals, and a node back at the same address with a new
        // generation (the address then means the new one).
        a.cluster_state
            .remove_node(&ChitchatId::for_local_test(37_010));
        let old = ChitchatId::for_local_test(37_020);
        let newer = ChitchatId::new(old.node_id.clone(), 1, old.gossip_advertise_addr);
        a.report_heartbeat(&newer, Heartbeat(1));
        derived(&mut a);
        a.cluster_state.remove_node(&old);
        check(&mut a, "removals and a new generation");
        a.cluster_state.remove_node(&newer);
        check(&mut a, "the address's last node removed");
        // Deaths and a return, one at a time, each seen; a node dead here
        // then removed.
        let dead = |port| ChitchatId::for_local_test(port);
        for port in [37_005, 37_006, 37_007, 37_008] {
            let now = Instant::now();
            a.pulses
                .as_mut()
                .expect("V4")
                .seed_death(dead(port), Heartbeat(5), now);
            derived(&mut a);
        }
        a.note_heartbeat(&dead(37_006), Heartbeat(7), true);
        derived(&mut a);
        a.cluster_state.remove_node(&dead(37_008));
        let (_, _, _, live, _, marked) = derived(&mut a);
        assert!(!live.contains(&dead(37_005)) && live.contains(&dead(37_006)));
        assert!(!marked.contains(&dead(37_007)) && marked.contains(&dead(37_006)));
        check(&mut a, "deaths, a return and a dead node removed");
        // More changes at once than the journal keeps: recomputed whole.
        for port in 38_000..38_300 {
            a.report_heartbeat(&ChitchatId::for_local_test(port), Heartbeat(5));
        }
        check(&mut a, "300 joins at once");
    }

    #[test]
    fn the_state_hash_kept_up_to_date_node_by_node_is_the_hash_computed_whole() {
        let others: Vec<u16> = (36_001..36_050).collect();
        let mut a = knowing(36_000, &others);
        let before = a.state_hash();
        // A delta for two nodes (the hash redone for those two only), then
        // a change of a's own record. (Two nodes each one version up: with
        // raw FNV shares, one even key and one odd, the sum did not move.)
        let mut delta = crate::delta::Delta::default();
        for port in [36_010, 36_020] {
            let id = ChitchatId::for_local_test(port);
            delta.add_node(id.clone(), 0, 0);
            delta.add_kv(&id, "k", "v", 2, false);
        }
        a.process_delta(delta);
        let after_delta = a.state_hash();
        assert_ne!(after_delta, before, "the hash covers versions");
        a.self_node_state().set("mine", "1");
        let incremental = a.state_hash();
        assert_ne!(incremental, after_delta);
        let buckets = a.bucket_hashes();
        a.pulses.as_mut().expect("V4").touch();
        assert_eq!(a.state_hash(), incremental, "whole and incremental agree");
        assert_eq!(a.bucket_hashes(), buckets);
    }

    #[test]
    fn a_member_that_knows_nodes_by_name_only_pulls_their_keys_from_neighbours() {
        // c knows 50 members with their keys, and 10 more by name only (as
        // a newcomer does after its first exchange; so many with keys that
        // the random peers asked, if not a neighbour, are almost surely
        // among them: 1 chance in 50,000 that none of six is).
        let mut c = member(35_000);
        let with_keys: Vec<u16> = (34_001..34_051).collect();
        let by_name: Vec<u16> = (34_051..34_061).collect();
        for &port in with_keys.iter().chain(&by_name) {
            c.report_heartbeat(&ChitchatId::for_local_test(port), Heartbeat(5));
        }
        for &port in &with_keys {
            let id = ChitchatId::for_local_test(port);
            let state = c.cluster_state.node_state_mut(&id).expect("reported");
            state.set(crate::PROTOCOL_KEY, crate::NAMED_RUMORS_LEVEL.to_string());
        }
        c.update_nodes_liveness();
        // A member that has every key.
        let mut a = knowing(34_000, &by_name);
        let named: Vec<ChitchatId> = named_in(c.pulse_round());
        assert!(
            !named.is_empty(),
            "no catch-up SYN: neighbours {:?}, keyless {}",
            c.neighbour_addrs(),
            c.pulses.as_ref().map_or(0, |p| p.keyless.len())
        );
        let by_name_ids: Vec<ChitchatId> = by_name
            .iter()
            .map(|p| ChitchatId::for_local_test(*p))
            .collect();
        assert!(
            named.iter().all(|id| by_name_ids.contains(id)),
            "a catch-up SYN named a node whose keys are here: {named:?}"
        );
        // One of them, answered by a: c has those keys, and asks no more
        // for them.
        let digest = c.cluster_state.compute_digest_over(&named, &HashSet::new());
        let (digest, delta) = answer_named(&mut a, 35_000, digest);
        assert!(!delta.node_deltas.is_empty(), "no keys in the answer");
        c.process_message_from(
            ChitchatMessage::SynAck { digest, delta },
            Some(addr(34_000)),
            ProtocolVersion::V4,
        );
        let again: Vec<ChitchatId> = named_in(c.pulse_round());
        let got: Vec<&ChitchatId> = named
            .iter()
            .filter(|id| c.node_state(id).is_some_and(|s| s.max_version() > 0))
            .collect();
        assert!(!got.is_empty(), "c took no keys");
        assert!(
            got.iter().all(|id| !again.contains(id)),
            "asked again for keys it has"
        );
    }

    #[test]
    fn a_rumor_names_the_news_to_members_that_take_it_and_its_buckets_to_others() {
        let others: Vec<u16> = (32_001..32_200).collect();
        let mut a = knowing(32_000, &others);
        let mut b = knowing(32_000 + 1_000, &others);
        // 32_001 runs this release (level 5), 32_002 an earlier one (4).
        let level5 = ChitchatId::for_local_test(32_001);
        b.cluster_state
            .node_state_mut(&level5)
            .expect("a known node")
            .set(crate::PROTOCOL_KEY, crate::NAMED_RUMORS_LEVEL.to_string());
        b.news_rumors(&[]);
        // News: a newcomer with a key, and a newer version of a known node.
        let newcomer = newcomer_with_a_key(&mut b);
        let changed = ChitchatId::for_local_test(32_100);
        let mut delta = crate::delta::Delta::default();
        delta.add_node(changed.clone(), 0, 0);
        delta.add_kv(&changed, "health", "up", 9, false);
        b.process_delta(delta);
        let rumors = b.news_rumors(&[addr(32_001), addr(32_002), addr(39_999)]);
        // A member whose keys have not come (39_999): this release's level
        // is assumed (pinned to V4, no rolling upgrade).
        assert!(
            matches!(rumors[2], (to, ChitchatMessage::SynNamed { .. }) if to == addr(39_999)),
            "{:?}",
            rumors[2]
        );
        let mut rumors = rumors.into_iter();
        let Some((to, ChitchatMessage::SynNamed { digest, .. })) = rumors.next() else {
            panic!("not a named SYN to the member of level 5");
        };
        assert_eq!(to, addr(32_001));
        let named: Vec<&ChitchatId> = digest.node_digests.keys().collect();
        assert_eq!(named.len(), 2, "{named:?}");
        assert!(named.contains(&&newcomer) && named.contains(&&changed));
        let Some((
            to,
            ChitchatMessage::SynScoped {
                digest: by_bucket,
                scope,
                ..
            },
        )) = rumors.next()
        else {
            panic!("not a scoped SYN to the member of level 4");
        };
        assert_eq!(to, addr(32_002));
        assert_eq!(scope.len(), 2);
        assert!(by_bucket.node_digests.len() > 2, "whole buckets");
        // a answers the named SYN over those two nodes alone: it asks for
        // both, and b's ACK brings their keys.
        let (digest, delta) = answer_named(&mut a, 33_000, digest);
        let asked: Vec<&ChitchatId> = digest.node_digests.keys().collect();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(delta.node_deltas.is_empty(), "{delta:?}");
        ack_round(&mut a, &mut b, digest, delta);
        assert_eq!(
            a.node_state(&newcomer).and_then(|s| s.get("service")),
            Some("orders")
        );
        assert_eq!(
            a.node_state(&changed).and_then(|s| s.get("health")),
            Some("up")
        );
    }

    #[test]
    fn a_scoped_exchange_carries_the_buckets_that_differ_and_nothing_else() {
        let others: Vec<u16> = (32_001..32_200).collect();
        let mut a = knowing(32_000, &others);
        let mut b = knowing(32_000 + 1_000, &others);
        // Both know the same 199 others; b also knows a newcomer with a key.
        b.take_news_scope();
        let newcomer = newcomer_with_a_key(&mut b);
        let scope = b.take_news_scope();
        assert_eq!(scope.len(), 1, "{scope:?}");
        let ChitchatMessage::SynScoped { digest, .. } = b.scoped_syn(scope) else {
            panic!("not a scoped SYN");
        };
        assert!(
            digest.node_digests.len() < 30,
            "{} of 201 nodes named",
            digest.node_digests.len()
        );
        // a answers it as a SYN: it asks for the newcomer, and sends nothing
        // of the nodes out of scope.
        let reply = a.process_message_from(
            ChitchatMessage::SynScoped {
                cluster_id: a.cluster_id().to_string(),
                scope,
                digest,
            },
            Some(addr(33_000)),
            ProtocolVersion::V4,
        );
        let Some(ChitchatMessage::SynAck { digest, delta }) = reply else {
            panic!("not a SYN-ACK: {reply:?}");
        };
        assert!(
            digest.node_digests.keys().all(|id| in_scope(id, &scope)),
            "a SYN-ACK naming nodes out of scope"
        );
        ack_round(&mut a, &mut b, digest, delta);
        assert_eq!(
            a.node_state(&newcomer).and_then(|s| s.get("service")),
            Some("orders")
        );
    }
}
