//! One supervisor per replica: Swarm's `restart_policy: any`, on loopback.
//!
//! A replica that exits or is killed is started again on the same address
//! after a short delay. A replica that keeps dying within [`STABLE`] of its
//! start backs off (0.5 s, 1 s, 2 s … up to [`MAX_DELAY`]) and is reported;
//! it never takes the others down. Only the stop signal ends a supervisor:
//! it then drains its replica (SIGTERM) and kills it if the drain overruns.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::views::{Views, now_ms};

/// A replica that lived at least this long before dying starts again after
/// the shortest delay.
pub const STABLE: Duration = Duration::from_secs(10);
/// The first restart delay.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest restart delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Quick deaths in a row after which a replica is reported as failing.
pub const FAILING_AFTER: u32 = 3;
/// How long a replica may take to drain before it is killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// How to start one replica.
#[derive(Debug)]
pub struct Spec {
    /// `story-service-2`: its host name, its `argv[0]` (so `ps` and
    /// `pkill -f` see it) and the name of its log.
    pub name: String,
    /// `story-service`.
    pub service: &'static str,
    /// The binary.
    pub bin: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its loopback address.
    pub ip: IpAddr,
    /// Its service port.
    pub port: u16,
    /// Its environment (`SHOAL_*`, `DATABASE_URL`).
    pub env: Vec<(String, String)>,
    /// Its log file (stdout and stderr of every run, appended).
    pub log: PathBuf,
}

impl Spec {
    /// Whether this replica is a gateway.
    pub fn is_gateway(&self) -> bool {
        self.service == "gateway"
    }
}

/// What the supervisor of a replica tells the rest of `shoal local`.
#[derive(Debug, Default, Clone)]
pub struct Status {
    /// The running process, if any.
    pub pid: Option<u32>,
    /// When the running (or last) process was started, ms since the epoch.
    pub started_ms: u64,
    /// Deaths in a row, each within [`STABLE`] of its start.
    pub quick_deaths: u32,
    /// The next death was caused by `--chaos`.
    pub chaos_kill: bool,
    /// How each death happened (`killed by SIGKILL`), oldest first: each
    /// was followed by a restart.
    pub deaths: Vec<String>,
}

impl Status {
    /// Restarts so far (one per death).
    pub fn restarts(&self) -> usize {
        self.deaths.len()
    }
}

/// A replica and its supervisor's status.
#[derive(Debug)]
pub struct Replica {
    /// How to start it.
    pub spec: Spec,
    status: Mutex<Status>,
}

impl Replica {
    /// A replica not started yet.
    pub fn new(spec: Spec) -> Arc<Self> {
        Arc::new(Self {
            spec,
            status: Mutex::default(),
        })
    }

    /// Its status now.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGKILLs the running process for `--chaos`; returns the pid killed
    /// and when that process was started (ms since the epoch).
    pub fn chaos_kill(&self) -> Option<(u32, u64)> {
        let mut status = self.lock();
        let pid = status.pid?;
        status.chaos_kill = true;
        match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
            Ok(()) => Some((pid, status.started_ms)),
            Err(_) => {
                status.chaos_kill = false;
                None
            }
        }
    }

    /// The last lines of its log: its last [`TAIL_BYTES`] read, off the
    /// runtime's threads (a replica's log grows for as long as it runs).
    pub async fn log_tail(&self, lines: usize) -> String {
        tail(&self.spec.log, lines).await
    }

    async fn spawn(&self, first: bool) -> std::io::Result<tokio::process::Child> {
        let spec = &self.spec;
        let out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!first)
            .truncate(first)
            .open(&spec.log)
            .await?
            .into_std()
            .await;
        let mut cmd = std::process::Command::new(&spec.bin);
        cmd.arg0(&spec.name)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env_remove("SHOAL_CLUSTER_KEY")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: Ctrl-C in the terminal reaches only
            // `shoal local`, which then stops the replicas in order.
            .process_group(0);
        // If `shoal local` itself is killed (-9), its replicas go with it
        // rather than live on, orphaned, holding their addresses.
        crate::exit::die_with_parent(&mut cmd, nix::sys::signal::Signal::SIGKILL);
        tokio::process::Command::from(cmd).spawn()
    }
}

/// The restart delay after `quick_deaths` quick deaths in a row.
pub fn backoff(quick_deaths: u32) -> Duration {
    let doublings = quick_deaths.saturating_sub(1).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// Runs `replica` until `stop` turns true, restarting it whenever it ends.
pub async fn supervise(replica: Arc<Replica>, views: Arc<Views>, mut stop: watch::Receiver<bool>) {
    let name = replica.spec.name.clone();
    // (delay, how it died, when) of the death this start follows.
    let mut after_death: Option<(Duration, String, Instant)> = None;
    loop {
        let mut child = match replica
            .spawn(after_death.is_none() && replica.status().restarts() == 0)
            .await
        {
            Ok(child) => child,
            Err(err) => {
                let quick = {
                    let mut s = replica.lock();
                    s.quick_deaths += 1;
                    s.quick_deaths
                };
                let delay = backoff(quick);
                println!(
                    "{name} cannot start ({}: {err}); next try in {:.1} s",
                    replica.spec.bin.display(),
                    delay.as_secs_f64()
                );
                if sleep_or_stop(delay, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or_default();
        let started = Instant::now();
        let started_ms = now_ms();
        {
            let mut s = replica.lock();
            s.pid = Some(pid);
            s.started_ms = started_ms;
        }
        if let Some((delay, how, died)) = after_death.take() {
            println!(
                "{name} {how}, restarted in {:.1} s (pid {pid})",
                delay.as_secs_f64()
            );
            let (views, name) = (views.clone(), name.clone());
            tokio::spawn(async move {
                match views.wait_back(&name, started_ms).await {
                    Some(ready) => {
                        let after = ready.duration_since(died).as_secs_f64();
                        views.record_back(after);
                        println!(
                            "{name} back in rotation on every gateway {after:.2} s after it died"
                        );
                    }
                    None => println!(
                        "{name} is not back in rotation {} s after it restarted; see {}",
                        super::views::BACK_LIMIT.as_secs(),
                        views.log_hint(&name)
                    ),
                }
            });
        }

        let exit = tokio::select! {
            exit = child.wait() => exit,
            _ = stopped(&mut stop) => {
                drain(&name, pid, &mut child).await;
                replica.lock().pid = None;
                return;
            }
        };
        let died = Instant::now();
        let mut how = crate::exit::describe(&exit);
        let (quick, log_marker) = {
            let mut s = replica.lock();
            s.pid = None;
            if std::mem::take(&mut s.chaos_kill) {
                how.push_str(" (chaos)");
            }
            s.deaths.push(how.clone());
            if started.elapsed() >= STABLE {
                s.quick_deaths = 0;
            } else {
                s.quick_deaths += 1;
            }
            (
                s.quick_deaths,
                format!(
                    "--- shoal local: {name} (pid {pid}) {how} after {:.1} s; restarting ---\n",
                    started.elapsed().as_secs_f64()
                ),
            )
        };
        append_log(&replica, &log_marker).await;
        let delay = backoff(quick);
        if quick >= FAILING_AFTER {
            println!(
                "{name} keeps dying ({quick} times in a row, each within {} s of its start; last: {how}); next try in {:.1} s. Last lines of {}:\n{}",
                STABLE.as_secs(),
                delay.as_secs_f64(),
                replica.spec.log.display(),
                indent(&replica.log_tail(8).await)
            );
        }
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
        after_death = Some((delay, how, died));
    }
}

/// Sleeps for `delay`; true if the stop came first.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stopped(stop) => true,
    }
}

/// Resolves once the stop is asked for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it at once.
    let _ = stop.wait_for(|stop| *stop).await.is_ok();
}

/// SIGTERM (the replica drains), then SIGKILL if it is still there after
/// [`DRAIN_LIMIT`].
async fn drain(name: &str, pid: u32, child: &mut tokio::process::Child) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if tokio::time::timeout(DRAIN_LIMIT, child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "{name} did not stop within {} s; killing it",
            DRAIN_LIMIT.as_secs()
        );
        let _ = child.kill().await;
    }
}

async fn append_log(replica: &Replica, text: &str) {
    use tokio::io::AsyncWriteExt;
    if let Ok(mut f) = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&replica.spec.log)
        .await
    {
        let _ = f.write_all(text.as_bytes()).await;
    }
}

/// What [`Replica::log_tail`] reads at most: the end of the log.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last `lines` lines of the file at `path` among its last
/// [`TAIL_BYTES`] (a line cut by that start is left out); empty if it
/// cannot be read.
async fn tail(path: &std::path::Path, lines: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return String::new();
    };
    let len = file.metadata().await.map_or(0, |m| m.len());
    let from = len.saturating_sub(TAIL_BYTES);
    if file.seek(std::io::SeekFrom::Start(from)).await.is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.take(TAIL_BYTES).read_to_end(&mut bytes).await.is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if from > 0 && !all.is_empty() {
        all.remove(0);
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_the_cap() {
        assert_eq!(backoff(0), FIRST_DELAY);
        assert_eq!(backoff(1), FIRST_DELAY);
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(7), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }

    #[tokio::test]
    async fn the_tail_of_a_long_log_is_its_last_lines_read_from_its_end() {
        let path = std::env::temp_dir().join(format!("shoal-tail-{}.log", std::process::id()));
        // 20,000 lines (~290 KB): more than the tail reads.
        let text: String = (0..20_000).map(|i| format!("line {i:08}\n")).collect();
        tokio::fs::write(&path, &text)
            .await
            .expect("a temporary file");
        assert_eq!(tail(&path, 2).await, "line 00019998\nline 00019999");
        let many = tail(&path, 100_000).await;
        let first = many.lines().next().expect("lines");
        assert!(
            many.len() as u64 <= TAIL_BYTES && first.len() == "line 00000000".len(),
            "whole lines from the last {TAIL_BYTES} bytes: {first}"
        );
        tokio::fs::remove_file(&path).await.expect("removed");
        assert_eq!(tail(&path, 5).await, "", "a missing log: nothing");
    }
}
