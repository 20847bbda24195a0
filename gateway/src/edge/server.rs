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

use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shoal_http::Work;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::edge::acme;
use crate::forward::headers::{ClientTls, detach_head};
use crate::forward::proxy;
use crate::forward::state::Gateway;

/// The largest request head taken (nginx takes 4 × 8 KiB by default), in
/// every protocol the edge speaks; larger ones are answered 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Drives a hyper connection; when the drain starts, asks it to finish its
/// in-flight request and close, and waits for that.
macro_rules! until_drained {
    ($conn:expr, $watch:expr) => {
        until_drained!(@pinned std::pin::pin!($conn), $watch)
    };
    // The connection on the heap: for the kinds a connection's task is not
    // sized for (its task holds the largest of its futures inline, for
    // every connection).
    (boxed $conn:expr, $watch:expr) => {
        until_drained!(@pinned Box::pin($conn), $watch)
    };
    (@pinned $pinned:expr, $watch:expr) => {{
        let mut conn = $pinned;
        tokio::select! {
            r = conn.as_mut() => r,
            _ = $watch.draining() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// What a listener serves.
#[derive(Clone)]
pub enum Kind {
    /// HTTP/1.1, and HTTP/2 by prior knowledge when `h2c` is set.
    Plain {
        /// Also HTTP/2 without TLS.
        h2c: bool,
    },
    /// TLS, then HTTP/2 or HTTP/1.1 as ALPN chose.
    Tls(crate::edge::tls::Tls),
    /// HTTP/1.1 answering every request with a redirect to HTTPS on `port`.
    Redirect {
        /// The HTTPS port.
        port: u16,
    },
}

/// Serves `listeners` until the gateway's drain starts, then waits for the
/// drain to end (every connection and tunnel done, or `grace` over) so this
/// runtime's connections can finish.
pub async fn serve(listeners: Vec<(TcpListener, Kind)>, gw: Arc<Gateway>, grace: Duration) {
    let drain = gw.drain.clone();
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(listener, kind)| tokio::spawn(accept_loop(listener, kind, gw.clone())))
        .collect();
    for l in loops {
        let _ = l.await;
    }
    drain.wait(grace).await;
}

async fn accept_loop(listener: TcpListener, kind: Kind, gw: Arc<Gateway>) {
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
                let watch = drain.watch(Work::Connection);
                let kind = kind.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // The PROXY header, from a trusted balancer: the client
                    // is the address it names.
                    let mut stream = stream;
                    let proxy = &gw.config.proxy;
                    let peer = match crate::edge::proxy_protocol::accept(
                        &mut stream,
                        peer,
                        proxy.proxy_protocol,
                        &proxy.trusted_proxies,
                        proxy.header_timeout,
                    )
                    .await
                    {
                        Ok(client) => client,
                        Err(refused) => {
                            gw.metrics.proxy_protocol_refused(refused.reason());
                            debug!(%peer, error = %refused, "connection refused");
                            return;
                        }
                    };
                    let stream = crate::edge::stall::Stall::new(stream, proxy.client_write_timeout);
                    match kind {
                        Kind::Plain { h2c } => {
                            let proto = if h2c { Proto::Auto } else { Proto::Http1 };
                            connection(stream, proto, false, gw, peer, watch).await;
                        }
                        // On the heap: a TLS connection's futures are twice
                        // a plain one's, and the task is sized for the largest.
                        Kind::Tls(tls) => Box::pin(async move {
                            let handshake = tokio::time::timeout(
                                gw.config.proxy.header_timeout,
                                tls.acceptor.accept(stream),
                            );
                            let stream = match handshake.await {
                                Ok(Ok(s)) => s,
                                Ok(Err(err)) => {
                                    gw.metrics.tls_handshake_failures.inc();
                                    debug!(%peer, error = %err, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    gw.metrics.tls_handshake_failures.inc();
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            let proto = if h2 { Proto::Http2 } else { Proto::Http1 };
                            connection(stream, proto, true, gw, peer, watch).await;
                        })
                        .await,
                        Kind::Redirect { port } => {
                            Box::pin(redirect(stream, port, gw, watch)).await
                        }
                    }
                });
            }
            _ = &mut draining => break,
        }
    }
}

/// How a connection speaks HTTP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    /// HTTP/2 if the client starts with its preface, else HTTP/1.1.
    Auto,
}

/// Serves one client connection until it ends or the drain closes it.
async fn connection<I>(
    io: I,
    proto: Proto,
    tls: bool,
    gw: Arc<Gateway>,
    peer: std::net::SocketAddr,
    mut watch: shoal_http::Watch,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = gw.config.proxy.header_timeout;
    let (http1_count, http2_count) = (
        gw.metrics.protocol("http/1.1", tls),
        gw.metrics.protocol("h2", tls),
    );
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        if req.version() == http::Version::HTTP_2 {
            http2_count.inc();
        } else {
            http1_count.inc();
        }
        if tls {
            req.extensions_mut().insert(ClientTls);
        }
        // Here, not in the future: hyper reads on before it polls it.
        detach_head(&mut req);
        // Boxed: a rare path, kept out of every request's future.
        if asks_acme_challenge(&gw, &req) {
            return Either::Left(Box::pin(async move {
                if let Some(answer) = acme_challenge(&gw, &req).await {
                    return Ok::<_, Infallible>(answer);
                }
                Ok(proxy::handle(gw, req, peer).await)
            }));
        }
        Either::Right(proxy::handle(gw, req, peer).map(Ok))
    });
    let io = TokioIo::new(io);
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = match proto {
        Proto::Http1 => until_drained!(
            http1_builder(header_timeout)
                .serve_connection(io, service)
                .with_upgrades(),
            watch
        )
        .map_err(Into::into),
        Proto::Http2 => until_drained!(
            boxed http2_builder(header_timeout).serve_connection(io, service),
            watch
        )
        .map_err(Into::into),
        Proto::Auto => {
            // The same rules as the HTTP/1.1 and h2 builders above: hyper's
            // auto builder has no `max_header_size`, but a head must fit its
            // read buffer, so a buffer of exactly the limit refuses larger
            // heads with the same 431.
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEADER_BYTES);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .keep_alive_interval(Some(H2_KEEP_ALIVE_INTERVAL))
                .keep_alive_timeout(h2_keep_alive_timeout(header_timeout));
            until_drained!(
                boxed builder.serve_connection_with_upgrades(io, service),
                watch
            )
        }
    };
    if let Err(err) = result {
        debug!(%peer, error = %err, "connection ended with an error");
    }
    drop(watch);
}

fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Headers (request line included) up to 64 KiB; larger ones are
        // answered 431.
        .max_header_size(MAX_HEADER_BYTES);
    b
}

fn http2_builder(header_timeout: Duration) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(Some(H2_KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(h2_keep_alive_timeout(header_timeout));
    b
}

/// HTTP/2 pings a quiet client this often, so a client that went silent is
/// noticed and its streams freed …
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// … once it leaves a ping unanswered this long.
fn h2_keep_alive_timeout(header_timeout: Duration) -> Duration {
    header_timeout.max(Duration::from_secs(5))
}

/// Answers every request of a plain connection with a permanent redirect
/// to the same URL over HTTPS (308 keeps the method and body).
async fn redirect<I>(io: I, port: u16, gw: Arc<Gateway>, mut watch: shoal_http::Watch)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = gw.config.proxy.header_timeout;
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        async move {
            if asks_acme_challenge(&gw, &req)
                && let Some(answer) = acme_challenge(&gw, &req).await
            {
                return Ok::<_, Infallible>(answer);
            }
            Ok::<_, Infallible>(redirect_response(&req, port))
        }
    });
    let _ = until_drained!(
        http1_builder(header_timeout).serve_connection(TokioIo::new(io), service),
        watch
    );
}

/// Whether `req` asks for an ACME HTTP-01 challenge on the plain port of a
/// gateway whose certificate comes from a CA (checked before the answer's
/// future is made: most requests never need it).
fn asks_acme_challenge(gw: &Gateway, req: &hyper::Request<hyper::body::Incoming>) -> bool {
    req.uri().path().starts_with(acme::CHALLENGE_PREFIX)
        && req.extensions().get::<ClientTls>().is_none()
        && gw.config.tls.as_ref().and_then(|t| t.acme()).is_some()
}

/// The answer to a request [`asks_acme_challenge`] says is one: the key
/// authorization whichever gateway published it (200), or 404; `None`
/// before the gateway has joined its cluster.
async fn acme_challenge(
    gw: &Gateway,
    req: &hyper::Request<hyper::body::Incoming>,
) -> Option<hyper::Response<crate::forward::body::ProxyBody>> {
    let cluster = gw.cluster.get()?;
    let (status, body) = match acme::challenge_answer(cluster, req.uri().path()).await {
        Some(answer) => (http::StatusCode::OK, answer),
        None => (http::StatusCode::NOT_FOUND, "no such challenge".to_string()),
    };
    let mut response = hyper::Response::new(crate::forward::body::ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Some(response)
}

/// The redirect of `req` to HTTPS on `port`.
pub fn redirect_response(
    req: &hyper::Request<hyper::body::Incoming>,
    port: u16,
) -> hyper::Response<crate::forward::body::ProxyBody> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    let mut response = crate::forward::error::error_response(
        http::StatusCode::PERMANENT_REDIRECT,
        &format!("this gateway serves HTTPS only: {location}"),
        req.uri().path(),
    );
    if let Ok(value) = http::HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response
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

#[cfg(test)]
mod tests;
