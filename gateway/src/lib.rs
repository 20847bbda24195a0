//! shoal-gateway: the API gateway, as a library (the binary is `main.rs`;
//! the fuzz targets reach the parsers through it).
//!
//! `shoal-gateway`: the API gateway. Joins the cluster as service
//! `gateway`, routes `/api/{service}/**` from its own gossip view on port
//! 4000, and serves metrics and membership on the admin port 8761.
//!
//! # Layout: layers, in the order a request meets them
//! - [`edge`]: listeners, TLS, the protocol of each connection, slow clients.
//! - [`route`]: the table from gossip, path → service, balance, affinity,
//!   admission, rate limits, breaker and budget — deciding, not sending.
//! - [`forward`]: the request's entry, retries, replay, WebSocket tunnels,
//!   the upstream pool, headers, the gateway's own error answers.
//! - [`report`]: the admin port, `/stats` and the dashboard, the figures
//!   published by gossip.
//! - [`eureka`]: Eureka's REST API over node's leases; imports nothing of
//!   the gateway.
//! - [`meter`]: the counters every layer adds to; [`config`]: settings.
//!
//! Imports go one way: edge → forward → route → meter → config → eureka,
//! and report above them all; `tests/tests/layout.rs` fails on an import
//! against that order or on any cycle.

// One `unsafe` call in the crate, allowed where it is made: glibc's
// `malloc_trim` (edge/trim.rs).
#![deny(unsafe_code)]

pub mod config;
mod edge;
pub mod eureka;
mod forward;
mod meter;
mod report;
mod route;

/// The parsers the fuzz targets reach.
pub use edge::proxy_protocol;
pub use forward::headers;
pub use route::path;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use shoal_node::{Cluster, Health, Role};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use crate::config::GatewayConfig;
use crate::edge::{acme, server, tls, trim, workers};
use crate::forward::state::Gateway;
use crate::report::{admin, stats};
use crate::route::demand;

/// Runs the gateway described by `config` until SIGTERM or Ctrl-C, then
/// drains and leaves the cluster.
pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let public_addr = SocketAddr::new(config.listen, config.port);
    let admin_addr = SocketAddr::new(config.listen, config.admin_port);
    let admin = TcpListener::bind(admin_addr).await.with_context(|| {
        format!("cannot listen on {admin_addr} (SHOAL_LISTEN / SHOAL_ADMIN_PORT)")
    })?;
    let drain_timeout = config.node.timings.drain_timeout;
    let workers = config.workers;
    let gw = Gateway::new(config, shoal_http::Drain::new());
    let drain = gw.drain.clone();
    let mut listeners = Vec::new();
    let tls = match &gw.config.tls {
        Some(t) => Some((tls::Tls::new(t)?, t.clone())),
        None => None,
    };
    let plain = match &tls {
        Some((_, t)) if t.redirect => server::Kind::Redirect { port: t.port },
        _ => server::Kind::Plain { h2c: gw.config.h2c },
    };
    listeners.push((public_addr, plain, "SHOAL_PORT"));
    let mut certificates = None;
    if let Some((tls, t)) = &tls {
        let addr = SocketAddr::new(gw.config.listen, t.port);
        listeners.push((addr, server::Kind::Tls(tls.clone()), "SHOAL_TLS_PORT"));
        tls.spawn_reloader(t.clone(), gw.metrics.clone());
        certificates = t.acme().map(|a| acme::Acme::new(a.clone(), tls.clone()));
    }
    workers::start(&gw, listeners, workers, drain_timeout).await?;
    trim::spawn(
        gw.connections.clone(),
        gw.config.proxy.max_client_connections,
    );
    let cluster = Cluster::join(&gw.config.node, Role::Service { routes: Vec::new() }).await?;
    // Already set only if `run` were called twice on one gateway.
    let _ = gw.cluster.set(cluster.clone());
    if let Some(certificates) = &certificates {
        certificates.spawn(cluster.clone(), admin_addr);
    }

    // Every new view rebuilds the routing table.
    let mut views = cluster.view();
    let watcher = {
        let (upstreams, metrics) = (gw.upstreams.clone(), gw.metrics.clone());
        tokio::spawn(async move {
            loop {
                let view = views.borrow_and_update().clone();
                metrics.set_members(&view);
                upstreams.update(view, &metrics);
                if views.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    demand::spawn_sync(gw.upstreams.clone(), gw.metrics.clone(), cluster.clone());
    if let Some(every) = gw.config.stats_every {
        stats::spawn_publisher(gw.upstreams.clone(), cluster.clone(), every);
    }
    let tls_port = gw.config.tls.as_ref().map(|t| t.port);
    let admin_app = admin::router(Arc::new(gw), cluster.clone(), certificates);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(admin, admin_app).await {
            warn!(error = %err, "admin server stopped");
        }
    });
    cluster.set_health(Health::Up).await;
    info!(%public_addr, %admin_addr, ?tls_port, workers, "gateway ready");

    shoal_http::signal::terminate().await;
    shoal_http::stop_member(&cluster, &drain, drain_timeout).await;
    cluster.leave().await;
    watcher.abort();
    info!("stopped");
    Ok(())
}
