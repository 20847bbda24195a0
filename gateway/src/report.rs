//! **report** — what the gateway tells: the admin port ([`admin`]:
//! `/members`, `/stats`, `/metrics`, health, the dashboard and its live
//! events, Eureka's API mounted beside them) and the figures it publishes by
//! gossip and merges from every gateway ([`stats`]).
//!
//! May import: every layer beneath it — [`crate::edge`] (the ACME
//! certificate it serves sealed and shows), [`crate::forward`],
//! [`crate::route`], [`crate::meter`], [`crate::eureka`], [`crate::config`].

pub mod admin;
pub mod delta;
pub mod stats;
