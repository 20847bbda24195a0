//! The graceful stop of a server, one type for the gateway and the
//! services (mini-redis's `Shutdown`, with the count it keeps in its
//! senders made explicit).
//!
//! The server owns a [`Drain`] and hands a [`Watch`] to everything that must
//! finish before the process may go: each connection, each upgraded tunnel,
//! each request. A `Watch` is counted while it lives and tells its holder
//! when the drain starts ([`Watch::draining`]), so a connection can stop
//! taking new requests and finish the one it has. [`Drain::wait`] then waits
//! until every `Watch` is gone, or the grace period is over, and reports how
//! many were still open — the number its log line gives.
//!
//! The whole stop of a member, in order ([`stop_member`]): announce
//! `draining` by gossip and give gateways time to stop sending; stop
//! accepting; finish in-flight work (bounded by the grace period); then the
//! caller closes what it holds (the database pool) and leaves the cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_node::Cluster;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// What a [`Watch`] stands for, counted apart in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A client connection (or, in a service, one request).
    Connection,
    /// An upgraded connection (WebSocket) tunnelled to an instance.
    Tunnel,
}

struct Shared {
    stop: watch::Sender<bool>,
    connections: AtomicUsize,
    tunnels: AtomicUsize,
    /// (connections, tunnels) open when the drain started.
    at_start: std::sync::OnceLock<(usize, usize)>,
    /// Woken when the last `Watch` goes.
    idle: Notify,
}

impl Shared {
    fn open(&self) -> usize {
        self.connections.load(Ordering::Acquire) + self.tunnels.load(Ordering::Acquire)
    }

    fn counter(&self, work: Work) -> &AtomicUsize {
        match work {
            Work::Connection => &self.connections,
            Work::Tunnel => &self.tunnels,
        }
    }
}

/// The stop of one server: cheap to clone, shared by its worker threads.
#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Connections (or requests) open when the drain started.
    pub connections_at_start: usize,
    /// Tunnels open when the drain started.
    pub tunnels_at_start: usize,
    /// Connections (or requests) still open when the grace period ended.
    pub connections_left: usize,
    /// Tunnels still open when the grace period ended (cut when the process
    /// exits).
    pub tunnels_left: usize,
}

impl DrainReport {
    /// Whether everything finished within the grace period.
    pub fn is_clean(&self) -> bool {
        self.connections_left == 0 && self.tunnels_left == 0
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain not started, with nothing open.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                stop: watch::channel(false).0,
                connections: AtomicUsize::new(0),
                tunnels: AtomicUsize::new(0),
                at_start: std::sync::OnceLock::new(),
                idle: Notify::new(),
            }),
        }
    }

    /// A handle for one piece of work, counted until dropped.
    pub fn watch(&self, work: Work) -> Watch {
        self.shared.counter(work).fetch_add(1, Ordering::AcqRel);
        Watch {
            shared: self.shared.clone(),
            stop: self.shared.stop.subscribe(),
            work,
        }
    }

    /// A future that resolves once the drain starts, for servers that take
    /// a shutdown future (axum's `with_graceful_shutdown`). Not counted.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.shared.stop.subscribe();
        async move {
            let _ = stop.wait_for(|s| *s).await.is_ok();
        }
    }

    /// Starts the drain: every [`Watch::draining`] resolves. What is open
    /// now is what the report gives as open at the start.
    pub fn start(&self) {
        let _ = self.shared.at_start.set(self.open());
        self.shared.stop.send_replace(true);
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// Open work now: (connections, tunnels).
    pub fn open(&self) -> (usize, usize) {
        (
            self.shared.connections.load(Ordering::Acquire),
            self.shared.tunnels.load(Ordering::Acquire),
        )
    }

    /// Waits until every [`Watch`] is gone, at most `grace`, and says what
    /// was open when the drain started (or, if it has not, when this wait
    /// started) and what is still open at the end. Several tasks may wait
    /// at once (each worker thread keeps its runtime alive this way while
    /// its connections finish).
    pub async fn wait(&self, grace: Duration) -> DrainReport {
        let now = self.open();
        let all_done = async {
            loop {
                let idle = self.shared.idle.notified();
                tokio::pin!(idle);
                // Register before checking, so a last drop in between is seen.
                idle.as_mut().enable();
                if self.shared.open() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(grace, all_done).await;
        let (connections_at_start, tunnels_at_start) =
            self.shared.at_start.get().copied().unwrap_or(now);
        let (connections_left, tunnels_left) = self.open();
        DrainReport {
            connections_at_start,
            tunnels_at_start,
            connections_left,
            tunnels_left,
        }
    }
}

/// One piece of work a [`Drain`] waits for.
pub struct Watch {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    work: Work,
}

impl Watch {
    /// Resolves once the drain starts (at once if it has).
    pub async fn draining(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await.is_ok();
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.stop.borrow()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self
            .shared
            .counter(self.work)
            .fetch_sub(1, Ordering::AcqRel)
            == 1
            && self.shared.open() == 0
        {
            self.shared.idle.notify_waiters();
        }
    }
}

/// The stop of a member, after the stop signal: announce `draining` by
/// gossip (and wait `SHOAL_DRAIN_ANNOUNCE` so gateways stop sending), start
/// `drain`, and wait for in-flight work at most `grace`. Logs and returns
/// the report; the caller then closes what it holds and leaves the cluster.
pub async fn stop_member(cluster: &Cluster, drain: &Drain, grace: Duration) -> DrainReport {
    info!("stopping: draining");
    cluster.begin_drain().await;
    drain.start();
    let report = drain.wait(grace).await;
    if report.is_clean() {
        info!(
            connections = report.connections_at_start,
            tunnels = report.tunnels_at_start,
            "drained"
        );
    } else {
        warn!(
            connections_left = report.connections_left,
            tunnels_left = report.tunnels_left,
            grace = ?grace,
            "grace period over with work still open"
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_returns_when_the_last_watch_goes() {
        let drain = Drain::new();
        let mut conn = drain.watch(Work::Connection);
        let tunnel = drain.watch(Work::Tunnel);
        assert_eq!(drain.open(), (1, 1));
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.wait(Duration::from_secs(10)).await })
        };
        drain.start();
        conn.draining().await;
        assert!(conn.is_draining());
        drop(conn);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "a tunnel is still open");
        drop(tunnel);
        let report = waiter.await.unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.connections_at_start, 1);
        assert_eq!(report.tunnels_at_start, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_report_counts_what_outlived_the_grace_period() {
        let drain = Drain::new();
        let _stuck = drain.watch(Work::Connection);
        drop(drain.watch(Work::Connection));
        drain.start();
        let started = tokio::time::Instant::now();
        let report = drain.wait(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(report.connections_at_start, 1);
        assert_eq!(report.connections_left, 1);
        assert!(!report.is_clean());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_made_after_the_start_is_draining_at_once() {
        let drain = Drain::new();
        drain.start();
        let mut late = drain.watch(Work::Connection);
        tokio::time::timeout(Duration::from_millis(1), late.draining())
            .await
            .expect("draining at once");
        drain.draining().await;
        assert!(drain.is_draining());
    }
}
