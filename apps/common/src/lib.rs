//! shoal-app: what every shoal service shares, written once.
//!
//! A service is its routes and its migrations; [`run`] does the rest:
//! configuration, logging, the HTTP server, joining the cluster, connecting
//! to the database in the background (the member stays `starting` until the
//! database answers), watching it (`up` ↔ `starting`), `/health`, and the
//! graceful stop on SIGTERM ([`shoal_http::stop_member`]): announce
//! `draining`, let gateways stop sending, finish in-flight requests, close
//! the pool, leave.
//!
//! # Layout
//! - [`config`]: `AppConfig` from the environment.
//! - [`db`]: the database handle (SQLite, MariaDB/MySQL, PostgreSQL).
//! - [`error`]: `ApiError` and the Spring error JSON.
//! - [`validate`]: request validation helpers.

#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod error;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use shoal_http::{Drain, Work};
use shoal_node::{Cluster, Env, Health, Role};
use tokio::sync::watch;
use tracing::{info, warn};

pub use crate::config::AppConfig;
pub use crate::db::{Db, Migrations};
pub use crate::error::{ApiError, FieldError};

/// A service: its name, port, announced routes, migrations and handlers.
pub struct Service {
    /// Service name (`story-service`), the default of `SHOAL_SERVICE`.
    pub name: &'static str,
    /// Default port, the default of `SHOAL_PORT`.
    pub port: u16,
    /// Path prefixes announced to gateways (`/story`).
    pub routes: &'static [&'static str],
    /// Schema migrations per backend.
    pub migrations: Migrations,
    /// The service's own routes.
    pub router: fn() -> Router<AppState>,
}

/// State every handler can read.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Host name answered by `/…/service/host`.
    pub hostname: Arc<str>,
    health: watch::Receiver<Health>,
}

/// Runs a service until SIGTERM/SIGINT, then drains it. For `main`.
pub fn main(service: Service) -> anyhow::Result<()> {
    let env = Env::from_process();
    let config = AppConfig::from_env(&env, service.name, service.port)?;
    shoal_http::telemetry::init(config.log_json);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(run(service, config))
}

/// Runs a service with the given configuration until SIGTERM/SIGINT.
pub async fn run(service: Service, config: AppConfig) -> anyhow::Result<()> {
    let db = Db::new(&config.database_url)
        .map_err(|why| anyhow::anyhow!("DATABASE_URL is not valid: expected {why}"))?;
    let addr = SocketAddr::new(config.listen, config.node.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (SHOAL_LISTEN / SHOAL_PORT)"))?;
    let routes = service.routes.iter().map(|r| r.to_string()).collect();
    let cluster = Cluster::join(&config.node, Role::Service { routes }).await?;
    let (health_tx, health_rx) = watch::channel(Health::Starting);
    let state = AppState {
        db: db.clone(),
        hostname: config.node.hostname.clone().into(),
        health: health_rx,
    };
    let log = LogState {
        service: service.name,
        enabled: config.access_log,
    };
    // Every request holds a `Watch` of the drain: it waits for requests in
    // flight, not for idle keep-alive connections.
    let drain = Drain::new();
    let app = (service.router)()
        .route("/health", get(health))
        .layer(middleware::from_fn_with_state(log, access_log))
        .layer(middleware::from_fn_with_state(drain.clone(), in_flight))
        .with_state(state);

    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(drain.draining())
            .into_future(),
    );
    info!(%addr, service = service.name, "listening");

    // Database: connect in the background, then watch it; health follows.
    let watchdog = {
        let cluster = cluster.clone();
        let db = db.clone();
        let pool_size = config.db_pool;
        tokio::spawn(async move {
            db.connect_with_retry(&service.migrations, pool_size).await;
            let mut current = Health::Starting;
            loop {
                let next = if db.check().await {
                    Health::Up
                } else {
                    Health::Starting
                };
                if next != current {
                    cluster.set_health(next).await;
                    let _ = health_tx.send(next);
                    current = next;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    shoal_http::signal::terminate().await;
    watchdog.abort();
    shoal_http::stop_member(&cluster, &drain, config.node.timings.drain_timeout).await;
    // Requests are done; connections close as soon as they are idle.
    match tokio::time::timeout(Duration::from_secs(1), server).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(err))) => warn!(error = %err, "server error while draining"),
        Ok(Err(err)) => warn!(error = %err, "server task failed"),
    }
    db.close().await;
    cluster.leave().await;
    info!("stopped");
    Ok(())
}

/// Holds a `Watch` of the drain while a request is in flight.
async fn in_flight(State(drain): State<Drain>, req: Request, next: Next) -> Response {
    let _watch = drain.watch(Work::Connection);
    next.run(req).await
}

async fn health(State(state): State<AppState>) -> Response {
    let health = *state.health.borrow();
    let body = Json(serde_json::json!({ "status": health.as_str().to_uppercase() }));
    if health == Health::Up {
        body.into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[derive(Clone, Copy)]
struct LogState {
    service: &'static str,
    enabled: bool,
}

/// One line per request (service, method, path, status, latency), and the
/// request path filled into error answers.
async fn access_log(State(log): State<LogState>, req: Request, next: Next) -> Response {
    let start = tokio::time::Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut response = next.run(req).await;
    if let Some(err) = response.extensions_mut().remove::<ApiError>() {
        response = err.to_response(uri.path());
    }
    if log.enabled {
        info!(
            service = log.service,
            method = %method,
            path = %uri.path(),
            status = response.status().as_u16(),
            latency_ms = format!("{:.2}", start.elapsed().as_secs_f64() * 1e3),
            "request"
        );
    }
    response
}
