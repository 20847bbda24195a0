//! `Cluster`: this member's handle on the gossip cluster.
//!
//! It hides chitchat entirely: it joins with the configured timings and the
//! sealed transport, publishes this member's [`Announce`], turns every
//! membership change into a new [`ClusterView`] on a watch channel, and walks
//! the health lifecycle `starting → up → draining → left`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::{BTreeMap, HashSet};

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion, spawn_chitchat,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::advertise::{self, AdvertiseError};
use crate::config::{GossipProtocol, NodeConfig};
use crate::lease::{self, Lease, LeaseError, LeaseOp};
use crate::member::{Announce, Health, Member, MemberId, keys};
use crate::stats::{self, ClusterStats, GatewayStats};
use crate::transport::{GossipStats, SealedTransport, Sealer, Udp, Wire, max_message_len};
use crate::view::ClusterView;

/// Why a member could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No address to advertise.
    #[error(transparent)]
    Advertise(#[from] AdvertiseError),
    /// The gossip could not start (e.g. the port is taken).
    #[error("gossip could not start on {addr}: {source:#}")]
    Gossip {
        addr: SocketAddr,
        source: anyhow::Error,
    },
}

/// What kind of member joins.
#[derive(Debug, Clone)]
pub enum Role {
    /// A member of a service: published, routable once `up`.
    Service {
        /// Path prefixes served besides `/api/{service}` (e.g. `/story`).
        routes: Vec<String>,
    },
    /// Watches the cluster, publishes nothing, never routed to.
    Observer,
}

/// A cheap-to-clone handle on this member's place in the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    handle: ChitchatHandle,
    id: MemberId,
    service_addr: SocketAddr,
    view_rx: watch::Receiver<Arc<ClusterView>>,
    stats: Arc<GossipStats>,
    gossip_interval: Duration,
    drain_announce: Duration,
}

impl Cluster {
    /// Joins the cluster described by `config` in the given role.
    pub async fn join(config: &NodeConfig, role: Role) -> Result<Cluster, JoinError> {
        let advertise_ip = resolve_advertise(config).await?;
        let gossip = Gossip::spawn(config, role, advertise_ip, Arc::new(Udp)).await?;
        let view_rx = spawn_view_builder(&gossip.handle);
        let t = &config.timings;
        Ok(Cluster {
            inner: Arc::new(Inner {
                handle: gossip.handle,
                id: gossip.id,
                service_addr: gossip.service_addr,
                view_rx,
                stats: gossip.stats,
                gossip_interval: t.gossip_interval,
                drain_announce: t.drain_announce,
            }),
        })
    }
    /// The cluster as this member sees it; `changed()` fires on every change.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.inner.view_rx.clone()
    }

    /// This member's identity.
    pub fn id(&self) -> &MemberId {
        &self.inner.id
    }

    /// The service address this member advertises.
    pub fn advertised(&self) -> SocketAddr {
        self.inner.service_addr
    }

    /// Gossip traffic counters.
    pub fn stats(&self) -> &GossipStats {
        &self.inner.stats
    }

    /// Applies an Eureka operation to the lease of instance `id` of `app`:
    /// reads the newest copy any member holds, and writes the result as this
    /// member's own copy, one version higher. Seen by every member within a
    /// few gossip rounds.
    pub async fn lease(&self, app: &str, id: &str, op: LeaseOp) -> Result<Arc<Lease>, LeaseError> {
        if matches!(op, LeaseOp::Register(_)) {
            let view = self.inner.view_rx.borrow().clone();
            if view
                .members()
                .any(|m| m.lease.is_none() && (m.instance_id() == id || m.id.node == id))
            {
                return Err(LeaseError::Native(id.to_string()));
            }
        }
        let chitchat = self.inner.handle.chitchat();
        let mut c = chitchat.lock().await;
        let key = lease::key(id);
        let mut current: Option<(Lease, String)> = None;
        for (holder, state) in c.node_states() {
            let Some(copy) = state.get(&key).and_then(Lease::decode) else {
                continue;
            };
            if current
                .as_ref()
                .is_none_or(|(seen, by)| copy.beats(&holder.node_id, seen, by))
            {
                current = Some((copy, holder.node_id.to_string()));
            }
        }
        let next = Lease::apply(current.as_ref().map(|(l, _)| l), app, id, op, now_ms())?;
        c.self_node_state().set(key, next.encode()?);
        Ok(Arc::new(next))
    }

    /// Starts keeping leases, on a gateway: once a second, adopts the leases
    /// of gateways that are gone and forgets its own copies that ran out.
    pub fn keep_leases(&self) {
        let chitchat = Arc::downgrade(&self.inner.handle.chitchat());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(strong) = chitchat.upgrade() else {
                    return;
                };
                let (adopted, dropped) = keep_leases(&mut *strong.lock().await, now_ms());
                if dropped > 0 {
                    debug!(dropped, adopted, "lease upkeep");
                }
            }
        });
    }

    /// Publishes this gateway's traffic figures (replacing the previous
    /// ones: records of services and instances no longer in `stats` are
    /// deleted). A record whose value did not change is not sent again.
    pub async fn publish_stats(&self, stats: &GatewayStats) {
        self.publish_under(stats::KEY_PREFIX, stats.key_values())
            .await;
    }

    /// Replaces this member's keys that start with `prefix` by `kv`: keys
    /// no longer in it are deleted, values that did not change are not
    /// sent again.
    pub async fn publish_under(&self, prefix: &str, kv: Vec<(String, String)>) {
        let chitchat = self.inner.handle.chitchat();
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        let gone: Vec<String> = state
            .iter_prefix(prefix)
            .map(|(k, _)| k)
            .filter(|k| !kv.iter().any(|(key, _)| key == k))
            .map(str::to_string)
            .collect();
        for key in gone {
            state.delete(&key);
        }
        for (key, value) in kv {
            state.set(key, value);
        }
    }

    /// The keys starting with `prefix` of every other live member that has
    /// not announced `left`, as `(key, value)`.
    pub async fn read_under(&self, prefix: &str) -> Vec<(String, String)> {
        let chitchat = self.inner.handle.chitchat();
        let c = chitchat.lock().await;
        let me = c.self_chitchat_id().clone();
        let mut out = Vec::new();
        for id in c.live_nodes().filter(|id| **id != me) {
            if let Some(state) = c.node_state(id) {
                if state.get(keys::HEALTH) == Some(Health::Left.as_str()) {
                    continue;
                }
                out.extend(
                    state
                        .iter_prefix(prefix)
                        .map(|(k, v)| (k.to_string(), v.value.clone())),
                );
            }
        }
        out
    }

    /// Every live gateway's figures, merged.
    pub async fn cluster_stats(&self) -> ClusterStats {
        let chitchat = self.inner.handle.chitchat();
        let c = chitchat.lock().await;
        let mut merged = ClusterStats::default();
        for id in c.live_nodes() {
            if let Some(state) = c.node_state(id) {
                if state.get(keys::HEALTH) == Some(Health::Left.as_str()) {
                    continue;
                }
                merged.add_gateway(
                    state
                        .iter_prefix(stats::WINDOW_KEY)
                        .map(|(k, v)| (k, v.value.as_str())),
                );
            }
        }
        merged
    }

    /// Publishes a new health.
    pub async fn set_health(&self, health: Health) {
        self.inner
            .handle
            .with_chitchat(|c| c.self_node_state().set(keys::HEALTH, health.as_str()))
            .await;
        info!(member = %self.inner.id, %health, "health");
    }

    /// First step of a graceful stop: announces `draining` and waits long
    /// enough for the news to reach every gateway, so that by the time the
    /// caller stops accepting, nobody is sending new requests.
    pub async fn begin_drain(&self) {
        self.set_health(Health::Draining).await;
        tokio::time::sleep(self.inner.drain_announce).await;
    }

    /// Last step: announces `left`, gives the gossip a few rounds to carry
    /// it, and stops gossiping.
    pub async fn leave(&self) {
        self.set_health(Health::Left).await;
        tokio::time::sleep(self.inner.gossip_interval * 3).await;
        self.inner.handle.abort();
        info!(member = %self.inner.id, "left the cluster");
    }
}

/// A member's gossip, running: what [`Cluster::join`] starts before it
/// derives views. The membership simulator (`tests/src/sim.rs`) starts
/// exactly this, over an in-memory [`Wire`], for hundreds of members in one
/// process.
pub struct Gossip {
    /// chitchat, running.
    pub handle: ChitchatHandle,
    /// This member's identity.
    pub id: MemberId,
    /// The service address it advertises.
    pub service_addr: SocketAddr,
    /// Its gossip traffic counters.
    pub stats: Arc<GossipStats>,
}

impl Gossip {
    /// Starts gossiping as `config` and `role` say, advertising
    /// `advertise_ip`, with datagrams over `wire`.
    pub async fn spawn(
        config: &NodeConfig,
        role: Role,
        advertise_ip: IpAddr,
        wire: Arc<dyn Wire>,
    ) -> Result<Gossip, JoinError> {
        let bind_ip = config.gossip_bind.unwrap_or(advertise_ip);
        let gossip_port = match config.gossip_port {
            // Port 0 (observers such as `shoal members`): find a free port
            // first, since peers must learn the real one.
            0 => std::net::UdpSocket::bind((bind_ip, 0))
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .map_err(|e| JoinError::Gossip {
                    addr: SocketAddr::new(bind_ip, 0),
                    source: e.into(),
                })?,
            port => port,
        };
        let gossip_addr = SocketAddr::new(advertise_ip, gossip_port);
        let listen_addr = SocketAddr::new(bind_ip, gossip_port);
        let service_addr = SocketAddr::new(advertise_ip, config.port);
        let started_ms = now_ms();
        // A fresh generation on every start: a member restarted with the
        // same generation is ignored by its peers until they forget the old one.
        // Milliseconds, not nanoseconds: every digest carries every member's
        // generation, and the fewer digits, the smaller it compresses (−28 %
        // of the gossip bytes); a restart takes longer than a millisecond.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let (node, announce) = match &role {
            Role::Service { routes } => (
                format!("{}@{}", config.service, service_addr),
                Announce {
                    service: Some(config.service.to_string()),
                    addr: service_addr,
                    routes: routes.clone(),
                    host: config.hostname.clone(),
                    started_ms,
                    policy: config.policy.clone(),
                },
            ),
            Role::Observer => (
                format!("observer@{gossip_addr}"),
                Announce {
                    service: None,
                    addr: service_addr,
                    routes: Vec::new(),
                    host: config.hostname.clone(),
                    started_ms,
                    policy: Default::default(),
                },
            ),
        };
        let t = &config.timings;
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node.clone(), generation, gossip_addr),
            cluster_id: config.cluster.clone(),
            gossip_interval: t.gossip_interval,
            listen_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: t.phi_threshold,
                sampling_window_size: 200,
                // A gap longer than this is a pause, not a sample.
                max_interval: t.gossip_interval * 20,
                initial_interval: t.gossip_interval,
                dead_node_grace_period: t.dead_member_gc,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: match config.protocol {
                GossipProtocol::V0 => ProtocolVersion::V0,
                GossipProtocol::V1 => ProtocolVersion::V1,
                GossipProtocol::V2 => ProtocolVersion::V2,
                GossipProtocol::V3 => ProtocolVersion::V3,
            },
            // Room for the seal: a full message, sealed, still fits the MTU.
            max_message_len: max_message_len(config.gossip_mtu, config.keys.is_some()),
            gossip_fanout: t.gossip_fanout,
        };
        let stats = Arc::new(GossipStats::default());
        let sealer = config
            .keys
            .as_ref()
            .map(|ring| Sealer::new(ring, &config.cluster));
        if sealer.is_none() {
            warn!("SHOAL_INSECURE: gossip is neither authenticated nor encrypted");
        }
        let transport = SealedTransport::new(sealer, stats.clone(), config.gossip_mtu, wire);
        let handle = spawn_chitchat(chitchat_config, announce.key_values(), &transport)
            .await
            .map_err(|source| JoinError::Gossip {
                addr: listen_addr,
                source,
            })?;
        let id = MemberId { node, generation };
        info!(member = %id, %gossip_addr, %service_addr, seeds = ?config.seeds, "joined the cluster");
        Ok(Gossip {
            handle,
            id,
            service_addr,
            stats,
        })
    }
}

/// Finds the address to advertise; with `auto`, waits (up to 30 s) for a
/// seed to resolve, since on Swarm DNS entries appear as tasks start.
async fn resolve_advertise(config: &NodeConfig) -> Result<IpAddr, AdvertiseError> {
    let interfaces = advertise::local_addrs()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut resolved = Vec::new();
        for seed in &config.seeds {
            if let Ok(addrs) = tokio::net::lookup_host(seed.as_str()).await {
                resolved.extend(addrs);
            }
        }
        let waiting_for_dns = matches!(config.advertise, advertise::AdvertiseSpec::Auto)
            && resolved.is_empty()
            && !config.seeds.is_empty();
        if !waiting_for_dns || tokio::time::Instant::now() >= deadline {
            if waiting_for_dns {
                return Err(AdvertiseError::NoSeedResolves(config.seeds.join(",")));
            }
            return advertise::choose(&config.advertise, &resolved, &interfaces);
        }
        warn!(seeds = ?config.seeds, "no seed resolves yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Rebuilds the view on every change of chitchat's live set, and when a
/// lease runs out.
fn spawn_view_builder(handle: &ChitchatHandle) -> watch::Receiver<Arc<ClusterView>> {
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    // Weak: when the handle is dropped, chitchat and its watcher go with it,
    // `changed()` fails and this task ends.
    let chitchat = Arc::downgrade(&handle.chitchat());
    tokio::spawn(async move {
        let Some(strong) = chitchat.upgrade() else {
            return;
        };
        let mut live = strong.lock().await.live_nodes_watcher();
        drop(strong);
        loop {
            live.borrow_and_update();
            let Some(strong) = chitchat.upgrade() else {
                return;
            };
            let (view, next_deadline) = build_view(&*strong.lock().await, now_ms());
            drop(strong);
            // Gossip changes that are not membership (traffic figures) leave
            // the view as it was: no new view then.
            view_tx.send_if_modified(|current| {
                let changed = **current != view;
                if changed {
                    *current = Arc::new(view);
                }
                changed
            });
            let expiry = async {
                match next_deadline {
                    Some(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = live.changed() => if changed.is_err() { return },
                () = expiry => {}
            }
        }
    });
    view_rx
}

/// The view: live members that joined by themselves, and every live lease
/// held by any member, live or dead (a lease outlives the gateway that took
/// it). Also gives the next time a lease runs out.
fn build_view(c: &Chitchat, now_ms: u64) -> (ClusterView, Option<u64>) {
    let mut members: Vec<Member> = c
        .live_nodes()
        .filter_map(|id| {
            let state = c.node_state(id)?;
            Member::from_state(id, state).unwrap_or_else(|err| {
                warn!(%err, "ignoring member");
                None
            })
        })
        .collect();
    let native: HashSet<String> = members.iter().map(Member::instance_id).collect();
    let mut next_deadline: Option<u64> = None;
    for (id, (lease, holder)) in newest_leases(c.node_states().iter()) {
        if !lease.is_live(now_ms) || native.contains(&id) {
            continue;
        }
        next_deadline =
            Some(next_deadline.map_or(lease.deadline_ms(), |d| d.min(lease.deadline_ms())));
        members.push(lease.member(holder.gossip_advertise_addr));
    }
    (ClusterView::from_members(members), next_deadline)
}

/// The newest copy of every lease found in `states`, with its holder.
fn newest_leases<'a>(
    states: impl Iterator<Item = (&'a ChitchatId, &'a NodeState)>,
) -> BTreeMap<String, (Arc<Lease>, ChitchatId)> {
    let mut newest: BTreeMap<String, (Arc<Lease>, ChitchatId)> = BTreeMap::new();
    for (holder, state) in states {
        for (key, value) in state.iter_prefix(lease::KEY_PREFIX) {
            let Some(copy) = Lease::decode(&value.value) else {
                continue;
            };
            let id = key[lease::KEY_PREFIX.len()..].to_string();
            match newest.get(&id) {
                Some((seen, seen_holder))
                    if !copy.beats(&holder.node_id, seen, &seen_holder.node_id) => {}
                _ => {
                    newest.insert(id, (Arc::new(copy), holder.clone()));
                }
            }
        }
    }
    newest
}

/// One round of lease upkeep by a gateway: adopt the leases whose newest copy
/// is held only by a member that is gone (only the first live gateway by
/// node id does, so they are not copied everywhere), and drop this gateway's
/// copies that ran out (a cancel's tombstone included) a while ago.
fn keep_leases(c: &mut Chitchat, now_ms: u64) -> (usize, usize) {
    let me = c.self_chitchat_id().clone();
    let my_service = c
        .node_state(&me)
        .and_then(|s| s.get(keys::SERVICE))
        .map(str::to_string);
    let live: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
    let first_keeper = live
        .iter()
        .filter(|id| {
            c.node_state(id).is_some_and(|s| {
                s.get(keys::SERVICE).map(str::to_string) == my_service
                    && s.get(keys::HEALTH) != Some(Health::Left.as_str())
            })
        })
        .map(|id| &*id.node_id)
        .min();
    let adopt = first_keeper == Some(&*me.node_id);
    let mut writes = Vec::new();
    if adopt {
        for (id, (lease, holder)) in newest_leases(c.node_states().iter()) {
            if !live.contains(&holder) && now_ms < lease.deadline_ms() {
                if let Ok(text) = lease.encode() {
                    info!(instance = %id, from = %holder.node_id, "adopting the lease of a gateway that is gone");
                    writes.push((lease::key(&id), text));
                }
            }
        }
    }
    let expired: Vec<String> = c
        .self_node_state()
        .iter_prefix(lease::KEY_PREFIX)
        .filter(|(_, v)| {
            Lease::decode(&v.value)
                .is_none_or(|l| l.deadline_ms().saturating_add(LEASE_GC_MS) < now_ms)
        })
        .map(|(k, _)| k.to_string())
        .collect();
    let state = c.self_node_state();
    for key in &expired {
        state.delete(key);
    }
    let adopted = writes.len();
    for (key, text) in writes {
        state.set(key, text);
    }
    (adopted, expired.len())
}

/// How long a gateway keeps its copy of a lease after it ran out.
const LEASE_GC_MS: u64 = 5_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
