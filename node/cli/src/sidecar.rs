//! `shoal sidecar`: makes a service written in any language a member of the
//! cluster, as Spring Cloud Sidecar did for the classic stack's Node.js
//! board-service — but with no registry.
//!
//! The sidecar joins as `SHOAL_SERVICE` on `SHOAL_PORT` at the advertised
//! address, with the path routes given, and follows the service's health
//! URL every `--interval`: `up` while it answers 2xx, `starting` (out of
//! every gateway's rotation) as soon as it does not. With `-- <command>` it
//! also runs the service as its child, so one process is the whole task:
//! the child's death takes the member out of the cluster at once (it does
//! not wait for the next poll), and the sidecar exits with a failure so the
//! orchestrator (Swarm, `shoal local`) restarts both. SIGTERM drains: the
//! member announces `draining`, gateways stop sending, then the child gets
//! SIGTERM and its requests in flight finish, then the member leaves.
//!
//! What it cannot know: requests the service is serving (a sidecar without
//! `--` cannot wait for them on SIGTERM, only announce the drain), and any
//! failure that its health URL does not show.

use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_node::{Cluster, Env, Health, NodeConfig, Role};
use tracing::{info, warn};

/// Flags of `shoal sidecar`.
#[derive(clap::Args, Debug, Clone)]
pub struct SidecarArgs {
    /// Health URL polled every `--interval`; without it the member is up at once.
    #[arg(long)]
    pub health_url: Option<String>,
    /// Path prefixes the service serves, comma separated (e.g. /bbs).
    #[arg(long, default_value = "")]
    pub routes: String,
    /// Time between two health checks.
    #[arg(long, default_value = "500ms", value_parser = crate::args::duration_arg)]
    pub interval: Duration,
    /// Also print one JSON line per change of this member's view.
    #[arg(long)]
    pub watch: bool,
    /// The service to run as the sidecar's child (after `--`), e.g.
    /// `-- node server.js`.
    #[arg(last = true)]
    pub exec: Vec<String>,
}

/// Runs the sidecar until SIGTERM (or the child's death).
pub async fn run(args: SidecarArgs) -> anyhow::Result<()> {
    let env = Env::from_process();
    shoal_http::telemetry::init(shoal_node::log_json(&env)?);
    let config = NodeConfig::from_env(&env, "sidecar", 0)?;
    anyhow::ensure!(
        config.port != 0,
        "SHOAL_PORT is not set: the port of the service this sidecar advertises"
    );
    let routes = args
        .routes
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    let mut child = match args.exec.split_first() {
        None => None,
        Some((program, rest)) => Some(
            spawn_child(program, rest)
                .with_context(|| format!("cannot start {:?}", args.exec.join(" ")))?,
        ),
    };
    let cluster = Cluster::join(&config, Role::Service { routes }).await?;
    let service = config.service.to_string();
    let poll = follow_health(&cluster, args.health_url.as_deref(), args.interval);
    let changes = async {
        if args.watch {
            crate::members::print_changes(&cluster).await;
        }
        std::future::pending::<()>().await
    };
    let child_exit = async {
        match child.as_mut() {
            Some(c) => c.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = poll => Ok(()),
        _ = changes => Ok(()),
        exit = child_exit => {
            // Out of rotation at once, without waiting for a health check.
            let how = crate::exit::describe(&exit);
            warn!(%service, %how, "the service exited; leaving the cluster");
            cluster.set_health(Health::Starting).await;
            cluster.leave().await;
            anyhow::bail!("{service} {how}")
        }
        _ = shoal_http::signal::terminate() => {
            info!("stopping: draining");
            cluster.begin_drain().await;
            if let Some(child) = child.as_mut() {
                stop_child(child, config.timings.drain_timeout).await;
            }
            cluster.leave().await;
            Ok(())
        }
    }
}

/// Starts the service. If the sidecar dies without stopping it (SIGKILL,
/// a crash), the kernel sends the service SIGTERM (`PR_SET_PDEATHSIG`):
/// otherwise it would live on, orphaned, holding its port, and the
/// restarted pair would fail to bind it.
fn spawn_child(program: &str, args: &[String]) -> std::io::Result<tokio::process::Child> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    crate::exit::die_with_parent(&mut cmd, Signal::SIGTERM);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn()
}

/// Polls `url` every `interval` and publishes the health it shows.
async fn follow_health(cluster: &Cluster, url: Option<&str>, interval: Duration) {
    let mut current = None;
    let mut was_up = false;
    loop {
        let health = match url {
            None => Health::Up,
            Some(url) => match crate::http::healthcheck(url, Duration::from_secs(2)).await {
                Ok(()) => Health::Up,
                Err(err) => {
                    if current == Some(Health::Up) {
                        warn!(error = %format!("{err:#}"), "service unhealthy: out of rotation");
                    }
                    Health::Starting
                }
            },
        };
        if current != Some(health) {
            if health == Health::Up && was_up {
                info!("service healthy again: back in rotation");
            }
            was_up |= health == Health::Up;
            cluster.set_health(health).await;
            current = Some(health);
        }
        tokio::time::sleep(interval).await;
    }
}

/// SIGTERM to the child (it finishes what it serves), SIGKILL after `limit`.
async fn stop_child(child: &mut tokio::process::Child, limit: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        warn!(limit = ?limit, "the service did not stop in time; killing it");
        let _ = child.kill().await;
    }
}
