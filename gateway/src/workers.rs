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
use tokio::sync::oneshot;

use crate::server;
use crate::state::Gateway;

/// Starts `n` workers serving `addr`. Returns once every worker listens.
/// Each serves until the gateway's drain starts, then keeps its runtime
/// alive until the drain is over (at most `grace`) so its connections and
/// tunnels can finish.
pub async fn start(
    gw: &Gateway,
    addr: SocketAddr,
    n: usize,
    grace: Duration,
) -> anyhow::Result<()> {
    // SO_REUSEPORT would let a second gateway on this address share the port
    // silently: make sure nobody holds it first.
    drop(
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (SHOAL_LISTEN / SHOAL_PORT)"))?,
    );
    for i in 0..n {
        let gw = Arc::new(gw.for_worker());
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
                    server::serve(listener, gw, grace).await;
                });
            })
            .context("cannot start a worker thread")?;
        bound_rx
            .await
            .context("a worker thread died while starting")?
            .with_context(|| format!("cannot listen on {addr} (SHOAL_LISTEN / SHOAL_PORT)"))?;
    }
    Ok(())
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
