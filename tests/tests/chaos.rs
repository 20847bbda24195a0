//! Chaos, locally: mixed load through the gateway while a random
//! story-service replica is SIGKILLed every 3 s and restarted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_tests::{Net, Stack, http, wait_healthy, wait_routable};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_story_replicas_every_three_seconds_fails_no_get_and_loses_no_acknowledged_write() {
    let net = Net::new(61);
    let mut stack = Stack::new(&net);
    let client = http();
    let gw = stack.gateway(1, &[]);
    let db = format!("sqlite://{}/story.db?mode=rwc", net.dir().display());
    let story_env = [("DATABASE_URL", db.as_str())];
    let replicas: Vec<SocketAddr> = (1..=3)
        .map(|i| stack.service("story-service", "story-service", 2, i, &story_env))
        .collect();
    wait_routable(&client, gw, "story-service", 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut getters = vec![];
    for _ in 0..6 {
        let (client, stop) = (client.clone(), stop.clone());
        getters.push(tokio::spawn(async move {
            let (mut sent, mut failed) = (0u64, Vec::new());
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                let t = Instant::now();
                let path = if sent % 2 == 0 {
                    "story"
                } else {
                    "story/service/host"
                };
                match client
                    .get(format!("http://{gw}/api/story-service/{path}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => latencies.push(t.elapsed()),
                    Ok(r) => failed.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (sent, failed, latencies)
        }));
    }
    let mut posters = vec![];
    for w in 0..2 {
        let (client, stop) = (client.clone(), stop.clone());
        posters.push(tokio::spawn(async move {
            let mut outcomes: Vec<(String, u16)> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("c{w}-{n}");
                let status = client
                    .post(format!("http://{gw}/api/story-service/story"))
                    .json(&serde_json::json!({"id": id, "message": "chaos"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                outcomes.push((id, status));
            }
            outcomes
        }));
    }

    // Chaos: every 3 s, SIGKILL a random replica and start it again.
    let started = Instant::now();
    let mut kills = 0;
    let mut seed = std::process::id() as u64 | 1;
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % 3) as u8 + 1;
        stack.proc(&format!("story-service-{i}")).sigkill();
        stack.service("story-service", "story-service", 2, i, &story_env);
        kills += 1;
    }
    // The gateway may still list a just-killed replica as `up` for a moment:
    // wait for every restarted replica to say `up` itself, then for the view.
    for replica in &replicas {
        wait_healthy(&client, *replica, Duration::from_secs(30)).await;
    }
    wait_routable(&client, gw, "story-service", 3).await;
    stop.store(true, Ordering::Relaxed);

    let (mut gets, mut get_failures, mut latencies) = (0, Vec::new(), Vec::new());
    for g in getters {
        let (s, f, l) = g.await.unwrap();
        gets += s;
        get_failures.extend(f);
        latencies.extend(l);
    }
    let mut posts = Vec::new();
    for p in posters {
        posts.extend(p.await.unwrap());
    }
    // Every acknowledged write is in the table exactly once, others at most once.
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    let (mut lost, mut duplicated) = (0, 0);
    for (id, status) in &posts {
        *by_status.entry(*status).or_default() += 1;
        let r = client
            .get(format!("http://{}/story/{id}", replicas[0]))
            .send()
            .await
            .unwrap();
        let code = r.status();
        let body = r.text().await.unwrap_or_default();
        let rows: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let Some(n) = rows.as_array().map(Vec::len) else {
            panic!("cannot check {id}: GET /story/{id} answered {code}: {body}");
        };
        if *status == 201 && n == 0 {
            eprintln!("LOST {id} ({status}): GET answered {code} {body}");
            lost += 1;
        }
        if n > 1 {
            duplicated += 1;
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let rss: Vec<String> = stack
        .procs
        .iter()
        .map(|(name, p)| format!("{name}={}KiB", rss_kib(p.pid())))
        .collect();
    eprintln!(
        "CHAOS: {kills} kills in 30 s; GETs: {gets} sent, {} failed, p50 {:?}, p99 {:?}; POSTs: {} sent, by status {by_status:?}, acknowledged lost {lost}, duplicated {duplicated}; RSS {rss:?}",
        get_failures.len(),
        pct(0.5),
        pct(0.99),
        posts.len()
    );
    assert!(get_failures.is_empty(), "failed GETs: {get_failures:?}");
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(duplicated, 0, "writes duplicated");
    assert!(
        by_status.keys().all(|s| matches!(s, 201 | 502 | 503 | 504)),
        "{by_status:?}"
    );
    assert!(
        gets > 1000 && posts.len() > 100,
        "too little load to mean anything"
    );
}
