//! `soak`: the README's local cluster (`shoal local`) under steady mixed
//! load for a long time, with a replica killed every few seconds by
//! `shoal local --chaos`; the resident memory and open file descriptors of
//! every process sampled on a period. Writes the samples as CSV, prints the
//! drift of each process and the load's report, and exits non-zero when a
//! GET failed, a write was lost or duplicated, or memory or descriptors grew
//! past the bounds given. `scripts/bench soak-local` runs it for 30 minutes
//! and plots the CSV; a test runs a short version.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_node::parse_duration;
use shoal_tests::chaos::Load;
use shoal_tests::{children, rss_and_fds};

#[derive(Parser)]
#[command(about = "Soak the local cluster: load, kills, memory and descriptors sampled")]
struct Args {
    /// How long.
    #[arg(long = "for", default_value = "30m", value_parser = duration)]
    duration: Duration,
    /// A story-service replica is killed this often (`shoal local --chaos`).
    #[arg(long, default_value = "10s", value_parser = duration)]
    kill_every: Duration,
    /// Sampling period.
    #[arg(long, default_value = "10s", value_parser = duration)]
    sample_every: Duration,
    /// Samples before this are warm-up: drift is measured after it.
    #[arg(long, default_value = "2m", value_parser = duration)]
    warm_up: Duration,
    /// First two bytes of the cluster's loopback addresses.
    #[arg(long, default_value = "127.91")]
    net: String,
    /// Where `shoal local` keeps its data and logs.
    #[arg(long, default_value = "/tmp/shoal-soak")]
    data: PathBuf,
    /// The CSV of samples (seconds, process, RSS KiB, fds).
    #[arg(long, default_value = "soak.csv")]
    csv: PathBuf,
    /// Pause of each load worker between requests.
    #[arg(long, default_value = "5ms", value_parser = duration)]
    pause: Duration,
    /// Fail when a process that was never restarted grew more than this (MiB) after warm-up.
    #[arg(long, default_value_t = 16.0)]
    max_growth_mib: f64,
}

fn duration(raw: &str) -> Result<Duration, String> {
    parse_duration(raw).ok_or_else(|| format!("{raw:?} is not a duration such as 10s or 30m"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let _ = std::fs::remove_dir_all(&a.data);
    let shoal = shoal_tests::bin("shoal");
    let chaos = format!("story-service:{}s", a.kill_every.as_secs_f64());
    let mut local = Command::new(&shoal)
        .args(["local", "--net", &a.net, "--data"])
        .arg(&a.data)
        .args(["--chaos", &chaos])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = local.stdout.take().expect("piped");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let printer = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("up and routable") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    ready_rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| anyhow::anyhow!("the local cluster was not ready in 2 minutes"))?;
    eprintln!("soak: cluster ready; load and kills for {:?}", a.duration);

    let base = format!("http://{}.10.1:4000", a.net);
    let load = Load::start_paced(&base, 4, 1, a.pause);
    let mut csv = std::fs::File::create(&a.csv)?;
    writeln!(csv, "seconds,process,rss_kib,fds")?;
    let started = Instant::now();
    // process → [(seconds, rss, fds, pid)]
    let mut samples: BTreeMap<String, Vec<(f64, u64, usize, u32)>> = BTreeMap::new();
    let mut tick = tokio::time::interval(a.sample_every);
    while started.elapsed() < a.duration {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let mut procs = children(local.id());
        procs.push((local.id(), "shoal-local".to_string()));
        for (pid, name) in procs {
            if let Some((rss, fds)) = rss_and_fds(pid) {
                writeln!(csv, "{t:.0},{name},{rss},{fds}")?;
                samples.entry(name).or_default().push((t, rss, fds, pid));
            }
        }
    }
    let report = load.finish().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(local.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = local.wait()?;
    let printed = printer.join().unwrap_or_default();

    println!("{}", report.render());
    let warm = a.warm_up.as_secs_f64();
    let mut worst = 0.0f64;
    println!(
        "process          new pids  RSS after warm-up → end (MiB)   drift   fds after warm-up → end"
    );
    for (name, s) in &samples {
        let pids: std::collections::BTreeSet<u32> = s.iter().map(|x| x.3).collect();
        let after: Vec<_> = s.iter().filter(|x| x.0 >= warm).collect();
        let (Some(first), Some(last)) = (after.first(), after.last()) else {
            continue;
        };
        // Of a process never restarted: the same pid all along.
        let steady = pids.len() == 1;
        let growth = (last.1 as f64 - first.1 as f64) / 1024.0;
        if steady {
            worst = worst.max(growth);
        }
        println!(
            "{name:<18} {:>8}  {:>8.1} → {:>6.1}              {:>+6.1}   {:>4} → {:<4}{}",
            pids.len() - 1,
            first.1 as f64 / 1024.0,
            last.1 as f64 / 1024.0,
            growth,
            first.2,
            last.2,
            if steady {
                ""
            } else {
                "  (restarted: new process)"
            }
        );
    }
    let summary = printed
        .iter()
        .skip_while(|l| !l.contains("Summary") && !l.contains("summary"))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if !summary.is_empty() {
        println!("\n{summary}");
    }
    println!(
        "\nworst growth of a process never restarted, after warm-up: {worst:+.1} MiB (bound {} MiB); shoal local exited {status}",
        a.max_growth_mib
    );
    let ok = report.failed_gets() == 0
        && report.lost == 0
        && report.duplicated == 0
        && report.unread() == 0
        && worst <= a.max_growth_mib
        && status.success();
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
