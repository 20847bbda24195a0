//! The public listener: accepts connections and serves them with hyper
//! until told to stop, then lets every connection finish what it is doing.
//!
//! Stopping works as in mini-redis, through the gateway's
//! [`shoal_http::Drain`]: each connection task holds a `Watch` (counted
//! while it lives) and races its connection against the drain. When the
//! drain starts the accept loop ends, each connection finishes its
//! in-flight request and closes (keep-alive connections included), and the
//! drain knows every connection is done when the last `Watch` is dropped.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use shoal_http::Work;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::proxy;
use crate::state::Gateway;

/// Marks a request that came over TLS (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

/// The largest request head taken (nginx takes 4 × 8 KiB by default).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves `listener` until the gateway's drain starts, then waits for the
/// drain to end (every connection and tunnel done, or `grace` over) so this
/// runtime's connections can finish.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, grace: Duration) {
    let drain = gw.drain.clone();
    // Not a `Watch`: the accept loop is not work the drain waits for.
    let draining = drain.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, go on.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = gw.connections.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let gw = gw.clone();
                let mut watch = drain.watch(Work::Connection);
                let header_timeout = gw.config.proxy.header_timeout;
                let stream = crate::stall::Stall::new(stream, gw.config.proxy.client_write_timeout);
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = service_fn(move |req| {
                        let gw = gw.clone();
                        async move { Ok::<_, Infallible>(proxy::handle(gw, req, peer).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        // Headers (request line included) up to 64 KiB;
                        // larger ones are answered 431.
                        .max_header_size(MAX_HEADER_BYTES)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = watch.draining() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(err) = result {
                        debug!(%peer, error = %err, "connection ended with an error");
                    }
                    drop(watch);
                });
            }
            _ = &mut draining => break,
        }
    }
    drop(listener);
    drain.wait(grace).await;
}

/// Answers a connection over the limit: a 503 written at once (without
/// reading the request) and the connection closed. Bounded by a second, so
/// refusals cannot pile up either.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = shoal_http::spring::error_json::<()>(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "too many client connections to this gateway (SHOAL_MAX_CLIENT_CONNECTIONS)",
        "",
        &[],
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}
