//! The edge's rules hold in every protocol it speaks: a request head over
//! 64 KiB is answered 431, and a head that never ends is cut at
//! `SHOAL_HEADER_TIMEOUT` — on a plain HTTP/1.1 port and on an h2c port
//! (hyper's auto builder, configured apart), where HTTP/2 clients also meet
//! the same header-list limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shoal_http::Drain;
use shoal_node::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{Kind, MAX_HEADER_BYTES, serve};
use crate::config::GatewayConfig;
use crate::forward::state::Gateway;

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

/// A gateway that knows no service, listening on 127.0.0.1 as `kind`.
async fn edge(kind: Kind) -> SocketAddr {
    let env = Env::from_pairs([
        ("SHOAL_INSECURE", "true"),
        ("SHOAL_LISTEN", "127.0.0.1"),
        ("SHOAL_ADVERTISE", "127.0.0.1"),
        ("SHOAL_ACCESS_LOG", "false"),
        ("SHOAL_HEADER_TIMEOUT", "300ms"),
    ]);
    let config = GatewayConfig::from_env(&env).expect("a valid configuration");
    let gw = Arc::new(Gateway::new(config, Drain::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(vec![(listener, kind)], gw, Duration::from_secs(1)));
    addr
}

fn modes() -> [(&'static str, Kind); 2] {
    [
        ("HTTP/1.1", Kind::Plain { h2c: false }),
        ("h2c port, HTTP/1.1", Kind::Plain { h2c: true }),
    ]
}

/// The status line of the answer to a GET whose head carries a header of
/// `bytes` bytes, sent whole.
async fn status_with_header_of(addr: SocketAddr, bytes: usize) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "GET /api/nope/x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(bytes)
    );
    // The gateway may answer and close before it has read it all.
    let _ = s.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn heads_over_64_kib_are_431_in_every_http1_mode() {
    for (mode, kind) in modes() {
        let addr = edge(kind).await;
        let fits = status_with_header_of(addr, MAX_HEADER_BYTES - 1024).await;
        assert!(fits.contains(" 503 "), "{mode}: a 63 KiB head: {fits:?}");
        let over = status_with_header_of(addr, MAX_HEADER_BYTES + 1024).await;
        assert!(over.contains(" 431 "), "{mode}: a 65 KiB head: {over:?}");
        let far_over = status_with_header_of(addr, 2 * MAX_HEADER_BYTES + 1024).await;
        assert!(
            far_over.contains(" 431 "),
            "{mode}: a 129 KiB head: {far_over:?}"
        );
    }
}

#[tokio::test]
async fn a_head_that_never_ends_is_cut_at_the_header_timeout_in_every_http1_mode() {
    for (mode, kind) in modes() {
        let addr = edge(kind).await;
        let mut s = TcpStream::connect(addr).await.expect("connects");
        s.write_all(b"GET /api/nope/x HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("writes");
        let sent = Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        let held = sent.elapsed();
        assert!(read.is_ok(), "{mode}: still open after 5 s");
        assert!(
            held >= HEADER_TIMEOUT - Duration::from_millis(50) && held < HEADER_TIMEOUT * 3,
            "{mode}: cut after {held:?} (header timeout {HEADER_TIMEOUT:?})"
        );
    }
}

#[tokio::test]
async fn an_h2c_header_list_over_64_kib_is_refused() {
    let addr = edge(Kind::Plain { h2c: true }).await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let get = |bytes: usize| {
        let req = hyper::Request::get(format!("http://{addr}/api/nope/x"))
            .header("x-big", "a".repeat(bytes))
            .body(Empty::new())
            .expect("a request");
        client.request(req)
    };
    let fits = get(MAX_HEADER_BYTES - 1024).await.expect("an answer");
    assert_eq!(fits.status(), 503, "a 63 KiB header list over h2c");
    match get(MAX_HEADER_BYTES + 1024).await {
        Ok(r) => assert_eq!(r.status(), 431, "a 65 KiB header list over h2c"),
        // Or refused at the HTTP/2 layer, never forwarded.
        Err(err) => assert!(!err.is_connect(), "{err}"),
    }
}
