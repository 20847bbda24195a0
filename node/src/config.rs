//! Typed configuration of a member, read from the environment in one place.
//!
//! Every `SHOAL_*` variable a member understands is read here and nowhere
//! else. A bad value is a [`ConfigError`] that names the variable, the value
//! it had and what would have been accepted, so an operator can fix a stack
//! file without reading code.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::advertise::AdvertiseSpec;
use crate::env::{ConfigError, Env, invalid};
use crate::key::{ClusterKey, KeyRing};

/// Default UDP port of the gossip protocol. Never 7946: Swarm's own gossip
/// (memberlist) uses it on every node.
pub const DEFAULT_GOSSIP_PORT: u16 = 7950;
/// Default gossip datagram size (UDP payload, seal included): what one
/// packet carries on a Swarm overlay without IP fragmentation — the VXLAN
/// interface's MTU of 1,450 bytes minus the IPv4 (20) and UDP (8) headers.
/// Measured in docs/membership.md ("Datagram size"): joins and detection as
/// fast as with 64 KB datagrams up to N = 100, with no datagram larger.
/// chitchat sends each round's digest unsplit: in a cluster large enough
/// for the digest alone to outgrow this, those datagrams are sent larger
/// (fragmented by IP) and counted as oversized.
pub const DEFAULT_GOSSIP_MTU: usize = 1_422;
/// The largest accepted `SHOAL_GOSSIP_MTU`: the largest UDP payload.
pub const MAX_GOSSIP_MTU: usize = 65_507;
/// The smallest accepted `SHOAL_GOSSIP_MTU`.
pub const MIN_GOSSIP_MTU: usize = 1_200;

/// Whether logs are JSON lines (`SHOAL_LOG_FORMAT=json`) or text (default).
pub fn log_json(env: &Env) -> Result<bool, ConfigError> {
    match env
        .get("SHOAL_LOG_FORMAT")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(invalid("SHOAL_LOG_FORMAT", other, "text or json")),
    }
}

/// The name of a service, as users type it in URLs (`story-service`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !raw.starts_with('-');
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err("1 to 63 characters of a-z, 0-9, '-' or '_', not starting with '-'".into())
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which wire format the gossip uses. V1 compresses digests; every member of
/// a cluster must run a shoal that understands the chosen one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipProtocol {
    /// Uncompressed digests.
    V0,
    /// Compressed digests.
    V1,
    /// Compressed digests; a reply's digest lists only what the asker lacks.
    V2,
    /// V2, and digests go by position in the member set when both sides
    /// know the same members, naming none. A member answers in
    /// the version it was asked in, and speaks to a peer the older version
    /// it last heard from it: members of releases speaking V1 or V2 and V3
    /// form one cluster during a rolling upgrade.
    V3,
    /// V3's digests, sent only when two members' state hashes differ, and
    /// liveness from pulses between ring neighbours with votes, instead of
    /// heartbeats in every digest (ARCHITECTURE.md, "Membership at scale").
    /// Every member must speak it.
    V4,
    /// V4 while every live member can speak it, V3 as soon as one cannot
    /// (default): members of releases without V4, or pinned to V3, form one
    /// cluster with these, and a rolling upgrade ends on V4.
    Auto,
}

impl GossipProtocol {
    /// Whether members run V4 (at once or once all can).
    pub fn v4(self) -> bool {
        matches!(self, GossipProtocol::V4 | GossipProtocol::Auto)
    }
}

/// Gossip and failure-detection timings.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// Time between two gossip rounds (`SHOAL_GOSSIP_INTERVAL`, default 100ms).
    pub gossip_interval: Duration,
    /// Phi-accrual threshold above which a silent member is dead
    /// (`SHOAL_PHI_THRESHOLD`, default 8; 6 with V4, where a neighbour's
    /// pulses come every round and a silent one is only a vote).
    pub phi_threshold: f64,
    /// How many members each gossip round contacts (`SHOAL_GOSSIP_FANOUT`,
    /// default 3). Gossip traffic grows with it, detection time shrinks.
    /// With V4, random members pulsed besides the neighbours (default 0).
    pub gossip_fanout: usize,
    /// With `auto`: the phi threshold and fanout while on V3 (the two
    /// above are V4's); an explicit `SHOAL_PHI_THRESHOLD` or
    /// `SHOAL_GOSSIP_FANOUT` holds for both.
    pub v3: Option<(f64, usize)>,
    /// How long a dead member is remembered before it is forgotten
    /// (`SHOAL_DEAD_MEMBER_GC`, default 2m).
    pub dead_member_gc: Duration,
    /// How long a draining member keeps serving at most
    /// (`SHOAL_DRAIN_TIMEOUT`, default 10s).
    pub drain_timeout: Duration,
    /// How long a draining member waits for the news to reach every gateway
    /// before it stops accepting (`SHOAL_DRAIN_ANNOUNCE`, default 1s).
    pub drain_announce: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            gossip_interval: Duration::from_millis(100),
            phi_threshold: 8.0,
            gossip_fanout: 3,
            v3: None,
            dead_member_gc: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(10),
            drain_announce: Duration::from_secs(1),
        }
    }
}

/// Everything a member needs to join the cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Service this member belongs to (`SHOAL_SERVICE`).
    pub service: ServiceName,
    /// Port of the service that this member advertises (`SHOAL_PORT`).
    pub port: u16,
    /// UDP port of the gossip (`SHOAL_GOSSIP_PORT`, default 7950).
    pub gossip_port: u16,
    /// Address the gossip socket binds to (`SHOAL_GOSSIP_BIND`); by default
    /// the advertised address, so members on 127.0.x.y share a port.
    pub gossip_bind: Option<IpAddr>,
    /// Seeds as `host:port`; DNS names are re-resolved while running (`SHOAL_SEEDS`).
    pub seeds: Vec<String>,
    /// How the advertised address is chosen (`SHOAL_ADVERTISE`, default auto).
    pub advertise: AdvertiseSpec,
    /// Cluster id: members of other clusters are ignored (`SHOAL_CLUSTER`).
    pub cluster: String,
    /// Keys that seal the gossip (`SHOAL_CLUSTER_KEY` / `SHOAL_CLUSTER_KEY_FILE`);
    /// `None` only when `SHOAL_INSECURE=true`.
    pub keys: Option<KeyRing>,
    /// Wire format of the gossip (`SHOAL_GOSSIP_PROTOCOL`: auto, v0 … v4).
    pub protocol: GossipProtocol,
    /// Size of the datagrams gossip messages are filled up to, seal
    /// included (`SHOAL_GOSSIP_MTU`, default [`DEFAULT_GOSSIP_MTU`]).
    pub gossip_mtu: usize,
    /// Host name shown by `/service/host` and in the member id (`SHOAL_HOSTNAME`).
    pub hostname: String,
    /// Gossip and failure-detection timings.
    pub timings: Timings,
    /// Traffic policies it announces (`SHOAL_WEIGHT`, `SHOAL_STICKY`, …).
    pub policy: crate::policy::Policy,
}

impl NodeConfig {
    /// Reads the configuration of a member of `default_service` listening on
    /// `default_port`; `SHOAL_SERVICE` / `SHOAL_PORT` override both.
    pub fn from_env(
        env: &Env,
        default_service: &str,
        default_port: u16,
    ) -> Result<Self, ConfigError> {
        let service = match env.get("SHOAL_SERVICE") {
            Some(raw) => raw
                .parse()
                .map_err(|why: String| invalid("SHOAL_SERVICE", raw, &why))?,
            None => default_service
                .parse()
                .map_err(|why: String| invalid("SHOAL_SERVICE", default_service, &why))?,
        };
        let port = env.parse_or("SHOAL_PORT", default_port, "a TCP port, 1-65535")?;
        let gossip_port: u16 = env.parse_or(
            "SHOAL_GOSSIP_PORT",
            DEFAULT_GOSSIP_PORT,
            "a UDP port, 1-65535 (not 7946, Swarm's own gossip port)",
        )?;
        if gossip_port == 7946 {
            return Err(invalid(
                "SHOAL_GOSSIP_PORT",
                "7946",
                "a UDP port other than 7946 (Swarm's own gossip port); 0 picks a free one",
            ));
        }
        let gossip_bind = match env.get("SHOAL_GOSSIP_BIND") {
            None => None,
            Some(raw) => Some(
                raw.parse()
                    .map_err(|_| invalid("SHOAL_GOSSIP_BIND", raw, "an IP address"))?,
            ),
        };
        let seeds = parse_seeds(env.get("SHOAL_SEEDS").unwrap_or(""), gossip_port)?;
        let advertise = match env.get("SHOAL_ADVERTISE") {
            None => AdvertiseSpec::Auto,
            Some(raw) => raw
                .parse()
                .map_err(|why: String| invalid("SHOAL_ADVERTISE", raw, &why))?,
        };
        let cluster = env.get("SHOAL_CLUSTER").unwrap_or("shoal").to_string();
        let protocol = match env
            .get("SHOAL_GOSSIP_PROTOCOL")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("auto") => GossipProtocol::Auto,
            Some("v3") => GossipProtocol::V3,
            Some("v2") => GossipProtocol::V2,
            Some("v1") => GossipProtocol::V1,
            Some("v0") => GossipProtocol::V0,
            Some("v4") => GossipProtocol::V4,
            Some(other) => {
                return Err(invalid(
                    "SHOAL_GOSSIP_PROTOCOL",
                    other,
                    "auto, v0, v1, v2, v3 or v4",
                ));
            }
        };
        let hostname = match env.get("SHOAL_HOSTNAME") {
            Some(h) => h.to_string(),
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let gossip_mtu = env.parse_in(
            "SHOAL_GOSSIP_MTU",
            DEFAULT_GOSSIP_MTU,
            MIN_GOSSIP_MTU..=MAX_GOSSIP_MTU,
            "a datagram size in bytes, 1200-65507",
        )?;
        let timings = read_timings(env, protocol)?;
        let keys = read_keys(env)?;
        let policy = crate::policy::Policy::from_env(env)?;
        Ok(Self {
            service,
            port,
            gossip_port,
            gossip_bind,
            seeds,
            advertise,
            cluster,
            keys,
            protocol,
            gossip_mtu,
            hostname,
            timings,
            policy,
        })
    }
}

fn read_timings(env: &Env, protocol: GossipProtocol) -> Result<Timings, ConfigError> {
    let mut d = Timings::default();
    // V4 judges liveness by pulses to neighbours: random peers are extra.
    // A neighbour pulses every round: 6 silent rounds are a vote.
    let v3 = (d.phi_threshold, d.gossip_fanout);
    let least_fanout = match protocol {
        GossipProtocol::V4 => {
            d.gossip_fanout = 0;
            d.phi_threshold = 6.0;
            0
        }
        GossipProtocol::Auto => {
            d.phi_threshold = 6.0;
            1
        }
        _ => 1,
    };
    let gossip_interval = env.duration_in(
        "SHOAL_GOSSIP_INTERVAL",
        d.gossip_interval,
        Duration::from_millis(10)..=Duration::from_secs(10),
        "a duration between 10ms and 10s",
    )?;
    let phi_threshold = env.parse_in(
        "SHOAL_PHI_THRESHOLD",
        d.phi_threshold,
        1.0..=32.0,
        "a number between 1 and 32",
    )?;
    let gossip_fanout = env.parse_in(
        "SHOAL_GOSSIP_FANOUT",
        d.gossip_fanout,
        least_fanout..=16,
        if least_fanout == 0 {
            "a whole number between 0 and 16"
        } else {
            "a whole number between 1 and 16 (0 only with SHOAL_GOSSIP_PROTOCOL=v4)"
        },
    )?;
    // Auto: what was set holds for V3 and V4 alike; defaults apart (V4
    // pulses no random members unless told to).
    let gossip_fanout = match env.get("SHOAL_GOSSIP_FANOUT") {
        None if protocol == GossipProtocol::Auto => 0,
        _ => gossip_fanout,
    };
    let v3 = (protocol == GossipProtocol::Auto).then(|| {
        (
            env.get("SHOAL_PHI_THRESHOLD")
                .map_or(v3.0, |_| phi_threshold),
            env.get("SHOAL_GOSSIP_FANOUT")
                .map_or(v3.1, |_| gossip_fanout),
        )
    });
    Ok(Timings {
        gossip_interval,
        phi_threshold,
        gossip_fanout,
        v3,
        dead_member_gc: env.duration_or("SHOAL_DEAD_MEMBER_GC", d.dead_member_gc)?,
        drain_timeout: env.duration_or("SHOAL_DRAIN_TIMEOUT", d.drain_timeout)?,
        drain_announce: env.duration_or("SHOAL_DRAIN_ANNOUNCE", d.drain_announce)?,
    })
}

/// Reads the key ring: `SHOAL_CLUSTER_KEY` (comma list, base64) or the file
/// named by `SHOAL_CLUSTER_KEY_FILE` (one key per line or comma separated).
/// The first key seals what this member sends; all of them open.
fn read_keys(env: &Env) -> Result<Option<KeyRing>, ConfigError> {
    let insecure = env.bool_or("SHOAL_INSECURE", false)?;
    match read_key_ring(env, "SHOAL_CLUSTER_KEY", "SHOAL_CLUSTER_KEY_FILE")? {
        Some(ring) => Ok(Some(ring)),
        None if insecure => Ok(None),
        None => Err(ConfigError::Missing {
            var: "SHOAL_CLUSTER_KEY",
            hint: "gossip is sealed with a cluster key; create one with `shoal keygen` and set \
                   SHOAL_CLUSTER_KEY (or SHOAL_CLUSTER_KEY_FILE, e.g. a Docker secret), or set \
                   SHOAL_INSECURE=true for a throwaway local cluster"
                .into(),
        }),
    }
}

/// Reads a key ring from `var` (comma list of base64 keys made by `shoal
/// keygen`) or from the file `file_var` names (one key per line or comma
/// separated); `None` when neither is set. The first key seals, all open.
pub fn read_key_ring(
    env: &Env,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<KeyRing>, ConfigError> {
    let (var, text) = match (env.get(var), env.get(file_var)) {
        (Some(_), Some(path)) => {
            return Err(invalid(
                file_var,
                path,
                &format!("only one of {var} and {file_var}"),
            ));
        }
        (Some(k), None) => (var, k.to_string()),
        (None, Some(path)) => {
            #[allow(
                clippy::disallowed_methods,
                reason = "read once at start, before the member gossips or serves"
            )]
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                var: file_var,
                path: path.into(),
                source,
            })?;
            (file_var, text)
        }
        (None, None) => return Ok(None),
    };
    let mut keys = Vec::new();
    for part in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let key: ClusterKey = part.parse().map_err(|why: String| {
            // Never echo a key back into logs: show only its length.
            invalid(var, &format!("<{} characters>", part.len()), &why)
        })?;
        keys.push(key);
    }
    KeyRing::new(keys)
        .map(Some)
        .ok_or_else(|| invalid(var, "", "at least one base64 key made by `shoal keygen`"))
}

/// Parses a comma list of `host:port` seeds; a bare host gets the gossip port.
pub fn parse_seeds(raw: &str, gossip_port: u16) -> Result<Vec<String>, ConfigError> {
    let mut seeds = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let seed = match part.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(invalid(
                        "SHOAL_SEEDS",
                        raw,
                        "a comma list of host:port, e.g. tasks.gateway:7950,10.0.9.3:7950",
                    ));
                }
                part.to_string()
            }
            _ => format!("{part}:{gossip_port}"),
        };
        if seed.chars().any(char::is_whitespace) {
            return Err(invalid(
                "SHOAL_SEEDS",
                raw,
                "a comma list of host:port without spaces inside an entry",
            ));
        }
        seeds.push(seed);
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests;
