//! `Cluster`: this member's handle on the gossip cluster.
//!
//! It hides chitchat entirely: it joins with the configured timings and the
//! sealed transport, publishes this member's [`Announce`], turns every
//! membership change into a new [`ClusterView`] on a watch channel, and walks
//! the health lifecycle `starting → up → draining → left`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::advertise::{self, AdvertiseError};
use crate::config::{GossipProtocol, NodeConfig};
use crate::member::{Announce, Health, Member, MemberId, keys};
use crate::transport::{GossipStats, SealedTransport, Sealer, max_message_len};
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
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
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
            },
            // Room for the seal: a full message, sealed, still fits the MTU.
            max_message_len: max_message_len(config.gossip_mtu, config.keys.is_some()),
        };
        let stats = Arc::new(GossipStats::default());
        let sealer = config
            .keys
            .as_ref()
            .map(|ring| Sealer::new(ring, &config.cluster));
        if sealer.is_none() {
            warn!("SHOAL_INSECURE: gossip is neither authenticated nor encrypted");
        }
        let transport = SealedTransport::new(sealer, stats.clone(), config.gossip_mtu);
        let handle = spawn_chitchat(chitchat_config, announce.key_values(), &transport)
            .await
            .map_err(|source| JoinError::Gossip {
                addr: listen_addr,
                source,
            })?;
        let view_rx = spawn_view_builder(&handle);
        let id = MemberId { node, generation };
        info!(member = %id, %gossip_addr, %service_addr, seeds = ?config.seeds, "joined the cluster");
        Ok(Cluster {
            inner: Arc::new(Inner {
                handle,
                id,
                service_addr,
                view_rx,
                stats,
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

/// Rebuilds the view on every change of chitchat's live set.
fn spawn_view_builder(handle: &ChitchatHandle) -> watch::Receiver<Arc<ClusterView>> {
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let chitchat = handle.chitchat();
    tokio::spawn(async move {
        // Keep only the receiver: when the handle is dropped, chitchat and its
        // sender go with it, `changed()` fails and this task ends.
        let mut live = chitchat.lock().await.live_nodes_watcher();
        drop(chitchat);
        loop {
            let view = {
                let nodes = live.borrow_and_update();
                let members =
                    nodes
                        .iter()
                        .filter_map(|(id, state)| match Member::from_state(id, state) {
                            Ok(m) => m,
                            Err(err) => {
                                warn!(%err, "ignoring member");
                                None
                            }
                        });
                ClusterView::from_members(members)
            };
            view_tx.send_replace(Arc::new(view));
            if live.changed().await.is_err() {
                return;
            }
        }
    });
    view_rx
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
