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
//! With `--soak SECS`, no trials: the formed cluster runs SECS simulated
//! seconds untouched (with `--loss` and `--jitter-ms`), and every member's
//! view is sampled every 100 ms: a view missing a live member is a false
//! removal (issue 21: 0 at N = 1,000, 5 % loss, 0–50 ms jitter, 10 min).
//!
//! Usage: `sim-membership [--loss P] [--jitter-ms J] [--trials K] [--soak SECS] [--set VAR=VALUE]... N...`
//! (`--set` passes a `SHOAL_*` setting to every member, e.g.
//! `--set SHOAL_GOSSIP_FANOUT=1`). Prints one Markdown row per N.

use std::time::Duration;

/// N members' states in one process are millions of small allocations
/// made and freed across a heap of gigabytes: glibc's malloc spent 12 %
/// of forming 2,000 members in `_int_malloc`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail};
use clap::Parser;
use shoal_node::ClusterKey;
use shoal_node::MessageKind;
use shoal_tests::percentile;
use shoal_tests::sim::{SimMember, SimNet, kb_per_s_since, spawn_member, until_all};
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
    /// Each datagram delayed by a further random 0 to this many
    /// milliseconds (uniform), so that datagrams overtake each other.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Instead of the trials: run the formed cluster this many simulated
    /// seconds untouched and count the views missing a live member.
    #[arg(long)]
    soak: Option<u64>,
    /// A `SHOAL_*` setting for every member, `VAR=VALUE` (repeatable).
    #[arg(long = "set", value_parser = parse_set)]
    set: Vec<(String, String)>,
    /// Microseconds between two members' starts while the cluster forms
    /// (tokio's timer sleeps whole milliseconds: below 1,000, several start
    /// in the same millisecond).
    #[arg(long, default_value_t = 2000)]
    join_interval_us: u64,
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
    /// A new member's own view whole (every member in it, record up).
    whole_views: Vec<f64>,
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

/// A formed cluster: every member sees every other, on V4 with its bridge
/// over (on `auto` or `v4`), their state hashes agreeing (or 60 s passed).
struct Formed {
    net: SimNet,
    key: String,
    members: Vec<SimMember>,
    converged: f64,
}

async fn form(args: &Args, n: usize) -> anyhow::Result<Formed> {
    let net = SimNet::new(
        Duration::from_micros(args.latency_us),
        args.loss,
        args.seed ^ n as u64,
    )
    .with_jitter(Duration::from_millis(args.jitter_ms));
    let key = ClusterKey::generate().to_base64();
    let start = Instant::now();
    let real = std::time::Instant::now();
    let mut members = Vec::with_capacity(n + 16);
    // Processes of the real bench start a few milliseconds apart.
    let mut owed = Duration::ZERO;
    for i in 0..n {
        members.push(spawn_member(&net, i, &key, &args.set).await?);
        owed += Duration::from_micros(args.join_interval_us);
        if owed >= Duration::from_millis(1) {
            let whole = Duration::from_millis(owed.as_millis() as u64);
            tokio::time::sleep(whole).await;
            owed -= whole;
        }
    }
    let converged = forming(&members, start, n)
        .await
        .with_context(|| format!("N = {n}: no convergence in 300 simulated seconds"))?;
    report_forming(n, converged, real.elapsed().as_secs_f64(), &members);

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
    if distinct > 1 {
        explain_hashes(&members).await;
    }
    Ok(Formed {
        net,
        key,
        members,
        converged,
    })
}

/// Why members' state hashes differ (on stderr): the members by hash,
/// and how a member of each smaller group differs from one of the largest
/// (nodes live for one and not the other, nodes whose versions differ).
async fn explain_hashes(members: &[SimMember]) {
    let mut by_hash: std::collections::HashMap<u64, Vec<usize>> = Default::default();
    for (i, m) in members.iter().enumerate() {
        by_hash
            .entry(m.chitchat().lock().await.state_hash())
            .or_default()
            .push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_hash.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    eprintln!("  members by state hash: {sizes:?}");
    let summary = async |i: usize| {
        let c = members[i].chitchat();
        let c = c.lock().await;
        c.live_nodes()
            .map(|id| {
                let version = c.node_state(id).map_or(0, |s| s.max_version());
                (id.clone(), version)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let base = summary(groups[0][0]).await;
    for group in groups.iter().skip(1).take(5) {
        let odd = summary(group[0]).await;
        let only_base: Vec<_> = base.keys().filter(|k| !odd.contains_key(*k)).collect();
        let only_odd: Vec<_> = odd.keys().filter(|k| !base.contains_key(*k)).collect();
        let versions: Vec<_> = base
            .iter()
            .filter_map(|(k, v)| odd.get(k).filter(|o| *o != v).map(|o| (&k.node_id, *v, *o)))
            .take(5)
            .collect();
        // How the odd member holds the nodes it misses, and what the
        // majority member knows of them.
        for id in only_base.iter().take(3) {
            let odd_c = members[group[0]].chitchat();
            let odd_c = odd_c.lock().await;
            let base_c = members[groups[0][0]].chitchat();
            let base_c = base_c.lock().await;
            eprintln!(
                "    {}: its death record {:?}, its heartbeat of it {:?}, the majority's {:?}",
                id.node_id,
                odd_c.death_record(id),
                odd_c.node_state(id).map(|s| s.heartbeat()),
                base_c.node_state(id).map(|s| s.heartbeat()),
            );
        }
        eprintln!(
            "  member {} ({} like it): live only for the majority {:?}, only for it {:?}, versions (majority, it) {:?}",
            members[group[0]].node,
            group.len(),
            only_base
                .iter()
                .take(5)
                .map(|k| &k.node_id)
                .collect::<Vec<_>>(),
            only_odd
                .iter()
                .take(5)
                .map(|k| &k.node_id)
                .collect::<Vec<_>>(),
            versions
        );
    }
}

/// What a soak saw.
struct Soak {
    /// Views sampled (members × samples).
    views: u64,
    /// Of those, views missing a live member.
    short: u64,
    /// The fewest members one view held.
    fewest: usize,
    /// Gossip sent per member over the soak, mean and p99 (KB/s).
    kb_per_s: (f64, f64),
}

async fn soak(args: &Args, n: usize, secs: u64) -> anyhow::Result<Soak> {
    let Formed { members, .. } = form(args, n).await?;
    let before: Vec<u64> = members.iter().map(SimMember::bytes_sent).collect();
    let start = Instant::now();
    let (mut views, mut short, mut fewest) = (0u64, 0u64, n);
    let mut next_report = Duration::from_secs(60);
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for m in &members {
            let seen = m.live_count().await;
            views += 1;
            if seen < n {
                short += 1;
                fewest = fewest.min(seen);
            }
        }
        if start.elapsed() >= next_report {
            eprintln!(
                "N={n}: {:.0} simulated s, {views} views, {short} missing a live member",
                start.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(60);
        }
    }
    let per_member = kb_per_s_since(&members, &before, start.elapsed().as_secs_f64());
    let mean = per_member.iter().sum::<f64>() / n as f64;
    Ok(Soak {
        views,
        short,
        fewest,
        kb_per_s: (mean, percentile(&per_member, 0.99)),
    })
}

async fn run(args: &Args, n: usize) -> anyhow::Result<Row> {
    let Formed {
        net,
        key,
        mut members,
        converged,
    } = form(args, n).await?;
    let before: Vec<u64> = members.iter().map(SimMember::bytes_sent).collect();
    let kinds_before = bytes_by_kind(&members);
    let window = Duration::from_secs(args.window.unwrap_or(if n >= 500 { 4 } else { 10 }));
    tokio::time::sleep(window).await;
    let per_member = kb_per_s_since(&members, &before, window.as_secs_f64());
    let kb_per_s = per_member.iter().sum::<f64>() / n as f64;
    let kb_per_s_p99 = percentile(&per_member, 0.99);
    let by_kind: Vec<u64> = bytes_by_kind(&members)
        .iter()
        .zip(&kinds_before)
        .map(|(a, b)| a - b)
        .collect();

    let trials = args.trials;
    let (mut joins, mut whole_views, mut kills, mut failed) = (vec![], vec![], vec![], 0);
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
        // And the newcomer's own view: every member in it, record up.
        let all = members.len() + 1;
        match until_all(
            std::slice::from_ref(&newcomer),
            t0,
            Duration::from_secs(30),
            async |m| m.up_count().await >= all,
        )
        .await
        {
            Some(s) => whole_views.push(s),
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
        whole_views,
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

/// Waits until every member sees all `n` (polled every 5 ms, as
/// [`until_all`]); returns the simulated time from `start`. Every simulated
/// second it prints (stderr) where forming stands: the views that are whole,
/// the smallest view, the nodes members know by name only (their keys not
/// there yet) and the distinct state hashes.
async fn forming(members: &[SimMember], start: Instant, n: usize) -> Option<f64> {
    let mut next = Duration::from_secs(1);
    loop {
        let mut whole = 0;
        let mut smallest = n;
        for m in members {
            let seen = m.live_count().await;
            whole += usize::from(seen == n);
            smallest = smallest.min(seen);
        }
        if start.elapsed() >= next || whole == n {
            next = Duration::from_secs(start.elapsed().as_secs() + 1);
            let mut keyless = 0;
            let mut hashes = std::collections::HashSet::new();
            for m in members {
                let c = m.chitchat();
                let mut c = c.lock().await;
                keyless += c
                    .node_states()
                    .values()
                    .filter(|s| s.max_version() == 0)
                    .count();
                hashes.insert(c.state_hash());
            }
            eprintln!(
                "N={n}: forming at {:.1} s: {whole} views whole, the smallest {smallest}, {keyless} nodes known by name only, {} distinct state hashes",
                start.elapsed().as_secs_f64(),
                hashes.len()
            );
        }
        if whole == n {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(300) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What forming the cluster sent (on stderr): bytes and datagrams in all
/// and per member, by message kind.
fn report_forming(n: usize, converged: f64, real: f64, members: &[SimMember]) {
    let bytes = bytes_by_kind(members);
    let mut packets = vec![0; MessageKind::ALL.len()];
    for m in members {
        for (t, p) in packets.iter_mut().zip(m.packets_sent_by_kind()) {
            *t += p;
        }
    }
    let (all_bytes, all_packets) = (bytes.iter().sum::<u64>(), packets.iter().sum::<u64>());
    let kinds: Vec<String> = MessageKind::ALL
        .iter()
        .zip(bytes.iter().zip(&packets))
        .map(|(k, (b, p))| format!("{} {p} / {:.1} MB", k.name(), *b as f64 / 1e6))
        .collect();
    eprintln!(
        "N={n}: forming (converged at {converged:.1} s, {real:.0} s of real time) sent {:.1} MB in {all_packets} datagrams, \
         {:.0} KB in {:.0} a member; by kind, datagrams / bytes: {}",
        all_bytes as f64 / 1e6,
        all_bytes as f64 / n as f64 / 1e3,
        all_packets as f64 / n as f64,
        kinds.join(", ")
    );
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
        "simulated: loss {:.0} %, latency {} µs{}, {}",
        args.loss * 100.0,
        args.latency_us,
        if args.jitter_ms > 0 {
            format!(" + 0–{} ms jitter", args.jitter_ms)
        } else {
            String::new()
        },
        if settings.is_empty() {
            "default settings".to_string()
        } else {
            settings.join(" ")
        }
    );
    println!();
    if let Some(secs) = args.soak {
        println!(
            "| N | simulated time | views sampled (every 100 ms) | views missing a live member | fewest members in a view | gossip sent per member, mean / p99 |"
        );
        println!("|---|---|---|---|---|---|");
        for &n in &args.sizes {
            let wall = std::time::Instant::now();
            let s = rt.block_on(soak(&args, n, secs))?;
            println!(
                "| {n} | {secs} s | {} | {} | {} | {:.1} / {:.1} KB/s |",
                s.views, s.short, s.fewest, s.kb_per_s.0, s.kb_per_s.1
            );
            eprintln!(
                "N={n}: soak of {secs} simulated s took {:.0} s of real time",
                wall.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    println!(
        "| N | join p50 | join p99 | newcomer's view whole p50 / p99 | SIGKILL → gone p50 | SIGKILL → gone p99 | 10 % killed at once → gone p50 / p99 | gossip sent per member, mean / p99 | largest datagram | over MTU / dropped | converged | trials failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.sizes {
        if n < 4 {
            bail!("N = {n}: at least 4 members (a seed, a victim and observers)");
        }
        let wall = std::time::Instant::now();
        let row = rt.block_on(run(&args, n))?;
        println!(
            "| {} | {:.2} s | {} | {:.2} s / {} | {:.2} s | {} | {:.2} s / {}{} | {:.1} / {:.1} KB/s | {} B | {} / {} | {:.1} s | {} |",
            row.n,
            percentile(&row.joins, 0.5),
            shoal_tests::tail_cell(&row.joins),
            percentile(&row.whole_views, 0.5),
            shoal_tests::tail_cell(&row.whole_views),
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
