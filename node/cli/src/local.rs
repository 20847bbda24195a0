//! `shoal local`: the whole classic topology on this machine, no Docker,
//! kept alive like Swarm keeps a stack alive.
//!
//! Gateways, story-service and notice-service replicas each get their own
//! loopback address (127.0.x.y) and the same ports, as containers would;
//! they gossip with a freshly generated cluster key and keep their data in
//! SQLite files under the data folder (or the database given). Progress is
//! shown until every replica is `up` and routable.
//!
//! Then each replica is supervised ([`supervise`]): one that exits or is
//! killed is restarted on the same address (Swarm's `restart_policy: any`),
//! one line per event; `--chaos` kills replicas on purpose ([`chaos`]). Only
//! Ctrl-C (or SIGTERM, SIGHUP) stops everything: services drain first, then
//! gateways, and a summary is printed.
//!
//! The children run in their own process group, so Ctrl-C reaches only this
//! process, which then stops them in order.

mod board;
mod chaos;
mod supervise;
mod views;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shoal_node::ClusterKey;
use tokio::sync::watch;
use tokio::task::JoinSet;

use chaos::{Chaos, ChaosSpec};
use supervise::{FAILING_AFTER, Replica, Spec};
use views::Views;

/// Flags of `shoal local`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// Gateway replicas (ports 4000 and 8761 on each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub gateways: u8,
    /// story-service replicas (port 8768 on each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub story: u8,
    /// notice-service replicas (port 8763 on each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub notice: u8,
    /// board-service replicas (Node.js on port 3000, each behind `shoal sidecar`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub board: u8,
    /// Database for both services (default: SQLite files in the data folder).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Folder for data, logs and the cluster key.
    #[arg(long, default_value = "data/local")]
    pub data: PathBuf,
    /// First two bytes of the loopback addresses (127.0 → gateway 1 on 127.0.0.1).
    #[arg(long, default_value = "127.0")]
    pub net: String,
    /// Stop once everything is up and routable (for scripts and tests).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Kill a random replica of SERVICE every EVERY once ready (SIGKILL), and
    /// report at Ctrl-C how fast each was out of rotation and back; e.g.
    /// `--chaos story-service:5s`. May be given more than once.
    #[arg(long, value_name = "SERVICE:EVERY", value_parser = chaos::parse_spec)]
    pub chaos: Vec<ChaosSpec>,
}

/// Ports every replica of a service listens on, as in the classic stack.
const GATEWAY_PORT: u16 = 4000;
const ADMIN_PORT: u16 = 8761;
const GOSSIP_PORT: u16 = 7950;
const BOARD_PORT: u16 = 3000;

/// Runs the local cluster until Ctrl-C.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let prefix = parse_net(&args.net)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("cannot find the folder of the shoal binary")?
        .to_path_buf();
    for bin in ["shoal-gateway", "story-service", "notice-service"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} is missing next to shoal: build everything first (`cargo build --release`)",
                bin_dir.join(bin).display()
            );
        }
    }
    let board_server = match args.board {
        0 => None,
        _ => match board::runtime(&bin_dir, args.database_url.as_deref()).await {
            Ok(server) => Some(server),
            Err(why) => {
                println!("shoal local: board-service left out: {why}");
                None
            }
        },
    };
    let counts = [
        ("gateway", args.gateways),
        ("story-service", args.story),
        ("notice-service", args.notice),
        (
            "board-service",
            if board_server.is_some() {
                args.board
            } else {
                0
            },
        ),
    ];
    for spec in &args.chaos {
        match counts.iter().find(|(s, _)| *s == spec.service) {
            Some((_, n)) if *n > 0 => {}
            _ => bail!(
                "--chaos {}: no replica of {:?} runs here; services: {}",
                spec.service,
                spec.service,
                counts
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let logs = args.data.join("logs");
    tokio::fs::create_dir_all(&logs)
        .await
        .with_context(|| format!("cannot create {}", logs.display()))?;
    let key_file = args.data.join("cluster.key");
    tokio::fs::write(&key_file, ClusterKey::generate().to_base64()).await?;
    let data = tokio::fs::canonicalize(&args.data).await?;
    let key_file = data.join("cluster.key");
    let logs = data.join("logs");

    let gateway_ip = |i: u8| -> IpAddr {
        if prefix == [127, 0] && i == 1 {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], 10, i))
        }
    };
    let gateways: Vec<IpAddr> = (1..=args.gateways).map(gateway_ip).collect();
    // Every gateway is a seed: any of them may be killed and restarted.
    let seeds = gateways
        .iter()
        .map(|ip| format!("{ip}:{GOSSIP_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    // (service, binary, address, port, arguments)
    let mut plan: Vec<(&'static str, &'static str, IpAddr, u16, Vec<String>)> = Vec::new();
    let local_ip = |group: u8, i: u8| IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], group, i));
    for ip in &gateways {
        plan.push(("gateway", "shoal-gateway", *ip, GATEWAY_PORT, vec![]));
    }
    for i in 1..=args.story {
        plan.push((
            "story-service",
            "story-service",
            local_ip(11, i),
            8768,
            vec![],
        ));
    }
    for i in 1..=args.notice {
        plan.push((
            "notice-service",
            "notice-service",
            local_ip(12, i),
            8763,
            vec![],
        ));
    }
    if let Some(server) = &board_server {
        for i in 1..=args.board {
            let ip = local_ip(13, i);
            let sidecar = [
                "sidecar".to_string(),
                "--health-url".to_string(),
                format!("http://{ip}:{BOARD_PORT}/bbs/health"),
                "--routes".to_string(),
                "/bbs".to_string(),
                "--".to_string(),
                "node".to_string(),
                server.display().to_string(),
            ];
            plan.push(("board-service", "shoal", ip, BOARD_PORT, sidecar.to_vec()));
        }
    }

    let mut replicas: Vec<Arc<Replica>> = Vec::new();
    let mut counters: BTreeMap<&str, u8> = BTreeMap::new();
    for (service, bin, ip, port, args_of) in plan {
        let n = counters.entry(service).or_insert(0);
        *n += 1;
        let name = format!("{service}-{n}");
        let db = args.database_url.clone().unwrap_or_else(|| {
            let file = match service {
                "story-service" => "story.db",
                "notice-service" => "notice.db",
                _ => "board.db",
            };
            format!("sqlite://{}?mode=rwc", data.join(file).display())
        });
        let mut env: Vec<(String, String)> = [
            ("SHOAL_SERVICE", service.to_string()),
            ("SHOAL_ADVERTISE", ip.to_string()),
            ("SHOAL_LISTEN", ip.to_string()),
            ("SHOAL_SEEDS", seeds.clone()),
            ("SHOAL_CLUSTER_KEY_FILE", key_file.display().to_string()),
            ("SHOAL_HOSTNAME", name.clone()),
            ("SHOAL_DRAIN_TIMEOUT", "5s".to_string()),
            ("DATABASE_URL", db),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if service == "gateway" {
            // Everything listens on loopback here: Eureka clients of this
            // machine may register without credentials (on Swarm they need them).
            env.push(("SHOAL_EUREKA_WRITES".to_string(), "open".to_string()));
        }
        if service == "board-service" {
            // The sidecar advertises the port; the Node.js service reads its own variables.
            for (k, v) in [
                ("SHOAL_PORT", port.to_string()),
                ("PORT", port.to_string()),
                ("HOST", ip.to_string()),
                ("HOSTNAME", name.clone()),
            ] {
                env.push((k.to_string(), v));
            }
        }
        replicas.push(Replica::new(Spec {
            log: logs.join(format!("{name}.log")),
            name,
            service,
            bin: bin_dir.join(bin),
            args: args_of,
            ip,
            port,
            env,
        }));
    }
    let total = replicas.len();
    println!(
        "shoal local: starting {total} replicas (logs in {})",
        logs.display()
    );

    let started = Instant::now();
    let views = Arc::new(Views::new(gateways.clone(), ADMIN_PORT, logs.clone()));
    let (stop_services, services_stopped) = watch::channel(false);
    let (stop_gateways, gateways_stopped) = watch::channel(false);
    let mut service_tasks = JoinSet::new();
    let mut gateway_tasks = JoinSet::new();
    for r in &replicas {
        if r.spec.is_gateway() {
            gateway_tasks.spawn(supervise::supervise(
                r.clone(),
                views.clone(),
                gateways_stopped.clone(),
            ));
        } else {
            service_tasks.spawn(supervise::supervise(
                r.clone(),
                views.clone(),
                services_stopped.clone(),
            ));
        }
    }
    let stop_all = async move |service_tasks: JoinSet<()>, gateway_tasks: JoinSet<()>| {
        println!("\nstopping: draining services, then gateways");
        let _ = stop_services.send(true);
        service_tasks.join_all().await;
        let _ = stop_gateways.send(true);
        gateway_tasks.join_all().await;
    };

    let result = tokio::select! {
        r = wait_ready(&replicas, &views, &counts, &logs) => r,
        _ = stop_signal() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    if let Err(err) = result {
        stop_all(service_tasks, gateway_tasks).await;
        return Err(err);
    }
    let gw = gateways[0];
    let host = if gw == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        "localhost".to_string()
    } else {
        gw.to_string()
    };
    println!(
        "\nAll {total} replicas are up and routable ({:.1} s).\n\n  gateway      http://{host}:{GATEWAY_PORT}/api/{{service}}/...\n  dashboard    http://{gw}:{ADMIN_PORT}/   (stats: /stats, metrics: /metrics, members: /members)\n  eureka       http://{gw}:{ADMIN_PORT}/eureka/   (defaultZone for Eureka clients; open on loopback)\n\nTry:\n  curl {host}:4000/api/story-service/story\n  curl -X POST {host}:4000/api/story-service/story -H 'content-type: application/json' -d '{{\"id\":\"alice\",\"message\":\"hello shoal\"}}'\n  curl {host}:4000/api/story/alice\n  curl {host}:4000/api/story-service/story/service/host   (repeat: the replica changes)\n  curl {host}:4000/api/notice-service/notice\n  curl -X POST {host}:4000/api/bbs/ -H 'content-type: application/json' -d '{{\"id\":\"alice\",\"title\":\"hi\",\"content\":\"first post\"}}'\n  curl {host}:4000/api/bbs/latest/\n  SHOAL_CLUSTER_KEY_FILE={} shoal members --seeds {seeds}\n  pkill -9 -xf story-service-2    (it is restarted; the gateways route around it meanwhile)\n\nCtrl-C drains and stops everything.",
        started.elapsed().as_secs_f64(),
        key_file.display()
    );
    if args.exit_when_ready {
        stop_all(service_tasks, gateway_tasks).await;
        println!("stopped: {total} replicas, no process left");
        return Ok(());
    }

    let chaos = Arc::new(Chaos::default());
    let chaos_started = Instant::now();
    let mut chaos_tasks = JoinSet::new();
    for spec in &args.chaos {
        let targets = replicas
            .iter()
            .filter(|r| r.spec.service == spec.service)
            .cloned()
            .collect();
        println!(
            "chaos: killing a random replica of {} every {:?} (SIGKILL)",
            spec.service, spec.every
        );
        chaos_tasks.spawn(
            chaos
                .clone()
                .run(spec.clone(), targets, views.clone(), chaos_started),
        );
    }
    stop_signal().await;
    chaos_tasks.abort_all();
    let chaos_ran = chaos_started.elapsed();
    stop_all(service_tasks, gateway_tasks).await;
    println!("stopped: {total} replicas, no process left");
    print!("{}", summary(&replicas, &views, started.elapsed()));
    if !args.chaos.is_empty() {
        print!("{}", chaos.report(&args.chaos, chaos_ran));
    }
    Ok(())
}

/// Resolves on Ctrl-C, SIGTERM, or SIGHUP (the terminal closed: the
/// replicas, in their own process group, would not hear it).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => tokio::select! {
            _ = shoal_http::signal::terminate() => {}
            _ = hup.recv() => {}
        },
        Err(_) => shoal_http::signal::terminate().await,
    }
}

/// What happened while it ran: restarts per replica, and how fast restarted
/// replicas were back in rotation.
fn summary(replicas: &[Arc<Replica>], views: &Views, ran: Duration) -> String {
    let mut out = String::new();
    let restarted: Vec<String> = replicas
        .iter()
        .filter_map(|r| {
            let s = r.status();
            (s.restarts() > 0).then(|| {
                let mut how: BTreeMap<&str, u32> = BTreeMap::new();
                for d in &s.deaths {
                    *how.entry(d.as_str()).or_default() += 1;
                }
                let how: Vec<String> = how.iter().map(|(h, n)| format!("{h} ×{n}")).collect();
                format!(
                    "    {:<20} {} ({})",
                    r.spec.name,
                    s.restarts(),
                    how.join(", ")
                )
            })
        })
        .collect();
    let restarts: usize = replicas.iter().map(|r| r.status().restarts()).sum();
    let _ = writeln!(
        out,
        "summary: ran {}; {restarts} restart{}",
        human(ran),
        if restarts == 1 { "" } else { "s" }
    );
    if !restarted.is_empty() {
        out.push_str(&restarted.join("\n"));
        out.push('\n');
        let _ = writeln!(
            out,
            "  back in rotation on every gateway after a death: {}",
            views::summary(&views.back_times())
        );
    }
    out
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn parse_net(net: &str) -> anyhow::Result<[u8; 2]> {
    let parts: Vec<&str> = net.split('.').collect();
    match parts.as_slice() {
        ["127", b] => Ok([
            127,
            b.parse()
                .with_context(|| format!("--net {net:?}: expected 127.<0-255>"))?,
        ]),
        _ => bail!("--net {net:?}: expected 127.<0-255>, e.g. 127.0"),
    }
}

/// Shows progress until every gateway sees every replica up and a request
/// through the first gateway reaches each service. A replica that cannot
/// start (it died [`FAILING_AFTER`] times in a row) ends the wait with its log.
async fn wait_ready(
    replicas: &[Arc<Replica>],
    views: &Views,
    counts: &[(&'static str, u8)],
    logs: &std::path::Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_line = String::new();
    let expected: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (*s, *n as usize))
        .collect();
    loop {
        for r in replicas {
            if r.status().quick_deaths >= FAILING_AFTER {
                bail!(
                    "{} ({}:{}) cannot start: it died {} times in a row; last lines of {}:\n{}",
                    r.spec.name,
                    r.spec.ip,
                    r.spec.port,
                    FAILING_AFTER,
                    r.spec.log.display(),
                    r.log_tail(15).await
                );
            }
        }
        let all = views.all().await;
        // Per service, the fewest `up` members any gateway sees (0 while a
        // gateway does not answer).
        let up = |service: &str| {
            all.iter()
                .map(|v| v.as_ref().map_or(0, |doc| doc.up_count(service)))
                .min()
                .unwrap_or(0)
        };
        let mut line = String::new();
        for (service, want) in &expected {
            let _ = write!(line, "{service} {}/{want}  ", up(service));
        }
        let all_up = expected.iter().all(|(s, n)| up(s) >= *n);
        if line != last_line {
            println!("  [{:>5.1}s] up: {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        if all_up && routable(views, &expected).await {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("not ready after 120 s; see the logs in {}", logs.display());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a request through the first gateway reaches each service.
async fn routable(views: &Views, expected: &[(&str, usize)]) -> bool {
    for (service, _) in expected.iter().filter(|(s, _)| *s != "gateway") {
        let path = match *service {
            "story-service" => "story",
            "notice-service" => "notice",
            _ => "bbs",
        };
        let url = format!(
            "http://{}:{GATEWAY_PORT}/api/{service}/{path}/service/host",
            views.first_gateway()
        );
        if !views.answers(&url, Duration::from_secs(2)).await {
            return false;
        }
    }
    true
}
