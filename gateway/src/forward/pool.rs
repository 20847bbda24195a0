//! The upstream connection pool: this worker thread's keep-alive HTTP/1.1
//! connections to each instance, over hyper's `client::conn::http1`.
//!
//! It replaced hyper-util's legacy `Client`, which per request turned the
//! URI's scheme and authority into a pool key, raced a checkout against a
//! lazy connect, and wrapped the connection in its own types. Here the key
//! is the instance's address, and a checkout is one lock of this worker's
//! own (so never contended) mutex and a look down a short list. Figures,
//! before and after, in docs/bench.md.
//!
//! **Bounded.** A worker opens at most `limit` connections to an instance
//! (`SHOAL_UPSTREAM_CONNECTIONS`, split among the workers). A request that
//! finds none free and the instance at its limit waits, first come first
//! served, for the next connection to become free — handed to it directly —
//! instead of opening its own: HTTP/1.1 carries one request at a time, so
//! without a bound 1,000 requests in flight meant ~1,000 upstream
//! connections, each with its buffers on both ends (docs/bench.md). The
//! wait is bounded by the caller's response timeout.
//!
//! A connection goes back on its instance's list as soon as the answer's
//! head is in; a checkout takes only a connection that is ready for a new
//! request (its previous answer fully read), newest first, so a few
//! connections stay warm and the rest time out. While requests wait, a
//! connection put back before its answer's body is read is watched instead,
//! and handed over once ready. A connection that closed before the request
//! could be written on it (the instance closed an idle keep-alive
//! connection at that moment) is retried on another, as the request was
//! never sent.
//!
//! Idle connections are dropped when a checkout meets them, and by a sweep
//! every few seconds ([`Pool::sweep_idle`], run by each worker): after a
//! burst, without traffic no checkout would ever close them — on the
//! gateway or on the instances.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use crate::forward::body::ProxyBody;
pub use crate::meter::metrics::PoolMetrics;

/// Why a request got no answer head from an instance.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: nothing was sent.
    #[error("connection refused or failed: {0}")]
    Connect(#[source] io::Error),
    /// The connection took longer than `SHOAL_CONNECT_TIMEOUT`: nothing was sent.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The exchange failed once the connection was made.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl PoolError {
    /// Whether the request certainly never reached the instance.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout(_))
    }
}

struct Conn {
    sender: SendRequest<ProxyBody>,
    used: Instant,
}

/// One instance's connections on this worker.
#[derive(Default)]
struct Instance {
    /// Connections put back, newest last.
    idle: Vec<Conn>,
    /// Connections open: idle, in use, watched, or being made.
    open: usize,
    /// Requests waiting for a connection, oldest first.
    waiters: VecDeque<oneshot::Sender<Handoff>>,
}

/// What a waiting request is handed.
enum Handoff {
    /// A connection ready for its request.
    Ready(SendRequest<ProxyBody>),
    /// Room to open a connection of its own (one closed).
    Connect(Slot),
}

impl Instance {
    /// Gives `handoff` to the oldest request still waiting; back if none is.
    fn hand(&mut self, mut handoff: Handoff) -> Option<Handoff> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(handoff) {
                Ok(()) => return None,
                Err(back) => handoff = back,
            }
        }
        Some(handoff)
    }
}

/// One place among an instance's open connections: the connection's task
/// holds it, and gives it back when the connection ends (or was never made).
struct Slot {
    shared: Option<Arc<Shared>>,
    addr: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release(self.addr);
        }
    }
}

impl Slot {
    /// Forgets the place without giving it back: for the pool itself, which
    /// holds its lock and counts it back by hand.
    fn disarm(mut self) {
        self.shared = None;
    }
}

/// What a worker's pool and its connections' tasks share.
struct Shared {
    instances: Mutex<HashMap<SocketAddr, Instance>>,
    metrics: PoolMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Instance>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `addr` ended: its place goes to the oldest waiting
    /// request, if any, which opens a connection of its own.
    fn release(self: &Arc<Self>, addr: SocketAddr) {
        let mut instances = self.lock();
        let Some(inst) = instances.get_mut(&addr) else {
            return;
        };
        let slot = Slot {
            shared: Some(self.clone()),
            addr,
        };
        // Nobody took it: the place is counted back here, under the lock.
        if let Some(Handoff::Connect(slot)) = inst.hand(Handoff::Connect(slot)) {
            slot.disarm();
            inst.open = inst.open.saturating_sub(1);
            self.metrics.open.dec();
        }
    }

    /// `sender`'s last answer has its head in: the connection goes to a
    /// waiting request once ready for another, or on the idle list.
    fn put_back(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        let mut instances = self.lock();
        let inst = instances.entry(addr).or_default();
        if !inst.waiters.is_empty() && !sender.is_ready() {
            self.watch(addr, sender);
            return;
        }
        // To the oldest waiter, if any; else on the idle list.
        let Some(Handoff::Ready(sender)) = inst.hand(Handoff::Ready(sender)) else {
            return;
        };
        inst.idle.push(Conn {
            sender,
            used: Instant::now(),
        });
    }

    /// Waits for `sender` to be ready for a new request (its answer's body
    /// read), then puts it back; a connection that closes meanwhile gives
    /// its place back as it ends.
    fn watch(self: &Arc<Self>, addr: SocketAddr, mut sender: SendRequest<ProxyBody>) {
        let shared = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                shared.put_back(addr, sender);
            }
        });
    }
}

/// What a checkout found.
enum Next {
    /// A pooled connection ready for a request, or room for a new one.
    Now(Handoff),
    /// The instance at its limit: wait for either to be handed over.
    Wait(oneshot::Receiver<Handoff>),
}

/// One worker's connections, by instance.
pub struct Pool {
    shared: Arc<Shared>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    limit: usize,
}

impl Pool {
    /// A pool that connects within `connect_timeout`, closes connections
    /// idle for `idle_timeout`, and opens at most `limit` per instance.
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        limit: usize,
        metrics: PoolMetrics,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                instances: Mutex::new(HashMap::new()),
                metrics,
            }),
            connect_timeout,
            idle_timeout,
            limit: limit.max(1),
        }
    }

    /// Sends the request `make` builds (origin-form URI, `Host` set) to the
    /// instance at `addr` and returns the answer's head; its body streams
    /// from the connection.
    ///
    /// The request is built once a connection is in hand: at 1,000 clients
    /// most requests wait here for one (the bound above), and a request
    /// built before would hold its own copy of the headers all that time.
    /// Not an `async fn`: that would keep its arguments twice in a future
    /// every request in flight holds (see [`crate::forward::proxy::handle`]).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice (see proxy::handle)"
    )]
    pub fn request(
        &self,
        addr: SocketAddr,
        make: impl FnOnce() -> Request<ProxyBody> + Send,
    ) -> impl Future<Output = Result<Response<Incoming>, PoolError>> + Send {
        async move {
            let (mut sender, mut pooled) = self.checkout(addr).await?;
            let mut req = make();
            loop {
                req = match sender.try_send_request(req).await {
                    Ok(response) => {
                        self.shared.put_back(addr, sender);
                        return Ok(response);
                    }
                    Err(mut err) => match err.take_message() {
                        // Closed under us before a byte was written: never sent.
                        Some(unsent) if pooled => unsent,
                        _ => return Err(PoolError::Http(err.into_error())),
                    },
                };
                debug!(%addr, "pooled connection closed before use; another one");
                (sender, pooled) = self.checkout(addr).await?;
            }
        }
    }

    /// A connection to `addr` ready for a request, and whether it was
    /// pooled (else just made): an idle one, a new one if the instance is
    /// under its limit, else the next one handed over.
    async fn checkout(
        &self,
        addr: SocketAddr,
    ) -> Result<(SendRequest<ProxyBody>, bool), PoolError> {
        loop {
            let handoff = match self.next(addr) {
                Next::Now(handoff) => handoff,
                Next::Wait(handed) => {
                    self.shared.metrics.waited.inc();
                    match handed.await {
                        Ok(handoff) => handoff,
                        // The pool let go of the waiter: look again.
                        Err(_) => continue,
                    }
                }
            };
            return match handoff {
                Handoff::Ready(sender) => Ok((sender, true)),
                // On the heap: a new connection is rare, and its future
                // (connect, hyper's handshake) would otherwise take room in
                // every request's.
                Handoff::Connect(slot) => Ok((Box::pin(self.connect(addr, slot)).await?, false)),
            };
        }
    }

    /// A pooled connection to `addr` ready for a request, else room for a
    /// new one, else a place among the waiting requests.
    fn next(&self, addr: SocketAddr) -> Next {
        let now = Instant::now();
        let mut instances = self.shared.lock();
        let inst = instances.entry(addr).or_default();
        // Newest first.
        let mut i = inst.idle.len();
        while i > 0 {
            i -= 1;
            let conn = &inst.idle[i];
            if conn.sender.is_closed() || now.duration_since(conn.used) > self.idle_timeout {
                inst.idle.swap_remove(i);
            } else if conn.sender.is_ready() {
                return Next::Now(Handoff::Ready(inst.idle.swap_remove(i).sender));
            }
        }
        if inst.open < self.limit {
            inst.open += 1;
            self.shared.metrics.open.inc();
            return Next::Now(Handoff::Connect(Slot {
                shared: Some(self.shared.clone()),
                addr,
            }));
        }
        // At the limit: the connections put back still reading their
        // answers are watched, each handed on once ready.
        for conn in std::mem::take(&mut inst.idle) {
            self.shared.watch(addr, conn.sender);
        }
        let (tx, rx) = oneshot::channel();
        inst.waiters.push_back(tx);
        Next::Wait(rx)
    }

    /// Drops connections idle past the idle timeout (and closed ones),
    /// whether or not requests come.
    pub fn sweep_idle(&self) {
        let now = Instant::now();
        let mut instances = self.shared.lock();
        for inst in instances.values_mut() {
            inst.idle.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.used) <= self.idle_timeout
            });
            inst.waiters.retain(|w| !w.is_closed());
        }
        // Instances no longer asked for leave nothing behind.
        instances.retain(|_, inst| inst.open > 0 || !inst.waiters.is_empty());
    }

    /// How often [`Self::sweep_idle`] should run: a connection lives at most
    /// this much past its idle timeout.
    pub fn sweep_period(&self) -> Duration {
        (self.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Connections pooled (idle), for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.shared.lock().values().map(|i| i.idle.len()).sum()
    }

    /// Connections open to `addr`, for tests.
    #[cfg(test)]
    fn open(&self, addr: SocketAddr) -> usize {
        self.shared.lock().get(&addr).map_or(0, |i| i.open)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        slot: Slot,
    ) -> Result<SendRequest<ProxyBody>, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout(self.connect_timeout))?
            .map_err(PoolError::Connect)?;
        self.shared.metrics.opened.inc();
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Upgrades (WebSocket) take the connection over; otherwise it
            // ends when either side closes it. Either way its place is
            // given back.
            let _slot = slot;
            if let Err(err) = conn.with_upgrades().await {
                debug!(%addr, error = %err, "upstream connection ended");
            }
        });
        sender.ready().await?;
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test instance answers.
    #[derive(Clone, Copy, Default)]
    struct Answers {
        /// Waits this long before each answer.
        delay: Duration,
        /// Closes the connection after each answer.
        close: bool,
    }

    /// An instance that answers every request on a connection with a 200
    /// and a 5-byte body; reports when a connection is closed by the
    /// gateway, and counts the connections it accepted.
    async fn instance(
        answers: Answers,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        Arc<AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = closed_tx.send(());
                                return;
                            }
                            Ok(_) => {
                                tokio::time::sleep(answers.delay).await;
                                let answer: &[u8] = if answers.close {
                                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello"
                                } else {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
                                };
                                if stream.write_all(answer).await.is_err() || answers.close {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, closed, accepted)
    }

    fn get(addr: SocketAddr) -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr.to_string())
            .body(ProxyBody::empty())
            .unwrap()
    }

    fn pool(limit: usize) -> Pool {
        Pool::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            limit,
            PoolMetrics::default(),
        )
    }

    /// One request through `pool`, its body read whole.
    async fn fetch(pool: &Pool, addr: SocketAddr) -> Result<String, String> {
        let response = pool
            .request(addr, || get(addr))
            .await
            .map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    /// `n` requests at once, each answered in full.
    async fn all_answered(pool: &Pool, addr: SocketAddr, n: usize) {
        let answers = futures_util::future::join_all((0..n).map(|_| fetch(pool, addr))).await;
        for a in answers {
            assert_eq!(a.unwrap(), "hello");
        }
    }

    /// Waits until every connection to `addr` has ended and given its place back.
    async fn all_places_given_back(pool: &Pool, addr: SocketAddr) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while pool.open(addr) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every place given back");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_without_traffic() {
        let (addr, mut closed, _) = instance(Answers::default()).await;
        let pool = Pool::new(
            Duration::from_secs(1),
            Duration::from_millis(200),
            16,
            PoolMetrics::default(),
        );
        // Three requests at once: three connections, pooled afterwards.
        let (a, b, c) = tokio::join!(fetch(&pool, addr), fetch(&pool, addr), fetch(&pool, addr));
        for r in [a, b, c] {
            assert_eq!(r.unwrap(), "hello");
        }
        assert_eq!(pool.held(), 3);
        // Within the idle timeout a sweep keeps them; past it, it closes
        // them. The clock is stopped and moved by hand (real sockets, so it
        // runs again before waiting for them).
        tokio::time::pause();
        tokio::time::advance(Duration::from_millis(150)).await;
        pool.sweep_idle();
        assert_eq!(pool.held(), 3);
        tokio::time::advance(Duration::from_millis(60)).await;
        pool.sweep_idle();
        assert_eq!(pool.held(), 0);
        tokio::time::resume();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), closed.recv())
                .await
                .expect("the instance sees the connection closed")
                .unwrap();
        }
        // Their places are given back as they end.
        all_places_given_back(&pool, addr).await;
    }

    #[tokio::test]
    async fn requests_beyond_the_limit_wait_for_a_connection_instead_of_opening_one() {
        let (addr, _closed, accepted) = instance(Answers {
            delay: Duration::from_millis(20),
            close: false,
        })
        .await;
        let pool = pool(2);
        all_answered(&pool, addr, 12).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "two connections, no more"
        );
        assert_eq!(pool.shared.metrics.opened.get(), 2);
        assert_eq!(pool.shared.metrics.open.get(), 2);
        assert_eq!(pool.shared.metrics.waited.get(), 10);
        assert_eq!(pool.open(addr), 2);
    }

    #[tokio::test]
    async fn a_connection_that_closes_gives_its_place_to_a_waiting_request() {
        // Every answer closes its connection: each waiting request gets
        // room for a new one.
        let (addr, _closed, accepted) = instance(Answers {
            delay: Duration::from_millis(5),
            close: true,
        })
        .await;
        let pool = pool(1);
        all_answered(&pool, addr, 5).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
        all_places_given_back(&pool, addr).await;
        assert_eq!(pool.shared.metrics.open.get(), 0);
    }

    #[tokio::test]
    async fn a_request_that_gives_up_waiting_takes_no_place_with_it() {
        let (addr, _closed, accepted) = instance(Answers {
            delay: Duration::from_millis(200),
            close: false,
        })
        .await;
        let pool = pool(1);
        // The first holds the only connection for 200 ms; the second gives
        // up after 20.
        let (first, second) = tokio::join!(
            fetch(&pool, addr),
            tokio::time::timeout(Duration::from_millis(20), fetch(&pool, addr)),
        );
        assert_eq!(first.unwrap(), "hello");
        assert!(second.is_err(), "the second waited past its timeout");
        // The connection is free again, for the next request.
        assert_eq!(fetch(&pool, addr).await.unwrap(), "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.open(addr), 1);
    }

    #[tokio::test]
    async fn an_instance_that_refuses_gives_every_place_back() {
        // Nothing listens here once the listener is dropped.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = pool(1);
        let answers = futures_util::future::join_all((0..3).map(|_| fetch(&pool, addr))).await;
        assert!(answers.iter().all(Result::is_err));
        assert_eq!(pool.open(addr), 0);
        assert_eq!(pool.shared.metrics.open.get(), 0);
    }
}
