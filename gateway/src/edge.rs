//! **edge** — where clients meet the gateway: the listeners (one
//! SO_REUSEPORT socket and one current-thread runtime per worker), TLS with
//! certificates reloaded in place, the protocol of each connection (HTTP/1.1,
//! h2 over ALPN, h2c), head limits and timeouts, the PROXY protocol from
//! trusted balancers, clients too slow to read their answers, and the
//! memory a burst of connections leaves behind.
//!
//! May import: [`crate::forward`] (a request is handed to
//! [`crate::forward::proxy::handle`]; a connection holds the worker's
//! [`crate::forward::state::Gateway`]), [`crate::meter`], [`crate::config`].

pub mod acme;
pub mod proxy_protocol;
pub mod server;
pub mod stall;
pub mod tls;
pub mod trim;
pub mod workers;
