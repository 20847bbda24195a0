//! Membership benchmark (not a test): for N members on loopback, one
//! `shoal sidecar --watch` process each, measures
//! - time for a new member to appear in every view (p50/p99),
//! - time for a SIGKILLed member to leave every view (p50/p99),
//! - gossip bytes/s sent per member, CPU and RSS per member (idle cluster);
//!
//! and, when Debian's `serf` is installed, Serf's detection time with 10
//! agents in the same run, as the anchor.
//!
//! Usage: `bench-membership [N...]` (default 3 10 50 100), or
//! `bench-membership soak N SECONDS [loaded]`: N members left alone (with the
//! CPUs kept busy when `loaded`), counting false removals — a live member
//! missing from another's view. Prints a
//! Markdown table. Times come from the members' own clocks (the `t_ms` of
//! the view they print), not from when this process read them.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_tests::percentile;
use shoal_tests::{Net, Proc, sidecar};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Joins and kills measured per N: `BENCH_TRIALS`, 30 by default (a p99
/// needs 20 or more; with fewer the table says "max of N").
fn trials_per_size() -> usize {
    std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(30)
}

/// t_ms of the first view printed by `p` at or after `since_ms` that satisfies `pred`.
fn first_view(p: &Proc, since_ms: u64, pred: &dyn Fn(&[String]) -> bool) -> Option<u64> {
    p.lines().iter().find_map(|(_, line)| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let t = v["t_ms"].as_u64()?;
        let ids: Vec<String> = v["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str().map(String::from))
            .collect();
        (t >= since_ms && pred(&ids)).then_some(t)
    })
}

fn self_id(p: &Proc) -> Option<String> {
    p.view().map(|v| v.me)
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("  timed out: {what}");
    false
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (ticks as f64 / 100.0, rss)
}

struct Row {
    n: usize,
    join: (f64, String),
    kill: (f64, String),
    bytes_per_sec: f64,
    cpu_percent: f64,
    rss_kib: f64,
    largest_datagram: u64,
}

fn bench(n: usize, net_id: u8) -> Row {
    let net = Net::new(net_id);
    let ip = |i: usize| net.ip(1 + (i / 200) as u8, (i % 200) as u8 + 1);
    let mut members: Vec<Proc> = (0..n)
        .map(|i| sidecar(&net, ip(i), "bench", &format!("m{i}")))
        .collect();
    let converged = wait("convergence", Duration::from_secs(60), || {
        members
            .iter()
            .all(|p| p.view().is_some_and(|v| v.members.len() == n))
    });
    eprintln!("N={n}: converged={converged}");
    // On auto (the default: the variable unset), members switch to V4 3 s
    // after all can, and bridge with V3's SYNs for 10 s after: the idle
    // cluster is the one after that.
    let auto =
        std::env::var("SHOAL_GOSSIP_PROTOCOL").map_or(true, |p| p.eq_ignore_ascii_case("auto"));
    let v4 = auto
        && wait("every member on V4", Duration::from_secs(30), || {
            members
                .iter()
                .all(|p| p.view().is_some_and(|v| v.gossip.protocol == "v4"))
        });
    if v4 {
        std::thread::sleep(Duration::from_secs(11));
    }
    eprintln!("N={n}: on V4={v4}");
    std::thread::sleep(Duration::from_secs(2));

    // Idle cost: gossip bytes, CPU, RSS over 10 s.
    let before: Vec<(u64, f64)> = members
        .iter()
        .map(|p| {
            (
                p.view().map(|v| v.gossip.bytes_sent).unwrap_or(0),
                proc_stat(p.pid()).0,
            )
        })
        .collect();
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let mut bytes = 0.0;
    let mut cpu = 0.0;
    let mut rss = 0.0;
    for (p, (b0, c0)) in members.iter().zip(&before) {
        let b1 = p.view().map(|v| v.gossip.bytes_sent).unwrap_or(0);
        let (c1, r) = proc_stat(p.pid());
        bytes += (b1.saturating_sub(*b0)) as f64 / window.as_secs_f64();
        cpu += (c1 - c0) / window.as_secs_f64() * 100.0;
        rss += r as f64;
    }
    let k = n as f64;
    let largest = members
        .iter()
        .filter_map(|p| p.view().map(|v| v.gossip.largest_datagram))
        .max()
        .unwrap_or(0);

    // Joins and kills, alternating so N stays about the same.
    let trials = trials_per_size();
    let (mut joins, mut kills) = (vec![], vec![]);
    for t in 0..trials {
        let idx = n + t;
        let start = now_ms();
        let newcomer = sidecar(&net, ip(idx), "bench", &format!("j{t}"));
        if !wait("newcomer id", Duration::from_secs(10), || {
            self_id(&newcomer).is_some()
        }) {
            continue;
        }
        let id = self_id(&newcomer).unwrap_or_default();
        let seen_by_all = wait("newcomer seen by all", Duration::from_secs(30), || {
            members
                .iter()
                .all(|p| first_view(p, start, &|ids| ids.contains(&id)).is_some())
        });
        if !seen_by_all {
            eprintln!(
                "newcomer {id}; member 0 sees {:?}",
                members[0].view().map(|v| v
                    .members
                    .iter()
                    .map(|m| m.id.clone())
                    .collect::<Vec<_>>())
            );
        }
        if seen_by_all {
            let last = members
                .iter()
                .filter_map(|p| first_view(p, start, &|ids| ids.contains(&id)))
                .max()
                .unwrap_or(start);
            joins.push((last - start) as f64 / 1000.0);
        }
        members.push(newcomer);

        // Kill a random older member, never the seed (members[0]): every
        // newcomer joins through it, as tasks join through `tasks.gateway`.
        let victim = 1 + (t * 7919 + 13) % (members.len() - 2);
        let victim_id = self_id(&members[victim]).unwrap_or_default();
        let killed_at = now_ms();
        members[victim].sigkill();
        let dead = members.remove(victim);
        drop(dead);
        let gone = wait(
            "victim gone from all views",
            Duration::from_secs(30),
            || {
                members
                    .iter()
                    .all(|p| first_view(p, killed_at, &|ids| !ids.contains(&victim_id)).is_some())
            },
        );
        if gone {
            let last = members
                .iter()
                .filter_map(|p| first_view(p, killed_at, &|ids| !ids.contains(&victim_id)))
                .max()
                .unwrap_or(killed_at);
            kills.push((last - killed_at) as f64 / 1000.0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("N={n}: joins {joins:?}\n      kills {kills:?}");
    Row {
        n,
        join: (percentile(&joins, 0.5), shoal_tests::tail_cell(&joins)),
        kill: (percentile(&kills, 0.5), shoal_tests::tail_cell(&kills)),
        bytes_per_sec: bytes / k,
        cpu_percent: cpu / k,
        rss_kib: rss / k,
        largest_datagram: largest,
    }
}

/// Serf (memberlist) with 10 agents: SIGKILL one, poll every agent's
/// `serf members` until it reports the victim failed. Port 7947: Swarm
/// holds 7946 on this host.
fn serf_detection(trials: usize) -> Option<Vec<f64>> {
    let serf = ["/usr/bin/serf", "/usr/sbin/serf"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let mut results = vec![];
    for trial in 0..trials {
        let agents: Vec<(String, Child)> = (1..=10)
            .map(|i| {
                let ip = format!("127.199.{trial}.{i}");
                let mut cmd = Command::new(serf);
                cmd.args([
                    "agent",
                    "-node",
                    &format!("s{i}"),
                    "-bind",
                    &format!("{ip}:7947"),
                    "-rpc-addr",
                    &format!("{ip}:7373"),
                ]);
                if i > 1 {
                    cmd.args([
                        "-retry-join",
                        &format!("127.199.{trial}.1:7947"),
                        "-retry-interval",
                        "1s",
                    ]);
                }
                let child = cmd
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()?;
                Some((ip, child))
            })
            .collect::<Option<_>>()?;
        let members_of = |ip: &str| -> String {
            Command::new(serf)
                .args(["members", "-rpc-addr", &format!("{ip}:7373")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        };
        let ready = wait("serf convergence", Duration::from_secs(30), || {
            agents
                .iter()
                .all(|(ip, _)| members_of(ip).matches("alive").count() == 10)
        });
        let mut agents = agents;
        if ready {
            let (_, victim) = &mut agents[4];
            let t0 = Instant::now();
            let _ = victim.kill();
            let _ = victim.wait();
            let mut pending: HashSet<usize> = (0..10).filter(|i| *i != 4).collect();
            while !pending.is_empty() && t0.elapsed() < Duration::from_secs(60) {
                pending.retain(|i| {
                    let out = members_of(&agents[*i].0);
                    !out.lines().any(|l| {
                        l.starts_with("s5 ") && (l.contains("failed") || l.contains("left"))
                    })
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            if pending.is_empty() {
                results.push(t0.elapsed().as_secs_f64());
            }
        }
        for (_, mut c) in agents {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    Some(results)
}

/// N members for `secs` seconds; returns how many views were printed after
/// convergence and how many of them missed a live member.
fn soak(n: usize, secs: u64, loaded: bool) -> (usize, usize) {
    let net = Net::new(240);
    let members: Vec<Proc> = (0..n)
        .map(|i| sidecar(&net, net.ip(1, i as u8 + 1), "soak", &format!("s{i}")))
        .collect();
    wait("convergence", Duration::from_secs(60), || {
        members
            .iter()
            .all(|p| p.view().is_some_and(|v| v.members.len() == n))
    });
    let since = now_ms();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpus = if loaded {
        std::thread::available_parallelism().map_or(2, |c| c.get())
    } else {
        0
    };
    let burners: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    let (mut views, mut short) = (0, 0);
    for p in &members {
        for (_, line) in p.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["t_ms"].as_u64().unwrap_or(0) < since {
                continue;
            }
            views += 1;
            if v["members"].as_array().map_or(0, Vec::len) < n {
                short += 1;
            }
        }
    }
    (views, short)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("soak") {
        let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
        let secs = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
        let loaded = args.get(3).is_some_and(|a| a == "loaded");
        let (views, short) = soak(n, secs, loaded);
        println!(
            "soak: N = {n}, {secs} s, CPUs {}: {views} views printed, {short} with a live member missing (false removals)",
            if loaded { "kept busy" } else { "idle" }
        );
        return;
    }
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![3, 10, 50, 100]
    } else {
        sizes
    };
    let mut rows = vec![];
    for (k, n) in sizes.iter().enumerate() {
        rows.push(bench(*n, 200 + k as u8));
    }
    println!(
        "| N | join p50 | join p99 | SIGKILL → gone p50 | SIGKILL → gone p99 | gossip sent per member | CPU per member | RSS per member | largest datagram |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {} | {:.2} s | {} | {:.1} KB/s | {:.1} % | {:.1} MiB | {} B |",
            r.n,
            r.join.0,
            r.join.1,
            r.kill.0,
            r.kill.1,
            r.bytes_per_sec / 1000.0,
            r.cpu_percent,
            r.rss_kib / 1024.0,
            r.largest_datagram
        );
    }
    match serf_detection(5) {
        Some(t) if !t.is_empty() => {
            let (p50, max) = (percentile(&t, 0.5), percentile(&t, 1.0));
            println!(
                "\nSerf agent (memberlist, LAN profile), 10 agents, same run: SIGKILL → failed in every view p50 {p50:.1} s, max {max:.1} s ({} trials)",
                t.len()
            );
        }
        _ => println!(
            "\nSerf not installed (apt-get install serf) or it did not converge: no side-by-side anchor in this run."
        ),
    }
}
