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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::body::ProxyBody;

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
    checkouts: AtomicU32,
}

/// Every this many checkouts, instances no longer asked for are swept.
const SWEEP_EVERY: u32 = 4096;

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
            checkouts: AtomicU32::new(0),
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
        if self.checkouts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(&mut conns, now);
        }
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

    /// Drops closed and idle connections everywhere, and the lists left empty.
    fn sweep(&self, conns: &mut HashMap<SocketAddr, Vec<Conn>>, now: Instant) {
        for list in conns.values_mut() {
            list.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.used) <= self.idle_timeout
            });
        }
        conns.retain(|_, list| !list.is_empty());
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
