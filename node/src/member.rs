//! What a member publishes in gossip, and the typed record read back.
//!
//! These are all the chitchat keys shoal uses; nothing outside this module
//! reads or writes a key string. A member that publishes no `service` key is
//! an observer (e.g. `shoal members`) and never appears in a view.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use chitchat::{ChitchatId, NodeState};
use serde::{Deserialize, Serialize};

use crate::lease::{self, Lease, Status};
use crate::policy::{self, Policy};

/// Gossip key names, in one place.
pub mod keys {
    /// Service name (`story-service`).
    pub const SERVICE: &str = "service";
    /// Where the service is reached, `ip:port`.
    pub const ADDR: &str = "addr";
    /// [`super::Health`] as text.
    pub const HEALTH: &str = "health";
    /// Path prefixes served, comma separated (`/story`).
    pub const ROUTES: &str = "routes";
    /// Host name (container id on Swarm).
    pub const HOST: &str = "host";
    /// shoal version of the member.
    pub const VERSION: &str = "version";
    /// Start time, milliseconds since the Unix epoch.
    pub const STARTED: &str = "started";
}

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Joined, not ready yet (e.g. waiting for its database).
    Starting,
    /// Ready: the only state that receives traffic.
    Up,
    /// Stopping: finishes in-flight work, gets no new requests.
    Draining,
    /// Gone: announced just before the member stops gossiping.
    Left,
}

impl Health {
    /// The text published in gossip.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Up => "up",
            Health::Draining => "draining",
            Health::Left => "left",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Health {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "starting" => Health::Starting,
            "up" => Health::Up,
            "draining" => Health::Draining,
            "left" => Health::Left,
            _ => return Err(()),
        })
    }
}

/// Identity of one run of a member: its node id and the generation (start
/// time) that tells a restarted member from its predecessor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// Stable name of the member (`story-service@10.0.9.12:8768`).
    pub node: String,
    /// Grows on every start.
    pub generation: u64,
}

impl From<&chitchat::ChitchatId> for MemberId {
    fn from(id: &chitchat::ChitchatId) -> Self {
        Self {
            node: id.node_id.to_string(),
            generation: id.generation_id,
        }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.generation)
    }
}

/// One member of one service, as every other member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Who it is.
    pub id: MemberId,
    /// Its service.
    pub service: String,
    /// Where its service is reached.
    pub addr: SocketAddr,
    /// Its health.
    pub health: Health,
    /// Path prefixes it serves besides `/api/{service}`.
    pub routes: Vec<String>,
    /// Its host name.
    pub host: String,
    /// Its shoal version.
    pub version: String,
    /// Its start time (ms since the epoch).
    pub started_ms: u64,
    /// Where it gossips (for an instance registered through Eureka: the
    /// gateway holding its lease).
    pub gossip_addr: SocketAddr,
    /// Set for an instance registered through Eureka's REST API rather than
    /// joined by itself: its registration and lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Arc<Lease>>,
    /// The traffic policies it announces.
    #[serde(default)]
    pub policy: Policy,
}

/// A record a member publishes; turned into gossip keys by [`Announce::key_values`].
#[derive(Debug, Clone)]
pub struct Announce {
    /// Service name; `None` for an observer.
    pub service: Option<String>,
    /// Service address.
    pub addr: SocketAddr,
    /// Path prefixes served.
    pub routes: Vec<String>,
    /// Host name.
    pub host: String,
    /// Start time (ms since the epoch).
    pub started_ms: u64,
    /// Traffic policies.
    pub policy: Policy,
}

impl Announce {
    /// The initial key values of a member, with health `starting`.
    pub fn key_values(&self) -> Vec<(String, String)> {
        let Some(service) = &self.service else {
            return Vec::new();
        };
        [
            (keys::SERVICE, service.clone()),
            (keys::ADDR, self.addr.to_string()),
            (keys::HEALTH, Health::Starting.to_string()),
            (keys::ROUTES, self.routes.join(",")),
            (keys::HOST, self.host.clone()),
            (keys::VERSION, env!("CARGO_PKG_VERSION").to_string()),
            (keys::STARTED, self.started_ms.to_string()),
        ]
        .into_iter()
        .chain(self.policy.key_values())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Why a member's state could not be read (published by a foreign or broken
/// program); such a member is left out of the view and logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("member {node} publishes an invalid {key}: {value:?}")]
pub struct MemberDecodeError {
    node: String,
    key: &'static str,
    value: String,
}

impl Member {
    /// Reads a member from its gossip state; `Ok(None)` for observers.
    pub fn from_state(
        id: &ChitchatId,
        state: &NodeState,
    ) -> Result<Option<Member>, MemberDecodeError> {
        Self::from_keys(
            &id.node_id,
            id.generation_id,
            id.gossip_advertise_addr,
            |key| state.get(key),
        )
    }

    /// Reads a member from its gossip keys (`get` gives a key's value);
    /// `Ok(None)` for observers. Never panics, whatever the values.
    pub fn from_keys<'a>(
        node: &str,
        generation: u64,
        gossip_addr: SocketAddr,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Member>, MemberDecodeError> {
        let Some(service) = get(keys::SERVICE) else {
            return Ok(None);
        };
        let bad = |key: &'static str, value: Option<&str>| MemberDecodeError {
            node: node.to_string(),
            key,
            value: value.unwrap_or("<missing>").to_string(),
        };
        let field = |key: &'static str| get(key);
        let addr = field(keys::ADDR)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(keys::ADDR, field(keys::ADDR)))?;
        let health = field(keys::HEALTH)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(keys::HEALTH, field(keys::HEALTH)))?;
        let routes = field(keys::ROUTES)
            .unwrap_or("")
            .split(',')
            // Trimmed before checking: `//` trimmed is empty, and an empty
            // prefix would match every path (found by fuzzing).
            .map(|r| r.trim().trim_end_matches('/'))
            .filter(|r| r.starts_with('/') && r.len() > 1)
            .map(str::to_string)
            .collect();
        Ok(Some(Member {
            id: MemberId {
                node: node.to_string(),
                generation,
            },
            service: service.to_string(),
            addr,
            health,
            routes,
            host: field(keys::HOST).unwrap_or("").to_string(),
            version: field(keys::VERSION).unwrap_or("").to_string(),
            started_ms: field(keys::STARTED)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            gossip_addr,
            lease: None,
            policy: Policy::from_keys(&get),
        }))
    }

    /// Whether the member may receive traffic.
    pub fn is_up(&self) -> bool {
        self.health == Health::Up
    }

    /// Its id as Eureka shows it: the registered `instanceId`, or
    /// `{ip}:{service}:{port}` for a member that joined by itself.
    pub fn instance_id(&self) -> String {
        match &self.lease {
            Some(lease) => lease.registration.instance_id.clone(),
            None => format!("{}:{}:{}", self.addr.ip(), self.service, self.addr.port()),
        }
    }
}
impl Member {
    /// The member a lease stands for (an instance registered through
    /// Eureka's API); `gossip_addr` is its holder's.
    pub fn from_lease(lease: &Arc<Lease>, gossip_addr: SocketAddr) -> Member {
        let r = &lease.registration;
        Member {
            id: MemberId {
                node: lease::key(&r.instance_id),
                generation: lease.registered_ms,
            },
            service: r.service(),
            addr: SocketAddr::new(r.ip_addr, r.port),
            health: match r.effective_status() {
                Status::Up => Health::Up,
                // Out of traffic on purpose: what draining means here.
                Status::OutOfService => Health::Draining,
                Status::Down | Status::Starting | Status::Unknown => Health::Starting,
            },
            routes: Vec::new(),
            host: r.host_name.clone(),
            version: String::new(),
            started_ms: lease.registered_ms,
            gossip_addr,
            lease: Some(lease.clone()),
            // Spring Cloud's weighted balancer reads `metadata.weight`;
            // `metadata.version` is the usual version tag.
            policy: Policy::from_keys(|k| match k {
                policy::keys::WEIGHT => r.metadata.get("weight").map(String::as_str),
                policy::keys::LABEL => r.metadata.get("version").map(String::as_str),
                _ => None,
            }),
        }
    }
}
