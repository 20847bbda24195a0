//! The public listener: accepts connections and serves them with hyper
//! until told to stop, then lets every connection finish what it is doing.
//!
//! Stopping works as in mini-redis: each connection task holds a clone of
//! an mpsc sender and watches a shutdown signal. On the signal the accept
//! loop ends, each connection finishes its in-flight request and closes
//! (keep-alive connections included), and when the last sender is dropped
//! the server knows every connection is done.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::proxy::{self, Gateway};

/// Serves `listener` until `stop` turns true, then waits for open
/// connections to finish, at most `grace`. Returns the number of
/// connections that were still open when the grace period ended.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> usize {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
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
                let gw = gw.clone();
                let mut stop = stop.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let gw = gw.clone();
                        async move { Ok::<_, Infallible>(proxy::handle(gw, req, peer).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(err) = result {
                        debug!(%peer, error = %err, "connection ended with an error");
                    }
                    drop(done);
                });
            }
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    drop(done_tx);
    let open = done_rx.sender_strong_count();
    match tokio::time::timeout(grace, done_rx.recv()).await {
        Ok(_) => 0,
        Err(_) => open.max(1),
    }
}

/// Resolves once the stop signal is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
