//! Membership simulator: many members' gossip in one process.
//!
//! Each simulated member runs exactly what a real one runs up to its view —
//! its `NodeConfig` read from the same `SHOAL_*` variables, its announce
//! record, chitchat with shoal's settings and the sealed transport
//! ([`shoal_node::testing::Gossip`]) — but its datagrams go through
//! [`SimNet`], an in-memory network with a fixed one-way latency and
//! optional packet loss, and time is tokio's paused clock: nothing waits for
//! real time, so a thousand members run on one core, and every figure
//! (detection, join, bytes) is in simulated time. A member's view is a pure
//! function of chitchat's live set, so the simulator reads the live sets.
//!
//! What it leaves out: CPU time (processing takes no simulated time, where
//! real members on a busy host answer late) and the kernel's socket buffers
//! (a datagram is never dropped for a full buffer). `sim-membership
//! --validate` runs it beside the real-process bench to show how far apart
//! the two are.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shoal_node::Health;
use shoal_node::Role;
use shoal_node::testing::Gossip;
use shoal_node::testing::keys;
use shoal_node::testing::{Wire, WireSocket};
use shoal_node::{Env, NodeConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The datagram size the loss model cuts datagrams into (a VXLAN
/// overlay's): a datagram of k fragments arrives only if all k do.
const FRAGMENT: usize = 1422;

struct Packet {
    at: Instant,
    from: SocketAddr,
    bytes: Vec<u8>,
}

struct NetState {
    sockets: HashMap<SocketAddr, mpsc::UnboundedSender<Packet>>,
    down: HashSet<IpAddr>,
    /// Members that send but receive nothing (a one-way partition).
    deaf: HashSet<IpAddr>,
    /// Groups that receive only from each other (a Swarm node cut inbound).
    deaf_groups: Vec<HashSet<IpAddr>>,
    /// Members that lose this share of what they send and receive.
    lossy: HashMap<IpAddr, f64>,
    /// Pairs of groups that cannot reach each other (each side still
    /// reaches everyone else): a cut between two Swarm nodes.
    splits: Vec<(HashSet<IpAddr>, HashSet<IpAddr>)>,
    loss: f64,
    rng: SmallRng,
}

/// An in-memory datagram network.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    latency: Duration,
    /// Each datagram waits a further random time up to this (so datagrams
    /// overtake each other, as on a loaded network).
    jitter: Duration,
}

impl SimNet {
    /// A network delivering every datagram after `latency`, losing each
    /// 1,422-byte fragment with probability `loss`. `seed` makes the losses
    /// repeatable.
    pub fn new(latency: Duration, loss: f64, seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetState {
                sockets: HashMap::new(),
                down: HashSet::new(),
                deaf: HashSet::new(),
                deaf_groups: Vec::new(),
                lossy: HashMap::new(),
                splits: Vec::new(),
                loss,
                rng: SmallRng::seed_from_u64(seed),
            })),
            latency,
            jitter: Duration::ZERO,
        }
    }

    /// The same network, each datagram delayed by a further random time
    /// from 0 to `jitter` (uniform).
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Cuts `ip` off both ways: what others see of a killed member.
    pub fn cut(&self, ip: IpAddr) {
        self.lock().down.insert(ip);
    }

    /// Cuts `ip` off inbound only: it sends, and receives nothing.
    pub fn deafen(&self, ip: IpAddr) {
        self.lock().deaf.insert(ip);
    }

    /// Cuts the members of `group` off inbound from everyone else: they
    /// hear each other and send to all, and receive nothing from outside
    /// (a Swarm node whose inbound traffic from the other nodes is cut).
    pub fn deafen_group(&self, group: &[IpAddr]) {
        self.lock()
            .deaf_groups
            .push(group.iter().copied().collect());
    }

    /// Ends every [`Self::deafen_group`].
    pub fn hear_again(&self) {
        self.lock().deaf_groups.clear();
    }

    /// Makes `ip` lose `share` (0 to 1) of the datagrams it sends and of
    /// those sent to it, besides the network's own loss.
    pub fn make_lossy(&self, ip: IpAddr, share: f64) {
        self.lock().lossy.insert(ip, share);
    }

    /// Cuts every path between a member of `a` and one of `b`, both ways;
    /// each still reaches every other member (as two Swarm nodes cut from
    /// each other while a third sees both).
    pub fn split(&self, a: &[IpAddr], b: &[IpAddr]) {
        let side = |ips: &[IpAddr]| ips.iter().copied().collect::<HashSet<_>>();
        self.lock().splits.push((side(a), side(b)));
    }

    /// Mends every [`Self::split`].
    pub fn mend(&self) {
        self.lock().splits.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Wire for SimNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn WireSocket>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        if state.sockets.contains_key(&addr) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, addr.to_string()));
        }
        state.sockets.insert(addr, tx);
        Ok(Box::new(SimSocket {
            net: self.clone(),
            addr,
            rx,
            pending: VecDeque::new(),
        }))
    }
}

struct SimSocket {
    net: SimNet,
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Packet>,
    pending: VecDeque<Packet>,
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        self.net.lock().sockets.remove(&self.addr);
    }
}

impl SimSocket {
    /// Keeps `p` until its time, in the order of delivery (with jitter a
    /// later datagram may be due first).
    fn queue(&mut self, p: Packet) {
        let at = self.pending.partition_point(|q| q.at <= p.at);
        self.pending.insert(at, p);
    }
}

#[async_trait]
impl WireSocket for SimSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        let mut state = self.net.lock();
        if state.down.contains(&self.addr.ip())
            || state.down.contains(&to.ip())
            || state.deaf.contains(&to.ip())
            || state
                .deaf_groups
                .iter()
                .any(|g| g.contains(&to.ip()) && !g.contains(&self.addr.ip()))
            || state.splits.iter().any(|(a, b)| {
                let (from, to) = (self.addr.ip(), to.ip());
                (a.contains(&from) && b.contains(&to)) || (b.contains(&from) && a.contains(&to))
            })
        {
            return Ok(datagram.len());
        }
        let faulty = [self.addr.ip(), to.ip()]
            .iter()
            .filter_map(|ip| state.lossy.get(ip).copied())
            .fold(0.0, f64::max);
        if faulty > 0.0 && state.rng.random::<f64>() < faulty {
            return Ok(datagram.len());
        }
        let fragments = datagram.len().div_ceil(FRAGMENT).max(1) as i32;
        let lost = 1.0 - (1.0 - state.loss).powi(fragments);
        if state.loss > 0.0 && state.rng.random::<f64>() < lost {
            return Ok(datagram.len());
        }
        let jitter = if self.net.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.net.jitter.mul_f64(state.rng.random::<f64>())
        };
        if let Some(tx) = state.sockets.get(&to) {
            let _ = tx.send(Packet {
                at: Instant::now() + self.net.latency + jitter,
                from: self.addr,
                bytes: datagram.to_vec(),
            });
        }
        Ok(datagram.len())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            // Cancel-safe: a packet waits in `pending` until its time comes.
            if let Some(at) = self.pending.front().map(|p| p.at) {
                if at <= Instant::now() {
                    let Some(p) = self.pending.pop_front() else {
                        continue;
                    };
                    let n = p.bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&p.bytes[..n]);
                    return Ok((n, p.from));
                }
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    p = self.rx.recv() => match p {
                        Some(p) => self.queue(p),
                        None => return Err(io::ErrorKind::BrokenPipe.into()),
                    },
                }
            } else {
                match self.rx.recv().await {
                    Some(p) => self.queue(p),
                    None => return Err(io::ErrorKind::BrokenPipe.into()),
                }
            }
        }
    }
}

/// One simulated member.
pub struct SimMember {
    /// Its address (gossip and service).
    pub ip: IpAddr,
    /// Its chitchat node id (`bench@ip:9000`).
    pub node: String,
    gossip: Gossip,
}

impl SimMember {
    /// Its chitchat id (node, generation, gossip address).
    pub fn chitchat_id(&self) -> chitchat::ChitchatId {
        self.gossip.handle.chitchat_id().clone()
    }

    /// Its chitchat, to look into.
    pub fn chitchat(&self) -> Arc<tokio::sync::Mutex<chitchat::Chitchat>> {
        self.gossip.handle.chitchat()
    }

    /// Its gossip address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip.handle.chitchat_id().gossip_advertise_addr
    }

    /// Bytes of gossip it has sent.
    pub fn bytes_sent(&self) -> u64 {
        self.gossip.stats.bytes_sent.load(Ordering::Relaxed)
    }

    /// Bytes of gossip it has sent, by message kind
    /// ([`shoal_node::MessageKind::ALL`] order).
    pub fn bytes_sent_by_kind(&self) -> Vec<u64> {
        let s = &self.gossip.stats;
        s.bytes_sent_by_kind
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Datagrams of gossip it has sent, by message kind (the same order).
    pub fn packets_sent_by_kind(&self) -> Vec<u64> {
        let s = &self.gossip.stats;
        s.packets_sent_by_kind
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The largest datagram it has sent.
    pub fn largest_datagram(&self) -> u64 {
        self.gossip.stats.largest_datagram.load(Ordering::Relaxed)
    }

    /// Datagrams it sent larger than the gossip MTU, and datagrams it could
    /// not send at all (over the UDP limit).
    pub fn oversized(&self) -> (u64, u64) {
        let s = &self.gossip.stats;
        (
            s.packets_oversized.load(Ordering::Relaxed),
            s.packets_dropped_oversized.load(Ordering::Relaxed),
        )
    }

    /// How many members its live set holds (itself included).
    pub async fn live_count(&self) -> usize {
        let chitchat = self.gossip.handle.chitchat();
        let guard = chitchat.lock().await;
        guard.live_node_count() + 1
    }

    /// Whether `node` is in its live set (a lookup, not a walk: the
    /// simulator asks every member every 5 ms).
    pub async fn sees(&self, node: &chitchat::ChitchatId) -> bool {
        let chitchat = self.gossip.handle.chitchat();
        let guard = chitchat.lock().await;
        guard.is_live(node)
    }

    /// Whether `node` is in its live set with its record up (its health
    /// key says `up`): what a gateway needs to route to it.
    pub async fn sees_up(&self, node: &chitchat::ChitchatId) -> bool {
        let chitchat = self.gossip.handle.chitchat();
        let guard = chitchat.lock().await;
        guard.is_live(node) && record_up(&guard, node)
    }

    /// How many members its live set holds with their record up (itself
    /// included): all of them once a new gateway can route to every replica.
    pub async fn up_count(&self) -> usize {
        let chitchat = self.gossip.handle.chitchat();
        let guard = chitchat.lock().await;
        guard
            .live_nodes()
            .filter(|node| record_up(&guard, node))
            .count()
    }

    /// Stops it dead (no goodbye): what SIGKILL does.
    pub fn kill(&self, net: &SimNet) {
        net.cut(self.ip);
        self.gossip.handle.abort();
    }
}

/// Whether `node`'s health key, as `chitchat` holds it, says `up`.
fn record_up(chitchat: &chitchat::Chitchat, node: &chitchat::ChitchatId) -> bool {
    chitchat
        .node_state(node)
        .and_then(|s| s.get(keys::HEALTH))
        .is_some_and(|h| h == Health::Up.as_str())
}

/// Each member's gossip sent since `before` (its [`SimMember::bytes_sent`]
/// then), in KB/s over `secs`.
pub fn kb_per_s_since(members: &[SimMember], before: &[u64], secs: f64) -> Vec<f64> {
    members
        .iter()
        .zip(before)
        .map(|(m, b)| (m.bytes_sent() - b) as f64 / secs / 1000.0)
        .collect()
}

/// The simulated address of member `i`: 10.x.y.z.
pub fn ip(i: usize) -> IpAddr {
    let i = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

/// Starts member `i` with the `SHOAL_*` settings a sidecar gets from the
/// benches (`SHOAL_SEEDS` the first member, a cluster key), plus `extra`.
pub async fn spawn_member(
    net: &SimNet,
    i: usize,
    key: &str,
    extra: &[(String, String)],
) -> anyhow::Result<SimMember> {
    let ip = ip(i);
    let mut env = Env::from_pairs([
        ("SHOAL_SERVICE", "bench"),
        ("SHOAL_PORT", "9000"),
        ("SHOAL_CLUSTER_KEY", key),
    ]);
    env.set("SHOAL_ADVERTISE", ip.to_string());
    env.set("SHOAL_LISTEN", ip.to_string());
    env.set("SHOAL_SEEDS", self::ip(0).to_string());
    env.set("SHOAL_HOSTNAME", format!("m{i}"));
    for (k, v) in extra {
        env.set(k, v.clone());
    }
    let config = NodeConfig::from_env(&env, "bench", 9000)?;
    let gossip = Gossip::spawn(
        &config,
        Role::Service { routes: Vec::new() },
        ip,
        Arc::new(net.clone()),
    )
    .await?;
    // As the sidecar does once its upstream answers.
    gossip
        .handle
        .with_chitchat(|c| c.self_node_state().set(keys::HEALTH, Health::Up.as_str()))
        .await;
    Ok(SimMember {
        ip,
        node: gossip.id.node.clone(),
        gossip,
    })
}

/// Polls every 5 ms (simulated) until every member of `observers` satisfies
/// `pred`; returns the simulated time the last one did, from `since`.
pub async fn until_all<'a>(
    observers: &'a [SimMember],
    since: Instant,
    timeout: Duration,
    pred: impl AsyncFn(&'a SimMember) -> bool,
) -> Option<f64> {
    let mut pending: Vec<&SimMember> = observers.iter().collect();
    loop {
        let mut still = Vec::with_capacity(pending.len());
        for m in pending {
            if !pred(m).await {
                still.push(m);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Some(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
