use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::prelude::*;
use rand::rng;
use tokio::net::lookup_host;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time;
use tracing::{debug, warn};

use crate::message::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use crate::transport::{RecvOutcome, Socket, Transport};
use crate::{Chitchat, ChitchatConfig, ChitchatId};

/// UDP Chitchat server handler.
///
/// It is necessary to hold (and not drop) the handler
/// for the server to keep running.
pub struct ChitchatHandle {
    chitchat_id: ChitchatId,
    command_tx: UnboundedSender<Command>,
    chitchat: Arc<Mutex<Chitchat>>,
    join_handle: JoinHandle<Result<(), anyhow::Error>>,
    termination_watcher: watch::Receiver<Option<Result<(), String>>>,
    /// shoal patch: direct messages received, until the application takes
    /// them (see [`ChitchatHandle::take_direct_receiver`]).
    direct_rx: std::sync::Mutex<Option<mpsc::Receiver<(SocketAddr, Vec<u8>)>>>,
}

/// shoal patch: direct messages waiting for the application; beyond, new
/// ones are dropped (they are periodic: the next one replaces them).
const DIRECT_QUEUE: usize = 1024;

impl ChitchatHandle {
    pub fn abort(&self) {
        self.join_handle.abort();
    }
}

const DNS_POLLING_DURATION: Duration = Duration::from_secs(60);

async fn dns_refresh_loop(
    seed_hosts_requiring_dns: HashSet<String>,
    seed_addrs_not_requiring_resolution: HashSet<SocketAddr>,
    seed_addrs_tx: watch::Sender<HashSet<SocketAddr>>,
) {
    let mut interval = time::interval(DNS_POLLING_DURATION);
    // The first `interval.tick()` is no-op but we DO NOT want to resolve the seed hosts right away
    // (see comment in `spawn_dns_refresh_loop`), hence this tick.
    interval.tick().await;

    loop {
        interval.tick().await;

        let mut seed_addrs = seed_addrs_not_requiring_resolution.clone();
        for seed_host in &seed_hosts_requiring_dns {
            resolve_seed_host(seed_host, &mut seed_addrs).await;
        }
        if seed_addrs_tx.send(seed_addrs).is_err() {
            return;
        }
    }
}

async fn resolve_seed_host(seed_host: &str, seed_addrs: &mut HashSet<SocketAddr>) {
    match lookup_host(seed_host).await {
        Ok(resolved_seed_addrs) => {
            for seed_addr in resolved_seed_addrs {
                if seed_addrs.insert(seed_addr) {
                    debug!(seed_host=%seed_host, seed_addr=%seed_addr, "resolved peer seed host");
                }
            }
        }
        Err(error) => {
            warn!(seed_host=%seed_host, error=?error, "failed to lookup host");
        }
    };
}

// A seed node address can be a string representing a IP address or a hostname with a port.
//
// The latter is especially important when relying on
// a headless service in k8s or when using DNS in general.
//
// In that case, we do not want to perform the resolution
// once and for all.
// We want to periodically retry DNS resolution,
// in order to avoid having a split cluster.
//
// The newcomers are supposed to chime in too,
// so there is no need to refresh it too often,
// especially if it is not empty.
async fn spawn_dns_refresh_loop(seeds: &[String]) -> watch::Receiver<HashSet<SocketAddr>> {
    let mut seed_addrs_not_requiring_resolution: HashSet<SocketAddr> = Default::default();
    let mut first_round_seed_resolution: HashSet<SocketAddr> = Default::default();
    let mut seed_requiring_dns: HashSet<String> = Default::default();
    for seed in seeds {
        if let Ok(seed_addr) = seed.parse() {
            seed_addrs_not_requiring_resolution.insert(seed_addr);
        } else {
            seed_requiring_dns.insert(seed.clone());
            // We run DNS resolution for the first iteration too.
            // It will be run in the DNS polling loop too, but running
            // it for the first iteration makes sure our first gossip
            // round will not be for nothing.
            resolve_seed_host(seed, &mut first_round_seed_resolution).await;
        }
    }

    let initial_seed_addrs: HashSet<SocketAddr> = seed_addrs_not_requiring_resolution
        .union(&first_round_seed_resolution)
        .cloned()
        .collect();

    let (seed_addrs_tx, seed_addrs_rx) = watch::channel(initial_seed_addrs);
    if !seed_requiring_dns.is_empty() {
        tokio::task::spawn(dns_refresh_loop(
            seed_requiring_dns,
            seed_addrs_not_requiring_resolution,
            seed_addrs_tx,
        ));
    }
    seed_addrs_rx
}

/// Launches a new Chitchat server.
///
/// This will start the server as a new Tokio background task.
pub async fn spawn_chitchat(
    config: ChitchatConfig,
    initial_key_values: Vec<(String, String)>,
    transport: &dyn Transport,
) -> anyhow::Result<ChitchatHandle> {
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let (direct_tx, direct_rx) = mpsc::channel(DIRECT_QUEUE);

    let seed_addrs: watch::Receiver<HashSet<SocketAddr>> =
        spawn_dns_refresh_loop(&config.seed_nodes).await;

    let socket = transport.open(config.listen_addr).await?;
    let chitchat_id = config.chitchat_id.clone();

    let chitchat = Chitchat::with_chitchat_id_and_seeds(config, seed_addrs, initial_key_values);
    let chitchat_arc = Arc::new(Mutex::new(chitchat));
    let chitchat_arc_clone = chitchat_arc.clone();

    let (termination_watcher_sender, termination_watcher) = watch::channel(None);
    let join_handle = tokio::spawn(async move {
        let result = Server::new(command_rx, chitchat_arc_clone, socket, direct_tx)
            .await
            .run()
            .await;
        let cloned_result = result.as_ref().map(|_| ()).map_err(|err| err.to_string());
        let _ = termination_watcher_sender.send(Some(cloned_result));
        result
    });

    Ok(ChitchatHandle {
        chitchat_id,
        command_tx,
        chitchat: chitchat_arc,
        join_handle,
        termination_watcher,
        direct_rx: std::sync::Mutex::new(Some(direct_rx)),
    })
}

impl ChitchatHandle {
    /// shoal patch: sends `payload` to the member at `addr` alone, as a
    /// [`ChitchatMessage::Direct`]; its application receives it from
    /// [`Self::take_direct_receiver`]. Not stored, not relayed, not retried.
    pub fn send_direct(&self, addr: SocketAddr, payload: Vec<u8>) -> Result<(), anyhow::Error> {
        self.command_tx.send(Command::Direct(addr, payload))?;
        Ok(())
    }

    /// shoal patch: the direct messages this member receives, as `(sender's
    /// gossip address, payload)`; `None` once taken.
    pub fn take_direct_receiver(&self) -> Option<mpsc::Receiver<(SocketAddr, Vec<u8>)>> {
        self.direct_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    pub fn chitchat_id(&self) -> &ChitchatId {
        &self.chitchat_id
    }

    pub fn chitchat(&self) -> Arc<Mutex<Chitchat>> {
        self.chitchat.clone()
    }

    /// Calls a function with mutable access to the [`Chitchat`].
    pub async fn with_chitchat<F, T>(&self, mut fun: F) -> T
    where
        F: FnMut(&mut Chitchat) -> T,
    {
        let mut chitchat = self.chitchat.lock().await;
        fun(&mut chitchat)
    }

    pub fn initiate_shutdown(&self) -> Result<(), anyhow::Error> {
        self.command_tx.send(Command::Shutdown).map_err(|_| {
            anyhow::anyhow!("Failed to initiate Chitchat shutdown, command channel already closed")
        })
    }

    /// Shuts the server down and waits for it to finish.
    pub async fn shutdown(self) -> Result<(), anyhow::Error> {
        let _ = self.initiate_shutdown();
        self.join_handle.await?
    }

    /// Performs a Chitchat "handshake" with another UDP server.
    pub fn gossip(&self, addr: SocketAddr) -> Result<(), anyhow::Error> {
        self.command_tx.send(Command::Gossip(addr))?;
        Ok(())
    }

    pub fn termination_watcher(&self) -> impl Future<Output = anyhow::Result<()>> + use<> {
        let mut watcher = self.termination_watcher.clone();
        async move {
            let termination_res = watcher.wait_for(|res| res.is_some()).await;
            if let Ok(result_opt) = termination_res {
                result_opt.clone().unwrap().map_err(anyhow::Error::msg)
            } else {
                // If the channel was closed without the exit status being sent,
                // we assume the server panicked.
                Err(anyhow::anyhow!("Chitchat server panicked"))
            }
        }
    }
}

/// shoal patch: how many peers news (a new node, a node back, a death) goes
/// on to at once.
const RUMOR_FANOUT: usize = 2;

/// UDP server for Chitchat communication.
struct Server {
    command_rx: UnboundedReceiver<Command>,
    chitchat: Arc<Mutex<Chitchat>>,
    transport: Box<dyn Socket>,
    rng: SmallRng,
    /// shoal patch: when the rumors of the last round went (see `rumors`).
    rumors_at: std::collections::VecDeque<time::Instant>,
    /// shoal patch: news not yet spread (held back by `rumors`).
    news_pending: bool,
    /// shoal patch: peers last heard speaking an older protocol version than
    /// ours (a rolling upgrade): we speak theirs to them, so that they can
    /// read us.
    older_peers: std::collections::HashMap<SocketAddr, ProtocolVersion>,
    /// The version we speak (the configuration's).
    version: ProtocolVersion,
    /// shoal patch: where direct messages go, and the cluster they must be
    /// addressed to.
    direct_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    cluster_id: String,
    /// shoal patch (V4): rounds run, for what runs every few rounds.
    rounds: u64,
    /// shoal patch (V4): when pings between rounds are due (a probe we
    /// help with; see `probe`).
    fast_ping_at: Option<time::Instant>,
}

/// shoal patch (V4): sleeps until `at`, forever if `None`.
async fn sleep_until(at: Option<time::Instant>) {
    match at {
        Some(at) => time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// shoal patch (V4): rounds between two passes of the tombstone collector
/// (it walks every key of every node; tombstones wait an hour anyway).
const GC_ROUNDS: u64 = 10;

/// shoal patch (upgrade): the server speaks `version` from now on. Who
/// spoke an older one is forgotten: peers that spoke V3 before the switch
/// would otherwise be spoken to in V3 (and sent `Dead`, not votes) until
/// they spoke V4 to us, and they keep speaking to us the version we last
/// spoke to them.
fn follow_version(
    current: &mut ProtocolVersion,
    older_peers: &mut std::collections::HashMap<SocketAddr, ProtocolVersion>,
    version: ProtocolVersion,
) {
    if version != *current {
        *current = version;
        older_peers.clear();
    }
}

/// shoal patch: at most this many peers remembered as speaking an older
/// version (forgotten all at once beyond: they tell us again).
const MAX_OLDER_PEERS: usize = 4096;

impl Server {
    async fn new(
        command_rx: UnboundedReceiver<Command>,
        chitchat: Arc<Mutex<Chitchat>>,
        transport: Box<dyn Socket>,
        direct_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) -> Self {
        let rng = SmallRng::from_rng(&mut rng());
        let (version, cluster_id) = {
            let chitchat = chitchat.lock().await;
            (
                chitchat.config.protocol_version,
                chitchat.cluster_id().to_string(),
            )
        };
        Self {
            version,
            direct_tx,
            cluster_id,
            chitchat,
            command_rx,
            transport,
            rng,
            rumors_at: Default::default(),
            news_pending: false,
            older_peers: Default::default(),
            rounds: 0,
            fast_ping_at: None,
        }
    }

    /// Listen for new Chitchat envelopes.
    async fn run(&mut self) -> anyhow::Result<()> {
        let gossip_interval = self.chitchat.lock().await.config.gossip_interval;
        let mut gossip_interval = time::interval(gossip_interval);
        loop {
            tokio::select! {
                result = self.transport.recv() => match result {
                    Ok(RecvOutcome { from_addr, envelope, .. }) => {
                        let _ = self.handle_envelope(from_addr, envelope).await;
                    }
                    // Transient errors (e.g. ENOBUFS) are swallowed inside
                    // Socket::recv. An error here means the socket is broken.
                    Err(err) => {
                        warn!(err=%err, "fatal UDP recv error, stopping gossip loop");
                        return Err(err);
                    }
                },
                _ = gossip_interval.tick() => {
                    // shoal patch: the protocol may change (see `upgrade`).
                    let bridging = {
                        let chitchat = self.chitchat.lock().await;
                        follow_version(
                            &mut self.version,
                            &mut self.older_peers,
                            chitchat.protocol_version(),
                        );
                        chitchat.bridging()
                    };
                    if self.version >= ProtocolVersion::V4 {
                        if self.news_pending {
                            let rumors = {
                                let chitchat = self.chitchat.clone();
                                let mut chitchat = chitchat.lock().await;
                                self.rumors(&mut chitchat, None)
                            };
                            let _ = self.send_rumors(rumors).await;
                        }
                        self.pulse_multiple().await;
                        if bridging {
                            self.bridge_round().await;
                        }
                    } else {
                        self.gossip_multiple().await
                    }
                },
                _ = sleep_until(self.fast_ping_at) => {
                    let pings = {
                        let mut chitchat = self.chitchat.lock().await;
                        let pings = chitchat.fast_pings();
                        self.fast_ping_at = chitchat.next_fast_ping();
                        pings
                    };
                    for (peer, message) in pings {
                        self.send_to(peer, message, "a probe's ping").await;
                    }
                },
                command = self.command_rx.recv() => match command {
                    Some(Command::Gossip(addr)) => {
                        let _ = self.gossip(addr).await;
                    },
                    Some(Command::Direct(addr, payload)) => {
                        let message = ChitchatMessage::Direct {
                            cluster_id: self.cluster_id.clone(),
                            payload,
                        };
                        self.send_to(addr, message, "a direct message").await;
                    },
                    Some(Command::Shutdown) | None => break,
                }
            }
        }
        Ok(())
    }

    /// Processes a single UDP datagram.
    async fn handle_envelope(
        &mut self,
        from_addr: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<()> {
        let version = envelope.version;
        self.note_version(from_addr, version);
        // shoal patch: a direct message goes to the application as it is.
        if let ChitchatMessage::Direct {
            cluster_id,
            payload,
        } = envelope.message
        {
            if cluster_id == self.cluster_id {
                let _ = self.direct_tx.try_send((from_addr, payload));
            }
            return Ok(());
        }
        // Handle gossip message from other servers.
        // shoal patch: the sender's address goes along (see `process_message_from`).
        let (response, rumors) = {
            let chitchat = self.chitchat.clone();
            let mut chitchat = chitchat.lock().await;
            let response =
                chitchat.process_message_from(envelope.message, Some(from_addr), version);
            self.fast_ping_at = chitchat.next_fast_ping();
            follow_version(
                &mut self.version,
                &mut self.older_peers,
                chitchat.protocol_version(),
            );
            // shoal patch: news (a new node, a sign of life of a node not
            // live) goes on at once to two more live peers (not the sender,
            // not us): a branching rumor that reaches every member in a few
            // network round trips.
            // (V4 keeps news held back pending; V3 as before drops the
            // flag, its rounds carrying every digest anyway.)
            let news = chitchat.take_news();
            self.news_pending = news || (self.news_pending && self.version >= ProtocolVersion::V4);
            let rumors = if self.news_pending {
                self.rumors(&mut chitchat, Some(from_addr))
            } else {
                Vec::new()
            };
            (response, rumors)
        };
        // Send the reply, if any, echoing the version the peer used: having
        // decoded its message we know it supports that format, so the reply is
        // guaranteed to be decodable on its end.
        if let Some(message) = response {
            self.transport
                .send(from_addr, ChitchatEnvelope { version, message })
                .await?;
        }
        self.send_rumors(rumors).await?;
        self.send_outbox().await;
        let dead = self.chitchat.lock().await.take_newly_dead();
        self.spread_dead(dead, Some(from_addr)).await;
        Ok(())
    }

    /// shoal patch (V4): sends what chitchat queued (pulses answered,
    /// votes, syncs).
    async fn send_outbox(&mut self) {
        let outbox = self.chitchat.lock().await.take_outbox();
        for (peer, message) in outbox {
            self.send_to(peer, message, "a queued message").await;
        }
    }

    /// shoal patch: sends `message` to `peer` in the version it speaks; a
    /// failure is logged, not returned (gossip is lossy by design).
    async fn send_to(&mut self, peer: SocketAddr, message: ChitchatMessage, what: &str) {
        let version = self.version_for(peer);
        if let Err(error) = self
            .transport
            .send(peer, ChitchatEnvelope { version, message })
            .await
        {
            debug!(%error, %peer, "failed to send {what}");
        }
    }

    /// shoal patch (V4): a round — a pulse to each neighbour (see `pulse`),
    /// a pulse to `gossip_fanout` other live members at random, and the
    /// seeds and dead nodes contacted as upstream does, with a SYN.
    async fn pulse_multiple(&mut self) {
        let (pulses, extra, syns) = {
            let mut chitchat = self.chitchat.lock().await;
            chitchat.update_self_heartbeat();
            if self.rounds % GC_ROUNDS == 0 {
                chitchat.gc_keys_marked_for_deletion();
            }
            self.rounds += 1;
            let pulses = chitchat.pulse_round();
            let me = chitchat.self_chitchat_id().gossip_advertise_addr;
            let neighbours: HashSet<SocketAddr> = pulses.iter().map(|(addr, _)| *addr).collect();
            // Counts, not sets, of the live (this runs every round: at
            // N = 1,000 four sets of every address were most of a round's
            // work); the sets only where they are drawn from.
            let live_count = chitchat.live_node_count();
            let dead: HashSet<SocketAddr> = chitchat
                .dead_nodes()
                .map(|id| id.gossip_advertise_addr)
                .collect();
            let seeds: HashSet<SocketAddr> = chitchat
                .seed_nodes()
                .into_iter()
                .filter(|addr| *addr != me)
                .collect();
            let fanout = chitchat.config.gossip_fanout;
            let (extra, dead, seed) = if live_count == 0 || fanout > 0 {
                let live: HashSet<SocketAddr> = chitchat
                    .live_nodes()
                    .map(|id| id.gossip_advertise_addr)
                    .filter(|addr| *addr != me)
                    .collect();
                let peers: HashSet<SocketAddr> = chitchat
                    .cluster_state()
                    .nodes()
                    .map(|id| id.gossip_advertise_addr)
                    .filter(|addr| *addr != me)
                    .collect();
                let others: HashSet<SocketAddr> = live.difference(&neighbours).copied().collect();
                select_nodes_for_gossip(&mut self.rng, fanout, peers, others, dead, seeds)
            } else {
                let dead_count = dead.len();
                (
                    Vec::new(),
                    select_dead_node_to_gossip_with(&mut self.rng, &dead, live_count, dead_count),
                    select_seed_node_to_gossip_with(&mut self.rng, &seeds, live_count, dead_count),
                )
            };
            let mut contacts: Vec<SocketAddr> = extra.into_iter().chain(dead).chain(seed).collect();
            contacts.retain(|addr| !neighbours.contains(addr));
            contacts.sort_unstable();
            contacts.dedup();
            // Until a member knows anyone live, its SYNs (to the seeds) are
            // its way in; after that, seeds, dead nodes and random peers get
            // a pulse: an answer from a dead node that echoes brings it back
            // (see `pulse`), a differing hash starts an exchange.
            let (syns, extra) = if live_count == 0 {
                (contacts, Vec::new())
            } else {
                let hash = chitchat.state_hash();
                let heartbeat = chitchat.own_heartbeat();
                let pulse = |addr| {
                    let echo = chitchat.heard_from(addr);
                    (
                        addr,
                        ChitchatMessage::Pulse {
                            state_hash: hash,
                            heartbeat,
                            echo,
                        },
                    )
                };
                (
                    Vec::new(),
                    contacts.into_iter().map(pulse).collect::<Vec<_>>(),
                )
            };
            (pulses, extra, syns)
        };
        for (peer, message) in pulses.into_iter().chain(extra) {
            self.send_to(peer, message, "a pulse").await;
        }
        for peer in syns {
            if let Err(error) = self.gossip(peer).await {
                debug!(%error, %peer, "failed to gossip");
            }
        }
        let dead = {
            let mut chitchat = self.chitchat.lock().await;
            chitchat.update_nodes_liveness();
            chitchat.take_newly_dead()
        };
        self.send_outbox().await;
        self.spread_dead(dead, None).await;
    }

    /// shoal patch (upgrade): a member that just switched to V4 also sends
    /// V3's SYNs to random live peers, which carry every heartbeat it knows
    /// to members still on V3 (see `upgrade`).
    async fn bridge_round(&mut self) {
        let peers = {
            let chitchat = self.chitchat.lock().await;
            let me = chitchat.self_chitchat_id().gossip_advertise_addr;
            let live: Vec<SocketAddr> = chitchat
                .live_nodes()
                .map(|id| id.gossip_advertise_addr)
                .filter(|addr| *addr != me)
                .collect();
            let fanout = chitchat.bridge_fanout().min(live.len());
            rand::seq::index::sample(&mut self.rng, live.len(), fanout)
                .into_iter()
                .map(|i| live[i])
                .collect::<Vec<_>>()
        };
        for peer in peers {
            if let Err(error) = self.gossip(peer).await {
                debug!(%error, %peer, "failed to gossip");
            }
        }
    }

    /// Gossip to multiple randomly chosen nodes.
    async fn gossip_multiple(&mut self) {
        // Gossip with live nodes & probabilistically include a random dead node
        let mut chitchat_guard = self.chitchat.lock().await;
        let cluster_state = chitchat_guard.cluster_state();

        let peer_nodes = cluster_state
            .nodes()
            .filter(|chitchat_id| *chitchat_id != chitchat_guard.self_chitchat_id())
            .map(|chitchat_id| chitchat_id.gossip_advertise_addr)
            .collect::<HashSet<_>>();
        let live_nodes = chitchat_guard
            .live_nodes()
            .filter(|chitchat_id| *chitchat_id != chitchat_guard.self_chitchat_id())
            .map(|chitchat_id| chitchat_id.gossip_advertise_addr)
            .collect::<HashSet<_>>();
        let dead_nodes = chitchat_guard
            .dead_nodes()
            .map(|chitchat_id| chitchat_id.gossip_advertise_addr)
            .collect::<HashSet<_>>();
        let seed_nodes: HashSet<SocketAddr> = chitchat_guard
            .seed_nodes()
            .into_iter()
            .filter(|addr| *addr != chitchat_guard.self_chitchat_id().gossip_advertise_addr)
            .collect();
        // shoal patch: the fanout is configured (upstream: the constant 3).
        let fanout = chitchat_guard.config.gossip_fanout;
        let (selected_nodes, random_dead_node_opt, random_seed_node_opt) = select_nodes_for_gossip(
            &mut self.rng,
            fanout,
            peer_nodes,
            live_nodes,
            dead_nodes,
            seed_nodes,
        );

        chitchat_guard.update_self_heartbeat();
        chitchat_guard.gc_keys_marked_for_deletion();

        // Drop lock to prevent deadlock in [`UdpSocket::gossip`].
        drop(chitchat_guard);

        for node in selected_nodes {
            if let Err(error) = self.gossip(node).await {
                warn!(error=?error, node_address=%node, "Failed to gossip with live node.");
            }
        }
        if let Some(random_dead_node) = random_dead_node_opt {
            if let Err(error) = self.gossip(random_dead_node).await {
                debug!(error=?error, node_address=%random_dead_node, "Failed to gossip with dead node.");
            }
        }
        if let Some(random_seed_node) = random_seed_node_opt {
            if let Err(error) = self.gossip(random_seed_node).await {
                warn!(error=?error, node_address=%random_seed_node, "Failed to gossip with seed node.");
            }
        }
        // Update nodes liveness.
        let mut chitchat_guard = self.chitchat.lock().await;
        chitchat_guard.update_nodes_liveness();
        let dead = chitchat_guard.take_newly_dead();
        drop(chitchat_guard);
        self.spread_dead(dead, None).await;
    }

    /// shoal patch: the rumor of pending news, to two random live peers
    /// (not `except`, not us) and, on V4, the neighbours — unless one went
    /// out too lately: at most every fifth of a round, and on V4 every
    /// round once [`BURST_RUMORS`] went out within the last (a burst of joins
    /// brings news in most messages; each rumor earns a SYN-ACK and an ACK
    /// from each peer, and each update walks every node). News held back
    /// stays pending for the next news or the next round's tick, so the
    /// end of a burst is not left to the buckets' comparison.
    fn rumors(
        &mut self,
        chitchat: &mut Chitchat,
        except: Option<SocketAddr>,
    ) -> Vec<(SocketAddr, Option<ChitchatMessage>)> {
        let now = time::Instant::now();
        let round = chitchat.config.gossip_interval;
        while self
            .rumors_at
            .front()
            .is_some_and(|at| now.duration_since(*at) > round)
        {
            self.rumors_at.pop_front();
        }
        let every = if self.version >= ProtocolVersion::V4 && self.rumors_at.len() >= BURST_RUMORS {
            round
        } else {
            round / 5
        };
        if self
            .rumors_at
            .back()
            .is_some_and(|at| now.duration_since(*at) < every)
        {
            return Vec::new();
        }
        self.rumors_at.push_back(now);
        self.news_pending = false;
        chitchat.update_nodes_liveness();
        let mut peers = rumor_peers(chitchat, &mut self.rng, except);
        if self.version >= ProtocolVersion::V4 {
            // V4: the rumor is a SYN over the news' nodes (or buckets)
            // alone, and walks the neighbour graph too (see `spread_dead`).
            for addr in chitchat.neighbour_addrs() {
                if Some(addr) != except && !peers.contains(&addr) {
                    peers.push(addr);
                }
            }
            chitchat
                .news_rumors(&peers)
                .into_iter()
                .map(|(peer, message)| (peer, Some(message)))
                .collect()
        } else {
            // News means the sets of members differ: a positional digest
            // would only earn a `Resync`, so the rumor carries the named
            // one.
            peers.into_iter().map(|peer| (peer, None)).collect()
        }
    }

    /// shoal patch: sends rumors (`None`: a SYN with the full digest).
    async fn send_rumors(
        &mut self,
        rumors: Vec<(SocketAddr, Option<ChitchatMessage>)>,
    ) -> anyhow::Result<()> {
        for (peer, rumor) in rumors {
            match rumor {
                Some(message) => {
                    let version = self.version_for(peer);
                    self.transport
                        .send(peer, ChitchatEnvelope { version, message })
                        .await?;
                }
                None => self.gossip_with(peer, true).await?,
            }
        }
        Ok(())
    }

    /// shoal patch: tells `RUMOR_FANOUT` live peers (not `except`) that
    /// `nodes` were found dead here (protocol V2 on; see
    /// `ChitchatMessage::Dead`).
    async fn spread_dead(&mut self, nodes: Vec<ChitchatId>, except: Option<SocketAddr>) {
        if nodes.is_empty() {
            return;
        }
        if self.version < ProtocolVersion::V2 {
            return;
        }
        let (cluster_id, peers) = {
            let mut chitchat = self.chitchat.lock().await;
            let mut peers = rumor_peers(&mut chitchat, &mut self.rng, except);
            // V4: and to every neighbour, so that the death walks the
            // neighbour graph too, which reaches everyone (random peers
            // alone leave about a fifth to the next exchanges).
            for addr in chitchat.neighbour_addrs() {
                if Some(addr) != except && !peers.contains(&addr) {
                    peers.push(addr);
                }
            }
            (chitchat.cluster_id().to_string(), peers)
        };
        // shoal patch (V4): a death goes on with its voters.
        let deaths = if self.version >= ProtocolVersion::V4 {
            self.chitchat.lock().await.deaths_of(&nodes)
        } else {
            Vec::new()
        };
        for peer in peers {
            let version = self.version_for(peer);
            if version < ProtocolVersion::V2 {
                continue;
            }
            let message = if version >= ProtocolVersion::V4 {
                ChitchatMessage::Verdict {
                    cluster_id: cluster_id.clone(),
                    deaths: deaths.clone(),
                }
            } else {
                ChitchatMessage::Dead {
                    cluster_id: cluster_id.clone(),
                    nodes: nodes.clone(),
                }
            };
            self.send_to(peer, message, "dead nodes").await;
        }
    }

    /// shoal patch: remembers whether `peer` speaks an older version.
    fn note_version(&mut self, peer: SocketAddr, version: ProtocolVersion) {
        if version < self.version {
            if self.older_peers.len() >= MAX_OLDER_PEERS {
                self.older_peers.clear();
            }
            self.older_peers.insert(peer, version);
        } else {
            self.older_peers.remove(&peer);
        }
    }

    /// shoal patch: the version to speak to `peer`: ours, or the older one
    /// it was last heard speaking.
    fn version_for(&self, peer: SocketAddr) -> ProtocolVersion {
        self.older_peers.get(&peer).copied().unwrap_or(self.version)
    }

    /// Gossips with another peer.
    async fn gossip(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.gossip_with(addr, false).await
    }

    /// Gossips with another peer; `named`: with the full digest, whatever
    /// the version.
    async fn gossip_with(&mut self, addr: SocketAddr, named: bool) -> anyhow::Result<()> {
        let syn = {
            let chitchat = self.chitchat.lock().await;
            let version = self.version_for(addr);
            let message = if named {
                chitchat.create_full_syn_message()
            } else {
                chitchat.create_syn_message_for(version)
            };
            ChitchatEnvelope { version, message }
        };
        self.transport.send(addr, syn).await?;
        Ok(())
    }
}

/// shoal patch: rumors within a round past which news waits a round (V4).
const BURST_RUMORS: usize = 3;

/// shoal patch: `RUMOR_FANOUT` live peers to pass news on to, at random,
/// neither this node nor `except` (the peer the news came from).
fn rumor_peers(
    chitchat: &mut Chitchat,
    rng: &mut SmallRng,
    except: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    // V4: from the ring, in O(1) (a rumor per fifth of a round while a
    // cluster forms made this walk of the live set a cost of its own).
    if let Some(peers) = chitchat.sample_live_addrs(rng, RUMOR_FANOUT, except) {
        return peers;
    }
    let me = chitchat.self_chitchat_id().gossip_advertise_addr;
    chitchat
        .live_nodes()
        .map(|id| id.gossip_advertise_addr)
        .filter(|addr| *addr != me && Some(*addr) != except)
        .sample(rng, RUMOR_FANOUT)
}

#[derive(Debug)]
enum Command {
    Gossip(SocketAddr),
    /// shoal patch: a direct message to send.
    Direct(SocketAddr, Vec<u8>),
    Shutdown,
}

fn select_nodes_for_gossip<R>(
    rng: &mut R,
    fanout: usize,
    peer_nodes: HashSet<SocketAddr>,
    live_nodes: HashSet<SocketAddr>,
    dead_nodes: HashSet<SocketAddr>,
    seed_nodes: HashSet<SocketAddr>,
) -> (Vec<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>)
where
    R: Rng + ?Sized,
{
    let live_nodes_count = live_nodes.len();
    let dead_nodes_count = dead_nodes.len();

    // Select `fanout` live nodes.
    // On startup, select from cluster nodes since we don't know any live node yet.
    let nodes = if live_nodes_count == 0 {
        peer_nodes
    } else {
        live_nodes
    }
    .iter()
    .cloned()
    .sample(rng, fanout);

    let mut has_gossiped_with_a_seed_node = false;
    for chitchat_id in &nodes {
        if seed_nodes.contains(chitchat_id) {
            has_gossiped_with_a_seed_node = true;
            break;
        }
    }

    // Select a dead node for potential gossip.
    let random_dead_node_opt: Option<SocketAddr> =
        select_dead_node_to_gossip_with(rng, &dead_nodes, live_nodes_count, dead_nodes_count);

    // Select a seed node for potential gossip.
    // It prevents network partition caused by the number of seeds.
    // See https://issues.apache.org/jira/browse/CASSANDRA-150
    let random_seed_node_opt: Option<SocketAddr> =
        if !has_gossiped_with_a_seed_node || live_nodes_count < seed_nodes.len() {
            select_seed_node_to_gossip_with(rng, &seed_nodes, live_nodes_count, dead_nodes_count)
        } else {
            None
        };

    (nodes, random_dead_node_opt, random_seed_node_opt)
}

/// Selects a dead node to gossip with, with some probability.
fn select_dead_node_to_gossip_with<R>(
    rng: &mut R,
    dead_nodes: &HashSet<SocketAddr>,
    live_nodes_count: usize,
    dead_nodes_count: usize,
) -> Option<SocketAddr>
where
    R: Rng + ?Sized,
{
    let selection_probability = dead_nodes_count as f64 / (live_nodes_count + 1) as f64;
    if selection_probability > rng.random::<f64>() {
        return dead_nodes.iter().choose(rng).cloned();
    }
    None
}

/// Selects a seed node to gossip with, with some probability.
fn select_seed_node_to_gossip_with<R>(
    rng: &mut R,
    seed_nodes: &HashSet<SocketAddr>,
    live_nodes_count: usize,
    dead_nodes_count: usize,
) -> Option<SocketAddr>
where
    R: Rng + ?Sized,
{
    let selection_probability =
        seed_nodes.len() as f64 / (live_nodes_count + dead_nodes_count) as f64;
    if live_nodes_count == 0 || rng.random::<f64>() <= selection_probability {
        return seed_nodes.iter().choose(rng).cloned();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::time::Duration;

    use tokio_stream::{Stream, StreamExt};

    use super::*;
    use crate::message::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
    use crate::transport::{ChannelTransport, Transport};
    use crate::{Heartbeat, MAX_UDP_DATAGRAM_PAYLOAD_SIZE, NodeState};

    #[derive(Debug, Default)]
    struct RngForTest {
        value: u32,
    }

    impl rand::TryRng for RngForTest {
        type Error = std::convert::Infallible;

        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            self.value += 1;
            Ok(self.value - 1)
        }

        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.value += 1;
            Ok((self.value - 1) as u64)
        }

        fn try_fill_bytes(&mut self, _dest: &mut [u8]) -> Result<(), Self::Error> {
            unimplemented!();
        }
    }

    fn to_hash_set<T: Eq + std::hash::Hash>(chitchat_ids: Vec<T>) -> std::collections::HashSet<T> {
        chitchat_ids.into_iter().collect()
    }

    async fn timeout<O>(future: impl Future<Output = O>) -> O {
        tokio::time::timeout(Duration::from_millis(100), future)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn test_syn() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
        let test_config = ChitchatConfig::for_test(1112);
        let test_addr = test_config.chitchat_id.gossip_advertise_addr;
        let peer_addr: SocketAddr = ([127u8, 0u8, 0u8, 1u8], 1111u16).into();
        let mut peer_transport = transport.open(peer_addr).await.unwrap();
        let server = spawn_chitchat(test_config, Vec::new(), &transport)
            .await
            .unwrap();
        server.gossip(peer_addr).unwrap();
        let recv_outcome = timeout(peer_transport.recv()).await.unwrap();
        assert_eq!(recv_outcome.from_addr, test_addr);
        match recv_outcome.envelope.message {
            ChitchatMessage::Syn { cluster_id, digest } => {
                assert_eq!(cluster_id, "default-cluster");
                assert_eq!(digest.node_digests.len(), 1);
            }
            message => panic!("unexpected message: {message:?}"),
        }
    }

    #[cfg(test)]
    fn empty_seeds() -> watch::Receiver<HashSet<SocketAddr>> {
        watch::channel(Default::default()).1
    }

    #[tokio::test]
    async fn test_syn_ack() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);

        let config2 = ChitchatConfig::for_test(2);
        let mut transport2 = transport
            .open(config2.chitchat_id.gossip_advertise_addr)
            .await
            .unwrap();

        let config1 = ChitchatConfig::for_test(1);
        let addr1 = config1.chitchat_id.gossip_advertise_addr;

        let chitchat = Chitchat::with_chitchat_id_and_seeds(config2, empty_seeds(), Vec::new());
        let _handler = spawn_chitchat(config1, Vec::new(), &transport)
            .await
            .unwrap();

        let syn = chitchat.create_syn_message();
        transport2
            .send(
                addr1,
                ChitchatEnvelope {
                    version: ProtocolVersion::V0,
                    message: syn,
                },
            )
            .await
            .unwrap();

        let recv_outcome = transport2.recv().await.unwrap();
        assert_eq!(recv_outcome.from_addr, addr1);
        match recv_outcome.envelope.message {
            ChitchatMessage::SynAck { .. } => (),
            message => panic!("unexpected message: {message:?}"),
        }
    }

    // A responder must reply using the protocol version of the SYN it received,
    // not its own: a V1-capable node answering a V0 SYN replies in V0 so the
    // (possibly older) initiator can decode it.
    #[tokio::test]
    async fn test_syn_ack_echoes_syn_protocol_version() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);

        let initiator_config = ChitchatConfig::for_test(2);
        let mut initiator_transport = transport
            .open(initiator_config.chitchat_id.gossip_advertise_addr)
            .await
            .unwrap();

        // The responder speaks the newer protocol version...
        let mut responder_config = ChitchatConfig::for_test(1);
        responder_config.protocol_version = ProtocolVersion::V1;
        let responder_addr = responder_config.chitchat_id.gossip_advertise_addr;
        let initiator =
            Chitchat::with_chitchat_id_and_seeds(initiator_config, empty_seeds(), Vec::new());
        let _handler = spawn_chitchat(responder_config, Vec::new(), &transport)
            .await
            .unwrap();

        // ...but the initiator sends a V0 SYN.
        let syn = initiator.create_syn_message();
        initiator_transport
            .send(
                responder_addr,
                ChitchatEnvelope {
                    version: ProtocolVersion::V0,
                    message: syn,
                },
            )
            .await
            .unwrap();

        let recv_outcome = timeout(initiator_transport.recv()).await.unwrap();
        assert_eq!(recv_outcome.envelope.version, ProtocolVersion::V0);
        assert!(matches!(
            recv_outcome.envelope.message,
            ChitchatMessage::SynAck { .. }
        ));
    }

    #[tokio::test]
    async fn test_syn_bad_cluster() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
        let mut outsider_config = ChitchatConfig::for_test(2224);
        outsider_config.cluster_id = "another-cluster".to_string();
        let mut outsider_transport = transport
            .open(outsider_config.chitchat_id.gossip_advertise_addr)
            .await
            .unwrap();
        let outsider =
            Chitchat::with_chitchat_id_and_seeds(outsider_config, empty_seeds(), Vec::new());

        let server_config = ChitchatConfig::for_test(2223);
        let server_addr = server_config.chitchat_id.gossip_advertise_addr;
        let _handler = spawn_chitchat(server_config, Vec::new(), &transport)
            .await
            .unwrap();

        let syn = outsider.create_syn_message();
        outsider_transport
            .send(
                server_addr,
                ChitchatEnvelope {
                    version: ProtocolVersion::V0,
                    message: syn,
                },
            )
            .await
            .unwrap();

        let recv_outcome = timeout(outsider_transport.recv()).await.unwrap();
        match recv_outcome.envelope.message {
            ChitchatMessage::BadCluster => (),
            message => panic!("unexpected message: {message:?}"),
        }
    }

    #[tokio::test]
    async fn test_seeding() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
        let seed_config = ChitchatConfig::for_test(5551);
        let seed_addr = seed_config.chitchat_id.gossip_advertise_addr;
        let mut seed_transport = transport.open(seed_addr).await.unwrap();

        let mut client_config = ChitchatConfig::for_test(5552);
        let client_addr = client_config.chitchat_id.gossip_advertise_addr;
        client_config.seed_nodes = vec![seed_addr.to_string()];
        let _handler = spawn_chitchat(client_config, Vec::new(), &transport)
            .await
            .unwrap();

        let recv_outcome = timeout(seed_transport.recv()).await.unwrap();
        assert_eq!(recv_outcome.from_addr, client_addr);

        match recv_outcome.envelope.message {
            ChitchatMessage::Syn { .. } => (),
            message => panic!("unexpected message: {message:?}"),
        }
    }

    #[tokio::test]
    async fn test_heartbeat() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
        let test_config = ChitchatConfig::for_test(1);
        let test_addr = test_config.chitchat_id.gossip_advertise_addr;
        let mut test_chitchat =
            Chitchat::with_chitchat_id_and_seeds(test_config, empty_seeds(), Vec::new());
        let mut test_transport = transport.open(test_addr).await.unwrap();

        let server_config = ChitchatConfig::for_test(2);
        let server_id = server_config.chitchat_id.clone();
        let server_addr = server_config.chitchat_id.gossip_advertise_addr;
        let server_handle = spawn_chitchat(server_config, Vec::new(), &transport)
            .await
            .unwrap();
        server_handle
            .chitchat()
            .lock()
            .await
            .self_node_state()
            .set("key", "value");

        // Add our test socket to the server's nodes.
        server_handle
            .with_chitchat(|server_chitchat| {
                server_chitchat.update_self_heartbeat();
                let syn = server_chitchat.create_syn_message();
                let syn_ack = test_chitchat.process_message(syn).unwrap();
                server_chitchat.process_message(syn_ack);
            })
            .await;

        let node_state = test_chitchat
            .cluster_state()
            .node_state(&server_id)
            .unwrap();
        let heartbeat = node_state.heartbeat();

        assert_eq!(heartbeat, Heartbeat(2));

        // Wait for syn, with updated heartbeat
        let syn_envelope = timeout(test_transport.recv()).await.unwrap().envelope;

        // Reply.
        let syn_ack = test_chitchat.process_message(syn_envelope.message).unwrap();
        test_transport
            .send(
                server_addr,
                ChitchatEnvelope {
                    version: ProtocolVersion::V0,
                    message: syn_ack,
                },
            )
            .await
            .unwrap();

        // Wait for delta to ensure heartbeat key was incremented.
        let delta = loop {
            let envelope = timeout(test_transport.recv()).await.unwrap().envelope;
            if let ChitchatMessage::Ack { delta } = envelope.message {
                break delta;
            };
        };

        let node_delta = delta.get(&server_id).unwrap();
        let heartbeat = node_delta.last_gc_version;
        assert_eq!(heartbeat, 0u64);

        server_handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn test_member_change_event_is_broadcasted() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
        let node1_config = ChitchatConfig::for_test(6663);
        let node1_id = node1_config.chitchat_id.clone();
        let node1_addr = node1_config.chitchat_id.gossip_advertise_addr;
        let node1 = spawn_chitchat(node1_config, Vec::new(), &transport)
            .await
            .unwrap();

        let mut live_nodes_watcher = node1
            .chitchat()
            .lock()
            .await
            .live_nodes_watch_stream()
            .skip_while(|live_nodes| live_nodes.is_empty());

        {
            let live_nodes = next_live_nodes(&mut live_nodes_watcher).await;
            assert_eq!(live_nodes.len(), 1);
            assert!(live_nodes.contains_key(&node1_id));
        }
        let mut node2_config = ChitchatConfig::for_test(6664);
        node2_config.seed_nodes = vec![node1_addr.to_string()];
        let node2_id = node2_config.chitchat_id.clone();
        let node2 = spawn_chitchat(node2_config, Vec::new(), &transport)
            .await
            .unwrap();
        {
            let live_nodes = next_live_nodes(&mut live_nodes_watcher).await;
            assert_eq!(live_nodes.len(), 2);
            assert!(live_nodes.contains_key(&node2_id));
        }

        node1.shutdown().await.unwrap();
        node2.shutdown().await.unwrap();
    }

    async fn next_live_nodes<S: Unpin + Stream<Item = BTreeMap<ChitchatId, NodeState>>>(
        watcher: &mut S,
    ) -> BTreeMap<ChitchatId, NodeState> {
        tokio::time::timeout(Duration::from_secs(3), watcher.next())
            .await
            .expect("No Change within 3s")
            .expect("Channel was closed")
    }

    #[test]
    fn test_select_nodes_for_gossip() {
        let node1 = ChitchatId::for_local_test(10_001);
        let node2 = ChitchatId::for_local_test(10_002);
        let node3 = ChitchatId::for_local_test(10_003);
        let mut rng = RngForTest::default();
        let (nodes, dead_node, seed_node) = select_nodes_for_gossip(
            &mut rng,
            3,
            to_hash_set(vec![
                node1.gossip_advertise_addr,
                node2.gossip_advertise_addr,
                node3.gossip_advertise_addr,
            ]),
            to_hash_set(vec![
                node1.gossip_advertise_addr,
                node2.gossip_advertise_addr,
            ]),
            to_hash_set(vec![node3.gossip_advertise_addr]),
            to_hash_set(vec![node2.gossip_advertise_addr]),
        );
        assert_eq!(nodes.len(), 2);
        assert_eq!(dead_node, Some(node3.gossip_advertise_addr));
        assert_eq!(
            seed_node, None,
            "Should have already gossiped with a seed node."
        );
    }

    #[test]
    fn test_gossip_no_dead_node_no_seed_nodes() {
        let nodes: HashSet<SocketAddr> = (10_001..=10_005)
            .map(ChitchatId::for_local_test)
            .map(|chitchat_id| chitchat_id.gossip_advertise_addr)
            .collect();
        let mut rng = RngForTest::default();
        let (nodes, dead_node, seed_node) = select_nodes_for_gossip(
            &mut rng,
            3,
            nodes.clone(),
            nodes,
            to_hash_set(Vec::new()),
            to_hash_set(Vec::new()),
        );
        assert_eq!(nodes.len(), 3);
        assert_eq!(dead_node, None);
        assert_eq!(seed_node, None);
    }

    #[test]
    fn test_gossip_dead_and_seed_node() {
        let nodes: Vec<SocketAddr> = (10_001..=10_005)
            .map(ChitchatId::for_local_test)
            .map(|chitchat_id| chitchat_id.gossip_advertise_addr)
            .collect();
        let seeds: HashSet<SocketAddr> = nodes[3..5].iter().cloned().collect();
        let mut rng = RngForTest::default();
        let (gossip_nodes, gossip_dead_node, gossip_seed_node) = select_nodes_for_gossip(
            &mut rng,
            3,
            to_hash_set(nodes.clone()),
            to_hash_set(vec![nodes[0]]),
            nodes[1..].iter().cloned().collect(),
            seeds,
        );
        assert_eq!(gossip_nodes, &[nodes[0]]);
        assert!(gossip_dead_node.is_some());
        assert!(gossip_seed_node.is_some());
    }

    #[tokio::test]
    async fn test_graceful_shutdown() {
        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);
        let server_config = ChitchatConfig::for_test(1);
        let server_handle = spawn_chitchat(server_config, Vec::new(), &transport)
            .await
            .unwrap();
        server_handle.initiate_shutdown().unwrap();
        server_handle.termination_watcher().await.unwrap();
        server_handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn test_panic_shutdown() {
        let test_config = ChitchatConfig::for_test(1);
        let test_addr = test_config.chitchat_id.gossip_advertise_addr;

        let transport = ChannelTransport::with_mtu(MAX_UDP_DATAGRAM_PAYLOAD_SIZE);

        let mut test_transport = transport.open(test_addr).await.unwrap();
        let server_config = ChitchatConfig::for_test(2);
        let server_listen_addr = server_config.chitchat_id.gossip_advertise_addr;
        let server_handle = spawn_chitchat(server_config, Vec::new(), &transport)
            .await
            .unwrap();

        test_transport
            .send(
                server_listen_addr,
                ChitchatEnvelope::new_panic_for_test_v0(),
            )
            .await
            .unwrap();
        let err = server_handle.termination_watcher().await.unwrap_err();
        assert_eq!(err.to_string(), "Chitchat server panicked");
        server_handle.shutdown().await.unwrap_err();
    }
}
