//! shoal-node: membership for every shoal service and gateway.
//!
//! Every replica joins one SWIM-style gossip cluster (chitchat) and
//! advertises its service name, its own address and its health. Each member
//! keeps a local [`ClusterView`] of everyone else, rebuilt on every change,
//! from which gateways balance. There is no registry.
//!
//! # Layout
//! - [`config`]: the typed configuration, read from `SHOAL_*` variables.
//! - [`advertise`]: which address this member tells the others.
//! - [`key`]: cluster keys and the key ring used for rotation.
//! - [`stats`]: traffic figures gateways share by gossip, mergeable.
//! - [`transport`]: gossip datagrams sealed with ChaCha20-Poly1305.
//! - [`lease`]: instances registered through Eureka's API, kept as leases in gossip.
//! - [`member`]: the gossip keys a member publishes and the typed record.
//! - [`view`]: [`ClusterView`], service → members.
//! - [`cluster`]: [`Cluster`], the handle that joins, publishes and drains.
//!
//! Nothing outside this crate sees chitchat: the rest of shoal reads typed
//! members and views.

#![forbid(unsafe_code)]

pub mod advertise;
pub mod cluster;
pub mod config;
pub mod key;
pub mod lease;
pub mod member;
pub mod policy;
pub mod stats;
pub mod transport;
pub mod view;

pub use cluster::{Cluster, JoinError, Role};
pub use config::{ConfigError, Env, NodeConfig, ServiceName};
pub use lease::{Lease, LeaseError, LeaseOp, Registration, Status};
pub use member::{Health, Member, MemberId};
pub use policy::{Policy, RateLimit, Weight};
pub use view::{ClusterView, MemberEvent, MembersDoc};
