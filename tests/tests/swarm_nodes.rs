//! The multi-node Swarm proof: swarm-stack.yml across three Swarm nodes on
//! this machine (`scripts/swarm-nodes`: Docker daemons in their own network
//! namespaces, VXLAN between them), then placement, the addresses each task
//! advertises, fragmentation on the overlay, partitions between nodes, a
//! node drained under load, and a whole node killed under load through
//! haproxy in front of the three nodes' gateways. Runs after the one-node
//! Swarm test (`scripts/test`); skipped (loudly) only where no Docker daemon
//! answers or the test is not root (namespaces, iptables).
//!
//! One test, in phases, because building the nodes and deploying is the
//! expensive part.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_tests::chaos::{Load, Report};
use shoal_tests::nodes::{Haproxy, NodeCut, Nodes, ViewLog, Way, until_gone};
use shoal_tests::run_script as script;

const STACK: &str = "shoalnodes";
/// The gateways' published port (host mode) on each node's address.
const PORT: u16 = 4000;
/// haproxy's port on loopback.
const HAPROXY_PORT: u16 = 14080;
/// The nodes.
const N: usize = 3;
const ALL: [usize; N] = [1, 2, 3];

/// The gateway of node `i`.
fn gateway(i: usize) -> String {
    format!("http://{}:{PORT}", Nodes::ip(i))
}

/// The manager's answer to `docker service ps` for `service`: the node of
/// each running task.
fn placement(service: &str) -> Vec<String> {
    Nodes::docker(
        1,
        &[
            "service",
            "ps",
            &format!("{STACK}_{service}"),
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ],
    )
    .lines()
    .filter(|l| l.contains("Running"))
    .filter_map(|l| l.split_whitespace().next().map(String::from))
    .collect()
}

/// `running/wanted` of `service`, as the manager counts it.
fn replicas(service: &str) -> String {
    Nodes::docker(
        1,
        &[
            "service",
            "ls",
            "--filter",
            &format!("name={STACK}_{service}"),
            "--format",
            "{{.Replicas}}",
        ],
    )
}

/// Waits until `check` holds, polling every 500 ms, for up to `timeout`.
async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    start.elapsed()
}

/// Which hosts answered `n` GETs of story-service's `/service/host` at `base`.
async fn story_hosts(client: &reqwest::Client, base: &str, n: usize) -> HashMap<String, usize> {
    let mut hosts = HashMap::new();
    for _ in 0..n {
        if let Ok(r) = client
            .get(format!("{base}/api/story-service/story/service/host"))
            .send()
            .await
            && r.status() == 200
        {
            *hosts.entry(r.text().await.unwrap_or_default()).or_insert(0) += 1;
        }
    }
    hosts
}

/// Waits until `load` has had `n` more GETs answered than now.
async fn more_answers(load: &Load, n: u64) {
    let from = load.answered();
    let start = Instant::now();
    while load.answered() < from + n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load got no answers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing failed, lost, duplicated or left unread.
fn assert_clean(what: &str, report: &Report) {
    eprintln!("NODES {what}:\n{}", report.render());
    assert_eq!(report.failed_gets(), 0, "{what}: failed GETs");
    assert_eq!(report.lost, 0, "{what}: acknowledged writes lost");
    assert_eq!(report.duplicated, 0, "{what}: writes duplicated");
    assert_eq!(report.unread(), 0, "{what}: writes not read back");
    assert!(report.gets > 50, "{what}: too little load");
}

fn hosts_of(tasks: &[shoal_tests::nodes::Task]) -> Vec<String> {
    tasks.iter().map(|t| t.host.clone()).collect()
}

/// Every member task (gateway, story, notice) on the nodes in `on`.
fn members_on(on: &[usize]) -> Vec<shoal_tests::nodes::Task> {
    ["gateway", "story-service", "notice-service"]
        .iter()
        .flat_map(|s| Nodes::tasks_on(on, STACK, s))
        .collect()
}

/// The views of the gateways on `on`, without their node.
fn views(on: &[usize]) -> Vec<HashSet<String>> {
    Nodes::gateway_views(on, STACK)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// Node `victim` cut off from `peers` (`way`) for `hold` under load through
/// node `through`'s gateway: its members out of the other nodes' gateway
/// views (when `leaves`), back after healing, no request failed; how that
/// gateway's view changed, printed.
async fn partition(victim: usize, peers: &[usize], way: Way, hold: Duration, through: usize) {
    let watchers: Vec<usize> = ALL.iter().copied().filter(|i| *i != victim).collect();
    let cut_hosts = hosts_of(&members_on(&[victim]));
    let view_log = Nodes::tasks_on(&[through], STACK, "gateway")
        .pop()
        .map(|g| ViewLog::start(g.pid));
    let load = Load::start(&gateway(through), 6, 2);
    more_answers(&load, 20).await;
    let cut = NodeCut::new(victim, peers, way);
    let cut_at = Instant::now();
    let isolated = peers.len() == N - 1;
    let gone = if isolated {
        let w = watchers.clone();
        tokio::task::spawn_blocking({
            let hosts = cut_hosts.clone();
            move || until_gone(&hosts, Duration::from_secs(5), || views(&w))
        })
        .await
        .expect("views")
    } else {
        vec![]
    };
    tokio::time::sleep(hold.saturating_sub(cut_at.elapsed())).await;
    cut.heal();
    let healed = Instant::now();
    if isolated {
        until(
            "the cut node's members back in every view",
            Duration::from_secs(30),
            || {
                let vs = views(&watchers);
                !vs.is_empty() && vs.iter().all(|v| cut_hosts.iter().all(|h| v.contains(h)))
            },
        )
        .await;
    }
    let back = healed.elapsed();
    more_answers(&load, 50).await;
    let report = load.finish().await;
    let what = format!("node {victim} cut from {peers:?} ({way:?}) for {hold:?}");
    if let Some(log) = view_log {
        eprintln!(
            "NODES {what}: node {through}'s gateway view changed (cut at {:.2} s, healed at {:.2} s):\n{}",
            (cut_at - log.started).as_secs_f64(),
            (healed - log.started).as_secs_f64(),
            log.finish()
        );
    }
    eprintln!(
        "NODES {what}: its {} members out of the other nodes' gateway views after {:?}; back {back:?} after healing",
        cut_hosts.len(),
        gone.iter().map(|(_, t)| *t).collect::<Vec<_>>()
    );
    assert_clean(&what, &report);
    assert!(
        gone.iter().all(|(_, t)| t.is_some()),
        "{what}: a cut member stayed in a view: {gone:?}"
    );
    assert!(
        report.max_ms < 3000.0,
        "{what}: a GET took {:.0} ms",
        report.max_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_nodes_three_hosts_placement_partitions_drain_and_a_node_death() {
    if !Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        shoal_tests::skip_unless_ci(
            "no Docker daemon answers `docker info`; the multi-node Swarm test needs one",
        );
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        shoal_tests::skip_unless_ci(
            "the multi-node Swarm test needs root (network namespaces, bridges, iptables)",
        );
        return;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    script("build-images", &[]);
    let nodes = Nodes::up(
        N,
        &[
            "shoal/gateway:latest",
            "shoal/story-service:latest",
            "shoal/notice-service:latest",
            "shoal/mariadb:latest",
        ],
    );
    let key = shoal_node::ClusterKey::generate().to_base64();
    let manager = Nodes::sock(1);
    shoal_tests::create_docker_secret(&["-H", &manager], "shoalnodes_key", &key);
    let deployed = Instant::now();
    let url = gateway(1);
    script(
        "swarm-up",
        &[
            ("DOCKER_HOST", manager.as_str()),
            ("STACK", STACK),
            ("SKIP_BUILD", "1"),
            ("BOARDS", "0"),
            ("SHOAL_KEY_SECRET", "shoalnodes_key"),
            ("DB_IMAGE", "shoal/mariadb:latest"),
            ("GATEWAY_URL", url.as_str()),
        ],
    );
    eprintln!(
        "NODES deploy across {N} nodes → routable: {:.1} s",
        deployed.elapsed().as_secs_f64()
    );

    // 1. Placement as the stack says: a gateway on every gateway-labelled
    // node (host mode), the replicas spread over the nodes, the database on
    // the node labelled db.
    until(
        "3 gateways, 3 story and 3 notice tasks running",
        Duration::from_secs(120),
        || {
            ["gateway", "story-service", "notice-service"]
                .iter()
                .all(|s| replicas(s) == "3/3")
        },
    )
    .await;
    let mut spread = HashMap::new();
    for service in ["gateway", "story-service", "notice-service", "db"] {
        let on = placement(service);
        let distinct: HashSet<&String> = on.iter().collect();
        eprintln!("NODES placement {service}: {on:?}");
        match service {
            "db" => assert_eq!(
                on,
                vec![Nodes::hostname(1)],
                "the db on the db-labelled node"
            ),
            _ => assert_eq!(distinct.len(), N, "{service} on every node: {on:?}"),
        }
        spread.insert(service, on);
    }

    // 2. Every task advertises its own msa-network address (its node's
    // daemon says which), and every node's gateway reaches the replicas on
    // the other nodes over VXLAN.
    let tasks = members_on(&ALL);
    let by_host: HashMap<&str, &shoal_tests::nodes::Task> =
        tasks.iter().map(|t| (t.host.as_str(), t)).collect();
    let gateway_1 = Nodes::tasks_on(&[1], STACK, "gateway")
        .pop()
        .expect("a gateway on node 1");
    let t = until(
        "every task in node 1's gateway view",
        Duration::from_secs(60),
        || {
            Nodes::admin(gateway_1.pid, "/members")
                .and_then(|j| serde_json::from_str::<shoal_node::MembersDoc>(&j).ok())
                .is_some_and(|d| d.members().count() == tasks.len())
        },
    )
    .await;
    let doc: shoal_node::MembersDoc = serde_json::from_str(
        &Nodes::admin(gateway_1.pid, "/members").expect("node 1's gateway answers /members"),
    )
    .expect("members JSON");
    eprintln!("NODES every task in the view {t:?} after routable");
    for m in doc.members() {
        let task = by_host
            .get(m.host.as_str())
            .unwrap_or_else(|| panic!("{} is in the view but runs on no node", m.host));
        assert_eq!(
            m.addr.ip().to_string(),
            task.ip,
            "{} (node {}) advertises {}, its msa-network address is {}",
            m.host,
            task.node,
            m.addr,
            task.ip
        );
    }
    for i in ALL {
        let hosts = story_hosts(&client, &gateway(i), 30).await;
        let nodes: HashSet<usize> = hosts
            .keys()
            .filter_map(|h| by_host.get(h.as_str()).map(|t| t.node))
            .collect();
        eprintln!("NODES through node {i}'s gateway: story hosts {hosts:?} on nodes {nodes:?}");
        assert_eq!(nodes.len(), N, "node {i}'s gateway reaches every node");
    }

    // 3. Partitions between nodes, under load through node 1's gateway:
    // node 3 cut from both others (both ways, then inbound only) — its
    // members leave every other view and come back; nodes 2 and 3 cut from
    // each other only (node 1 still sees both), load through node 2's
    // gateway — nobody removed, nothing failed.
    partition(3, &[1, 2], Way::Both, Duration::from_secs(6), 1).await;
    partition(3, &[1, 2], Way::Inbound, Duration::from_secs(6), 1).await;
    {
        let everyone: Vec<String> = hosts_of(&members_on(&ALL));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let (stop, everyone) = (stop.clone(), everyone.clone());
            move || {
                let mut missing = HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    for v in views(&ALL) {
                        missing.extend(everyone.iter().filter(|h| !v.contains(*h)).cloned());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                missing
            }
        });
        let load = Load::start(&gateway(2), 6, 2);
        more_answers(&load, 20).await;
        let cut = NodeCut::new(3, &[2], Way::Both);
        tokio::time::sleep(Duration::from_secs(8)).await;
        cut.heal();
        more_answers(&load, 50).await;
        let report = load.finish().await;
        stop.store(true, Ordering::Relaxed);
        let missing = watcher.join().expect("watcher");
        assert_clean(
            "nodes 2 and 3 cut from each other for 8 s (through node 2's gateway)",
            &report,
        );
        // Node 1 relays both sides' heartbeats, so node 2's gateway keeps
        // node 3's replicas in its view: a request sent to one waits out
        // the connect timeout (5 s) once, then goes elsewhere.
        assert!(
            report.max_ms < 6000.0,
            "a GET took {:.0} ms through the partial partition",
            report.max_ms
        );
        assert!(
            missing.is_empty(),
            "members removed from a view while node 1 still saw both sides: {missing:?}"
        );
    }

    // 4. Gossip datagrams never fragmented on the overlay: no fragment
    // made or reassembled in any task or on any node since the start.
    let mut fragments = vec![];
    for t in members_on(&ALL) {
        fragments.push((
            t.host.clone(),
            Nodes::fragments(&["-t", &t.pid.to_string(), "-n"]),
        ));
    }
    for i in ALL {
        let net = format!("--net=/var/run/netns/shoal-n{i}");
        fragments.push((Nodes::hostname(i), Nodes::fragments(&[&net])));
    }
    eprintln!("NODES IP fragments (created, reassembled) per task and node: {fragments:?}");
    assert!(
        fragments
            .iter()
            .all(|(_, (made, reasm))| *made == 0 && *reasm == 0),
        "fragmented datagrams: {fragments:?}"
    );

    // 5. Node 2 drained under load: its tasks move, no GET fails.
    let load = Load::start(&gateway(1), 6, 2);
    more_answers(&load, 20).await;
    let drained = Instant::now();
    Nodes::docker_ok(
        1,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            &Nodes::hostname(2),
        ],
    );
    until(
        "node 2 empty and the services whole elsewhere",
        Duration::from_secs(120),
        || {
            members_on(&[2]).is_empty()
                && replicas("story-service") == "3/3"
                && replicas("notice-service") == "3/3"
        },
    )
    .await;
    let moved = drained.elapsed();
    more_answers(&load, 50).await;
    let report = load.finish().await;
    eprintln!("NODES node 2 drained: its tasks moved in {moved:?}");
    assert_clean("node 2 drained", &report);
    Nodes::docker_ok(
        1,
        &[
            "node",
            "update",
            "--availability",
            "active",
            &Nodes::hostname(2),
        ],
    );
    until("node 2's gateway back", Duration::from_secs(60), || {
        replicas("gateway") == "3/3" && !Nodes::tasks_on(&[2], STACK, "gateway").is_empty()
    })
    .await;

    // 6. A whole node dies (node 3: its daemon and every container at once)
    // under load through haproxy in front of the three nodes' gateways.
    let haproxy = Haproxy::start(HAPROXY_PORT, &ALL, PORT);
    until("haproxy answers", Duration::from_secs(30), || {
        Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("{}/api/story-service/story", haproxy.url))
            .status()
            .is_ok_and(|s| s.success())
    })
    .await;
    let load = Load::start(&haproxy.url, 6, 2);
    more_answers(&load, 50).await;
    let dead = members_on(&[3]);
    let dead_hosts = hosts_of(&dead);
    assert!(!dead.is_empty(), "node 3 runs members");
    let everyone = members_on(&ALL).len();
    let killed_at = Instant::now();
    nodes.kill(3);
    let gone = tokio::task::spawn_blocking({
        let hosts = dead_hosts.clone();
        move || until_gone(&hosts, Duration::from_secs(10), || views(&[1, 2]))
    })
    .await
    .expect("views");
    let mut times: Vec<f64> = gone
        .iter()
        .filter_map(|(_, t)| t.map(|t| t.as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    eprintln!(
        "NODES node 3 killed ({} of {everyone} members): out of every surviving gateway's view after {:?} s (max of {})",
        dead.len(),
        times,
        times.len()
    );
    assert!(
        gone.iter()
            .all(|(_, t)| t.is_some_and(|t| t < Duration::from_secs(3))),
        "node 3's members out of every view within 3 s: {gone:?}"
    );
    // Swarm sees the node down and starts its tasks elsewhere: routable.
    let rescheduled = until(
        "story-service whole again on nodes 1 and 2",
        Duration::from_secs(180),
        || {
            replicas("story-service") == "3/3"
                && Nodes::tasks_on(&[1, 2], STACK, "story-service").len() == 3
        },
    )
    .await;
    let routable = loop {
        let hosts = story_hosts(&client, &haproxy.url, 30).await;
        if hosts.len() == 3 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(240),
            "3 story hosts never answered after the node died: {hosts:?}"
        );
    };
    more_answers(&load, 50).await;
    let report = load.finish().await;
    eprintln!(
        "NODES node 3 killed: Swarm rescheduled its story tasks {rescheduled:?} after (whole again), routable {routable:?} after the kill"
    );
    assert_clean("node 3 killed (through haproxy)", &report);
    drop(haproxy);
    nodes.down_leaving_nothing();
}
