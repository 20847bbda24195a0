//! Starting a member's gossip: chitchat with shoal's settings, this
//! member's announce record, the sealed transport over a [`Wire`]. What
//! [`crate::Cluster::join`] starts before it derives views; the membership
//! simulator (`tests/src/sim.rs`) starts exactly this for thousands of
//! members in one process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, V3Settings,
    spawn_chitchat,
};
use tracing::{info, warn};

use crate::advertise::{self, AdvertiseError};
use crate::clock::now_ms;
use crate::config::{GossipProtocol, NodeConfig};
use crate::member::{Announce, MemberId};
use crate::transport::{GossipStats, SealedTransport, Sealer, Wire, max_message_len};

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

/// A member's gossip, running.
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
        let generation = now_ms();
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
                GossipProtocol::V4 | GossipProtocol::Auto => ProtocolVersion::V4,
            },
            upgrade: t.v3.map(|(phi_threshold, gossip_fanout)| V3Settings {
                phi_threshold,
                gossip_fanout,
            }),
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
pub(crate) async fn resolve_advertise(config: &NodeConfig) -> Result<IpAddr, AdvertiseError> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::env::Env;
    use crate::transport::Udp;

    fn config(pairs: &[(&str, &str)]) -> NodeConfig {
        let mut env =
            Env::from_pairs([("SHOAL_ADVERTISE", "127.0.0.1"), ("SHOAL_INSECURE", "true")]);
        for (k, v) in pairs {
            env.set(k, *v);
        }
        NodeConfig::from_env(&env, "orders", 8080).expect("a valid configuration")
    }

    #[tokio::test]
    async fn an_observer_on_port_0_gossips_from_a_real_port() {
        let c = config(&[("SHOAL_GOSSIP_PORT", "0"), ("SHOAL_SERVICE", "orders")]);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let g = Gossip::spawn(&c, Role::Observer, ip, Arc::new(Udp))
            .await
            .expect("starts");
        let addr = g.handle.chitchat_id().gossip_advertise_addr;
        assert_ne!(addr.port(), 0);
        assert!(g.id.node.starts_with("observer@127.0.0.1:"), "{}", g.id);
        g.handle.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_that_names_the_address() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds");
        let port = taken.local_addr().expect("addr").port().to_string();
        let c = config(&[("SHOAL_GOSSIP_PORT", &port), ("SHOAL_SERVICE", "orders")]);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let role = Role::Service {
            routes: vec!["/orders".into()],
        };
        let err = Gossip::spawn(&c, role, ip, Arc::new(Udp))
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
