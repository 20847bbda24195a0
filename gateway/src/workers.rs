//! Worker threads: one per CPU by default, each with its own
//! single-threaded runtime, its own listener on the public port
//! (SO_REUSEPORT: the kernel spreads connections) and its own upstream
//! connection pool. A request is served start to end on one thread, with no
//! cross-thread wake-ups — the nginx model, which measured ~25 % more
//! requests/s than one multi-threaded runtime on 2 cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch};

use crate::proxy::Gateway;
use crate::server;

/// Starts `n` workers serving `addr`. Returns once every worker listens;
/// each then reports, on the returned channel, how many connections were
/// still open when it stopped.
pub async fn start(
    gw: &Gateway,
    addr: SocketAddr,
    n: usize,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<mpsc::UnboundedReceiver<usize>> {
    // SO_REUSEPORT would let a second gateway on this address share the port
    // silently: make sure nobody holds it first.
    drop(
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (SHOAL_LISTEN / SHOAL_PORT)"))?,
    );
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    for i in 0..n {
        let gw = Arc::new(gw.for_worker());
        let (stop, done) = (stop.clone(), done_tx.clone());
        let (bound_tx, bound_rx) = oneshot::channel::<anyhow::Result<()>>();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        let _ = bound_tx.send(Err(err.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match listen(addr) {
                        Ok(l) => l,
                        Err(err) => {
                            let _ = bound_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = bound_tx.send(Ok(()));
                    let open = server::serve(listener, gw, stop, grace).await;
                    let _ = done.send(open);
                });
            })
            .context("cannot start a worker thread")?;
        bound_rx
            .await
            .context("a worker thread died while starting")?
            .with_context(|| format!("cannot listen on {addr} (SHOAL_LISTEN / SHOAL_PORT)"))?;
    }
    Ok(done_rx)
}

fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}
