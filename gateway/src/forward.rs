//! **forward** — taking a routed request to an instance and its answer
//! back: the entry of every request ([`proxy`]), forward auth before it
//! ([`auth`]), the request past its route
//! ([`call`]), attempts by the rules that never send a write twice
//! ([`retry`], with bodies kept for retries in [`replay`]), WebSocket
//! tunnels ([`upgrade`]), the worker's upstream connections ([`pool`]),
//! headers sent on ([`headers`]), the one body type ([`body`]), the
//! gateway's own error answers ([`error`]) and GETs ([`fetch`]), and what a request reads
//! ([`state`]).
//!
//! May import: [`crate::route`], [`crate::meter`], [`crate::config`].

pub mod auth;
pub mod body;
pub mod call;
pub mod error;
pub mod fetch;
pub mod headers;
pub mod jwt;
pub mod pool;
pub mod proxy;
pub mod replay;
pub mod retry;
pub mod state;
pub mod upgrade;
