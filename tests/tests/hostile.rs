//! Hostile and broken clients and upstreams at a real gateway: each gets a
//! clear status, nothing leaks (client connections, in-flight requests,
//! memory), and everyone else keeps being served at the usual latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_tests::{Net, Stack, http, ports, wait_for_async, wait_routable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gauge or counter of the gateway's `/metrics`.
async fn metric(client: &reqwest::Client, gw: SocketAddr, name: &str) -> f64 {
    shoal_tests::gateway_metric(client, gw, name).await
}

/// The gateway's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// p99 and failures of `n` sequential GETs through the gateway.
async fn probe(client: &reqwest::Client, gw: SocketAddr, n: usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let t = Instant::now();
        let ok = client
            .get(format!("http://{gw}/api/echo/host"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        failed += usize::from(!ok);
        times.push(t.elapsed());
    }
    times.sort();
    (times[n * 99 / 100], failed)
}

/// Sends raw bytes on a new connection and reads the answer's status line
/// (empty when the connection closed without one).
async fn raw(gw: SocketAddr, bytes: &[u8]) -> String {
    shoal_tests::raw_exchange(None, gw, bytes).await
}

/// An upstream that is not a shoal member, registered through the Eureka
/// API as `app`, that answers every connection with `reply` (or nothing).
async fn rogue_upstream(
    client: &reqwest::Client,
    gw: SocketAddr,
    addr: SocketAddr,
    app: &str,
    reply: Option<&'static [u8]>,
) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match reply {
                    Some(bytes) => {
                        let _ = s.write_all(bytes).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    let body = serde_json::json!({"instance": {
        "hostName": app, "app": app.to_uppercase(), "ipAddr": addr.ip().to_string(),
        "port": {"$": addr.port(), "@enabled": "true"}, "dataCenterInfo": {"name": "MyOwn"}}});
    let admin = SocketAddr::new(gw.ip(), ports::ADMIN);
    let r = client
        .post(format!("http://{admin}/eureka/apps/{}", app.to_uppercase()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn hostile_clients_and_broken_upstreams_get_clear_answers_and_leak_nothing() {
    let net = Net::new(44);
    let mut stack = Stack::new(&net);
    let client = http();
    let gw = stack.gateway(
        1,
        &[
            ("SHOAL_HEADER_TIMEOUT", "2s"),
            ("SHOAL_CLIENT_WRITE_TIMEOUT", "2s"),
            ("SHOAL_MAX_CLIENT_CONNECTIONS", "300"),
            ("SHOAL_RESPONSE_TIMEOUT", "1s"),
            ("SHOAL_EUREKA_WRITES", "open"),
        ],
    );
    for i in 1..=2 {
        stack.service("test-upstream", "echo", 2, i, &[]);
    }
    wait_routable(&client, gw, "echo", 2).await;
    let pid = stack.proc("gateway-1").pid();
    let (baseline_p99, failed) = probe(&client, gw, 300).await;
    assert_eq!(failed, 0);
    let connections = |c: &reqwest::Client| {
        let c = c.clone();
        async move { metric(&c, gw, "shoal_gateway_client_connections ").await }
    };
    let idle_connections = connections(&client).await;
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    eprintln!(
        "baseline: p99 {baseline_p99:?}, RSS {rss0} KiB, {fds0} fds, {idle_connections} client connections"
    );
    let bound = baseline_p99 * 10 + Duration::from_millis(50);

    // 1. Slowloris: 200 connections trickling a header each, never done.
    let mut lorises = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(gw).await.unwrap();
        s.write_all(b"GET /api/echo/host HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        lorises.push(s);
    }
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        let mut closed = 0;
        for s in &mut lorises {
            if s.write_all(b"x-a: b\r\n").await.is_err() {
                closed += 1;
            }
        }
        // Read until the gateway closes each one (header timeout).
        for s in &mut lorises {
            let mut b = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
        }
        (closed, start.elapsed())
    });
    let (p99, failed) = probe(&client, gw, 300).await;
    eprintln!("slowloris ×200: others' p99 {p99:?} (baseline {baseline_p99:?}), {failed} failed");
    assert_eq!(failed, 0);
    assert!(p99 < bound, "others' p99 {p99:?} under slowloris");
    let (_, closed_after) = trickle.await.unwrap();
    assert!(
        closed_after < Duration::from_secs(6),
        "slowloris connections held {closed_after:?}"
    );

    // 2. Huge and malformed heads.
    let huge = format!(
        "GET /api/echo/host HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let status = raw(gw, huge.as_bytes()).await;
    assert!(status.contains(" 431 "), "huge head: {status:?}");
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /api/echo/host HTTP/1.1\r\nbad header\r\n\r\n",
        b"POST /api/echo/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello",
    ] {
        let status = raw(gw, bad).await;
        assert!(status.contains(" 400 "), "{:?} → {status:?}", String::from_utf8_lossy(bad));
    }

    // 3. A flood of connections past the limit: fast 503, then served again.
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(TcpStream::connect(gw).await.unwrap());
    }
    wait_for_async("300 connections held", Duration::from_secs(5), || async {
        (connections(&client).await >= 300.0).then_some(())
    })
    .await;
    let t = Instant::now();
    let refused = raw(gw, b"GET /api/echo/host HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let refused_in = t.elapsed();
    assert!(refused.contains(" 503 "), "past the limit: {refused:?}");
    assert!(
        refused_in < Duration::from_millis(500),
        "refused after {refused_in:?}"
    );
    for _ in 0..2000 {
        if let Ok(mut s) = TcpStream::connect(gw).await {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        }
    }
    drop(held);
    wait_for_async(
        "the flood's connections closed",
        Duration::from_secs(10),
        || async { (connections(&client).await <= idle_connections + 1.0).then_some(()) },
    )
    .await;
    let (_, failed) = probe(&client, gw, 50).await;
    assert_eq!(failed, 0, "served again after the flood");

    // 4. A client that asks for a 64 MiB answer and never reads it is
    // disconnected once its connection made no progress for 2 s.
    // A small receive buffer, as a slow phone's: the kernel cannot absorb
    // the answer for it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stalled = socket.connect(gw).await.unwrap();
    stalled
        .write_all(b"GET /api/echo/big/67108864 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // It reads nothing for 4 s (the gateway's write timeout is 2 s) …
    tokio::time::sleep(Duration::from_secs(4)).await;
    // … then finds the connection cut: far less than the answer, then the end.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    eprintln!("a client that never reads a 64 MiB answer: cut off after {got} bytes");
    assert!(ended, "the stalled connection was never closed");
    assert!(got < 64 << 20, "the whole answer arrived: not stalled");
    drop(stalled);

    // 5. Upstreams that answer garbage, or never answer.
    rogue_upstream(
        &client,
        gw,
        SocketAddr::new(net.ip(3, 1), 7000),
        "garbage",
        Some(b"BLAH BLAH\r\n\r\n"),
    )
    .await;
    rogue_upstream(
        &client,
        gw,
        SocketAddr::new(net.ip(3, 2), 7000),
        "mute",
        None,
    )
    .await;
    wait_routable(&client, gw, "mute", 1).await;
    wait_routable(&client, gw, "garbage", 1).await;
    let r = client
        .get(format!("http://{gw}/api/garbage/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        r.text().await.unwrap().contains("garbage at"),
        "says who failed"
    );
    let t = Instant::now();
    let r = client
        .get(format!("http://{gw}/api/mute/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "504 after {:?}",
        t.elapsed()
    );

    // Everyone else still at the usual latency; nothing left behind.
    let (p99, failed) = probe(&client, gw, 300).await;
    assert_eq!(failed, 0);
    assert!(p99 < bound, "p99 after all of it: {p99:?}");
    wait_for_async(
        "connections back to idle",
        Duration::from_secs(10),
        || async { (connections(&client).await <= idle_connections + 1.0).then_some(()) },
    )
    .await;
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    eprintln!(
        "after: p99 {p99:?}, RSS {rss1} KiB (+{} KiB), {fds1} fds",
        rss1.saturating_sub(rss0)
    );
    assert!(fds1 <= fds0 + 8, "file descriptors: {fds0} → {fds1}");
    assert!(rss1 < rss0 + 32 * 1024, "RSS {rss0} → {rss1} KiB");
}
