//! Chaos on a real Swarm, in the spirit of Chaos Monkey: bounded load through
//! the gateway (GETs, and POSTs with unique ids) while a random task of a
//! service is `docker kill`ed every few seconds; then a report.
//!
//! Used by `scripts/chaos` (the `chaos` binary) and by the Swarm tests.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Stack name (`shoal`).
    pub stack: String,
    /// Service whose tasks are killed (`story-service`).
    pub service: String,
    /// Time between kills.
    pub every: Duration,
    /// Total duration.
    pub duration: Duration,
    /// Gateway base URL (through ingress).
    pub gateway: String,
    /// Concurrent GET workers.
    pub getters: usize,
    /// Concurrent POST workers.
    pub posters: usize,
    /// Also kill one gateway task halfway.
    pub kill_gateway: bool,
}

/// One kill and what followed.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Service of the task.
    pub service: String,
    /// Container killed.
    pub container: String,
    /// Its host name (container id prefix).
    pub host: String,
    /// Seconds until it was out of every gateway's view (None: not measured).
    pub left_views: Option<f64>,
    /// Seconds until a new task of the service answered through the gateway.
    pub replacement_routable: Option<f64>,
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// GETs sent.
    pub gets: u64,
    /// GETs that failed, by status (0: no answer).
    pub get_failures: HashMap<u16, u64>,
    /// The first failed GETs' answers, `status body` (or the client's
    /// error): what went wrong, for the log.
    pub failure_texts: Vec<String>,
    /// POSTs sent, by status.
    pub posts: HashMap<u16, u64>,
    /// GET latency p50, p99 (ms).
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// The slowest GET (ms).
    pub max_ms: f64,
    /// The kills.
    pub kills: Vec<Kill>,
    /// Acknowledged (201) writes missing from the table (read back as `[]`).
    pub lost: u64,
    /// The ids of those, to look for them elsewhere.
    pub lost_ids: Vec<String>,
    /// Writes whose read-back never got a 200 with a list (10 s of tries),
    /// by the last status (0: no answer): not known lost, not known kept.
    pub unverified: HashMap<u16, u64>,
    /// Writes present more than once.
    pub duplicated: u64,
}

impl Report {
    /// Failed GETs in total.
    pub fn failed_gets(&self) -> u64 {
        self.get_failures.values().sum()
    }

    /// Writes whose read-back never answered.
    pub fn unread(&self) -> u64 {
        self.unverified.values().sum()
    }

    /// A human report.
    pub fn render(&self) -> String {
        let mut out = format!(
            "requests: {} GETs, {} failed {:?}; GET latency p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms\nPOSTs by status: {:?}; acknowledged writes lost: {}, duplicated: {}, not read back: {:?}\n",
            self.gets,
            self.failed_gets(),
            self.get_failures,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.posts,
            self.lost,
            self.duplicated,
            self.unverified
        );
        for text in &self.failure_texts {
            out.push_str(&format!("  failed GET: {text}\n"));
        }
        if !self.kills.is_empty() {
            out.push_str("kills:\n");
        }
        for k in &self.kills {
            let f = |v: Option<f64>| v.map_or("—".to_string(), |s| format!("{s:.2} s"));
            out.push_str(&format!(
                "  {} {}: out of every gateway view after {}, replacement routable after {}\n",
                k.service,
                &k.container[..12.min(k.container.len())],
                f(k.left_views),
                f(k.replacement_routable)
            ));
        }
        out
    }
}

/// Runs `docker` and returns stdout (empty on failure).
pub fn docker(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Running containers of a service of the stack.
pub fn containers(stack: &str, service: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.swarm.service.name={stack}_{service}"),
    ])
    .lines()
    .map(String::from)
    .collect()
}

/// What each gateway task's admin port answers on `path` (`/members`,
/// `/metrics`), read from inside the container (the admin port is not
/// published); empty where it does not answer.
pub fn gateway_admin(stack: &str, path: &str) -> Vec<String> {
    let url = format!("http://127.0.0.1:8761{path}");
    containers(stack, "gateway")
        .iter()
        .map(|c| docker(&["exec", c, "/shoal", "healthcheck", "--print", &url]))
        .collect()
}

/// Host names in every gateway's own view.
pub fn gateway_views(stack: &str) -> Vec<HashSet<String>> {
    gateway_admin(stack, "/members")
        .iter()
        .map(|json| {
            serde_json::from_str::<shoal_node::MembersDoc>(json)
                .map(|doc| doc.members().map(|m| m.host.clone()).collect())
                .unwrap_or_default()
        })
        .collect()
}

/// The gossip protocol each gateway task speaks now (`"v3"`, `"v4"`; empty
/// where it does not answer).
pub fn gateway_protocols(stack: &str) -> Vec<String> {
    gateway_admin(stack, "/members")
        .iter()
        .map(|json| {
            serde_json::from_str::<shoal_node::MembersDoc>(json)
                .ok()
                .and_then(|doc| doc.protocol)
                .unwrap_or_default()
        })
        .collect()
}

/// GET as a patient client does: a request that got no answer at all is
/// retried for up to 10 s. Through the routing mesh the new connection
/// reaches another gateway task; with host-mode publishing (no IPVS) it
/// reaches the replacement of a killed gateway. An HTTP status, even an
/// error, is an answer and is returned as is.
pub async fn get_until_answered(
    client: &reqwest::Client,
    url: &str,
) -> reqwest::Result<reqwest::Response> {
    let mut outcome = client.get(url).send().await;
    let retry_until = Instant::now() + Duration::from_secs(10);
    while outcome.is_err() && Instant::now() < retry_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        outcome = client.get(url).send().await;
    }
    outcome
}

/// Where writes read back as missing through the gateway are: each id
/// asked of every instance directly (`bases`: `http://ip:port`), a line per
/// id naming how many rows each one lists (`-` for no list). One instance
/// listing it means a stale read path; none means the write is gone.
pub async fn locate(client: &reqwest::Client, ids: &[String], bases: &[String]) -> String {
    let mut out = String::new();
    for id in ids.iter().take(10) {
        out.push_str(&format!("  {id}:"));
        for base in bases {
            let rows = read_back(client, &format!("{base}/story/{id}")).await;
            let rows = rows.map_or("-".to_string(), |n| n.to_string());
            out.push_str(&format!(" {base} {rows};"));
        }
        out.push('\n');
    }
    out
}

/// The number of rows a read of `url` lists, tried for up to 10 s until it
/// answers 200 with a list; else the last status (0: no answer).
async fn read_back(client: &reqwest::Client, url: &str) -> Result<usize, u16> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let last = match client.get(url).send().await {
            Ok(r) if r.status() == 200 => {
                match r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .as_ref()
                    .and_then(|v| v.as_array())
                {
                    Some(rows) => return Ok(rows.len()),
                    None => 200,
                }
            }
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        if Instant::now() >= until {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one GET worker saw: sent, failures by status (0: no answer), and
/// latencies (ms) of the successes.
/// GETs sent, failed by status, latencies (ms), and the first failures'
/// answers (what the gateway said went wrong).
type GetterTally = (u64, HashMap<u16, u64>, Vec<f64>, Vec<String>);

/// Failed answers a report keeps the text of.
const FAILURES_KEPT: usize = 10;

/// Bounded load through a gateway, as a patient client sends it: GETs of
/// `/api/story-service/story` and `…/story/service/host` (the answering
/// host's first answer is noted), and POSTs with unique ids, checked at the
/// end for writes lost or duplicated.
pub struct Load {
    client: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    getters: Vec<tokio::task::JoinHandle<GetterTally>>,
    posters: Vec<tokio::task::JoinHandle<Vec<(String, u16)>>>,
    /// Host name → the first time it answered through the gateway.
    pub first_seen: Arc<Mutex<HashMap<String, Instant>>>,
    answered: Arc<std::sync::atomic::AtomicU64>,
}

impl Load {
    /// Starts `getters` GET workers and `posters` POST workers against the
    /// gateway at `base` (`http://127.0.0.1:4000`).
    pub fn start(base: &str, getters: usize, posters: usize) -> Load {
        Self::start_paced(base, getters, posters, Duration::ZERO)
    }

    /// Like [`Load::start`], each worker pausing `pause` between requests
    /// (a steady load rather than as much as the machine takes).
    pub fn start_paced(base: &str, getters: usize, posters: usize, pause: Duration) -> Load {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let stop = Arc::new(AtomicBool::new(false));
        let first_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let answered: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let base = base.trim_end_matches('/').to_string();
        let getters = (0..getters)
            .map(|w| {
                let (client, stop, first_seen, base, answered) = (
                    client.clone(),
                    stop.clone(),
                    first_seen.clone(),
                    base.clone(),
                    answered.clone(),
                );
                tokio::spawn(async move {
                    let (mut sent, mut failures, mut lat, mut texts) =
                        (0u64, HashMap::<u16, u64>::new(), Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        sent += 1;
                        let path = if (sent + w as u64) % 2 == 0 {
                            "story"
                        } else {
                            "story/service/host"
                        };
                        let url = format!("{base}/api/story-service/{path}");
                        let t = Instant::now();
                        match get_until_answered(&client, &url).await {
                            Ok(r) if r.status() == 200 => {
                                let text = r.text().await.unwrap_or_default();
                                lat.push(t.elapsed().as_secs_f64() * 1e3);
                                answered.fetch_add(1, Ordering::Relaxed);
                                if path.ends_with("host") {
                                    first_seen
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .entry(text)
                                        .or_insert_with(Instant::now);
                                }
                            }
                            Ok(r) => {
                                let status = r.status();
                                *failures.entry(status.as_u16()).or_default() += 1;
                                if texts.len() < FAILURES_KEPT {
                                    let body = r.text().await.unwrap_or_default();
                                    texts.push(format!("{status} {body}"));
                                }
                            }
                            Err(e) => {
                                *failures.entry(0).or_default() += 1;
                                if texts.len() < FAILURES_KEPT {
                                    texts.push(format!("no answer: {e}"));
                                }
                            }
                        }
                    }
                    (sent, failures, lat, texts)
                })
            })
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let tag = format!("{:x}{nanos:x}", std::process::id());
        let posters = (0..posters)
            .map(|w| {
                let (client, stop, base, tag) =
                    (client.clone(), stop.clone(), base.clone(), tag.clone());
                tokio::spawn(async move {
                    let mut outcomes = vec![];
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        n += 1;
                        let id = format!("x{tag}{w}-{n}");
                        let url = format!("{base}/api/story-service/story");
                        let body = serde_json::json!({"id": id, "message": "chaos"});
                        let mut outcome = client.post(&url).json(&body).send().await;
                        // Only a connection that never opened may be retried
                        // (nothing was sent), for up to 10 s, as for GETs.
                        let retry_until = Instant::now() + Duration::from_secs(10);
                        while matches!(&outcome, Err(e) if e.is_connect())
                            && Instant::now() < retry_until
                        {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            outcome = client.post(&url).json(&body).send().await;
                        }
                        let status = outcome.map(|r| r.status().as_u16()).unwrap_or(0);
                        if status == 0 {
                            // No answer: back off rather than spin.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        outcomes.push((id, status));
                    }
                    outcomes
                })
            })
            .collect();
        Load {
            client,
            base,
            stop,
            getters,
            posters,
            first_seen,
            answered,
        }
    }

    /// GETs answered 200 so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the load, then reads every write back: the report without kills.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = Report::default();
        let mut lat = vec![];
        for g in self.getters {
            if let Ok((s, f, l, texts)) = g.await {
                report.gets += s;
                let room = FAILURES_KEPT.saturating_sub(report.failure_texts.len());
                report.failure_texts.extend(texts.into_iter().take(room));
                for (k, v) in f {
                    *report.get_failures.entry(k).or_default() += v;
                }
                lat.extend(l);
            }
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        report.p50_ms = percentile(&lat, 0.5);
        report.p99_ms = percentile(&lat, 0.99);
        report.max_ms = lat.last().copied().unwrap_or(0.0);
        let mut posts = vec![];
        for p in self.posters {
            if let Ok(o) = p.await {
                posts.extend(o);
            }
        }
        for (id, status) in &posts {
            *report.posts.entry(*status).or_default() += 1;
            let url = format!("{}/api/story-service/story/{id}", self.base);
            match read_back(&self.client, &url).await {
                Ok(0) if *status == 201 => {
                    report.lost += 1;
                    report.lost_ids.push(id.clone());
                }
                Ok(n) if n > 1 => report.duplicated += 1,
                Ok(_) => {}
                Err(last) => *report.unverified.entry(last).or_default() += 1,
            }
        }
        report
    }
}

/// Runs the plan and reports.
pub async fn run(plan: &Plan) -> Report {
    let load = Load::start(&plan.gateway, plan.getters, plan.posters);
    let first_seen = load.first_seen.clone();
    let started = Instant::now();
    let mut kills = vec![];
    let mut seed = std::process::id() as u64 | 1;
    let mut gateway_killed = false;
    // Kills on a fixed schedule (every `plan.every` from the start), not a
    // pause after each kill's measurement: the time spent watching a kill
    // leave the views does not push the next one back (that made a 60 s run
    // every 5 s kill 9 times, not 12, when views were slow to read).
    // A kill whose measurement ran past the next one's time is followed by
    // the next half an interval later, never at once.
    let mut k = 0;
    let mut last = started;
    loop {
        k += 1;
        let at = (started + plan.every * k).max(last + plan.every / 2);
        if at > started + plan.duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        last = Instant::now();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target =
            if plan.kill_gateway && !gateway_killed && started.elapsed() >= plan.duration / 2 {
                gateway_killed = true;
                "gateway"
            } else {
                plan.service.as_str()
            };
        let running = containers(&plan.stack, target);
        if running.is_empty() {
            continue;
        }
        let victim = running[(seed % running.len() as u64) as usize].clone();
        let host = docker(&["inspect", "-f", "{{.Config.Hostname}}", &victim]);
        let known: HashSet<String> = first_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let killed_at = Instant::now();
        docker(&["kill", &victim]);
        // Out of every gateway's view (story-service only: a killed gateway
        // takes its own view with it).
        let left_views = if target == "gateway" {
            None
        } else {
            let mut left = None;
            while killed_at.elapsed() < Duration::from_secs(10) {
                let views = gateway_views(&plan.stack);
                if !views.is_empty() && views.iter().all(|v| !v.contains(&host)) {
                    left = Some(killed_at.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            left
        };
        kills.push((
            victim,
            host,
            left_views,
            killed_at,
            known,
            target == "gateway",
        ));
    }
    // Give the last replacement time to appear, then stop the load.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = first_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut report = load.finish().await;
    for (container, host, left_views, killed_at, known, was_gateway) in kills {
        let replacement = (!was_gateway)
            .then(|| {
                seen.iter()
                    .filter(|(h, t)| !known.contains(*h) && **t >= killed_at)
                    .map(|(_, t)| t.duration_since(killed_at).as_secs_f64())
                    .min_by(|a, b| a.total_cmp(b))
            })
            .flatten();
        report.kills.push(Kill {
            service: if was_gateway {
                "gateway".into()
            } else {
                plan.service.clone()
            },
            container,
            host,
            left_views,
            replacement_routable: replacement,
        });
    }
    report
}

/// The host pid of a container's main process (its network namespace).
pub fn task_pid(container: &str) -> u32 {
    docker(&["inspect", "-f", "{{.State.Pid}}", container])
        .parse()
        .unwrap_or_else(|_| panic!("no pid for container {container}"))
}

/// Which way a [`Cut`] drops traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Nothing in, nothing out.
    Both,
    /// Nothing in (it still sends).
    Inbound,
}

/// A network partition of one task: iptables rules in its network
/// namespace (entered with `nsenter`) dropping everything but loopback.
/// Dropping it heals the cut.
pub struct Cut {
    pid: u32,
    rules: Vec<[&'static str; 5]>,
}

impl Cut {
    /// Cuts the task whose main process is `pid`.
    pub fn new(pid: u32, direction: Direction) -> Cut {
        let mut rules = vec![["INPUT", "!", "-i", "lo", "DROP"]];
        if direction == Direction::Both {
            rules.push(["OUTPUT", "!", "-o", "lo", "DROP"]);
        }
        let cut = Cut { pid, rules };
        for r in &cut.rules {
            cut.iptables("-I", r);
        }
        cut
    }

    fn iptables(&self, op: &str, r: &[&str; 5]) {
        let pid = self.pid.to_string();
        crate::run_ok(
            Command::new("nsenter").args([
                "-t", &pid, "-n", "iptables", op, r[0], r[1], r[2], r[3], "-j", r[4],
            ]),
            &format!("iptables {op} {r:?} in the netns of {pid}"),
        );
    }

    /// Heals the cut now.
    pub fn heal(self) {}
}

impl Drop for Cut {
    fn drop(&mut self) {
        for r in self.rules.clone() {
            self.iptables("-D", &r);
        }
    }
}

/// GET `path` on the gateway inside the network namespace of `pid` (the
/// gateway's own port, reachable even when the task is cut off): the
/// status (0: no answer within 10 s) and the time it took.
pub fn get_in_netns(pid: u32, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:4000{path}"),
        ])
        .output()
        .expect("nsenter curl");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, started.elapsed())
}
