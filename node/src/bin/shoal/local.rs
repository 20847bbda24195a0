//! `shoal local`: the whole classic topology on this machine, no Docker.
//!
//! Gateways, story-service and notice-service replicas each get their own
//! loopback address (127.0.x.y) and the same ports, as containers would;
//! they gossip with a freshly generated cluster key and keep their data in
//! SQLite files under the data folder (or the database given). Progress is
//! shown until every replica is `up` and routable; Ctrl-C drains services,
//! then gateways, and stops everything.
//!
//! The children run in their own process group, so Ctrl-C reaches only this
//! process, which then stops them in order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_node::key::ClusterKey;

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
}

struct Replica {
    name: String,
    service: &'static str,
    ip: IpAddr,
    port: u16,
    child: Child,
    log: PathBuf,
}

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
    let logs = args.data.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let key_file = args.data.join("cluster.key");
    std::fs::write(&key_file, ClusterKey::generate().to_base64())?;
    let data = std::fs::canonicalize(&args.data)?;

    let gateway_ip = |i: u8| -> IpAddr {
        if prefix == [127, 0] && i == 1 {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], 10, i))
        }
    };
    let seed = format!("{}:7950", gateway_ip(1));
    let mut plan: Vec<(&'static str, &'static str, IpAddr, u16)> = Vec::new();
    for i in 1..=args.gateways {
        plan.push(("gateway", "shoal-gateway", gateway_ip(i), 4000));
    }
    for i in 1..=args.story {
        plan.push((
            "story-service",
            "story-service",
            IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], 11, i)),
            8768,
        ));
    }
    for i in 1..=args.notice {
        plan.push((
            "notice-service",
            "notice-service",
            IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], 12, i)),
            8763,
        ));
    }

    let mut replicas: Vec<Replica> = Vec::new();
    let mut counters: BTreeMap<&str, u8> = BTreeMap::new();
    for (service, bin, ip, port) in plan {
        let n = counters.entry(service).or_insert(0);
        *n += 1;
        let name = format!("{service}-{n}");
        let db = args.database_url.clone().unwrap_or_else(|| {
            let file = if service == "story-service" {
                "story.db"
            } else {
                "notice.db"
            };
            format!("sqlite://{}?mode=rwc", data.join(file).display())
        });
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin_dir.join(bin))
            .env("SHOAL_SERVICE", service)
            .env("SHOAL_ADVERTISE", ip.to_string())
            .env("SHOAL_LISTEN", ip.to_string())
            .env("SHOAL_SEEDS", &seed)
            .env("SHOAL_CLUSTER_KEY_FILE", &key_file)
            .env("SHOAL_HOSTNAME", &name)
            .env("SHOAL_DRAIN_TIMEOUT", "5s")
            .env("DATABASE_URL", db)
            .env_remove("SHOAL_CLUSTER_KEY")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        replicas.push(Replica {
            name,
            service,
            ip,
            port,
            child,
            log,
        });
    }
    let total = replicas.len();
    println!(
        "shoal local: starting {total} replicas (logs in {})",
        logs.display()
    );

    let result = tokio::select! {
        r = wait_ready(&mut replicas, gateway_ip(1), &args) => r,
        _ = shoal_node::signal::terminate() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    if let Err(err) = result {
        stop_all(&mut replicas).await;
        return Err(err);
    }
    let gw = gateway_ip(1);
    let host = if gw == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        "localhost".to_string()
    } else {
        gw.to_string()
    };
    println!(
        "\nAll {total} replicas are up and routable.\n\n  gateway      http://{host}:4000/api/{{service}}/...\n  dashboard    http://{gw}:8761/   (metrics: /metrics, members: /members)\n\nTry:\n  curl {host}:4000/api/story-service/story\n  curl -X POST {host}:4000/api/story-service/story -H 'content-type: application/json' -d '{{\"id\":\"alice\",\"message\":\"hello shoal\"}}'\n  curl {host}:4000/api/story/alice\n  curl {host}:4000/api/story-service/story/service/host   (repeat: the replica changes)\n  curl {host}:4000/api/notice-service/notice\n  SHOAL_CLUSTER_KEY_FILE={} shoal members --seeds {seed}\n\nCtrl-C drains and stops everything.",
        key_file.display()
    );
    if !args.exit_when_ready {
        tokio::select! {
            _ = shoal_node::signal::terminate() => {}
            name = watch_exits(&mut replicas) => println!("{name} exited on its own; stopping everything"),
        }
    }
    stop_all(&mut replicas).await;
    Ok(())
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

/// Shows progress until the gateway sees every replica up and a request
/// through it reaches each service.
async fn wait_ready(
    replicas: &mut [Replica],
    gateway: IpAddr,
    args: &LocalArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_line = String::new();
    let expected: BTreeMap<&str, usize> = [
        ("gateway", args.gateways),
        ("story-service", args.story),
        ("notice-service", args.notice),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(s, n)| (s, n as usize))
    .collect();
    loop {
        for r in replicas.iter_mut() {
            if let Ok(Some(status)) = r.child.try_wait() {
                let log = std::fs::read_to_string(&r.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{} ({}:{}) exited with {status} while starting; last lines of {}:\n{}",
                    r.name,
                    r.ip,
                    r.port,
                    r.log.display(),
                    tail.join("\n")
                );
            }
        }
        let up = up_counts(gateway).await.unwrap_or_default();
        let mut line = String::new();
        for (service, want) in &expected {
            let _ = write!(
                line,
                "{service} {}/{want}  ",
                up.get(*service).copied().unwrap_or(0)
            );
        }
        let all_up = expected
            .iter()
            .all(|(s, n)| up.get(*s).copied().unwrap_or(0) >= *n);
        if line != last_line {
            println!("  [{:>5.1}s] up: {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        if all_up && routable(gateway, &expected).await {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "not ready after 120 s; see the logs in {}",
                args.data.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn up_counts(gateway: IpAddr) -> Option<BTreeMap<String, usize>> {
    let (status, body) = crate::http_get(
        &format!("http://{gateway}:8761/members"),
        Duration::from_secs(1),
    )
    .await
    .ok()?;
    if !status.is_success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let services = json.get("services")?.get("services")?.as_object()?;
    Some(
        services
            .iter()
            .map(|(name, members)| {
                let up = members
                    .as_array()
                    .map(|a| a.iter().filter(|m| m["health"] == "up").count())
                    .unwrap_or(0);
                (name.clone(), up)
            })
            .collect(),
    )
}

async fn routable(gateway: IpAddr, expected: &BTreeMap<&str, usize>) -> bool {
    for service in expected.keys().filter(|s| **s != "gateway") {
        let path = if *service == "story-service" {
            "story"
        } else {
            "notice"
        };
        let url = format!("http://{gateway}:4000/api/{service}/{path}/service/host");
        match crate::http_get(&url, Duration::from_secs(2)).await {
            Ok((status, _)) if status.is_success() => {}
            _ => return false,
        }
    }
    true
}

/// Resolves with the name of the first replica that exits.
async fn watch_exits(replicas: &mut [Replica]) -> String {
    loop {
        for r in replicas.iter_mut() {
            if let Ok(Some(_)) = r.child.try_wait() {
                return r.name.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Drains services first, then gateways (SIGTERM), and SIGKILLs whatever is
/// still running after the drain time.
async fn stop_all(replicas: &mut [Replica]) {
    println!("\nstopping: draining services, then gateways");
    for phase in [false, true] {
        let group: Vec<&mut Replica> = replicas
            .iter_mut()
            .filter(|r| (r.service == "gateway") == phase)
            .collect();
        for r in &group {
            let _ = kill(Pid::from_raw(r.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for r in group {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = r.child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Ok(None) = r.child.try_wait() {
                eprintln!("{} did not stop in time; killing it", r.name);
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
        }
    }
    println!("stopped: {} replicas, no process left", replicas.len());
}
