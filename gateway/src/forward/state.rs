//! The state every request reads: configuration, the routing table built
//! from gossip, metrics, the gateway-wide in-flight limit, the drain, and
//! this worker thread's upstream connection pool.

use std::sync::Arc;

use shoal_http::Drain;
use tokio::sync::Semaphore;

use crate::config::GatewayConfig;
use crate::forward::pool::Pool;
use crate::meter::metrics::Metrics;
use crate::route::sticky::StickyKeys;
use crate::route::table::Upstreams;

/// Everything a request needs. One per worker thread: the routing table,
/// metrics, limits and drain are shared, the upstream connection pool is
/// the worker's own (so a request never wakes another thread).
pub struct Gateway {
    /// Configuration.
    pub config: Arc<GatewayConfig>,
    /// Routing table from the gossip view (shared).
    pub upstreams: Arc<Upstreams>,
    /// Metrics (shared).
    pub metrics: Arc<Metrics>,
    /// The graceful stop, waited for by connections and tunnels (shared).
    pub drain: Drain,
    /// Requests (and tunnels) in flight through this gateway, bounded by
    /// `SHOAL_MAX_CONNECTIONS` (shared).
    pub in_flight: Arc<Semaphore>,
    /// Pooled keep-alive connections to instances (this worker's own).
    pub pool: Pool,
    /// Client connections open, bounded by `SHOAL_MAX_CLIENT_CONNECTIONS` (shared).
    pub connections: Arc<Semaphore>,
    /// The issuers' keys of the services' JWT checks (shared).
    pub jwt_keys: Arc<crate::forward::jwt::KeySets>,
    /// This gateway's place in the cluster, once joined (shared): what
    /// answers ACME challenges published by another gateway.
    pub cluster: Arc<std::sync::OnceLock<shoal_node::Cluster>>,
}

impl Gateway {
    /// A gateway built from `config`, stopped by `drain`.
    pub fn new(config: GatewayConfig, drain: Drain) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            upstreams: Arc::new(Upstreams::new(
                config.resilience.clone(),
                StickyKeys::new(config.node.keys.as_ref(), &config.node.cluster),
            )),
            in_flight: Arc::new(Semaphore::new(config.proxy.max_in_flight)),
            connections: Arc::new(Semaphore::new(config.proxy.max_client_connections)),
            pool: pool(&config, &metrics),
            jwt_keys: Arc::default(),
            cluster: Arc::default(),
            metrics,
            drain,
            config: Arc::new(config),
        }
    }

    /// A gateway for another worker thread: same table, metrics, limits and
    /// drain, its own connection pool.
    pub fn for_worker(&self) -> Self {
        Self {
            config: self.config.clone(),
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            drain: self.drain.clone(),
            in_flight: self.in_flight.clone(),
            connections: self.connections.clone(),
            pool: pool(&self.config, &self.metrics),
            jwt_keys: self.jwt_keys.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// A worker's pool: its share of `SHOAL_UPSTREAM_CONNECTIONS`, counted in
/// the gateway's metrics.
fn pool(config: &GatewayConfig, metrics: &Metrics) -> Pool {
    Pool::new(
        config.proxy.connect_timeout,
        config.proxy.pool_idle_timeout,
        config
            .proxy
            .upstream_connections
            .div_ceil(config.workers.max(1)),
        metrics.pool.clone(),
    )
}
