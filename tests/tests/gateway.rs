//! The gateway end to end: a real `shoal-gateway` and real upstream
//! processes (`test-upstream`, service `echo`) on 127.N.g.i.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shoal_tests::{Net, Stack, gateway_view, http, wait_for_async, wait_routable};

/// A gateway (with `gw_env`) and `n` echo replicas; replica `i` gets `env_of(i)`.
async fn setup<'a>(
    net: &'a Net,
    n: u8,
    gw_env: &[(&str, &str)],
    env_of: impl Fn(u8) -> Vec<(&'static str, String)>,
) -> (Stack<'a>, SocketAddr, reqwest::Client) {
    let mut stack = Stack::new(net);
    let client = http();
    let gw = stack.gateway(1, gw_env);
    let admin = SocketAddr::new(gw.ip(), shoal_tests::ports::ADMIN);
    wait_for_async("the gateway to answer", Duration::from_secs(10), || async {
        client
            .get(format!("http://{admin}/health"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    for i in 1..=n {
        let env = env_of(i);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        stack.service("test-upstream", "echo", 2, i, &env);
    }
    if n > 0 {
        wait_routable(&client, gw, "echo", n as usize).await;
    }
    (stack, gw, client)
}

async fn host_counts(client: &reqwest::Client, gw: SocketAddr, n: usize) -> HashMap<String, usize> {
    shoal_tests::replica_counts(client, &format!("http://{gw}/api/echo/host"), n).await
}

async fn metric(client: &reqwest::Client, gw: SocketAddr, name: &str) -> f64 {
    shoal_tests::gateway_metric(client, gw, name).await
}

#[tokio::test]
async fn equal_replicas_share_requests_evenly() {
    let net = Net::new(31);
    let (_stack, gw, client) = setup(&net, 3, &[], |_| vec![]).await;
    shoal_tests::assert_even_spread(&client, &format!("http://{gw}/api/echo/host"), 3).await;
}

#[tokio::test]
async fn a_slow_replica_gets_far_fewer_requests() {
    let net = Net::new(32);
    let (_stack, gw, client) = setup(&net, 3, &[], |i| {
        if i == 1 {
            vec![("TEST_DELAY_MS", "200".into())]
        } else {
            vec![]
        }
    })
    .await;
    let hosts = host_counts(&client, gw, 150).await;
    eprintln!("with echo-1 slow: {hosts:?}");
    let slow = hosts.get("echo-1").copied().unwrap_or(0);
    let fast = hosts
        .get("echo-2")
        .copied()
        .unwrap_or(0)
        .min(hosts.get("echo-3").copied().unwrap_or(0));
    assert!(slow * 10 < fast, "{hosts:?}");
}

#[tokio::test]
async fn unknown_service_is_404_and_a_service_with_no_up_instance_is_503() {
    let net = Net::new(33);
    let (mut stack, gw, client) = setup(&net, 0, &[], |_| vec![]).await;
    // A gateway that knows no service at all says so: 503, not 404.
    let r = client
        .get(format!("http://{gw}/api/nope/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("sees no service at all")
    );
    // A member whose health URL never answers stays `starting`.
    let ip = net.ip(2, 1);
    let mut env = net.member_env(ip, "lazy", "lazy-1");
    env.push(("SHOAL_PORT".into(), "9000".into()));
    let sidecar = shoal_tests::Proc::spawn(
        &net,
        "lazy",
        &shoal_tests::bin("shoal"),
        &["sidecar", "--health-url", "http://127.0.0.1:1/"],
        &env,
    );
    stack.procs.insert("lazy".into(), sidecar);
    wait_for_async(
        "the gateway to know `lazy`",
        Duration::from_secs(10),
        || async { gateway_view(&client, gw).await?.get("lazy").map(|_| ()) },
    )
    .await;
    let r = client
        .get(format!("http://{gw}/api/nope/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a name no service has");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["path"], "/api/nope/x");
    let r = client
        .get(format!("http://{gw}/api/lazy/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no instance of lazy is up"),
        "{body}"
    );
    for key in ["timestamp", "status", "error", "message", "path"] {
        assert!(body.get(key).is_some(), "{key} in {body}");
    }
}

#[tokio::test]
async fn headers_and_bodies_pass_through_and_ten_megabytes_stream() {
    let net = Net::new(34);
    let (_stack, gw, client) = setup(&net, 1, &[], |_| vec![]).await;
    let r = client
        .post(format!("http://{gw}/api/echo/echo"))
        .header("authorization", "Bearer secret-token")
        .header("content-type", "application/json")
        .body(r#"{"id":"a","message":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-seen-authorization"], "Bearer secret-token");
    assert!(r.headers().contains_key("traceparent"));
    assert_eq!(r.text().await.unwrap(), r#"{"id":"a","message":"b"}"#);

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen: Value = client
        .get(format!("http://{gw}/api/echo/headers"))
        .header("traceparent", tp)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not pass")
        .header("x-custom", "must pass")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["traceparent"], tp);
    assert_eq!(seen["x-custom"], "must pass");
    assert!(
        seen.get("x-hop").is_none(),
        "hop-by-hop header forwarded: {seen}"
    );
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], gw.to_string());
    assert_eq!(seen["x-forwarded-prefix"], "/api/echo");

    // 10 MB streamed up in chunks and streamed back.
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let chunks = 160; // 10 MiB
    let stream = futures_util::stream::iter((0..chunks).map({
        let chunk = chunk.clone();
        move |_| Ok::<_, std::io::Error>(chunk.clone())
    }));
    let r = client
        .post(format!("http://{gw}/api/echo/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut received = 0usize;
    let mut body = r.bytes_stream();
    let mut mismatch = false;
    while let Some(part) = body.next().await {
        let part = part.unwrap();
        for (k, b) in part.iter().enumerate() {
            if *b != chunk[(received + k) % chunk.len()] {
                mismatch = true;
            }
        }
        received += part.len();
    }
    assert_eq!(received, chunks * chunk.len());
    assert!(!mismatch, "body corrupted on the way");
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let net = Net::new(35);
    let (mut stack, gw, client) = setup(&net, 1, &[], |_| vec![]).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{gw}/api/echo/ws"))
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    for text in ["hello", "shoal"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {text}"));
    }
    // A tunnel is in-flight work: counted, and waited for by the drain.
    assert_eq!(metric(&client, gw, "shoal_gateway_in_flight ").await, 1.0);
    stack.proc("gateway-1").sigterm();
    let admin = SocketAddr::new(gw.ip(), shoal_tests::ports::ADMIN);
    wait_for_async("the gateway to drain", Duration::from_secs(10), || async {
        let r = client
            .get(format!("http://{admin}/health"))
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    ws.send(tokio_tungstenite::tungstenite::Message::text("draining"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo: draining");
    assert!(
        stack.proc("gateway-1").is_running(),
        "the drain waits for the tunnel"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let status = stack
        .proc("gateway-1")
        .wait_exit(Duration::from_secs(15))
        .expect("the gateway exits once the tunnel is closed");
    assert!(status.success());
}

/// GET load from `workers` tasks until `stop`; returns (sent, failed), and
/// `answered` counts the 200s as they come.
fn get_load(
    client: &reqwest::Client,
    gw: SocketAddr,
    workers: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..workers)
        .map(|_| {
            let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let t = Instant::now();
                    match client
                        .get(format!("http://{gw}/api/echo/host"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failed += 1;
                            eprintln!(
                                "failed: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("failed after {:?}: {e:?}", t.elapsed());
                        }
                    }
                }
                (sent, failed)
            })
        })
        .collect()
}

/// Waits until `n` more GETs of the load were answered than `from`.
async fn wait_answered(answered: &AtomicUsize, from: usize, n: usize) {
    wait_for_async(
        &format!("{n} more answered GETs"),
        Duration::from_secs(30),
        || async { (answered.load(Ordering::Relaxed) >= from + n).then_some(()) },
    )
    .await;
}

/// Waits until the gateway has `n` requests in flight.
async fn wait_in_flight(client: &reqwest::Client, gw: SocketAddr, n: f64) {
    wait_for_async(
        &format!("{n} requests in flight at the gateway"),
        Duration::from_secs(10),
        || async { (metric(client, gw, "shoal_gateway_in_flight ").await >= n).then_some(()) },
    )
    .await;
}

async fn totals(tasks: Vec<tokio::task::JoinHandle<(usize, usize)>>) -> (usize, usize) {
    let mut t = (0, 0);
    for task in tasks {
        let (s, f) = task.await.unwrap();
        t = (t.0 + s, t.1 + f);
    }
    t
}

#[tokio::test]
async fn killed_replica_under_load_fails_no_request_and_leaves_rotation() {
    let net = Net::new(36);
    let (mut stack, gw, client) = setup(&net, 3, &[], |_| vec![]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = get_load(&client, gw, 8, stop.clone(), answered.clone());
    wait_answered(&answered, 0, 100).await;
    let killed_at = Instant::now();
    stack.proc("echo-2").sigkill();
    wait_out_of_view(&client, gw, "echo-2", Duration::from_secs(5)).await;
    let left_after = killed_at.elapsed();
    // Load goes on with the replica gone from the view.
    wait_answered(&answered, answered.load(Ordering::Relaxed), 100).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = totals(load).await;
    eprintln!(
        "SIGKILL under load: {sent} requests, {failed} failed, left rotation after {left_after:?}"
    );
    assert_eq!(failed, 0);
    assert!(sent > 100, "load too small to mean anything: {sent}");
}

#[tokio::test]
async fn a_post_in_flight_when_its_replica_dies_is_never_written_twice() {
    let net = Net::new(37);
    let writes = net.dir().join("writes.txt");
    let w = writes.display().to_string();
    let (mut stack, gw, client) = setup(&net, 2, &[], |_| vec![("TEST_WRITES", w.clone())]).await;
    let posts: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client
                    .post(format!("http://{gw}/api/echo/write/w{i}"))
                    .send()
                    .await
                    .unwrap();
                (format!("w{i}"), r.status().as_u16())
            })
        })
        .collect();
    // Every POST is at a replica (each takes 500 ms there) when one dies.
    wait_in_flight(&client, gw, 10.0).await;
    stack.proc("echo-1").sigkill();
    let mut outcomes = vec![];
    for p in posts {
        outcomes.push(p.await.unwrap());
    }
    let written = std::fs::read_to_string(&writes).unwrap_or_default();
    let count = |id: &str| written.lines().filter(|l| *l == id).count();
    eprintln!("outcomes: {outcomes:?}");
    assert!(
        outcomes.iter().any(|(_, s)| *s == 502),
        "some POSTs were on the killed replica"
    );
    for (id, status) in &outcomes {
        assert!(matches!(status, 201 | 502), "{id}: {status}");
        assert!(count(id) <= 1, "{id} written twice");
        if *status == 201 {
            assert_eq!(count(id), 1, "{id} acknowledged but not written");
        }
    }
}

#[tokio::test]
async fn breaker_opens_on_errors_and_closes_after_a_good_trial() {
    let net = Net::new(38);
    let (_stack, gw, client) =
        setup(&net, 1, &[("SHOAL_BREAKER_OPEN_TIME", "1s")], |_| vec![]).await;
    for _ in 0..25 {
        let r = client
            .get(format!("http://{gw}/api/echo/status/500"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert_eq!(r.status(), 500);
    }
    let opened_at = Instant::now();
    let upstream_answers =
        metric(&client, gw, "shoal_gateway_upstream_latency_seconds_count").await;
    let r = client
        .get(format!("http://{gw}/api/echo/host"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "open breaker answers by itself");
    assert_eq!(
        metric(&client, gw, "shoal_gateway_upstream_latency_seconds_count").await,
        upstream_answers,
        "no request reached the instance while the breaker is open"
    );
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{body}"
    );
    assert_eq!(
        metric(&client, gw, "shoal_gateway_breaker_state{").await,
        1.0
    );
    // After the open time (1 s), one trial goes through and closes it.
    wait_for_async(
        "a trial request to go through",
        Duration::from_secs(10),
        || async {
            let r = client
                .get(format!("http://{gw}/api/echo/host"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    assert!(
        opened_at.elapsed() >= Duration::from_secs(1),
        "the breaker stayed open for its open time"
    );
    let r = client
        .get(format!("http://{gw}/api/echo/host"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "closed again");
}

#[tokio::test]
async fn failing_replica_is_ejected_then_returns() {
    let net = Net::new(39);
    let (_stack, gw, client) = setup(&net, 3, &[("SHOAL_EJECT_TIME", "1s")], |i| {
        if i == 1 {
            vec![("TEST_STATUS", "500".into())]
        } else {
            vec![]
        }
    })
    .await;
    // GETs that hit the failing replica are retried elsewhere: clients see 200.
    let hosts = host_counts(&client, gw, 60).await;
    assert!(!hosts.contains_key("echo-1"), "{hosts:?}");
    assert_eq!(
        metric(&client, gw, "shoal_gateway_ejections_total").await,
        1.0
    );
    // Back in rotation after 1 s, still failing: ejected again (for 2 s now).
    wait_for_async(
        "echo-1 ejected a second time",
        Duration::from_secs(10),
        || async {
            host_counts(&client, gw, 10).await;
            (metric(&client, gw, "shoal_gateway_ejections_total").await >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&client, gw, "shoal_gateway_ejections_total").await,
        2.0
    );
    assert!(metric(&client, gw, "shoal_gateway_retries_total").await >= 10.0);
}

#[tokio::test]
async fn over_the_connection_limit_answers_503_at_once() {
    let net = Net::new(40);
    let (_stack, gw, client) = setup(&net, 1, &[("SHOAL_MAX_CONNECTIONS", "2")], |_| {
        vec![("TEST_DELAY_MS", "500".into())]
    })
    .await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = client
                    .get(format!("http://{gw}/api/echo/host"))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), t.elapsed())
            })
        })
        .collect();
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(refused.len(), 4, "{results:?}");
    // Refused at once: before any admitted request (each takes 500 ms) is done.
    let first_ok = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| *t)
        .min()
        .unwrap();
    assert!(
        refused.iter().all(|(_, t)| *t < first_ok),
        "503 must not wait: {results:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_the_gateway_and_a_replica_without_failing_requests() {
    let net = Net::new(41);
    let (mut stack, gw, client) =
        setup(&net, 2, &[], |_| vec![("TEST_DELAY_MS", "300".into())]).await;
    // A replica drains under load: nothing fails.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = get_load(&client, gw, 4, stop.clone(), answered.clone());
    wait_answered(&answered, 0, 8).await;
    stack.proc("echo-1").sigterm();
    let status = stack
        .proc("echo-1")
        .wait_exit(Duration::from_secs(15))
        .expect("replica exits");
    assert!(status.success());
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = totals(load).await;
    eprintln!("replica drain under load: {sent} requests, {failed} failed");
    assert_eq!(failed, 0);

    // The gateway drains: requests in flight when SIGTERM arrives complete.
    let done = Arc::new(AtomicUsize::new(0));
    let inflight: Vec<_> = (0..10)
        .map(|_| {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let r = client
                    .get(format!("http://{gw}/api/echo/host"))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_in_flight(&client, gw, 10.0).await;
    stack.proc("gateway-1").sigterm();
    for t in inflight {
        t.await.unwrap();
    }
    assert_eq!(
        done.load(Ordering::Relaxed),
        10,
        "every in-flight request completed"
    );
    let status = stack
        .proc("gateway-1")
        .wait_exit(Duration::from_secs(15))
        .expect("gateway exits");
    assert!(status.success(), "exit 0, got {status}");
}

/// Eureka clients point `defaultZone` at a gateway's admin port and
/// discover every member: JSON for Spring's client (`Accept:
/// application/json`), XML for the Python client (`Accept: */*`), both
/// prefixes, ids with `:` percent-encoded.
#[tokio::test]
async fn eureka_clients_discover_every_member_in_json_and_xml() {
    let net = Net::new(42);
    let (_stack, gw, client) = setup(&net, 2, &[], |_| vec![]).await;
    let admin = SocketAddr::new(gw.ip(), shoal_tests::ports::ADMIN);
    let get = |path: &str, accept: &str| {
        client
            .get(format!("http://{admin}{path}"))
            .header("accept", accept)
            .send()
    };

    let r = get("/eureka/apps/", "application/json").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    let apps = &body["applications"];
    assert!(apps["versions__delta"].is_string(), "always present");
    assert_eq!(apps["apps__hashcode"], "UP_3_");
    let list = apps["application"].as_array().expect("always an array");
    let echo = list.iter().find(|a| a["name"] == "ECHO").expect("ECHO");
    let instances = echo["instance"].as_array().expect("always an array");
    assert_eq!(instances.len(), 2);
    assert!(list.iter().any(|a| a["name"] == "GATEWAY"));
    let id = instances[0]["instanceId"].as_str().unwrap().to_string();
    assert_eq!(instances[0]["port"]["$"], 9000);
    assert_eq!(instances[0]["status"], "UP");

    let r = get("/eureka/v2/apps", "*/*").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/xml");
    let xml = r.text().await.unwrap();
    assert!(
        xml.contains("<apps__hashcode>UP_3_</apps__hashcode>"),
        "{xml}"
    );
    assert!(xml.contains("<applications><versions__delta>"), "{xml}");
    assert!(
        xml.contains("<application><name>ECHO</name><instance>"),
        "{xml}"
    );
    assert!(xml.contains("<port enabled=\"true\">9000</port>"), "{xml}");

    let encoded = id.replace(':', "%3A");
    let r = get(&format!("/eureka/apps/echo/{encoded}"), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let one: Value = r.json().await.unwrap();
    assert_eq!(one["instance"]["instanceId"], id.as_str());
    let r = get(&format!("/eureka/instances/{encoded}"), "*/*")
        .await
        .unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains(&format!("<instanceId>{id}</instanceId>"))
    );
    let r = get("/eureka/apps/ECHO", "application/json").await.unwrap();
    let app: Value = r.json().await.unwrap();
    assert_eq!(
        app["application"]["instance"].as_array().map(Vec::len),
        Some(2)
    );
    let r = get("/eureka/vips/echo", "application/json").await.unwrap();
    assert_eq!(r.status(), 200);
    let vip: Value = r.json().await.unwrap();
    assert_eq!(vip["applications"]["versions__delta"], "-1");
    assert_eq!(vip["applications"]["apps__hashcode"], "UP_2_");
    assert_eq!(get("/eureka/apps/NOPE", "*/*").await.unwrap().status(), 404);
    // A VIP nobody holds: Eureka's empty list, not a 404.
    let r = get("/eureka/vips/nope", "application/json").await.unwrap();
    assert_eq!(r.status(), 200);
    let none: Value = r.json().await.unwrap();
    assert_eq!(none["applications"]["application"], serde_json::json!([]));

    // Remote regions asked for (Spring's `fetch-remote-regions-registry`):
    // one region here, the same registry; the compact form on request.
    let r = get(
        "/eureka/apps/?regions=us-west-2,eu-west-1",
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let with_regions: Value = r.json().await.unwrap();
    assert_eq!(with_regions["applications"]["apps__hashcode"], "UP_3_");
    let get_compact = |path: &str| {
        client
            .get(format!("http://{admin}{path}"))
            .header("accept", "application/json")
            .header("x-eureka-accept", "compact")
            .send()
    };
    let r = get_compact("/eureka/apps/delta?regions=us-west-2")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get_compact("/eureka/apps/ECHO").await.unwrap();
    let compact: Value = r.json().await.unwrap();
    let first = &compact["application"]["instance"][0];
    assert_eq!(first["port"]["$"], 9000);
    assert!(first.get("leaseInfo").is_none(), "{first}");
    assert!(first.get("metadata").is_none(), "{first}");
}

/// A replica frozen (SIGSTOP: alive, sockets open, no answers, no gossip —
/// what a partition looks like from the gateway) under load: the requests
/// in flight to it do not wait out the 10 s response timeout; when gossip
/// declares it dead they go to another replica at once. Then it thaws and
/// comes back.
#[tokio::test]
async fn requests_in_flight_to_a_frozen_replica_move_on_when_it_is_declared_dead() {
    let net = Net::new(43);
    let (mut stack, gw, client) = setup(&net, 2, &[("SHOAL_RESPONSE_TIMEOUT", "10s")], |_| {
        vec![("TEST_DELAY_MS", "20".to_string())]
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = timed_load(&client, gw, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = nix::unistd::Pid::from_raw(stack.proc("echo-1").pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let frozen_at = Instant::now();
    wait_out_of_view(&client, gw, "echo-1", Duration::from_secs(10)).await;
    let detected = frozen_at.elapsed();
    // Frozen long enough that a request left waiting on it would show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let thawed_at = Instant::now();
    wait_routable(&client, gw, "echo", 2).await;
    let back = thawed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, slowest) = timed_totals(workers).await;
    eprintln!(
        "frozen replica: {sent} GETs, {failed} failed, slowest {slowest:?}; declared dead after {detected:?}, back {back:?} after thawing"
    );
    assert_eq!(failed, 0);
    assert!(
        // README: 0.5 s (the detection time); held to 3x of it.
        slowest < Duration::from_millis(1500),
        "a GET waited {slowest:?}: in flight to the frozen replica past its death"
    );
}

/// Drops every packet to `ips` (host iptables) but those between them,
/// until dropped: on loopback, a one-way partition of a group — like the
/// tasks of one Swarm node cut inbound, they hear each other, still send,
/// and receive nothing from anyone else.
struct InboundCut(Vec<Vec<String>>);

impl InboundCut {
    fn new(ips: &[std::net::IpAddr]) -> Option<Self> {
        let mut cut = Self(vec![]);
        let mut rules: Vec<Vec<String>> = ips
            .iter()
            .map(|ip| vec!["-d".into(), ip.to_string(), "-j".into(), "DROP".into()])
            .collect();
        // Inserted last, so first in the chain: the group's own traffic.
        for from in ips {
            for to in ips.iter().filter(|to| *to != from) {
                rules.push(vec![
                    "-s".into(),
                    from.to_string(),
                    "-d".into(),
                    to.to_string(),
                    "-j".into(),
                    "ACCEPT".into(),
                ]);
            }
        }
        for rule in rules {
            let ok = std::process::Command::new("iptables")
                .args(["-I", "INPUT"])
                .args(&rule)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
            cut.0.push(rule);
        }
        Some(cut)
    }
}

impl Drop for InboundCut {
    fn drop(&mut self) {
        for rule in &self.0 {
            let _ = std::process::Command::new("iptables")
                .args(["-D", "INPUT"])
                .args(rule)
                .status();
        }
    }
}

/// A one-way partition: two of four replicas (a Swarm node's share) still
/// send (their gossip goes out) and hear each other, but receive nothing
/// from anyone else. They must leave the view — their own gossip is no
/// proof they can be reached — the requests in flight to them move on (not
/// one GET fails), and their votes against the members they cannot hear
/// take no healthy replica out of the view, during the cut or after it.
#[tokio::test]
async fn replicas_that_can_send_but_not_receive_leave_rotation() {
    let net = Net::new(45);
    let (mut stack, gw, client) = setup(&net, 4, &[("SHOAL_RESPONSE_TIMEOUT", "10s")], |_| {
        vec![("TEST_DELAY_MS", "20".to_string())]
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = timed_load(&client, gw, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Some(cut) = InboundCut::new(&[net.ip(2, 1), net.ip(2, 2)]) else {
        stop.store(true, Ordering::Relaxed);
        shoal_tests::skip_unless_ci("iptables is not usable here (root and iptables needed)");
        return;
    };
    let cut_at = Instant::now();
    let mut detected = vec![];
    for host in ["echo-1", "echo-2"] {
        wait_out_of_view(&client, gw, host, Duration::from_secs(10)).await;
        detected.push(cut_at.elapsed());
    }
    // Out for as long as the cut lasts: their own gossip still goes out,
    // and must not bring them back while nothing reaches them. The healthy
    // two stay in, then and after healing.
    // In the view now: how many of the cut two, and which healthy ones not.
    let look = async || -> Option<(usize, Vec<&'static str>)> {
        let view = gateway_view(&client, gw).await?;
        let echo = view.get("echo").cloned().unwrap_or_default();
        let has = |host: &str| echo.iter().any(|(h, _)| h == host);
        Some((
            ["echo-1", "echo-2"].into_iter().filter(|h| has(h)).count(),
            ["echo-3", "echo-4"]
                .into_iter()
                .filter(|h| !has(h))
                .collect(),
        ))
    };
    let mut returns = 0;
    let mut healthy_missing = vec![];
    while cut_at.elapsed() < Duration::from_secs(5) {
        if let Some((cut_seen, missing)) = look().await {
            returns += cut_seen;
            healthy_missing.extend(missing.iter().map(|h| (*h, cut_at.elapsed())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(cut);
    let healed = Instant::now();
    wait_routable(&client, gw, "echo", 4).await;
    let back = healed.elapsed();
    while healed.elapsed() < Duration::from_secs(3) {
        if let Some((_, missing)) = look().await {
            healthy_missing.extend(missing.iter().map(|h| (*h, cut_at.elapsed())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, slowest) = timed_totals(workers).await;
    let _ = stack.proc("echo-1").is_running();
    eprintln!(
        "inbound-only cut of 2 of 4: {sent} GETs, {failed} failed, slowest {slowest:?}; out of the view after {detected:?}, back {back:?} after healing; seen back while cut {returns} times"
    );
    assert_eq!(failed, 0);
    assert_eq!(
        returns, 0,
        "a cut replica came back into the view while cut"
    );
    assert!(
        healthy_missing.is_empty(),
        "healthy replicas left the view: {healthy_missing:?}"
    );
    assert!(
        // README: 1.5 s (the detection time); held to 3x of it.
        slowest < Duration::from_millis(4500),
        "a GET waited {slowest:?} on a cut replica"
    );
}

/// Six GET workers through the gateway until `stop`, each counting what it
/// sent, what failed and its slowest answer.
fn timed_load(
    client: &reqwest::Client,
    gw: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize, Duration)>> {
    (0..6)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut sent, mut failed, mut slowest) = (0usize, 0usize, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let t = Instant::now();
                    match client
                        .get(format!("http://{gw}/api/echo/host"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => {
                            failed += 1;
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            eprintln!("failed after {:?}: {status} {body}", t.elapsed());
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("failed after {:?}: {e:?}", t.elapsed());
                        }
                    }
                    slowest = slowest.max(t.elapsed());
                }
                (sent, failed, slowest)
            })
        })
        .collect()
}

/// Sent, failed and the slowest answer over all the workers of [`timed_load`].
async fn timed_totals(
    workers: Vec<tokio::task::JoinHandle<(usize, usize, Duration)>>,
) -> (usize, usize, Duration) {
    let (mut sent, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    for w in workers {
        let (s, f, m) = w.await.unwrap();
        (sent, failed, slowest) = (sent + s, failed + f, slowest.max(m));
    }
    (sent, failed, slowest)
}

/// Waits until `host` is no longer in the gateway's view of `echo`.
async fn wait_out_of_view(client: &reqwest::Client, gw: SocketAddr, host: &str, timeout: Duration) {
    wait_for_async(&format!("{host} out of the view"), timeout, || async {
        let view = gateway_view(client, gw).await?;
        (!view.get("echo")?.iter().any(|(h, _)| h == host)).then_some(())
    })
    .await;
}
