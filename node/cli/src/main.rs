//! `shoal`: look at and look after a shoal cluster.
//!
//! - `shoal members`: joins briefly as an observer and prints the cluster.
//! - `shoal healthcheck <url>`: exit 0 on a 2xx answer (Docker HEALTHCHECK
//!   in images that have no curl).
//! - `shoal keygen`: prints a new cluster key.
//! - `shoal sidecar`: advertises a co-located service by its health URL.
//! - `shoal local`: the whole topology on this machine (what `scripts/run-local` runs).

// One `unsafe` block in the whole binary: `die_with_parent` asks the kernel
// to stop a child if its parent dies (see there).
#![deny(unsafe_code)]

mod exit;
mod local;
mod sidecar;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_node::config::parse_duration;
use shoal_node::{Cluster, ClusterView, Env, NodeConfig, Role};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Look at and look after a shoal cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Joins as an observer (never routed to) and prints the members by service.
    Members {
        /// Seeds, host:port comma list (default: SHOAL_SEEDS).
        #[arg(long)]
        seeds: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to listen at most before printing.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        wait: Duration,
        /// Keep watching until Ctrl-C: the table once the view settles, then
        /// one line per membership event (joined, up, starting, draining,
        /// left, failed) — the dashboard's event log. With --json, one JSON
        /// line per change of the view instead, with its events.
        #[arg(long)]
        watch: bool,
        /// Also log what the observer does (joining, leaving) on stderr.
        #[arg(short, long)]
        verbose: bool,
    },
    /// GETs a URL; exit 0 on 2xx, 1 otherwise.
    Healthcheck {
        /// e.g. http://127.0.0.1:8768/health
        url: String,
        /// Print the body (e.g. the admin port's /members from inside a container).
        #[arg(long)]
        print: bool,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Prints a new random cluster key (base64) for SHOAL_CLUSTER_KEY.
    Keygen,
    /// Runs gateways, story-service and notice-service replicas on loopback
    /// addresses of this machine, until Ctrl-C.
    Local(local::LocalArgs),
    /// Advertises a co-located service written in any language (SHOAL_SERVICE
    /// on SHOAL_PORT): `up` while its health URL answers 2xx, drained on
    /// SIGTERM; with `-- <command>` it also runs the service as its child.
    Sidecar(sidecar::SidecarArgs),
}

fn duration_arg(raw: &str) -> Result<Duration, String> {
    parse_duration(raw).ok_or_else(|| format!("{raw:?} is not a duration such as 500ms, 3s or 1m"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("shoal: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Members {
                seeds,
                json,
                wait,
                watch,
                verbose,
            } => members(seeds, json, wait, watch, verbose).await,
            Command::Healthcheck {
                url,
                timeout,
                print,
            } => {
                let (status, body) = http_get(&url, timeout).await?;
                if print {
                    println!("{}", String::from_utf8_lossy(&body));
                }
                anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
                Ok(())
            }
            Command::Sidecar(args) => sidecar::run(args).await,
            Command::Local(args) => local::run(args).await,
            Command::Keygen => {
                println!("{}", shoal_node::key::ClusterKey::generate().to_base64());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shoal: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn members(
    seeds: Option<String>,
    json: bool,
    wait: Duration,
    watch: bool,
    verbose: bool,
) -> anyhow::Result<()> {
    let mut env = Env::from_process();
    if let Some(seeds) = seeds {
        env.set("SHOAL_SEEDS", seeds);
    }
    if env.get("SHOAL_SEEDS").is_none() {
        anyhow::bail!("no seeds: pass --seeds host:port or set SHOAL_SEEDS");
    }
    // An observer takes a free gossip port so it can run beside a member.
    env.set("SHOAL_GOSSIP_PORT", "0");
    shoal_http::telemetry::init_with_default(
        shoal_node::config::log_json(&env)?,
        if verbose { "info" } else { "warn" },
    );
    let config = NodeConfig::from_env(&env, "shoal-cli", 0)?;
    let cluster = Cluster::join(&config, Role::Observer).await?;
    if watch {
        tokio::select! {
            _ = async {
                if json {
                    print_changes(&cluster).await
                } else {
                    print_events(&cluster, wait).await
                }
            } => {}
            _ = shoal_http::signal::terminate() => {}
        }
        cluster.leave().await;
        return Ok(());
    }
    let view = settle(&cluster, wait).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&*view)?);
    } else {
        print!("{}", table(&view));
    }
    cluster.leave().await;
    Ok(())
}

/// Waits until the view has members and has not changed for half a second,
/// or until `wait` is over.
async fn settle(cluster: &Cluster, wait: Duration) -> std::sync::Arc<ClusterView> {
    let mut rx = cluster.view();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let quiet = tokio::time::timeout(Duration::from_millis(500), rx.changed())
            .await
            .is_err();
        if (quiet && !rx.borrow().is_empty()) || tokio::time::Instant::now() >= deadline {
            return rx.borrow().clone();
        }
    }
}

fn table(view: &ClusterView) -> String {
    use std::fmt::Write;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut out = String::new();
    if view.is_empty() {
        out.push_str("no members seen (check SHOAL_SEEDS and SHOAL_CLUSTER_KEY)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20} {:<24} {:<22} {:<9} {:>8}  ROUTES",
        "SERVICE", "HOST", "ADDRESS", "HEALTH", "AGE"
    );
    for (service, members) in view.services() {
        for m in members {
            let age = Duration::from_millis(now_ms.saturating_sub(m.started_ms));
            let _ = writeln!(
                out,
                "{:<20} {:<24} {:<22} {:<9} {:>8}  {}",
                service,
                m.host,
                m.addr.to_string(),
                m.health.as_str(),
                human_age(age),
                m.routes.join(",")
            );
        }
    }
    out
}

fn human_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Prints one JSON line per view change, and one a second anyway: the time
/// (ms since the epoch), the members (`id`, `health`) and the gossip
/// counters of this member.
pub(crate) async fn print_changes(cluster: &Cluster) {
    use std::io::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut rx = cluster.view();
    let mut old = std::sync::Arc::new(ClusterView::default());
    loop {
        let view = rx.borrow_and_update().clone();
        let events: Vec<serde_json::Value> = view
            .events_since(&old)
            .into_iter()
            .map(|(event, m)| serde_json::json!({"event": event, "member": m.id.to_string(), "service": m.service, "addr": m.addr}))
            .collect();
        old = view.clone();
        let stats = cluster.stats();
        let line = serde_json::json!({
            "events": events,
            "t_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default(),
            "self": cluster.id().to_string(),
            "members": view.members().map(|m| serde_json::json!({
                "id": m.id.to_string(), "service": m.service, "addr": m.addr, "health": m.health,
            })).collect::<Vec<_>>(),
            "gossip": {
                "bytes_sent": stats.bytes_sent.load(Relaxed),
                "bytes_received": stats.bytes_received.load(Relaxed),
                "rejected": stats.packets_rejected.load(Relaxed),
                "largest_datagram": stats.largest_datagram.load(Relaxed),
                "oversized": stats.packets_oversized.load(Relaxed),
            },
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Makes the process `cmd` starts receive `signal` when this process dies,
/// however it dies (`PR_SET_PDEATHSIG`): the sidecar's service and `shoal
/// local`'s replicas never outlive them, orphaned, holding their ports.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut std::process::Command, signal: nix::sys::signal::Signal) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, and only
    // makes one async-signal-safe system call (prctl); it touches no memory
    // of the parent, takes no lock and does not allocate.
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

/// `shoal members --watch`: the table once the view settles, then a line
/// per membership event, as the dashboard's log shows them.
async fn print_events(cluster: &Cluster, wait: Duration) {
    use std::io::Write;
    let mut old = settle(cluster, wait).await;
    print!("{}", table(&old));
    println!("-- watching: one line per event, Ctrl-C to stop");
    let _ = std::io::stdout().flush();
    let mut rx = cluster.view();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let view = rx.borrow_and_update().clone();
        let events = view.events_since(&old);
        old = view;
        if events.is_empty() {
            continue;
        }
        let now = time_of_day();
        let mut out = std::io::stdout().lock();
        for (event, m) in events {
            let _ = writeln!(
                out,
                "{now}  {:<9} {:<16} {:<22} {:<21} {}",
                event.as_str(),
                m.service,
                m.host,
                m.addr,
                m.id
            );
        }
        let _ = out.flush();
    }
}

/// Wall-clock time of day, UTC, `HH:MM:SS.mmm`.
fn time_of_day() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// GETs `url`; Ok on a 2xx answer within `timeout`.
async fn healthcheck(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let (status, _) = http_get(url, timeout).await?;
    anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
    Ok(())
}

/// A plain-HTTP client for GETs.
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A new [`HttpClient`] (keep it to reuse its connections).
pub(crate) fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GETs `url` (plain HTTP) on a fresh connection and returns the status and
/// the whole body.
async fn http_get(
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    http_get_with(&http_client(), url, timeout).await
}

/// GETs `url` with `client` and returns the status and the whole body,
/// within `timeout`.
pub(crate) async fn http_get_with(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let work = async {
        let response = client
            .get(uri)
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("GET {url}: body"))?;
        anyhow::Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))?
}
