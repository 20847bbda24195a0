//! shoal-http: what the gateway, the services and the `shoal` CLI share
//! besides membership.
//!
//! # Layout
//! - [`drain`]: [`Drain`], the graceful stop of a server — stop accepting,
//!   let every connection (and upgraded tunnel) finish, bounded in time.
//! - [`signal`]: waiting for SIGTERM / Ctrl-C.
//! - [`spring`]: the Spring error body of the classic stack.
//! - [`telemetry`]: logging setup shared by every binary.

#![forbid(unsafe_code)]

pub mod drain;
pub mod signal;
pub mod spring;
pub mod telemetry;

pub use drain::{Drain, DrainReport, Watch, Work, stop_member};
