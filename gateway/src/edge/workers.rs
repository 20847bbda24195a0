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

use crate::edge::server::{self, Kind};
use crate::forward::state::Gateway;

/// Starts `n` workers serving each of `addrs`. Returns once every worker
/// listens.
/// Each serves until the gateway's drain starts, then keeps its runtime
/// alive until the drain is over (at most `grace`) so its connections and
/// tunnels can finish.
pub async fn start(
    gw: &Gateway,
    addrs: Vec<(SocketAddr, Kind, &'static str)>,
    n: usize,
    grace: Duration,
) -> anyhow::Result<()> {
    // SO_REUSEPORT would let a second gateway on this address share the port
    // silently: make sure nobody holds it first.
    for (addr, _, var) in &addrs {
        drop(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (SHOAL_LISTEN / {var})"))?,
        );
    }
    for i in 0..n {
        let gw = Arc::new(gw.for_worker());
        let addrs = addrs.clone();
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
                    let mut listeners = Vec::new();
                    for (addr, kind, var) in addrs {
                        match listen(addr) {
                            Ok(l) => listeners.push((l, kind)),
                            Err(err) => {
                                let _ = bound_tx.send(Err(err.context(format!(
                                    "cannot listen on {addr} (SHOAL_LISTEN / {var})"
                                ))));
                                return;
                            }
                        }
                    }
                    let _ = bound_tx.send(Ok(()));
                    // Idle upstream connections close on time even when no
                    // request comes to meet them (ends with the runtime).
                    let sweeper = gw.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(sweeper.pool.sweep_period());
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tick.tick().await;
                            sweeper.pool.sweep_idle();
                        }
                    });
                    server::serve(listeners, gw, grace).await;
                });
            })
            .context("cannot start a worker thread")?;
        bound_rx
            .await
            .context("a worker thread died while starting")??;
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
