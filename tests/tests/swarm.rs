//! The Swarm proof: swarm-stack.yml deployed on a real single-node Swarm from
//! images built here, then scaling, chaos, a rolling update and a key
//! rotation, all under load. Skipped (loudly) only where no Docker daemon
//! answers. `scripts/test` runs it after every other test: while the stack
//! publishes its port, the ingress rules capture that port on every local
//! address, so it must not overlap tests that use loopback ports.
//!
//! One test, in phases, because deploying the stack is the expensive part.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_tests::chaos::{self, Plan, containers, docker, gateway_views};
use shoal_tests::run_script as script;
use shoal_tests::{pebble, wait_for, wait_for_async};

const STACK: &str = "shoaltest";
/// Published gateway port of the test stack (not 4000: see the module doc).
const PORT: u16 = 14000;
const TLS_PORT: u16 = 14443;

fn base() -> String {
    format!("http://127.0.0.1:{PORT}")
}

fn deploy_env(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STACK", STACK.into()),
        ("SKIP_BUILD", "1".into()),
        ("PUBLISHED_PORT", PORT.to_string()),
        ("PUBLISHED_TLS_PORT", TLS_PORT.to_string()),
        ("SHOAL_KEY_SECRET", secret.into()),
        ("DB_IMAGE", "shoal/mariadb:latest".into()),
    ]
}

async fn hosts_through_gateway(client: &reqwest::Client, n: usize) -> HashMap<String, usize> {
    hosts_at(client, "/api/story-service/story/service/host", n).await
}

/// Which task answered each of `n` GETs of a `…/service/host` path.
async fn hosts_at(client: &reqwest::Client, path: &str, n: usize) -> HashMap<String, usize> {
    let mut hosts = HashMap::new();
    for _ in 0..n {
        if let Ok(r) = client.get(format!("{}{path}", base())).send().await {
            if r.status() == 200 {
                *hosts.entry(r.text().await.unwrap_or_default()).or_insert(0) += 1;
            }
        }
    }
    hosts
}

/// GET load through the gateway until `stop`; returns (sent, failed).
/// Like a real client, a GET that got no answer at all (connection refused
/// or reset: the one gateway of a node without IPVS being replaced) is
/// retried for up to 10 s; an HTTP error status is a failure at once.
fn load(
    client: &reqwest::Client,
    path: &'static str,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let client = client.clone();
    tokio::spawn(async move {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (0u64, vec![]);
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        let url = format!("{}{path}", base());
                        match chaos::get_until_answered(&client, &url).await {
                            Ok(r) if r.status() == 200 => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failed.push(format!("{}", r.status())),
                            Err(e) => failed.push(format!("{e}")),
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        let (mut sent, mut failed) = (0, vec![]);
        for w in workers {
            if let Ok((s, f)) = w.await {
                sent += s;
                failed.extend(f);
            }
        }
        (sent, failed)
    })
}

async fn under_load<F: std::future::Future<Output = ()>>(
    client: &reqwest::Client,
    what: &str,
    work: F,
) {
    under_load_on(client, "/api/story-service/story", what, work).await;
}

/// GETs of `path` through the gateway while `work` runs: none may fail.
async fn under_load_on<F: std::future::Future<Output = ()>>(
    client: &reqwest::Client,
    path: &'static str,
    what: &str,
    work: F,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let task = load(client, path, stop.clone(), answered.clone());
    // The load runs before the work starts, and goes on after it is done.
    let more_answers = |n: u64| {
        let from = answered.load(Ordering::Relaxed);
        let answered = answered.clone();
        wait_for_async("answered GETs", Duration::from_secs(60), move || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::Relaxed) >= from + n).then_some(()) }
        })
    };
    more_answers(20).await;
    work.await;
    more_answers(50).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = task.await.expect("load task");
    eprintln!(
        "SWARM {what}: {sent} GETs under load, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{what}: failed requests {failed:?}");
    assert!(sent > 50, "{what}: too little load");
}

async fn wait_converged(service: &str, replicas: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let running = docker(&[
            "service",
            "ls",
            "--filter",
            &format!("name={STACK}_{service}"),
            "--format",
            "{{.Replicas}}",
        ]);
        if running == format!("{replicas}/{replicas}")
            && containers(STACK, service).len() == replicas
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} did not converge to {replicas}: {running}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes the test stack and its key secrets (before and after the test).
fn remove_stack() {
    docker(&["service", "rm", "shoaltest_pebble"]);
    script("swarm-down", &[("STACK", STACK)]);
    for s in [
        "shoaltest_key_1",
        "shoaltest_key_2",
        "shoaltest_key_3",
        "shoaltest_key_4",
        "shoaltest_pebble_cert",
        "shoaltest_pebble_key",
        "shoaltest_pebble_config",
        "shoaltest_pebble_ca",
        "shoaltest_edge_key",
    ] {
        docker(&["secret", "rm", s]);
    }
}

fn docker_ok(args: &[&str]) {
    shoal_tests::run_ok(
        Command::new("docker").args(args),
        &format!("docker {args:?}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_stack_deploys_scales_survives_chaos_rolls_and_rotates_keys() {
    if !Command::new("docker")
        .args(["info"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        shoal_tests::skip_unless_ci(
            "no Docker daemon answers `docker info`; the Swarm tests need one",
        );
        return;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    script("build-images", &[]);
    remove_stack();
    // A fresh machine is no Swarm manager yet: secrets need one.
    script("swarm-init", &[]);
    let (old, new) = (
        shoal_node::ClusterKey::generate().to_base64(),
        shoal_node::ClusterKey::generate().to_base64(),
    );
    let secret = |name: &str, value: &str| shoal_tests::create_docker_secret(&[], name, value);
    secret("shoaltest_key_1", &old);
    let deployed = Instant::now();
    script(
        "swarm-up",
        &deploy_env("shoaltest_key_1")
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "SWARM deploy → routable: {:.1} s",
        deployed.elapsed().as_secs_f64()
    );
    // 3 gateways behind the routing mesh, or one per node in host mode (no IPVS).
    let gateways = containers(STACK, "gateway").len();
    assert!(gateways >= 1);

    // 1. The classic API through the gateway; 300 GETs see all 3 tasks.
    let r = client
        .get(format!("{}/api/story-service/story", base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<serde_json::Value>().await.unwrap().is_array());
    // A task whose first answers were slow (a cold start: its database
    // pool opening) is avoided until its latency average decays (peak EWMA,
    // 5 s time constant, route/balance.rs), as a user would see it: 300
    // GETs again every 2 s until all 3 share them, 40 s at most.
    let warm_by = Instant::now() + Duration::from_secs(40);
    let mut hosts = hosts_through_gateway(&client, 300).await;
    eprintln!("SWARM spread over tasks: {hosts:?}");
    while hosts.len() < 3 && Instant::now() < warm_by {
        tokio::time::sleep(Duration::from_secs(2)).await;
        hosts = hosts_through_gateway(&client, 300).await;
        eprintln!("SWARM spread over tasks (again): {hosts:?}");
    }
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    // HTTPS and HTTP/2 on the published TLS port, the certificate from the
    // stack's secrets.
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "5", "-w", "\n%{http_version}"])
        .arg(format!(
            "https://127.0.0.1:{TLS_PORT}/api/story-service/story/service/host"
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("SWARM over HTTPS: {text:?}");
    assert!(
        out.status.success() && text.ends_with("\n2"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. Every member advertises its own msa-network address. Routable
    // means one replica of each service is up; the others may still be
    // starting: wait (up to a minute) until the view holds every task.
    let view_deadline = Instant::now() + Duration::from_secs(60);
    let (task_ips, members) = loop {
        let mut task_ips: HashMap<String, String> = HashMap::new();
        for service in [
            "gateway",
            "story-service",
            "notice-service",
            "board-service",
        ] {
            for c in containers(STACK, service) {
                let host = docker(&["inspect", "-f", "{{.Config.Hostname}}", &c]);
                let ip = docker(&[
                    "inspect",
                    "-f",
                    "{{(index .NetworkSettings.Networks \"msa-network\").IPAddress}}",
                    &c,
                ]);
                task_ips.insert(host, ip);
            }
        }
        let members: shoal_node::MembersDoc = serde_json::from_str(
            chaos::gateway_admin(STACK, "/members")
                .first()
                .expect("a gateway task"),
        )
        .expect("members JSON");
        let in_view: usize = members.services.values().map(|l| l.len()).sum();
        if in_view >= task_ips.len() || Instant::now() > view_deadline {
            eprintln!(
                "SWARM every task in the gateway's view {:.1} s after the deploy began",
                deployed.elapsed().as_secs_f64()
            );
            break (task_ips, members);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut checked = 0;
    for list in members.services.values() {
        for m in list {
            let host = m.host.as_str();
            let addr = m.addr.to_string();
            let ip = m.addr.ip().to_string();
            assert!(
                ip.starts_with("10.0.9."),
                "{host} advertises {addr}, outside 10.0.9.0/24"
            );
            assert_eq!(
                Some(&ip),
                task_ips.get(host),
                "{host} advertises {addr}, its task's msa-network address is {:?}",
                task_ips.get(host)
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        task_ips.len(),
        "every task is in the gateway's view, and nothing else"
    );

    // 3. Scale up: 5 distinct hosts answer; measure the time.
    let t = Instant::now();
    docker_ok(&[
        "service",
        "scale",
        "-d",
        &format!("{STACK}_story-service=5"),
    ]);
    loop {
        if hosts_through_gateway(&client, 30).await.len() == 5 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "5 hosts never answered"
        );
    }
    eprintln!(
        "SWARM scale 3 → 5: 5 hosts routable {:.1} s after `docker service scale`",
        t.elapsed().as_secs_f64()
    );
    under_load(&client, "scale 5 → 1", async {
        docker_ok(&[
            "service",
            "scale",
            "-d",
            &format!("{STACK}_story-service=1"),
        ]);
        wait_converged("story-service", 1, Duration::from_secs(60)).await;
    })
    .await;
    docker_ok(&[
        "service",
        "scale",
        "-d",
        &format!("{STACK}_story-service=3"),
    ]);
    wait_converged("story-service", 3, Duration::from_secs(60)).await;
    while hosts_through_gateway(&client, 30).await.len() < 3 {}

    // 3b. board-service (Node.js behind its sidecar, in one task): the /bbs
    // API, scaled 2 → 3, a task killed under load.
    let r = client
        .post(format!("{}/api/bbs/", base()))
        .json(&serde_json::json!({"id": "swarm", "title": "on swarm", "content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let latest: serde_json::Value =
        shoal_tests::get_json(&client, &format!("{}/api/bbs/latest/", base())).await;
    assert_eq!(latest[0]["title"], "on swarm");
    let t = Instant::now();
    docker_ok(&[
        "service",
        "scale",
        "-d",
        &format!("{STACK}_board-service=3"),
    ]);
    while hosts_at(&client, "/api/bbs/service/host", 30).await.len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "3 board-service tasks never answered"
        );
    }
    eprintln!(
        "SWARM board-service 2 → 3: routable {:.1} s after `docker service scale`",
        t.elapsed().as_secs_f64()
    );
    under_load_on(
        &client,
        "/api/bbs/latest/",
        "board-service task killed",
        async {
            let victim = containers(STACK, "board-service")
                .into_iter()
                .next()
                .expect("a board-service task");
            docker(&["kill", &victim]);
            wait_converged("board-service", 3, Duration::from_secs(60)).await;
        },
    )
    .await;
    let t = Instant::now();
    while hosts_at(&client, "/api/bbs/service/host", 30).await.len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the killed board-service task was not replaced"
        );
    }

    // 4. Chaos: a story-service task killed every 5 s for 60 s, a gateway too.
    let report = chaos::run(&Plan {
        stack: STACK.into(),
        service: "story-service".into(),
        every: Duration::from_secs(5),
        duration: Duration::from_secs(60),
        gateway: base(),
        getters: 6,
        posters: 2,
        kill_gateway: true,
    })
    .await;
    eprintln!("SWARM chaos report:\n{}", report.render());
    assert_eq!(report.failed_gets(), 0, "failed GETs");
    assert_eq!(report.lost, 0, "acknowledged writes lost");
    assert_eq!(report.duplicated, 0, "writes duplicated");
    assert_eq!(report.unread(), 0, "writes not read back");
    assert!(report.kills.len() >= 10, "kills: {}", report.kills.len());
    wait_converged("story-service", 3, Duration::from_secs(60)).await;
    wait_converged("gateway", gateways, Duration::from_secs(60)).await;

    // 4b. Partitions, not deaths: iptables in a task's network namespace.
    partitions(gateways).await;

    // 5. Rolling update under load.
    under_load(&client, "rolling update", async {
        docker_ok(&[
            "service",
            "update",
            "--force",
            "--update-monitor",
            "2s",
            &format!("{STACK}_story-service"),
        ]);
    })
    .await;

    // 5b. A rollback to protocol V3 and the upgrade back to V4, under load:
    // the stack runs V4 (`auto`, the default, once every member can);
    // story-service pinned to `v3` (what a task of a release without V4
    // speaks) task by task brings every member back to V3 at once; the pin
    // removed task by task, every member is on V4 again once the last V3
    // task is gone. No failed GET either way.
    protocol_everywhere("v4", Duration::from_secs(30), "after deploy");
    let update = |service: &'static str, change: [&'static str; 2]| async move {
        let service = format!("{STACK}_{service}");
        docker_ok(&[
            "service",
            "update",
            "--update-monitor",
            "2s",
            change[0],
            change[1],
            &service,
        ]);
    };
    under_load(
        &client,
        "story-service pinned to protocol V3 (rolling rollback)",
        update("story-service", ["--env-add", "SHOAL_GOSSIP_PROTOCOL=v3"]),
    )
    .await;
    protocol_everywhere("v3", Duration::from_secs(10), "with V3 tasks");
    under_load(
        &client,
        "story-service back to the default, auto (rolling upgrade)",
        update("story-service", ["--env-rm", "SHOAL_GOSSIP_PROTOCOL"]),
    )
    .await;
    let on_v4 = protocol_everywhere("v4", Duration::from_secs(30), "after the upgrade");
    eprintln!(
        "SWARM rolling upgrade to V4: every gateway on V4 {:.1} s after the last V3 task was replaced",
        on_v4.as_secs_f64()
    );

    // 6. Key rotation without downtime: [old, new] → [new, old] → [new],
    // each a rolling update of every service.
    secret("shoaltest_key_2", &format!("{old},{new}"));
    secret("shoaltest_key_3", &format!("{new},{old}"));
    secret("shoaltest_key_4", &new);
    let rotate = |from: &str, to: &str| {
        let (from, to) = (from.to_string(), to.to_string());
        async move {
            let updates: Vec<_> = ["gateway", "story-service", "notice-service"]
                .into_iter()
                .map(|service| {
                    let (from, to) = (from.clone(), to.clone());
                    std::thread::spawn(move || {
                        docker_ok(&[
                            "service",
                            "update",
                            "--update-monitor",
                            "2s",
                            "--secret-rm",
                            &from,
                            "--secret-add",
                            &format!("source={to},target=shoal_cluster_key"),
                            &format!("{STACK}_{service}"),
                        ])
                    })
                })
                .collect();
            for u in updates {
                u.join().expect("update thread");
            }
        }
    };
    under_load(
        &client,
        "key rotation step 1 (accept new)",
        rotate("shoaltest_key_1", "shoaltest_key_2"),
    )
    .await;
    under_load(
        &client,
        "key rotation step 2 (send new)",
        rotate("shoaltest_key_2", "shoaltest_key_3"),
    )
    .await;
    under_load(
        &client,
        "key rotation step 3 (drop old)",
        rotate("shoaltest_key_3", "shoaltest_key_4"),
    )
    .await;
    // `docker service update` returns once the last new task runs; its
    // predecessor may still answer for a moment before Swarm stops it. Wait
    // for the settled set: exactly the 3 current tasks answer.
    let settle = Instant::now();
    loop {
        let hosts = hosts_through_gateway(&client, 60).await;
        if hosts.len() == 3 {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "all story tasks routable after rotation: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A container with a wrong key never joins.
    let intruder = docker(&[
        "run",
        "-d",
        "--network",
        "msa-network",
        "-e",
        "SHOAL_SERVICE=intruder",
        "-e",
        "SHOAL_PORT=8768",
        "-e",
        &format!(
            "SHOAL_CLUSTER_KEY={}",
            shoal_node::ClusterKey::generate().to_base64()
        ),
        "-e",
        "SHOAL_SEEDS=tasks.gateway:7950",
        "-e",
        "SHOAL_ADVERTISE=cidr:10.0.9.0/24",
        "-e",
        "DATABASE_URL=mysql://shoal:shoal@db:3306/shoal",
        "shoal/story-service:latest",
    ]);
    // Wait until the gateways have refused its gossip for a while: then it
    // has had every chance to get in.
    let rejected = || -> u64 {
        chaos::gateway_admin(STACK, "/metrics")
            .iter()
            .flat_map(|text| text.lines())
            .filter(|l| l.starts_with("shoal_gateway_gossip_rejected_packets_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = rejected();
    wait_for_async(
        "the gateways to reject the intruder's gossip",
        Duration::from_secs(30),
        || async { (rejected() >= before + 20).then_some(()) },
    )
    .await;
    let views = gateway_views(STACK);
    let intruder_host = docker(&["inspect", "-f", "{{.Config.Hostname}}", &intruder]);
    docker(&["rm", "-f", &intruder]);
    assert!(!views.is_empty());
    for v in &views {
        assert!(
            !v.contains(&intruder_host),
            "the wrong-key container joined a gateway's view"
        );
    }
    let distinct: HashSet<&String> = views.iter().flatten().collect();
    assert!(distinct.len() >= 7, "the cluster is intact: {distinct:?}");

    // 7. A certificate from an ACME CA on the stack's network.
    acme_from_pebble_in_the_stack();

    remove_stack();
}

/// pebble (Let's Encrypt's test CA, `shoal/pebble`) as a service on
/// msa-network; the gateways moved from their certificate files to ACME by
/// a rolling update (`SHOAL_ACME_DOMAINS`, the CA's root as a secret, the
/// edge key as a secret only they hold). The CA's HTTP-01 check comes to
/// port 4000 of the name's addresses — `tasks.gateway`, every gateway task
/// — whichever gateway it reaches answers from gossip; one order in all,
/// and HTTPS then answers with a certificate for the name that chains to
/// pebble's root.
fn acme_from_pebble_in_the_stack() {
    const NAME: &str = "tasks.gateway";
    if docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "shoal/pebble:latest",
    ])
    .is_empty()
    {
        shoal_tests::skip_unless_ci(
            "no shoal/pebble image (scripts/build-images makes it where Debian's pebble is installed; scripts/test installs it)",
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("shoal-swarm-pebble-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("pebble's folder");
    pebble::api_certificate(&dir, "DNS:pebble");
    let config = pebble::config(
        "0.0.0.0:14000",
        "0.0.0.0:15000",
        std::path::Path::new("/run/secrets/pebble_cert"),
        std::path::Path::new("/run/secrets/pebble_key"),
        4000,
        None,
    );
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("pebble's files");
    let secret = |name: &str, value: &str| shoal_tests::create_docker_secret(&[], name, value);
    secret("shoaltest_pebble_cert", &read("api.pem"));
    secret("shoaltest_pebble_key", &read("api.key"));
    secret("shoaltest_pebble_config", &config.to_string());
    secret("shoaltest_pebble_ca", &read("ca.pem"));
    secret(
        "shoaltest_edge_key",
        &shoal_node::ClusterKey::generate().to_base64(),
    );
    docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "shoaltest_pebble",
        "--network",
        "name=msa-network,alias=pebble",
        // DNS names to task addresses: Swarm's VIPs need IPVS, which not
        // every kernel has (scripts/swarm-up).
        "--endpoint-mode",
        "dnsrr",
        "--secret",
        "source=shoaltest_pebble_cert,target=pebble_cert",
        "--secret",
        "source=shoaltest_pebble_key,target=pebble_key",
        "--secret",
        "source=shoaltest_pebble_config,target=pebble_config",
        // No random sleeps before validating, no nonces refused at random.
        "-e",
        "PEBBLE_VA_NOSLEEP=1",
        "-e",
        "PEBBLE_WFE_NONCEREJECT=0",
        "shoal/pebble:latest",
        "-config",
        "/run/secrets/pebble_config",
    ]);
    let switched = Instant::now();
    docker_ok(&[
        "service",
        "update",
        "--update-monitor",
        "2s",
        "--env-rm",
        "SHOAL_TLS_CERT",
        "--env-rm",
        "SHOAL_TLS_KEY",
        "--env-add",
        &format!("SHOAL_ACME_DOMAINS={NAME}"),
        "--env-add",
        "SHOAL_ACME_DIRECTORY=https://pebble:14000/dir",
        "--env-add",
        "SHOAL_ACME_CA_FILE=/run/secrets/pebble_ca",
        "--env-add",
        "SHOAL_EDGE_KEY_FILE=/run/secrets/shoal_edge_key",
        "--secret-add",
        "source=shoaltest_pebble_ca,target=pebble_ca",
        "--secret-add",
        "source=shoaltest_edge_key,target=shoal_edge_key",
        &format!("{STACK}_gateway"),
    ]);
    // The root pebble issues from (new each run), read inside its task.
    let pebble_task = containers("shoaltest", "pebble")
        .pop()
        .expect("pebble's task runs");
    let pid = chaos::task_pid(&pebble_task).to_string();
    let root = wait_for("pebble's issuing root", Duration::from_secs(30), || {
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "curl", "-ksSf", "--max-time", "2"])
            .arg("https://127.0.0.1:15000/roots/0")
            .output()
            .ok()?;
        (out.status.success() && !out.stdout.is_empty()).then_some(out.stdout)
    });
    std::fs::write(dir.join("root.pem"), root).expect("root file");
    let url = format!("https://{NAME}:{TLS_PORT}/api/story-service/story");
    let resolve = format!("{NAME}:{TLS_PORT}:127.0.0.1");
    let https = || {
        Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(["--resolve", &resolve, "--cacert"])
            .arg(dir.join("root.pem"))
            .arg(&url)
            .output()
            .ok()
            .filter(|o| String::from_utf8_lossy(&o.stdout) == "200")
    };
    wait_for(
        "HTTPS for the name with pebble's certificate",
        Duration::from_secs(180),
        https,
    );
    let served = switched.elapsed();
    // Every gateway holds it; one order in all.
    let stats: Vec<serde_json::Value> = chaos::gateway_admin(STACK, "/stats")
        .iter()
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter_map(|doc| doc.get("acme").cloned())
        .collect();
    eprintln!(
        "SWARM ACME: HTTPS with pebble's certificate {served:?} after the switch; /stats: {stats:?}"
    );
    assert!(!stats.is_empty(), "no gateway answers /stats with acme");
    assert!(
        stats.iter().all(|s| s["state"] == "valid"),
        "every gateway holds the certificate: {stats:?}"
    );
    let ordered: u64 = stats
        .iter()
        .map(|s| s["orders"].as_u64().unwrap_or(0) - s["failed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(ordered, 1, "one order in all: {stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether every gateway's view has (or lacks) `host`, polled until it does
/// or `timeout`; the time it took.
fn until_views(host: &str, present: bool, timeout: Duration) -> Duration {
    until_views_within(host, present, timeout).unwrap_or_else(|| {
        panic!(
            "{host} {} every gateway view after {timeout:?}",
            if present { "not back in" } else { "still in" }
        )
    })
}

/// Waits until every gateway task speaks `protocol`; how long it took.
fn protocol_everywhere(protocol: &str, timeout: Duration, when: &str) -> Duration {
    let start = Instant::now();
    loop {
        let protocols = shoal_tests::chaos::gateway_protocols(STACK);
        if !protocols.is_empty() && protocols.iter().all(|p| p == protocol) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{when}: gateways on {protocols:?}, not all on {protocol} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Like [`until_views`], `None` when `timeout` passes first.
fn until_views_within(host: &str, present: bool, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let views = gateway_views(STACK);
        if !views.is_empty() && views.iter().all(|v| v.contains(host) == present) {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A story task cut off (both ways, then inbound only) under load, a
/// gateway cut off from everything, a flapping link: each reported.
async fn partitions(gateways: usize) {
    use shoal_tests::chaos::{Cut, Direction, Load, get_in_netns, task_pid};
    for direction in [Direction::Both, Direction::Inbound] {
        let victim = containers(STACK, "story-service")
            .into_iter()
            .next()
            .expect("a story task");
        let host = victim[..12].to_string();
        let pid = task_pid(&victim);
        let load = Load::start(&base(), 6, 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cut = Cut::new(pid, direction);
        let cut_at = Instant::now();
        let out = tokio::task::spawn_blocking({
            let host = host.clone();
            move || until_views_within(&host, false, Duration::from_secs(7))
        })
        .await
        .expect("views");
        let hold = Duration::from_secs(8).saturating_sub(cut_at.elapsed());
        tokio::time::sleep(hold).await;
        cut.heal();
        let back = tokio::task::spawn_blocking({
            let host = host.clone();
            move || until_views(&host, true, Duration::from_secs(30))
        })
        .await
        .expect("views");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = load.finish().await;
        eprintln!(
            "SWARM partition ({direction:?}) of {host} for 8 s: out of every gateway view after {out:?}, back {back:?} after healing\n{}",
            report.render()
        );
        assert_eq!(report.failed_gets(), 0, "{direction:?}: failed GETs");
        assert_eq!(report.lost, 0, "{direction:?}: acknowledged writes lost");
        assert_eq!(report.duplicated, 0, "{direction:?}: writes duplicated");
        assert_eq!(report.unread(), 0, "{direction:?}: writes not read back");
        // Inbound only, the task still gossips out: its own SYNs are no
        // proof it can be reached (node/chitchat, change 5), so it leaves
        // the views all the same.
        assert!(
            out.is_some(),
            "{direction:?}: the cut task stayed in a gateway's view"
        );
        assert!(
            report.max_ms < 3000.0,
            "{direction:?}: a GET took {:.0} ms",
            report.max_ms
        );
    }

    // A gateway cut off from everything: fast 503s, then it recovers alone.
    let gw = containers(STACK, "gateway")
        .into_iter()
        .next()
        .expect("a gateway");
    let pid = task_pid(&gw);
    let cut = Cut::new(pid, Direction::Both);
    let cut_at = Instant::now();
    let mut answers = vec![];
    while cut_at.elapsed() < Duration::from_secs(6) {
        let (status, took) = get_in_netns(pid, "/api/story-service/story");
        answers.push((cut_at.elapsed(), status, took));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cut.heal();
    let healed = Instant::now();
    let recovered = loop {
        let (status, _) = get_in_netns(pid, "/api/story-service/story");
        if status == 200 {
            break healed.elapsed();
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "the cut gateway never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first_503 = answers
        .iter()
        .find(|(_, s, _)| *s == 503)
        .map(|(t, _, _)| *t);
    let slowest = answers
        .iter()
        .map(|(_, _, took)| *took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "SWARM gateway cut off: first 503 {first_503:?} after the cut, slowest answer {slowest:?}, answers {:?}; serving again {recovered:?} after healing",
        answers.iter().map(|(_, s, _)| *s).collect::<Vec<_>>()
    );
    let late: Vec<_> = answers
        .iter()
        .filter(|(t, _, _)| *t > Duration::from_secs(2))
        .collect();
    assert!(
        late.iter()
            .all(|(_, s, took)| *s == 503 && *took < Duration::from_millis(500)),
        "a cut-off gateway answers 503 at once: {late:?}"
    );
    wait_converged("gateway", gateways, Duration::from_secs(60)).await;

    // A flapping link: 1 s cut, 1 s healed, for 30 s, under load.
    let victim = containers(STACK, "story-service")
        .into_iter()
        .next()
        .expect("a story task");
    let host = victim[..12].to_string();
    let pid = task_pid(&victim);
    let others: Vec<String> = gateway_views(STACK)
        .first()
        .map(|v| v.iter().filter(|h| **h != host).cloned().collect())
        .unwrap_or_default();
    let load = Load::start(&base(), 6, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (stop, others, host) = (stop.clone(), others.clone(), host.clone());
        move || {
            let (mut missing, mut flips, mut was_in) = (vec![], 0, true);
            while !stop.load(Ordering::Relaxed) {
                for view in gateway_views(STACK) {
                    for o in &others {
                        if !view.contains(o) {
                            missing.push(o.clone());
                        }
                    }
                    let now_in = view.contains(&host);
                    if now_in != was_in {
                        flips += 1;
                        was_in = now_in;
                    }
                }
            }
            (missing, flips)
        }
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let cut = Cut::new(pid, Direction::Both);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cut.heal();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::task::spawn_blocking({
        let host = host.clone();
        move || until_views(&host, true, Duration::from_secs(30))
    })
    .await
    .expect("views");
    stop.store(true, Ordering::Relaxed);
    let (missing, flips) = watcher.join().expect("watcher");
    let report = load.finish().await;
    eprintln!(
        "SWARM flapping link (1 s cut / 1 s healed, 30 s) of {host}: it left and rejoined views {flips} times (all gateways); other members missing from a view: {}\n{}",
        missing.len(),
        report.render()
    );
    assert!(
        missing.is_empty(),
        "members on the good side removed: {missing:?}"
    );
    assert_eq!(report.failed_gets(), 0, "flapping: failed GETs");
    assert_eq!(
        report.lost + report.duplicated + report.unread(),
        0,
        "flapping: writes lost or duplicated"
    );
}
