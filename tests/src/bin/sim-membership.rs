//! Membership simulator (not a test): N members in one process over an
//! in-memory network on tokio's paused clock (`shoal_tests::sim`), measured
//! as `bench-membership` measures real processes:
//! - join: a new member in every view, its record up (p50/p99 over 30 trials; a trial
//!   that never ends within 30 s is counted as failed and shown),
//! - SIGKILL → gone: a killed member out of every other view (p50/p99),
//! - 10 % killed at once (a Swarm node dies): each one out of every
//!   survivor's view (p50/p99 over the killed),
//! - gossip sent per member (KB/s over 10 s of an idle cluster: the mean,
//!   and the 99th percentile over members), the
//!   largest datagram, and datagrams over the MTU (and, on stderr, the
//!   share of each message kind in those bytes).
//!
//! Usage: `sim-membership [--loss P] [--trials K] [--set VAR=VALUE]... N...`
//! (`--set` passes a `SHOAL_*` setting to every member, e.g.
//! `--set SHOAL_GOSSIP_FANOUT=1`). Prints one Markdown row per N.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use shoal_node::ClusterKey;
use shoal_node::MessageKind;
use shoal_tests::percentile;
use shoal_tests::sim::{SimMember, SimNet, spawn_member, until_all};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// Probability that a 1,422-byte fragment is lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Joins and kills measured per N: 30 by default, so that the p99 is a
    /// percentile (with fewer than 20 the table says "max of N").
    #[arg(long, default_value_t = 30)]
    trials: usize,
    /// Seconds of idle cluster the bytes are averaged over (default 10, 4 from N = 500).
    #[arg(long)]
    window: Option<u64>,
    /// One-way latency of the network, in microseconds (tokio's timer
    /// rounds it up to whole milliseconds).
    #[arg(long, default_value_t = 1000)]
    latency_us: u64,
    /// A `SHOAL_*` setting for every member, `VAR=VALUE` (repeatable).
    #[arg(long = "set", value_parser = parse_set)]
    set: Vec<(String, String)>,
    /// Seed of the network's losses and of the victims' choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cluster sizes.
    #[arg(required = true)]
    sizes: Vec<usize>,
}

fn parse_set(raw: &str) -> Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}`: expected VAR=VALUE, e.g. SHOAL_GOSSIP_FANOUT=1"))?;
    if !k.starts_with("SHOAL_") {
        return Err(format!("`{k}`: only SHOAL_* settings reach the members"));
    }
    Ok((k.to_string(), v.to_string()))
}

struct Row {
    n: usize,
    converged_s: f64,
    joins: Vec<f64>,
    kills: Vec<f64>,
    kb_per_s: f64,
    /// The same, the 99th percentile over members.
    kb_per_s_p99: f64,
    /// 10 % of members killed at once: each one's time out of every view.
    mass_kill: Vec<f64>,
    /// Of those, how many were still in a view after 30 s.
    mass_kill_failed: usize,
    largest: u64,
    oversized: u64,
    dropped: u64,
    failed_trials: usize,
    /// Bytes sent in the idle window, by message kind.
    by_kind: Vec<u64>,
}

async fn run(args: &Args, n: usize) -> anyhow::Result<Row> {
    let net = SimNet::new(
        Duration::from_micros(args.latency_us),
        args.loss,
        args.seed ^ n as u64,
    );
    let key = ClusterKey::generate().to_base64();
    let start = Instant::now();
    let mut members = Vec::with_capacity(n + 16);
    for i in 0..n {
        members.push(spawn_member(&net, i, &key, &args.set).await?);
        // Processes of the real bench start a few milliseconds apart.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let converged = until_all(&members, start, Duration::from_secs(300), async |m| {
        m.live_count().await == n
    })
    .await
    .with_context(|| format!("N = {n}: no convergence in 300 simulated seconds"))?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    // On `auto` (the default) or `v4`, the idle window starts once every
    // member speaks V4 and has stopped bridging (V3's SYNs for 10 s after
    // the switch): what a cluster costs from then on.
    let protocol = args
        .set
        .iter()
        .find(|(k, _)| k == "SHOAL_GOSSIP_PROTOCOL")
        .map_or("auto", |(_, v)| v.as_str());
    if matches!(protocol, "auto" | "v4") {
        let upgrading = Instant::now();
        loop {
            let mut settled = true;
            for m in &members {
                let c = m.chitchat();
                let c = c.lock().await;
                settled &= c.protocol_version() == chitchat::ProtocolVersion::V4 && !c.bridging();
            }
            if settled || upgrading.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "N={n}: on V4, bridge over, {:.1} s after convergence + 2 s",
                    upgrading.elapsed().as_secs_f64()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // With V4, members that agree share one state hash: the idle window
    // starts once they all do (or after 60 s), so that it measures an idle
    // cluster, not the end of its formation.
    let settling = Instant::now();
    let distinct = loop {
        let mut hashes = std::collections::HashSet::new();
        for m in &members {
            hashes.insert(m.chitchat().lock().await.state_hash());
        }
        if hashes.len() <= 1 || settling.elapsed() > Duration::from_secs(60) {
            break hashes.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "N={n}: {distinct} distinct state hashes at the idle window, {:.1} s after convergence + 2 s",
        settling.elapsed().as_secs_f64()
    );
    let before: Vec<u64> = members.iter().map(SimMember::bytes_sent).collect();
    let kinds_before = bytes_by_kind(&members);
    let window = Duration::from_secs(args.window.unwrap_or(if n >= 500 { 4 } else { 10 }));
    tokio::time::sleep(window).await;
    let sent: u64 = members
        .iter()
        .zip(&before)
        .map(|(m, b)| m.bytes_sent() - b)
        .sum();
    let kb_per_s = sent as f64 / n as f64 / window.as_secs_f64() / 1000.0;
    let per_member: Vec<f64> = members
        .iter()
        .zip(&before)
        .map(|(m, b)| (m.bytes_sent() - b) as f64 / window.as_secs_f64() / 1000.0)
        .collect();
    let kb_per_s_p99 = percentile(&per_member, 0.99);
    let by_kind: Vec<u64> = bytes_by_kind(&members)
        .iter()
        .zip(&kinds_before)
        .map(|(a, b)| a - b)
        .collect();

    let trials = args.trials;
    let (mut joins, mut kills, mut failed) = (vec![], vec![], 0);
    for t in 0..trials {
        let t0 = Instant::now();
        let newcomer = spawn_member(&net, n + t, &key, &args.set).await?;
        let node = newcomer.chitchat_id();
        match until_all(&members, t0, Duration::from_secs(30), async |m| {
            m.sees_up(&node).await
        })
        .await
        {
            Some(s) => joins.push(s),
            None => failed += 1,
        }
        members.push(newcomer);

        // A random older member, never the seed (members[0]).
        let victim = 1 + (t * 7919 + 13 + args.seed as usize) % (members.len() - 2);
        let dead = members.remove(victim);
        let t0 = Instant::now();
        tracing::info!(node = %dead.node, "killed");
        dead.kill(&net);
        match until_all(&members, t0, Duration::from_secs(30), async |m| {
            !m.sees(&dead.chitchat_id()).await
        })
        .await
        {
            Some(s) => kills.push(s),
            None => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A Swarm node dies: every tenth member (never the seed) killed at
    // once; each one's time until it is out of every survivor's view.
    let mut i = 0;
    let (dead, members): (Vec<SimMember>, Vec<SimMember>) = members.into_iter().partition(|_| {
        i += 1;
        i % 10 == 0
    });
    let ids: Vec<_> = dead.iter().map(SimMember::chitchat_id).collect();
    let t0 = Instant::now();
    for d in &dead {
        d.kill(&net);
    }
    let mut gone: Vec<Option<f64>> = vec![None; ids.len()];
    while gone.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(30) {
        for (id, out) in ids.iter().zip(gone.iter_mut()) {
            if out.is_some() {
                continue;
            }
            let mut anywhere = false;
            for m in &members {
                if m.sees(id).await {
                    anywhere = true;
                    break;
                }
            }
            if !anywhere {
                *out = Some(t0.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mass_kill_failed = gone.iter().filter(|g| g.is_none()).count();
    let mass_kill: Vec<f64> = gone.into_iter().flatten().collect();
    let (oversized, dropped) = members
        .iter()
        .map(SimMember::oversized)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    Ok(Row {
        n,
        converged_s: converged,
        joins,
        kills,
        kb_per_s,
        kb_per_s_p99,
        mass_kill,
        mass_kill_failed,
        largest: members
            .iter()
            .map(SimMember::largest_datagram)
            .max()
            .unwrap_or(0),
        oversized,
        dropped,
        failed_trials: failed,
        by_kind,
    })
}

/// Bytes sent by all `members`, by message kind.
fn bytes_by_kind(members: &[SimMember]) -> Vec<u64> {
    let mut total = vec![0; MessageKind::ALL.len()];
    for m in members {
        for (t, b) in total.iter_mut().zip(m.bytes_sent_by_kind()) {
            *t += b;
        }
    }
    total
}

/// Log timestamps in simulated seconds since the start.
struct SimTime(Instant);

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "{:9.3}",
            Instant::now().duration_since(self.0).as_secs_f64()
        )
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.loss) {
        bail!(
            "--loss {}: expected a probability from 0 to below 1",
            args.loss
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    // RUST_LOG=chitchat=debug (for instance): the members' logs, stamped
    // with simulated time.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime(Instant::now()))
            .with_writer(std::io::stderr)
            .init();
    }
    let settings: Vec<String> = args.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "simulated: loss {:.0} %, latency {} µs, {}",
        args.loss * 100.0,
        args.latency_us,
        if settings.is_empty() {
            "default settings".to_string()
        } else {
            settings.join(" ")
        }
    );
    println!();
    println!(
        "| N | join p50 | join p99 | SIGKILL → gone p50 | SIGKILL → gone p99 | 10 % killed at once → gone p50 / p99 | gossip sent per member, mean / p99 | largest datagram | over MTU / dropped | converged | trials failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.sizes {
        if n < 4 {
            bail!("N = {n}: at least 4 members (a seed, a victim and observers)");
        }
        let wall = std::time::Instant::now();
        let row = rt.block_on(run(&args, n))?;
        println!(
            "| {} | {:.2} s | {} | {:.2} s | {} | {:.2} s / {}{} | {:.1} / {:.1} KB/s | {} B | {} / {} | {:.1} s | {} |",
            row.n,
            percentile(&row.joins, 0.5),
            shoal_tests::tail_cell(&row.joins),
            percentile(&row.kills, 0.5),
            shoal_tests::tail_cell(&row.kills),
            percentile(&row.mass_kill, 0.5),
            shoal_tests::tail_cell(&row.mass_kill),
            if row.mass_kill_failed > 0 {
                format!(" ({} never gone)", row.mass_kill_failed)
            } else {
                String::new()
            },
            row.kb_per_s,
            row.kb_per_s_p99,
            row.largest,
            row.oversized,
            row.dropped,
            row.converged_s,
            row.failed_trials,
        );
        let total: u64 = row.by_kind.iter().sum::<u64>().max(1);
        let shares: Vec<String> = MessageKind::ALL
            .iter()
            .zip(&row.by_kind)
            .map(|(k, b)| format!("{} {:.0} %", k.name(), *b as f64 * 100.0 / total as f64))
            .collect();
        eprintln!(
            "N={n}: bytes by kind: {}; joins {:?} kills {:?} ({:.0} s of real time)",
            shares.join(", "),
            row.joins
                .iter()
                .map(|s| (s * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            row.kills
                .iter()
                .map(|s| (s * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            wall.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
