//! shoal-node: membership for every shoal service and gateway.
//!
//! Every replica joins one SWIM-style gossip cluster (chitchat) and
//! advertises its service name, its own address and its health. Each member
//! keeps a local [`ClusterView`] of everyone else, rebuilt on every change,
//! from which gateways balance. There is no registry.
//!
//! # Layout (each module private; what the gateway, the apps and the CLI use
//! is re-exported below)
//! - `env`, `config`, `policy`: settings from `SHOAL_*` variables — where
//!   they come from and their one error; the member's typed configuration;
//!   the traffic policies it announces.
//! - `advertise`: which address this member tells the others.
//! - `key`: cluster keys and the key ring used for rotation.
//! - `transport`: gossip datagrams sealed with ChaCha20-Poly1305.
//! - `member`: the gossip keys a member publishes and the typed record;
//!   `view`: [`ClusterView`], service → members.
//! - `acme`: what gateways share to obtain an ACME certificate together
//!   (challenges, the claim to order, who holds the certificate);
//! - `lease`: an instance registered through Eureka's API (pure);
//!   `leases`: the leases held in gossip, adopted when their gateway dies.
//! - `stats`, `demand`: what gateways share — traffic figures, rate-limit
//!   demand; `shared`: publishing and reading them.
//! - `gossip`: chitchat started with shoal's settings; `membership`: the
//!   view derived from it; `cluster`: [`Cluster`], the handle that joins,
//!   publishes and drains.
//! - `clock`: wall-clock milliseconds as gossip carries them.
//!
//! Nothing outside this crate sees chitchat or writes a gossip key: the rest
//! of shoal reads typed members and views, and shares figures, demand and
//! leases through [`Cluster`]'s typed methods. The `testing` feature opens
//! the gossip itself (chitchat's handle, the wire, the sealer) to the
//! membership simulator, the fuzz targets and the tests.

#![forbid(unsafe_code)]

mod acme;
mod advertise;
mod clock;
mod cluster;
mod config;
mod demand;
mod env;
mod gossip;
mod key;
mod lease;
mod leases;
mod member;
mod membership;
mod policy;
mod shared;
mod stats;
#[cfg(test)]
mod testkit;
mod transport;
mod view;

pub use acme::CertAnnouncement;
pub use advertise::{AdvertiseError, AdvertiseSpec};
pub use clock::now_ms;
pub use cluster::Cluster;
pub use config::{
    DEFAULT_GOSSIP_MTU, DEFAULT_GOSSIP_PORT, GossipProtocol, NodeConfig, ServiceName, Timings,
    log_json, read_key_ring,
};
pub use demand::Demand;
pub use env::{ConfigError, Env, invalid, parse_duration};
pub use gossip::{JoinError, Role};
pub use key::{ClusterKey, KeyRing};
pub use lease::{Lease, LeaseError, LeaseLimits, LeaseOp, Registration, Status};
pub use lease::{parse_renewal as lease_renewal, renewal_key as lease_renewal_key};
pub use member::{Health, Member, MemberId};
pub use policy::{AuthForward, AuthJwt, Policy, RateLimit, Weight};
pub use stats::{
    BUCKETS, ClusterStats, Counts, Figures, GatewayStats, Histogram, Merged, WINDOW_SECS, bucket,
};
pub use transport::{GossipStats, MessageKind, OpenError, Sealer};
pub use view::{ClusterView, MemberEvent, MembersDoc};

/// The gossip itself, for the membership simulator, the fuzz targets and
/// the tests (feature `testing`): chitchat's handle, the wire datagrams go
/// over, the sealer, and the gossip key names.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::gossip::Gossip;
    pub use crate::leases::apply as apply_lease;
    pub use crate::member::keys;
    pub use crate::transport::{Sealer, Wire, WireSocket, check_datagram};
}
