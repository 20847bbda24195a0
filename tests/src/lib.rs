//! Harness for shoal's end-to-end tests: real processes, one loopback
//! address per replica (127.N.0.i), the same ports on each, as containers.
//!
//! Each test takes its own network number `N` ([`Net::new`]) so tests can run
//! in parallel without sharing an address. Processes are killed when their
//! [`Proc`] is dropped, so a failing test leaves no orphan.
//!
//! Binaries are taken from the target directory of the test executable;
//! `scripts/test` builds them first (`cargo build --workspace --bins`).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;

/// Gossip port used by every member in the tests (as in a stack file).
pub const GOSSIP_PORT: u16 = 7950;

pub mod browser;
pub mod chaos;
pub mod cut;
pub mod layout;
pub mod nodes;
pub mod oidc;
pub mod pebble;
pub mod sim;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Runs `scripts/<name>` from the repository's root with `env` added;
/// panics if it cannot start or fails.
pub fn run_script(name: &str, env: &[(&str, &str)]) {
    let status = std::process::Command::new(repo_root().join("scripts").join(name))
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    assert!(status.success(), "scripts/{name} failed: {status}");
}

/// The landed release's `shoal` binary (the commit in
/// `tests/landed-release`), built once by `scripts/build-landed`.
pub fn landed_release_bin() -> PathBuf {
    let output = std::process::Command::new(repo_root().join("scripts/build-landed"))
        .current_dir(repo_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/build-landed: {e}"));
    assert!(
        output.status.success(),
        "scripts/build-landed failed: {}",
        output.status
    );
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    repo_root().join(path)
}

/// `docker [docker_args…] secret create name -` with `value` on stdin
/// (`docker_args`: e.g. `["-H", socket]` for another daemon); panics on
/// failure.
pub fn create_docker_secret(docker_args: &[&str], name: &str, value: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("docker")
        .args(docker_args)
        .args(["secret", "create", name, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker secret create");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write secret");
    assert!(
        child.wait().expect("secret").success(),
        "docker secret create {name}"
    );
}

/// Runs `command`; its stdout, trimmed. Panics naming `what` and with the
/// command's stderr when it cannot start or fails.
pub fn run_ok(command: &mut std::process::Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // A test lives in target/<profile>/deps/, a bench binary in target/<profile>/.
    let dir = exe.parent().expect("target dir");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("target dir").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of a workspace binary; panics with the fix when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A cluster key for a test run.
pub fn new_key() -> String {
    shoal_node::ClusterKey::generate().to_base64()
}

/// `openssl` arguments for a new self-signed P-256 certificate and key,
/// valid two days (followed by `-subj`, `-keyout`, `-out`…).
pub const OPENSSL_SELF_SIGNED: [&str; 9] = [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "2",
];

/// A test's private slice of loopback: 127.N.g.i.
#[derive(Debug, Clone)]
pub struct Net {
    n: u8,
    /// The cluster key every member of this test uses.
    pub key: String,
    dir: PathBuf,
}

impl Net {
    /// Network `n` (unique per test, 2..=250). Also makes a scratch folder.
    pub fn new(n: u8) -> Self {
        let dir = std::env::temp_dir().join(format!("shoal-test-{n}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self {
            n,
            key: new_key(),
            dir,
        }
    }

    /// Address `i` of group `g`.
    pub fn ip(&self, g: u8, i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.n, g, i))
    }

    /// The scratch folder of this test.
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// The seed every member of this test uses: the first gateway address.
    pub fn seed(&self) -> String {
        format!("{}:{GOSSIP_PORT}", self.ip(1, 1))
    }

    /// Environment of a member at `ip` in this test's cluster.
    pub fn member_env(&self, ip: IpAddr, service: &str, host: &str) -> Vec<(String, String)> {
        [
            ("SHOAL_SERVICE", service.to_string()),
            ("SHOAL_ADVERTISE", ip.to_string()),
            ("SHOAL_LISTEN", ip.to_string()),
            ("SHOAL_SEEDS", self.seed()),
            ("SHOAL_CLUSTER_KEY", self.key.clone()),
            ("SHOAL_HOSTNAME", host.to_string()),
            ("SHOAL_DRAIN_ANNOUNCE", "500ms".to_string()),
            ("SHOAL_ACCESS_LOG", "false".to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One line a `--watch` member printed: its view at that moment.
#[derive(Debug, Clone, Deserialize)]
pub struct ViewLine {
    /// The member that printed it.
    #[serde(rename = "self")]
    pub me: String,
    /// Members it saw.
    pub members: Vec<ViewMember>,
    /// Its gossip counters.
    pub gossip: GossipCounters,
}

/// A member in a [`ViewLine`].
#[derive(Debug, Clone, Deserialize)]
pub struct ViewMember {
    /// `node#generation`.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Health.
    pub health: String,
}

/// Gossip counters in a [`ViewLine`].
#[derive(Debug, Clone, Deserialize)]
pub struct GossipCounters {
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams rejected.
    pub rejected: u64,
    /// The largest datagram sent.
    #[serde(default)]
    pub largest_datagram: u64,
    /// Datagrams sent larger than the gossip MTU.
    #[serde(default)]
    pub oversized: u64,
    /// The protocol it speaks (`"v3"`, `"v4"`; empty from releases before
    /// `auto`).
    #[serde(default)]
    pub protocol: String,
}

/// A running process of the test, killed when dropped.
pub struct Proc {
    /// A name for messages.
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The thread that reads stdout: done once the last line is in `lines`.
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin` with `args` and `env`; stdout lines are kept (with their
    /// arrival time), stderr goes to a log file in the test's folder.
    pub fn spawn(
        net: &Net,
        name: &str,
        bin: &std::path::Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Proc {
        let log = net.dir().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(net.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stdout.take().map(|stdout| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), line));
                }
            })
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
            reader,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (graceful stop).
    pub fn sigterm(&self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Sends SIGKILL and reaps the process.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, and for what it printed last to be
    /// read (the reader thread lags the exit: `lines` right after an exit
    /// could miss the final lines).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // EOF comes once every holder of the pipe is gone; a child
                // of the process that outlives it would hold it open, so
                // the wait is bounded.
                let read_until = Instant::now() + Duration::from_secs(5);
                while self.reader.as_ref().is_some_and(|r| !r.is_finished())
                    && Instant::now() < read_until
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stdout lines so far, with their arrival times.
    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Views printed by a `--watch` member, in order.
    pub fn views(&self) -> Vec<(Instant, ViewLine)> {
        self.lines()
            .into_iter()
            .filter_map(|(t, l)| serde_json::from_str(&l).ok().map(|v| (t, v)))
            .collect()
    }

    /// The latest view of a `--watch` member.
    pub fn view(&self) -> Option<ViewLine> {
        self.views().pop().map(|(_, v)| v)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, tail(&self.log(), 40));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The children of process `parent` whose `argv[0]` is `name`, as
/// `pgrep -P parent -xf name` finds them (`shoal local` names each replica
/// so).
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    children(parent)
        .into_iter()
        .filter(|(_, argv0)| argv0 == name)
        .map(|(pid, _)| pid)
        .collect()
}

/// The children of process `parent`, with their `argv[0]`.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid …; comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            (ppid == Some(parent)).then(|| (pid, String::from_utf8_lossy(argv0).into_owned()))
        })
        .collect()
}

/// Resident memory (KiB) and open file descriptors of a process.
pub fn rss_and_fds(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// Starts a `shoal sidecar --watch` member of `service` at `ip`.
pub fn sidecar(net: &Net, ip: IpAddr, service: &str, name: &str) -> Proc {
    let mut env = net.member_env(ip, service, name);
    env.push(("SHOAL_PORT".into(), "9000".into()));
    Proc::spawn(net, name, &bin("shoal"), &["sidecar", "--watch"], &env)
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_for`].
pub async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A gateway and services on one test network.
pub struct Stack<'a> {
    /// The network.
    pub net: &'a Net,
    /// Processes by name.
    pub procs: HashMap<String, Proc>,
}

/// Ports of the classic stack.
pub mod ports {
    /// Gateway public port.
    pub const GATEWAY: u16 = 4000;
    /// Gateway admin port.
    pub const ADMIN: u16 = 8761;
    /// story-service.
    pub const STORY: u16 = 8768;
    /// notice-service.
    pub const NOTICE: u16 = 8763;
    /// The test upstream.
    pub const ECHO: u16 = 9000;
    /// board-service (Node.js).
    pub const BOARD: u16 = 3000;
}

/// The board-service entry point in this repository.
pub fn board_server() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../apps/board-service/server.js")
}

/// Whether Node.js and board-service's libraries load here; if not, the
/// test skips (fails under CI) saying what to install.
pub fn board_runtime() -> bool {
    let ok = Command::new("node")
        .args([
            "-e",
            "require('express'); require('sqlite3'); require('mysql')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip_unless_ci(
            "node with express, sqlite3 and mysql does not load (scripts/test installs Debian's nodejs node-express node-sqlite3 node-mysql)",
        );
    }
    ok
}

impl<'a> Stack<'a> {
    /// An empty stack.
    pub fn new(net: &'a Net) -> Self {
        Self {
            net,
            procs: HashMap::new(),
        }
    }

    /// Starts gateway `i` at 127.N.1.i (gateway 1 is the seed).
    pub fn gateway(&mut self, i: u8, extra: &[(&str, &str)]) -> SocketAddr {
        let ip = self.net.ip(1, i);
        let name = format!("gateway-{i}");
        let mut env = self.net.member_env(ip, "gateway", &name);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let proc = Proc::spawn(self.net, &name, &bin("shoal-gateway"), &[], &env);
        self.procs.insert(name, proc);
        SocketAddr::new(ip, ports::GATEWAY)
    }

    /// Starts replica `i` of a service binary at 127.N.g.i.
    pub fn service(
        &mut self,
        binary: &str,
        service: &str,
        g: u8,
        i: u8,
        extra: &[(&str, &str)],
    ) -> SocketAddr {
        let ip = self.net.ip(g, i);
        let name = format!("{service}-{i}");
        let mut env = self.net.member_env(ip, service, &name);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let port: u16 = extra
            .iter()
            .find(|(k, _)| *k == "SHOAL_PORT")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(match binary {
                "story-service" => ports::STORY,
                "notice-service" => ports::NOTICE,
                _ => ports::ECHO,
            });
        let proc = Proc::spawn(self.net, &name, &bin(binary), &[], &env);
        self.procs.insert(name, proc);
        SocketAddr::new(ip, port)
    }

    /// Starts board-service replica `i` (Node.js on port 3000 at 127.N.3.i)
    /// behind `shoal sidecar`, as its Swarm task runs it, on `database_url`.
    pub fn board(&mut self, i: u8, database_url: &str) -> SocketAddr {
        let ip = self.net.ip(3, i);
        let name = format!("board-service-{i}");
        let mut env = self.net.member_env(ip, "board-service", &name);
        for (k, v) in [
            ("SHOAL_PORT", ports::BOARD.to_string()),
            ("PORT", ports::BOARD.to_string()),
            ("HOST", ip.to_string()),
            ("HOSTNAME", name.clone()),
            ("DATABASE_URL", database_url.to_string()),
        ] {
            env.push((k.to_string(), v));
        }
        let health = format!("http://{ip}:{}/bbs/health", ports::BOARD);
        let server = board_server().display().to_string();
        let args = [
            "sidecar",
            "--health-url",
            &health,
            "--routes",
            "/bbs",
            "--",
            "node",
            &server,
        ];
        let proc = Proc::spawn(self.net, &name, &bin("shoal"), &args, &env);
        self.procs.insert(name, proc);
        SocketAddr::new(ip, ports::BOARD)
    }

    /// The process called `name`.
    pub fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs
            .get_mut(name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }
}

/// Skips a test whose dependency (a database, a Docker daemon) is missing,
/// saying so loudly — except under CI (`CI` set), where a missing
/// dependency is a failure: CI installs everything, so a skip there would
/// be a test that cannot fail.
pub fn skip_unless_ci(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{why} — under CI this is a failure, not a skip");
    }
    eprintln!("!!!!! SKIPPED: {why} !!!!!");
}

/// Sends raw bytes to `to` on a new connection (from `from`, when given)
/// and reads the answer's status line — empty when the connection closed
/// without one.
pub async fn raw_exchange(from: Option<IpAddr>, to: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    if let Some(from) = from {
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the source");
    }
    let mut s = socket.connect(to).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// An HTTP client for the tests (no pooling surprises: fresh per test).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// The gateway's `/members` document, from its admin port.
pub async fn members_doc(
    client: &reqwest::Client,
    gateway: SocketAddr,
) -> Option<shoal_node::MembersDoc> {
    let admin = SocketAddr::new(gateway.ip(), ports::ADMIN);
    client
        .get(format!("http://{admin}/members"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The `p` quantile of `values` (0 to 1; the sample at rank
/// round((n − 1) · p)), NaN when there is none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The tail of `values` as a table cell: `p99` is only written over 20 or
/// more samples; with fewer, the cell says what it is — the largest of N.
pub fn tail_cell(values: &[f64]) -> String {
    match values.len() {
        0 => "—".into(),
        n if n >= 20 => format!("{:.2} s", percentile(values, 0.99)),
        n => format!("{:.2} s (max of {n})", percentile(values, 1.0)),
    }
}

/// `GET url` read as JSON, asking for JSON (Eureka's API answers XML
/// otherwise); panics, naming the URL, on any failure.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// The sum of the samples of metric `name` (a prefix of the line) on the
/// gateway's `/metrics`.
pub async fn gateway_metric(client: &reqwest::Client, gateway: SocketAddr, name: &str) -> f64 {
    let admin = SocketAddr::new(gateway.ip(), ports::ADMIN);
    let text = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `n` sequential GETs to `url` (which answers with the replica's
/// name, each 200) and counts the answers by replica.
pub async fn replica_counts(
    client: &reqwest::Client,
    url: &str,
    n: usize,
) -> HashMap<String, usize> {
    let mut hosts = HashMap::new();
    for _ in 0..n {
        let r = client.get(url).send().await.expect("request");
        assert_eq!(r.status(), 200, "{url}");
        *hosts.entry(r.text().await.unwrap_or_default()).or_default() += 1;
    }
    hosts
}

/// Sends 300 sequential GETs to `url` (which answers with the replica's
/// name) and asserts that `replicas` replicas share them evenly: each gets
/// 70–130. The balancer is latency-aware by design (peak EWMA): on a loaded
/// machine one slow answer rightly keeps a replica out for a few seconds, so
/// an uneven window is measured again, up to three windows; a balancer that
/// is really uneven fails all three.
pub async fn assert_even_spread(client: &reqwest::Client, url: &str, replicas: usize) {
    let mut windows = Vec::new();
    for _ in 0..3 {
        let hosts = replica_counts(client, url, 300).await;
        eprintln!("spread over replicas: {hosts:?}");
        let even = hosts.len() == replicas && hosts.values().all(|n| (70..=130).contains(n));
        if even {
            return;
        }
        windows.push(hosts);
    }
    panic!("uneven in three windows of 300 requests: {windows:?}");
}

/// Starts `shoal local` (the README's first command) with `args` and waits
/// until it says everything is up and routable; [`stop_local`] ends it.
pub fn start_local(net: &Net, args: &[&str]) -> Proc {
    let local = Proc::spawn(net, "local", &bin("shoal"), args, &[]);
    wait_for(
        "the local cluster to be ready",
        Duration::from_secs(60),
        || {
            local
                .lines()
                .iter()
                .any(|(_, l)| l.contains("up and routable"))
                .then_some(())
        },
    );
    local
}

/// Ctrl-C to `shoal local` (its process is `pid`: a [`Proc`] started by
/// [`start_local`], or its parent when the test started it otherwise), as
/// its user stops it: it must drain and exit 0 within `timeout`.
pub fn stop_local(local: &mut Proc, timeout: Duration) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(local.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT to shoal local");
    let status = local
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("shoal local did not exit within {timeout:?}"));
    assert!(status.success(), "shoal local exited {status}");
}

/// The gateway's view as `service → [(host, health)]`, from its admin port.
pub async fn gateway_view(
    client: &reqwest::Client,
    gateway: SocketAddr,
) -> Option<HashMap<String, Vec<(String, String)>>> {
    let doc = members_doc(client, gateway).await?;
    Some(
        doc.services
            .iter()
            .map(|(name, members)| {
                let list = members
                    .iter()
                    .map(|m| (m.host.clone(), m.health.to_string()))
                    .collect();
                (name.clone(), list)
            })
            .collect(),
    )
}

/// Waits until the service at `addr` says it is `up` itself (`/health` 200).
pub async fn wait_healthy(client: &reqwest::Client, addr: SocketAddr, timeout: Duration) {
    wait_for_async(&format!("{addr} healthy"), timeout, || async {
        let r = client
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

/// Waits until the gateway sees `count` instances of `service` up.
pub async fn wait_routable(
    client: &reqwest::Client,
    gateway: SocketAddr,
    service: &str,
    count: usize,
) {
    wait_for_async(
        &format!("{count} instances of {service} up at {gateway}"),
        Duration::from_secs(30),
        || async {
            let view = gateway_view(client, gateway).await?;
            let up = view.get(service)?.iter().filter(|(_, h)| h == "up").count();
            (up == count).then_some(())
        },
    )
    .await
}
