//! **meter** — the counters every layer adds to on the request path:
//! Prometheus families ([`metrics`]) and the per-service and per-instance
//! figures gateways share ([`record`]). Written by every layer, read by
//! [`crate::report`].
//!
//! May import: [`crate::config`] and nothing else of the gateway.

pub mod metrics;
pub mod record;
