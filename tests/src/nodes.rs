//! A real multi-node Swarm on this machine, for the tests: the nodes that
//! `scripts/swarm-nodes` builds (Docker daemons in network namespaces on
//! bridge `br-shoal`), the tasks on each, the gateways' views read from
//! inside their own network namespaces, partitions between nodes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::repo_root as repo;

/// The bridge's /24 (node `i` is `10.210.0.1i`), as `scripts/swarm-nodes` makes it.
const SUBNET: &str = "10.210.0";

/// Runs `scripts/swarm-nodes` with `args`; panics with its output on failure.
fn swarm_nodes(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/swarm-nodes"))
        .args(args)
        .output()
        .expect("scripts/swarm-nodes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/swarm-nodes {args:?} failed:\n{text}"
    );
    text
}

/// A running multi-node Swarm; taken down (nothing left behind) when dropped.
pub struct Nodes {
    /// How many nodes (`1..=count`).
    pub count: usize,
}

/// One running task of a service, as its node's daemon reports it.
#[derive(Debug, Clone)]
pub struct Task {
    /// The node it runs on (1-based).
    pub node: usize,
    /// Container id.
    pub id: String,
    /// Its host name (what it advertises as `host`).
    pub host: String,
    /// Its address on msa-network.
    pub ip: String,
    /// Host pid of its main process (its network namespace).
    pub pid: u32,
}

impl Nodes {
    /// Brings up `count` nodes (after taking down any left from before) and
    /// loads `images` into each.
    pub fn up(count: usize, images: &[&str]) -> Nodes {
        swarm_nodes(&["down"]);
        let t = Instant::now();
        eprintln!("{}", swarm_nodes(&["up", &count.to_string()]));
        let nodes = Nodes { count };
        eprintln!("NODES up in {:.1} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut load = vec!["load"];
        load.extend_from_slice(images);
        swarm_nodes(&load);
        eprintln!(
            "NODES {} images loaded into {count} nodes in {:.1} s",
            images.len(),
            t.elapsed().as_secs_f64()
        );
        nodes
    }

    /// The Docker socket of node `i` (`DOCKER_HOST` for it).
    pub fn sock(i: usize) -> String {
        format!("unix:///run/shoal-nodes/n{i}/docker.sock")
    }

    /// Node `i`'s address on the bridge.
    pub fn ip(i: usize) -> String {
        format!("{SUBNET}.1{i}")
    }

    /// Node `i`'s host name (its name in `docker node ls`).
    pub fn hostname(i: usize) -> String {
        format!("shoal-n{i}")
    }

    /// `docker -H <node i> args…`: stdout, trimmed (empty on failure).
    pub fn docker(i: usize, args: &[&str]) -> String {
        Command::new("docker")
            .arg("-H")
            .arg(Self::sock(i))
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Like [`Nodes::docker`], panicking with stderr on failure.
    pub fn docker_ok(i: usize, args: &[&str]) -> String {
        crate::run_ok(
            Command::new("docker")
                .arg("-H")
                .arg(Self::sock(i))
                .args(args),
            &format!("docker (node {i}) {args:?}"),
        )
    }

    /// Running tasks of `stack`'s `service` on every node in `on`.
    pub fn tasks_on(on: &[usize], stack: &str, service: &str) -> Vec<Task> {
        let label = format!("label=com.docker.swarm.service.name={stack}_{service}");
        let mut tasks = vec![];
        for &node in on {
            for id in Self::docker(node, &["ps", "-q", "--no-trunc", "--filter", &label]).lines() {
                let line = Self::docker(
                    node,
                    &[
                        "inspect",
                        "-f",
                        "{{.Config.Hostname}} {{(index .NetworkSettings.Networks \"msa-network\").IPAddress}} {{.State.Pid}}",
                        id,
                    ],
                );
                let mut parts = line.split_whitespace();
                let (Some(host), Some(ip), Some(pid)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue; // gone meanwhile
                };
                tasks.push(Task {
                    node,
                    id: id.to_string(),
                    host: host.to_string(),
                    ip: ip.to_string(),
                    pid: pid.parse().unwrap_or(0),
                });
            }
        }
        tasks
    }

    /// Running tasks of `service` on every node.
    pub fn tasks(&self, stack: &str, service: &str) -> Vec<Task> {
        Self::tasks_on(&(1..=self.count).collect::<Vec<_>>(), stack, service)
    }

    /// `path` of the gateway's admin port, read in the network namespace of
    /// the task whose main process is `pid` (fast: no `docker exec`).
    pub fn admin(pid: u32, path: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "curl",
                "-fsS",
                "--max-time",
                "2",
            ])
            .arg(format!("http://127.0.0.1:8761{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Each gateway's view (host names) on the nodes in `on`, as
    /// `(node, view)`; a gateway that does not answer is left out.
    pub fn gateway_views(on: &[usize], stack: &str) -> Vec<(usize, HashSet<String>)> {
        Self::tasks_on(on, stack, "gateway")
            .iter()
            .filter_map(|g| {
                let doc: shoal_node::MembersDoc =
                    serde_json::from_str(&Self::admin(g.pid, "/members")?).ok()?;
                Some((g.node, doc.members().map(|m| m.host.clone()).collect()))
            })
            .collect()
    }

    /// Kills node `i` whole: its daemon, containerd and every container.
    pub fn kill(&self, i: usize) {
        eprintln!("{}", swarm_nodes(&["kill", &i.to_string()]).trim());
    }

    /// IP counters of a network namespace (`nsenter` args: `-t PID` or
    /// `--net=/var/run/netns/NAME`): fragments created and reassemblies
    /// needed, from `/proc/net/snmp`.
    pub fn fragments(nsenter: &[&str]) -> (u64, u64) {
        let out = Command::new("nsenter")
            .args(nsenter)
            .args(["cat", "/proc/net/snmp"])
            .output()
            .expect("nsenter cat /proc/net/snmp");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
        let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
            return (0, 0);
        };
        let pairs: Vec<(&str, u64)> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .map(|(n, v)| (n, v.parse().unwrap_or(0)))
            .collect();
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v)
        };
        (get("FragCreates"), get("ReasmReqds"))
    }
}

impl Nodes {
    /// Takes the nodes down and checks that nothing is left behind: no
    /// namespace, link, bridge, mount, iptables rule or state directory.
    pub fn down_leaving_nothing(self) {
        swarm_nodes(&["down"]);
        let run = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let links = run("ip", &["-o", "link", "show"]);
        let left: Vec<&str> = links
            .lines()
            .filter(|l| l.contains("shn") || l.contains("br-shoal"))
            .collect();
        assert!(left.is_empty(), "links left: {left:?}");
        let netns = run("ip", &["netns", "list"]);
        assert!(!netns.contains("shoal-n"), "namespaces left: {netns}");
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let left: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains("shoal-nodes"))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
        let rules = run("iptables", &["-S", "FORWARD"]);
        assert!(!rules.contains("br-shoal"), "iptables rules left: {rules}");
        for dir in ["/run/shoal-nodes", "/var/lib/shoal-nodes"] {
            assert!(!Path::new(dir).exists(), "{dir} left");
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/swarm-nodes"))
            .arg("down")
            .status();
    }
}

/// Which way a [`NodeCut`] drops a node's traffic with its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Nothing in from the peers, nothing out to them.
    Both,
    /// Nothing in from the peers (it still sends).
    Inbound,
}

/// A partition between nodes: iptables rules in node `node`'s network
/// namespace dropping what it exchanges with `peers` (VXLAN, Swarm's own
/// control traffic, everything). Dropping it heals the cut.
pub struct NodeCut {
    node: usize,
    rules: Vec<Vec<String>>,
}

impl NodeCut {
    /// Cuts node `node` off from `peers`.
    pub fn new(node: usize, peers: &[usize], way: Way) -> NodeCut {
        let mut rules = vec![];
        for &p in peers {
            rules.push(vec![
                "INPUT".into(),
                "-s".into(),
                Nodes::ip(p),
                "-j".into(),
                "DROP".into(),
            ]);
            if way == Way::Both {
                rules.push(vec![
                    "OUTPUT".into(),
                    "-d".into(),
                    Nodes::ip(p),
                    "-j".into(),
                    "DROP".into(),
                ]);
            }
        }
        let cut = NodeCut { node, rules };
        for r in &cut.rules {
            cut.iptables("-I", r);
        }
        cut
    }

    fn iptables(&self, op: &str, rule: &[String]) {
        crate::run_ok(
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/shoal-n{}", self.node))
                .arg("iptables")
                .arg(op)
                .args(rule),
            &format!("iptables {op} {rule:?} on node {}", self.node),
        );
    }

    /// Heals the cut now.
    pub fn heal(self) {}
}

impl Drop for NodeCut {
    fn drop(&mut self) {
        for r in self.rules.clone() {
            self.iptables("-D", &r);
        }
    }
}

/// haproxy on loopback in front of the nodes' gateways (host-mode port
/// `port` on each node's address), TCP mode, health-checking each: an L4
/// balancer as a Swarm without IPVS needs one. Stopped when dropped.
pub struct Haproxy {
    dir: PathBuf,
    /// Where clients connect (`http://127.0.0.1:…`).
    pub url: String,
}

impl Haproxy {
    /// Starts haproxy on `listen` (a loopback port) over `nodes`' gateways.
    pub fn start(listen: u16, nodes: &[usize], port: u16) -> Haproxy {
        let dir =
            std::env::temp_dir().join(format!("shoal-haproxy-{}-{listen}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("haproxy's directory");
        let servers: String = nodes
            .iter()
            .map(|&i| {
                format!(
                    "    server n{i} {}:{port} check inter 500ms fall 2 rise 2\n",
                    Nodes::ip(i)
                )
            })
            .collect();
        let cfg = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n    retries 3\n    option redispatch\n\
             frontend edge\n    bind 127.0.0.1:{listen}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n    default-server on-marked-down shutdown-sessions\n{servers}"
        );
        std::fs::write(dir.join("haproxy.cfg"), cfg).expect("haproxy.cfg");
        let pidfile = dir.join("haproxy.pid");
        let status = Command::new("haproxy")
            .args(["-D", "-f"])
            .arg(dir.join("haproxy.cfg"))
            .arg("-p")
            .arg(&pidfile)
            .status()
            .expect("haproxy (apt-get install haproxy)");
        assert!(status.success(), "haproxy did not start: {status}");
        Haproxy {
            dir,
            url: format!("http://127.0.0.1:{listen}"),
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("haproxy.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `views` until none holds any of `hosts`, for up to `timeout`: for
/// each host, when it was last seen in a view (its time out of every view),
/// `None` for a host still in one at the end.
pub fn until_gone(
    hosts: &[String],
    timeout: Duration,
    mut views: impl FnMut() -> Vec<HashSet<String>>,
) -> Vec<(String, Option<Duration>)> {
    let start = Instant::now();
    let mut gone: Vec<(String, Option<Duration>)> =
        hosts.iter().map(|h| (h.clone(), None)).collect();
    while start.elapsed() < timeout && gone.iter().any(|(_, t)| t.is_none()) {
        let vs = views();
        let at = start.elapsed();
        for (host, t) in gone.iter_mut() {
            if t.is_none() && !vs.is_empty() && vs.iter().all(|v| !v.contains(host.as_str())) {
                *t = Some(at);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    gone
}

/// What one gateway saw change in its view, sampled every 100 ms from the
/// start until [`ViewLog::finish`]: `(time, "+service host addr health")`
/// and `-…` lines, for the log when a phase fails.
pub struct ViewLog {
    /// When sampling started: the changes' times count from it.
    pub started: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, String)>>,
}

impl ViewLog {
    /// Starts sampling the view of the gateway task whose process is `pid`.
    pub fn start(pid: u32) -> ViewLog {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Instant::now();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen: HashSet<String> = HashSet::new();
                let mut changes = vec![];
                while !stop.load(Ordering::Relaxed) {
                    let now: Option<HashSet<String>> = Nodes::admin(pid, "/members")
                        .and_then(|j| serde_json::from_str::<shoal_node::MembersDoc>(&j).ok())
                        .map(|d| {
                            d.members()
                                .map(|m| {
                                    format!("{} {} {} {:?}", m.service, m.host, m.addr, m.health)
                                })
                                .collect()
                        });
                    if let Some(now) = now {
                        let at = started.elapsed();
                        changes.extend(seen.difference(&now).map(|m| (at, format!("-{m}"))));
                        changes.extend(now.difference(&seen).map(|m| (at, format!("+{m}"))));
                        seen = now;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                changes
            }
        });
        ViewLog {
            started,
            stop,
            thread,
        }
    }

    /// Stops sampling; the changes after the first sample, one per line.
    pub fn finish(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let changes = self.thread.join().unwrap_or_default();
        let first = changes.first().map(|(t, _)| *t);
        changes
            .iter()
            .filter(|(t, _)| Some(*t) != first)
            .map(|(t, c)| format!("  {:>7.2} s {c}\n", t.as_secs_f64()))
            .collect()
    }
}
