//! `shoal-gateway`: the API gateway (see the library, `lib.rs`, for how it
//! is built). Joins the cluster as service `gateway`, routes
//! `/api/{service}/**` from its own gossip view on port 4000, and serves
//! the dashboard, metrics and membership on the admin port 8761.

#![forbid(unsafe_code)]

use anyhow::Context;
use shoal_gateway::GatewayConfig;
use shoal_node::Env;

fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let config = GatewayConfig::from_env(&env)?;
    shoal_http::telemetry::init(config.log_json);
    // The control runtime: gossip, the view watcher, the admin port, signals.
    // Requests are served by worker threads of their own (see `workers`).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(shoal_gateway::run(config))
}
