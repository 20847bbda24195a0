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
//! A connection goes back on its instance's list as soon as the answer's
//! head is in; a checkout takes only a connection that is ready for a new
//! request (its previous answer fully read), newest first, so a few
//! connections stay warm and the rest time out. A connection that closed
//! before the request could be written on it (the instance closed an idle
//! keep-alive connection at that moment) is retried on another, as the
//! request was never sent.
//!
//! Idle connections are dropped when a checkout meets them, and by a sweep
//! every few seconds ([`Pool::sweep_idle`], run by each worker): a burst of
//! requests in flight leaves as many connections (one per request, HTTP/1.1
//! carries one at a time), and without traffic no checkout would ever close
//! them — on the gateway or on the instances.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::forward::body::ProxyBody;

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

/// One worker's connections, by instance.
pub struct Pool {
    conns: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_per_instance: usize,
}

impl Pool {
    /// A pool that connects within `connect_timeout`, closes connections
    /// idle for `idle_timeout`, and keeps at most `max_per_instance` per
    /// instance.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_per_instance: usize) -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            max_per_instance: max_per_instance.max(1),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to the instance at `addr`
    /// and returns the answer's head; its body streams from the connection.
    pub async fn request(
        &self,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        loop {
            let (mut sender, pooled) = match self.checkout(addr) {
                Some(sender) => (sender, true),
                None => (self.connect(addr).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.put_back(addr, sender);
                    return Ok(response);
                }
                Err(mut err) => match err.take_message() {
                    // Closed under us before a byte was written: never sent.
                    Some(unsent) if pooled => {
                        debug!(%addr, "pooled connection closed before use; another one");
                        req = unsent;
                    }
                    _ => return Err(PoolError::Http(err.into_error())),
                },
            }
        }
    }

    /// A connection to `addr` ready for a request, if one is pooled.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&addr)?;
        // Newest first.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let conn = &list[i];
            if conn.sender.is_closed() || now.duration_since(conn.used) > self.idle_timeout {
                list.swap_remove(i);
            } else if conn.sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
        }
        None
    }

    fn put_back(&self, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.entry(addr).or_default();
        if list.len() < self.max_per_instance {
            list.push(Conn {
                sender,
                used: Instant::now(),
            });
        }
    }

    /// Drops connections idle past the idle timeout (and closed ones),
    /// whether or not requests come.
    pub fn sweep_idle(&self) {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for list in conns.values_mut() {
            list.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.used) <= self.idle_timeout
            });
        }
        // Instances no longer asked for leave no empty list behind.
        conns.retain(|_, list| !list.is_empty());
    }

    /// How often [`Self::sweep_idle`] should run: a connection lives at most
    /// this much past its idle timeout.
    pub fn sweep_period(&self) -> Duration {
        (self.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Connections held, for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().map(Vec::len).sum()
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<ProxyBody>, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout(self.connect_timeout))?
            .map_err(PoolError::Connect)?;
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Upgrades (WebSocket) take the connection over; otherwise it
            // ends when either side closes it.
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An instance that answers every request on a connection with an empty
    /// 200, and reports when a connection is closed by the gateway.
    async fn instance() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
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
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, closed)
    }

    fn get(addr: SocketAddr) -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr.to_string())
            .body(ProxyBody::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn idle_connections_are_closed_without_traffic() {
        let (addr, mut closed) = instance().await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_millis(200), 16);
        // Three requests at once: three connections, pooled afterwards.
        let (a, b, c) = tokio::join!(
            pool.request(addr, get(addr)),
            pool.request(addr, get(addr)),
            pool.request(addr, get(addr)),
        );
        for r in [a, b, c] {
            assert_eq!(r.unwrap().status(), 200);
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
    }
}
