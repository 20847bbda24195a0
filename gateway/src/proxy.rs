//! Proxy: one request, in the order it passes through the gateway —
//! route → breaker and limits → balance → forward → outcome (→ retry).
//!
//! Retry rules (never duplicate a write):
//! - the connection to the instance failed, so no byte of the request left:
//!   retried on another instance whatever the method, if the body is still
//!   at hand (empty, or small enough to have been kept);
//! - a 5xx answer, a reset or a timeout: retried only for GET, HEAD and
//!   OPTIONS; a POST/PUT/PATCH/DELETE that may have reached the instance is
//!   answered 502/504 and never sent twice.
//!
//! Every retry spends from the service's budget.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngCore;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::balance::{self, Endpoint};
use crate::body::ProxyBody;
use crate::config::GatewayConfig;
use crate::connect::Connector;
use crate::error::error_response;
use crate::metrics::Metrics;
use crate::outcome::Permit;
use crate::route::{self, NoRoute};
use crate::upstreams::{ServiceState, Upstreams};

/// Everything a request needs. One per worker thread: the routing table,
/// metrics and limits are shared, the upstream connection pool is the
/// worker's own (so a request never wakes another thread).
pub struct Gateway {
    /// Configuration.
    pub config: Arc<GatewayConfig>,
    /// Routing table from the gossip view (shared).
    pub upstreams: Arc<Upstreams>,
    /// Metrics (shared).
    pub metrics: Arc<Metrics>,
    client: Client<Connector, ProxyBody>,
    in_flight: Arc<Semaphore>,
}

impl Gateway {
    /// A gateway with a pooled keep-alive client built from `config`.
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            upstreams: Arc::new(Upstreams::new(config.resilience.clone())),
            metrics: Arc::new(Metrics::default()),
            in_flight: Arc::new(Semaphore::new(config.proxy.max_in_flight)),
            client: client(&config),
            config: Arc::new(config),
        }
    }

    /// A gateway for another worker thread: same table, metrics and limits,
    /// its own connection pool.
    pub fn for_worker(&self) -> Self {
        Self {
            config: self.config.clone(),
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            in_flight: self.in_flight.clone(),
            client: client(&self.config),
        }
    }
}

fn client(config: &GatewayConfig) -> Client<Connector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.proxy.connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(30)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.proxy.pool_idle_timeout)
        .pool_max_idle_per_host(config.proxy.max_in_flight_per_instance as usize)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(Connector(connector))
}

/// What became of one attempt.
enum Attempt {
    /// An answer to pass on.
    Answer(Response<Incoming>),
    /// The connection failed: nothing was sent.
    NotSent(String),
    /// Failed after the request may have reached the instance.
    Failed(String),
    /// No response headers in time.
    TimedOut,
}

/// Handles one request from a client at `peer`.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = req.method().clone();
    // A Uri clone shares the request's bytes: no copy of the path.
    let uri = req.uri().clone();
    let path = uri.path();
    let traceparent = traceparent(req.headers());
    let mut log = Log {
        service: None,
        upstream: None,
        attempts: 0,
    };
    let mut response = route_and_forward(&gw, req, path, peer, &traceparent, &mut log).await;
    let status = response.status();
    match &log.service {
        Some(service) => service.metrics.request(status.as_u16()),
        None => gw.metrics.unrouted(status.as_u16()),
    }
    if gw.config.access_log {
        info!(
            service = log.service.as_ref().map_or("-", |s| &s.name),
            method = %method,
            path = %path,
            status = status.as_u16(),
            latency_ms = format!("{:.2}", start.elapsed().as_secs_f64() * 1e3),
            upstream = %log.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            attempts = log.attempts,
            traceparent = %traceparent.to_str().unwrap_or(""),
            "request"
        );
    }
    response.headers_mut().insert(TRACEPARENT, traceparent);
    response
}

struct Log {
    service: Option<Arc<ServiceState>>,
    upstream: Option<SocketAddr>,
    attempts: u32,
}

async fn route_and_forward(
    gw: &Arc<Gateway>,
    mut req: Request<Incoming>,
    path: &str,
    peer: SocketAddr,
    traceparent: &HeaderValue,
    log: &mut Log,
) -> Response<ProxyBody> {
    let table = gw.upstreams.snapshot();
    let route = match route::resolve(&table.view, path, req.uri().query()) {
        Ok(route) => route,
        Err(NoRoute::NotApi) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "no route: paths start with /api/{service}",
                path,
            );
        }
        Err(NoRoute::UnknownService(name)) => {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("no service named {name} is known to this gateway"),
                path,
            );
        }
    };
    let Some(service) = table.service(route.service) else {
        return error_response(StatusCode::NOT_FOUND, "unknown service", path);
    };
    log.service = Some(service.clone());
    if service.endpoints.is_empty() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no instance of {} is up", route.service),
            path,
        );
    }
    let now = Instant::now();
    let Some(permit) = service.breaker.try_acquire(now) else {
        service.metrics.set_breaker(service.breaker.state(now));
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("circuit breaker of {} is open", route.service),
            path,
        );
    };
    let Ok(_slot) = gw.in_flight.try_acquire() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway over its connection limit",
            path,
        );
    };
    service.budget.deposit(now);

    if is_upgrade(&req) {
        let upgrade = hyper::upgrade::on(&mut req);
        let response = forward_upgrade(
            gw,
            route.service,
            service,
            req,
            upgrade,
            path,
            &route.upstream,
            peer,
            traceparent,
            log,
        )
        .await;
        record_breaker(service, permit, response.status());
        return response;
    }

    let response = forward(
        gw,
        route.service,
        service,
        req,
        path,
        route.upstream,
        peer,
        traceparent,
        log,
    )
    .await;
    record_breaker(service, permit, response.status());
    response
}

fn record_breaker(service: &ServiceState, permit: Permit, status: StatusCode) {
    let now = Instant::now();
    service
        .breaker
        .record(permit, !status.is_server_error(), now);
    service.metrics.set_breaker(service.breaker.state(now));
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What can be done with the request body.
enum Keep {
    /// No body: retries are free.
    Empty,
    /// A body of known, small length: read it whole so it can be resent.
    Small(usize),
    /// A large or unknown-length body: stream it, once.
    Stream,
}

fn keepable_body(headers: &HeaderMap, limit: usize) -> Keep {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    match (length, chunked) {
        (Some(0), false) | (None, false) => Keep::Empty,
        (Some(n), false) if n <= limit => Keep::Small(n),
        _ => Keep::Stream,
    }
}

/// The body of the next attempt: a copy of the kept bytes, or the stream the
/// first time only.
fn next_body(kept: &Option<Bytes>, stream: &mut Option<Incoming>) -> Option<ProxyBody> {
    match kept {
        Some(bytes) => Some(ProxyBody::full(bytes.clone())),
        None => stream.take().map(|body| ProxyBody::Stream(body, None)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    gw: &Arc<Gateway>,
    name: &str,
    service: &Arc<ServiceState>,
    req: Request<Incoming>,
    path: &str,
    upstream_path: String,
    peer: SocketAddr,
    traceparent: &HeaderValue,
    log: &mut Log,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let Ok(path_and_query) = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(upstream_path))
    else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the request path cannot be forwarded",
            path,
        );
    };
    let prefix = forwarded_prefix(path, path_and_query.path());
    let proxy = &gw.config.proxy;
    let keep = keepable_body(&parts.headers, proxy.retry_body_limit);
    let headers = upstream_headers(parts.headers, peer, prefix, traceparent);
    let deadline = Instant::now() + proxy.request_timeout;
    let (kept, mut stream) = match keep {
        Keep::Empty => (Some(Bytes::new()), None),
        Keep::Small(limit) => match Limited::new(body, limit).collect().await {
            Ok(collected) => (Some(collected.to_bytes()), None),
            Err(err) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the request body: {err}"),
                    path,
                );
            }
        },
        Keep::Stream => (None, Some(body)),
    };
    let idempotent = is_idempotent(&parts.method);
    let max_attempts = gw.config.resilience.max_attempts;
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(max_attempts as usize);
    let mut last_error = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return error_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("no answer from {name} within {:?}", proxy.request_timeout),
                path,
            );
        }
        let Some(endpoint) = balance::pick(
            &service.endpoints,
            &tried,
            proxy.max_in_flight_per_instance,
            now,
        ) else {
            return last_error.unwrap_or_else(|| {
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("every instance of {name} is busy or ejected"),
                    path,
                )
            });
        };
        let Some(body) = next_body(&kept, &mut stream) else {
            return last_error.unwrap_or_else(|| {
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "request body already consumed",
                    path,
                )
            });
        };
        tried.push(endpoint.addr());
        log.attempts += 1;
        log.upstream = Some(endpoint.addr());
        let uri = Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.scheme = Some(http::uri::Scheme::HTTP);
            p.authority = Some(endpoint.authority.clone());
            p.path_and_query = Some(path_and_query.clone());
            p
        });
        let Ok(uri) = uri else {
            return error_response(StatusCode::BAD_GATEWAY, "invalid upstream address", path);
        };
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = headers.clone();
        upstream_req
            .headers_mut()
            .insert(header::HOST, endpoint.host.clone());
        let guard = endpoint.start();
        let sent_at = Instant::now();
        let wait = proxy.response_timeout.min(deadline - sent_at);
        let attempt = match tokio::time::timeout(wait, gw.client.request(upstream_req)).await {
            Ok(Ok(response)) => Attempt::Answer(response),
            Ok(Err(err)) if err.is_connect() => Attempt::NotSent(error_chain(&err)),
            Ok(Err(err)) => Attempt::Failed(error_chain(&err)),
            Err(_) => Attempt::TimedOut,
        };
        let now = Instant::now();
        let latency = now - sent_at;
        let retryable = match attempt {
            Attempt::Answer(mut response) => {
                endpoint.observe(latency, now);
                service.metrics.latency.observe(latency.as_secs_f64());
                if !response.status().is_server_error() {
                    endpoint.record_success();
                    strip_hop_by_hop(response.headers_mut());
                    return response.map(|b| ProxyBody::Stream(b, Some(guard)));
                }
                note_failure(gw, name, service, &endpoint, now);
                if !(idempotent && may_retry(gw, service, &tried, &kept, now)) {
                    strip_hop_by_hop(response.headers_mut());
                    return response.map(|b| ProxyBody::Stream(b, Some(guard)));
                }
                // Should no other instance be pickable after all, say why.
                last_error = Some(error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "{name} at {} answered {}",
                        endpoint.addr(),
                        response.status()
                    ),
                    path,
                ));
                continue;
            }
            Attempt::NotSent(why) => {
                note_failure(gw, name, service, &endpoint, now);
                last_error = Some(error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("could not connect to {name} at {}: {why}", endpoint.addr()),
                    path,
                ));
                true
            }
            Attempt::Failed(why) => {
                note_failure(gw, name, service, &endpoint, now);
                last_error = Some(error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("{name} at {} failed: {why}", endpoint.addr()),
                    path,
                ));
                idempotent
            }
            Attempt::TimedOut => {
                endpoint.observe(latency, now);
                note_failure(gw, name, service, &endpoint, now);
                last_error = Some(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "{name} at {} sent no answer within {wait:?}",
                        endpoint.addr()
                    ),
                    path,
                ));
                idempotent
            }
        };
        drop(guard);
        if !(retryable && may_retry(gw, service, &tried, &kept, now)) {
            return last_error.unwrap_or_else(|| {
                error_response(StatusCode::BAD_GATEWAY, "upstream failed", path)
            });
        }
    }
}

/// Whether one more attempt may go: attempts left, another instance to try,
/// the body still at hand, and the budget not spent (this spends from it).
fn may_retry(
    gw: &Gateway,
    service: &ServiceState,
    tried: &[SocketAddr],
    kept: &Option<Bytes>,
    now: Instant,
) -> bool {
    if kept.is_none() || tried.len() >= gw.config.resilience.max_attempts as usize {
        return false;
    }
    let another = service
        .endpoints
        .iter()
        .any(|e| !tried.contains(&e.addr()) && !e.is_ejected(now));
    if !another {
        return false;
    }
    if service.budget.withdraw(now) {
        service.metrics.retries.inc();
        true
    } else {
        service.metrics.budget_exhausted.inc();
        false
    }
}

/// Counts a failure of `endpoint`; ejects it after a streak, unless half the
/// service is already out.
fn note_failure(
    gw: &Gateway,
    name: &str,
    service: &ServiceState,
    endpoint: &Endpoint,
    now: Instant,
) {
    let streak = endpoint.record_failure();
    if streak >= gw.config.resilience.eject_after && service.may_eject(now) {
        let time = endpoint.eject(gw.config.resilience.eject_time, now);
        service.metrics.ejections.inc();
        warn!(service = name, instance = %endpoint.addr(), streak, ejected_for = ?time, "instance ejected");
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `/api/story-service` for `/api/story-service/story` sent as `/story`.
fn forwarded_prefix<'a>(path: &'a str, upstream: &str) -> &'a str {
    if upstream == "/" {
        return path.trim_end_matches('/');
    }
    path.strip_suffix(upstream).unwrap_or("")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// The headers sent upstream: end-to-end headers (Authorization included),
/// hop-by-hop removed, `X-Forwarded-*` and `traceparent` set.
fn upstream_headers(
    mut headers: HeaderMap,
    peer: SocketAddr,
    prefix: &str,
    traceparent: &HeaderValue,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    let client_ip = peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(prior) => [prior.as_bytes(), b", ", client_ip.as_bytes()].concat(),
        None => client_ip.into_bytes(),
    };
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(forwarded_for)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    if !prefix.is_empty() {
        if let Ok(v) = HeaderValue::from_str(prefix) {
            headers.insert(X_FORWARDED_PREFIX, v);
        }
    }
    headers.insert(TRACEPARENT, traceparent.clone());
    headers
}

/// The request's W3C `traceparent` if valid, else a new one.
fn traceparent(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&TRACEPARENT) {
        if v.to_str().is_ok_and(valid_traceparent) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    // "00-" + 32 hex (trace id) + "-" + 16 hex (span id) + "-01"
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for (i, b) in bytes.iter().enumerate() {
        let at = if i < 16 { 3 + 2 * i } else { 36 + 2 * (i - 16) };
        out[at] = HEX[(b >> 4) as usize];
        out[at + 1] = HEX[(b & 15) as usize];
    }
    // One allocation that later clones share (a copied slice would be
    // copied again on its first clone).
    HeaderValue::from_maybe_shared(Bytes::from_owner(out)).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Proxies an HTTP/1.1 Upgrade (WebSocket): the handshake goes to one
/// instance, and once both sides have switched, bytes are copied both ways
/// until either side closes.
#[allow(clippy::too_many_arguments)]
async fn forward_upgrade(
    gw: &Arc<Gateway>,
    name: &str,
    service: &Arc<ServiceState>,
    req: Request<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    path: &str,
    upstream_path: &str,
    peer: SocketAddr,
    traceparent: &HeaderValue,
    log: &mut Log,
) -> Response<ProxyBody> {
    let now = Instant::now();
    let Some(endpoint) = balance::pick(
        &service.endpoints,
        &[],
        gw.config.proxy.max_in_flight_per_instance,
        now,
    ) else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("every instance of {name} is busy or ejected"),
            path,
        );
    };
    log.attempts = 1;
    log.upstream = Some(endpoint.addr());
    let (parts, _) = req.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    let mut headers = upstream_headers(
        parts.headers,
        peer,
        forwarded_prefix(path, upstream_path),
        traceparent,
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
    }
    let uri = format!("http://{}{}", endpoint.authority, upstream_path);
    let Ok(uri) = uri.parse::<Uri>() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the request path cannot be forwarded",
            path,
        );
    };
    let mut upstream_req = Request::new(ProxyBody::empty());
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;
    let guard = endpoint.start();
    let result = tokio::time::timeout(
        gw.config.proxy.response_timeout,
        gw.client.request(upstream_req),
    )
    .await;
    let mut response = match result {
        Ok(Ok(r)) => r,
        Ok(Err(err)) => {
            note_failure(gw, name, service, &endpoint, Instant::now());
            return error_response(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "{name} at {} failed: {}",
                    endpoint.addr(),
                    error_chain(&err)
                ),
                path,
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("{name} did not answer the upgrade"),
                path,
            );
        }
    };
    endpoint.record_success();
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(response.headers_mut());
        return response.map(|b| ProxyBody::Stream(b, Some(guard)));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Err(err) => warn!(error = %err, "upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(header::HOST, HeaderValue::from_static("gw:4000"));
        let tp = traceparent(&HeaderMap::new());
        let out = upstream_headers(
            h,
            "10.0.0.7:5555".parse().unwrap(),
            "/api/story-service",
            &tp,
        );
        for gone in ["connection", "x-private", "keep-alive", "transfer-encoding"] {
            assert!(!out.contains_key(gone), "{gone} kept");
        }
        assert_eq!(out["authorization"], "Bearer t");
        assert_eq!(out["x-forwarded-for"], "10.0.0.7");
        assert_eq!(out["x-forwarded-host"], "gw:4000");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-prefix"], "/api/story-service");
        assert_eq!(out["traceparent"], tp);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let tp = traceparent(&h);
        let out = upstream_headers(h, "10.0.0.7:1".parse().unwrap(), "", &tp);
        assert_eq!(out["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
    }

    #[test]
    fn valid_traceparent_is_kept_and_bad_one_replaced() {
        let mut h = HeaderMap::new();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(good));
        assert_eq!(traceparent(&h), good);
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"),
        );
        let fresh = traceparent(&h);
        assert!(valid_traceparent(fresh.to_str().unwrap()), "{fresh:?}");
        assert_ne!(fresh, good);
    }

    #[test]
    fn prefix_is_what_the_gateway_stripped() {
        assert_eq!(
            forwarded_prefix("/api/story-service/story/1", "/story/1"),
            "/api/story-service"
        );
        assert_eq!(forwarded_prefix("/api/story/1", "/story/1"), "/api");
        assert_eq!(
            forwarded_prefix("/api/story-service", "/"),
            "/api/story-service"
        );
    }

    #[test]
    fn bodies_are_kept_only_when_small_and_sized() {
        let mut h = HeaderMap::new();
        assert!(matches!(keepable_body(&h, 10), Keep::Empty));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(matches!(keepable_body(&h, 10), Keep::Small(5)));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("50"));
        assert!(matches!(keepable_body(&h, 10), Keep::Stream));
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(matches!(keepable_body(&h, 10), Keep::Stream));
    }
}
