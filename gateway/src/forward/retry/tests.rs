//! The invariant that matters most, proven against fake instances on
//! loopback through the gateway's own server: a write that may have reached
//! an instance is never sent twice; a request that surely reached none is
//! sent to another, writes included; reads are retried.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shoal_http::Drain;
use shoal_node::{ClusterView, Env, Health, Member, MemberId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::config::GatewayConfig;
use crate::route::outcome::BreakerState;

/// What a fake instance does with each request it reads.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers with this status.
    Answer(u16),
    /// Reads the request, then closes the connection without a word.
    CloseAfterReading,
    /// Reads the request and never answers.
    Hang,
}

/// A fake instance and the request ids it read.
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    async fn start(behaviour: Behaviour) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_fake(stream, behaviour, log.clone()));
            }
        });
        Fake { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads requests off `stream` (head, then `content-length` bytes), notes
/// each one's `x-request-id`, and behaves.
async fn serve_fake(mut stream: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        seen.lock().unwrap().push(
            header("x-request-id")
                .unwrap_or_default()
                .trim()
                .to_string(),
        );
        match behaviour {
            Behaviour::Answer(status) => {
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Behaviour::CloseAfterReading => return,
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
        }
    }
}

/// An address where nothing listens: connecting is refused.
async fn refused() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A gateway routing `svc` to `instances`, served on a loopback port.
async fn gateway(instances: &[SocketAddr], extra: &[(&str, &str)]) -> (Arc<Gateway>, SocketAddr) {
    let mut pairs = vec![
        ("SHOAL_INSECURE", "true"),
        ("SHOAL_LISTEN", "127.0.0.1"),
        ("SHOAL_ADVERTISE", "127.0.0.1"),
        ("SHOAL_RESPONSE_TIMEOUT", "300ms"),
        ("SHOAL_ACCESS_LOG", "false"),
    ];
    pairs.extend_from_slice(extra);
    let config = GatewayConfig::from_env(&Env::from_pairs(pairs)).unwrap();
    let gw = Arc::new(Gateway::new(config, Drain::new()));
    let members = instances.iter().enumerate().map(|(i, addr)| Member {
        id: MemberId {
            node: format!("svc-{i}"),
            generation: 1,
        },
        service: "svc".into(),
        addr: *addr,
        health: Health::Up,
        routes: vec![],
        host: format!("svc-{i}"),
        version: "test".into(),
        started_ms: 0,
        gossip_addr: *addr,
        lease: None,
        policy: Default::default(),
    });
    gw.upstreams
        .update(Arc::new(ClusterView::from_members(members)), &gw.metrics);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::edge::server::serve(
        vec![(listener, crate::edge::server::Kind::Plain { h2c: false })],
        gw.clone(),
        Duration::from_secs(1),
    ));
    (gw, addr)
}

/// Sends `n` requests of `method`, each with its own `x-request-id`, and
/// returns id → status.
async fn send(gateway: SocketAddr, method: Method, n: usize) -> HashMap<String, u16> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut statuses = HashMap::new();
    for i in 0..n {
        let id = format!("{method}-{i}");
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{gateway}/api/svc/things"))
            .header("x-request-id", &id)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!("{{\"n\":{i}}}"))))
            .unwrap();
        let response = client.request(req).await.unwrap();
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        statuses.insert(id, status);
    }
    statuses
}

/// How many times each id was read, over all instances.
fn receipts(fakes: &[&Fake]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for fake in fakes {
        for id in fake.seen() {
            *count.entry(id).or_default() += 1;
        }
    }
    count
}

#[tokio::test]
async fn a_write_that_may_have_reached_an_instance_is_never_sent_twice() {
    for (behaviour, status) in [
        (Behaviour::Answer(503), 503),
        (Behaviour::CloseAfterReading, 502),
        (Behaviour::Hang, 504),
    ] {
        let bad = Fake::start(behaviour).await;
        let good = Fake::start(Behaviour::Answer(201)).await;
        let (_gw, addr) = gateway(&[bad.addr, good.addr], &[]).await;
        let statuses = send(addr, Method::POST, 12).await;
        let count = receipts(&[&bad, &good]);
        for (id, got) in &statuses {
            assert_eq!(
                count.get(id),
                Some(&1),
                "{behaviour:?}: {id} read {count:?}"
            );
            let reached_bad = bad.seen().contains(id);
            let want = if reached_bad { status } else { 201 };
            assert_eq!(*got, want, "{behaviour:?}: {id}");
        }
        assert!(
            !bad.seen().is_empty(),
            "{behaviour:?}: no request was sent to the failing instance"
        );
    }
}

#[tokio::test]
async fn a_write_that_reached_no_instance_goes_to_another() {
    let good = Fake::start(Behaviour::Answer(201)).await;
    let (gw, addr) = gateway(&[refused().await, good.addr], &[]).await;
    let statuses = send(addr, Method::POST, 12).await;
    assert!(statuses.values().all(|s| *s == 201), "{statuses:?}");
    let count = receipts(&[&good]);
    assert_eq!(count.len(), 12);
    assert!(count.values().all(|n| *n == 1), "{count:?}");
    let retries = gw
        .upstreams
        .snapshot()
        .service("svc")
        .unwrap()
        .metrics
        .retries
        .get();
    assert!(retries >= 1, "the refused instance was never tried");
}

#[tokio::test]
async fn connections_that_never_opened_spend_no_retry_budget() {
    // No budget at all: a 5xx is not retried, a refused connection is, so
    // two replicas of three gone at once (a Swarm node dies) fail nothing.
    let no_budget = [
        ("SHOAL_RETRY_BUDGET_RATIO", "0"),
        ("SHOAL_RETRY_BUDGET_MIN", "0"),
    ];
    let good = Fake::start(Behaviour::Answer(200)).await;
    let (_gw, addr) = gateway(&[refused().await, refused().await, good.addr], &no_budget).await;
    let statuses = send(addr, Method::GET, 30).await;
    assert!(statuses.values().all(|s| *s == 200), "{statuses:?}");

    let sick = Fake::start(Behaviour::Answer(503)).await;
    let good = Fake::start(Behaviour::Answer(200)).await;
    let (_gw, addr) = gateway(&[sick.addr, good.addr], &no_budget).await;
    let statuses = send(addr, Method::GET, 30).await;
    assert!(
        statuses.values().any(|s| *s == 503),
        "a 5xx is retried only on the budget: {statuses:?}"
    );
}

#[tokio::test]
async fn reads_are_retried_on_another_instance() {
    for behaviour in [
        Behaviour::Answer(503),
        Behaviour::CloseAfterReading,
        Behaviour::Hang,
    ] {
        let bad = Fake::start(behaviour).await;
        let good = Fake::start(Behaviour::Answer(200)).await;
        let (_gw, addr) = gateway(&[bad.addr, good.addr], &[]).await;
        let statuses = send(addr, Method::GET, 12).await;
        assert!(
            statuses.values().all(|s| *s == 200),
            "{behaviour:?}: {statuses:?}"
        );
        assert!(!bad.seen().is_empty(), "{behaviour:?}: never tried");
    }
}

#[tokio::test]
async fn the_gateways_own_busy_answer_does_not_open_the_breaker() {
    // One instance that never answers, one request at a time: the first
    // request waits for its timeout, the 24 others are refused by the
    // gateway at once ("every instance busy"). Only the timeout is the
    // service's failure: 1 of 25 is far from opening the breaker.
    let slow = Fake::start(Behaviour::Hang).await;
    let (gw, addr) = gateway(&[slow.addr], &[("SHOAL_MAX_CONNECTIONS_PER_INSTANCE", "1")]).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let first = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get(format!("http://{addr}/api/svc/slow").parse().unwrap())
                .await
                .map(|r| r.status().as_u16())
        })
    };
    while slow.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..24 {
        let r = client
            .get(format!("http://{addr}/api/svc/x").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
    }
    assert_eq!(first.await.unwrap().unwrap(), 504);
    let table = gw.upstreams.snapshot();
    let state = table.service("svc").unwrap().breaker.state(Instant::now());
    assert_eq!(state, BreakerState::Closed);
}

#[tokio::test]
async fn what_is_in_flight_to_an_instance_that_left_the_view_gives_up_at_once() {
    // A frozen instance (partitioned, SIGSTOPped): it reads requests and
    // never answers. Gossip declares it dead: the GET in flight to it goes
    // to the other instance at once, the POST in flight is answered 502 at
    // once (it may have been processed) — neither waits the 30 s timeout.
    let frozen = Fake::start(Behaviour::Hang).await;
    let good = Fake::start(Behaviour::Answer(200)).await;
    let slow_timeouts = [
        ("SHOAL_RESPONSE_TIMEOUT", "30s"),
        ("SHOAL_REQUEST_TIMEOUT", "60s"),
    ];
    let (gw, addr) = gateway(&[frozen.addr, good.addr], &slow_timeouts).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut in_flight = Vec::new();
    // Three requests per cycle: equal instances alternate, so both kinds
    // reach the frozen one.
    for (i, method) in (0..).zip([Method::GET, Method::GET, Method::POST].iter().cycle()) {
        let id = format!("{method}-{i}");
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}/api/svc/things"))
            .header("x-request-id", &id)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let client = client.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let r = client.request(req).await.unwrap();
            (r.status().as_u16(), started.elapsed())
        });
        in_flight.push((id, method.clone(), task));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = frozen.seen();
        if seen.iter().any(|s| s.starts_with("GET")) && seen.iter().any(|s| s.starts_with("POST")) {
            break;
        }
        assert!(
            i < 200,
            "the frozen instance never got a GET and a POST: {seen:?}"
        );
    }
    // The frozen instance leaves the view.
    let gone_at = Instant::now();
    let only_good = Member {
        id: MemberId {
            node: "svc-1".into(),
            generation: 1,
        },
        service: "svc".into(),
        addr: good.addr,
        health: Health::Up,
        routes: vec![],
        host: "svc-1".into(),
        version: "test".into(),
        started_ms: 0,
        gossip_addr: good.addr,
        lease: None,
        policy: Default::default(),
    };
    gw.upstreams.update(
        Arc::new(ClusterView::from_members([only_good])),
        &gw.metrics,
    );
    let stuck = frozen.seen();
    for (id, method, task) in in_flight {
        let (status, took) = task.await.unwrap();
        if stuck.contains(&id) {
            let want = if method == Method::GET { 200 } else { 502 };
            assert_eq!(status, want, "{id}");
            assert!(
                gone_at.elapsed() < Duration::from_secs(2),
                "{id} took {took:?}"
            );
        } else {
            assert_eq!(status, 200, "{id}");
        }
    }
    let count = receipts(&[&frozen, &good]);
    for id in stuck.iter().filter(|id| id.starts_with("POST")) {
        assert_eq!(count[id], 1, "{id} sent twice");
    }
}
