//! `shoal members`: joins briefly as an observer and prints the cluster —
//! a table, JSON, or (`--watch`) a line per membership event.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_node::{Cluster, ClusterView, Env, NodeConfig, Role};

pub(crate) async fn members(
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
        shoal_node::log_json(&env)?,
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
        let protocol = cluster.protocol().await;
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
                "protocol": protocol,
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
