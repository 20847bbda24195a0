//! The retry loop: one request, up to `SHOAL_MAX_ATTEMPTS` attempts, each on
//! an instance not tried yet, by rules that never duplicate a write:
//!
//! - the connection to the instance failed, so no byte of the request left:
//!   sent again to another instance whatever the method, if the body is
//!   still at hand (empty, or small enough to have been kept, see
//!   [`crate::forward::replay`]);
//! - a 5xx answer, a broken connection or a timeout: sent again only for
//!   GET, HEAD and OPTIONS. A POST/PUT/PATCH/DELETE that may have reached
//!   the instance is answered (its 5xx passed on, or 502/504) and never sent
//!   twice.
//!
//! Every retry spends from the service's budget; every failure counts
//! towards ejecting the instance ([`crate::route::table::ServiceState::note_failure`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::forward::body::ProxyBody;
use crate::forward::call::Call;
use crate::forward::error::{error_chain, error_response};
use crate::forward::headers::{forwarded_prefix, strip_hop_by_hop, upstream_headers};
use crate::forward::pool::PoolError;
use crate::forward::replay::Replay;
use crate::forward::state::Gateway;
use crate::route::admission::Verdict;
use crate::route::affinity::Affinity;
use crate::route::balance::Endpoint;
use crate::route::outcome::Budget;
use crate::route::table::ServiceState;

/// How an attempt failed, which decides whether it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection did not open: nothing was sent.
    NotSent,
    /// The instance answered 5xx.
    ServerError,
    /// The connection broke after the request may have been sent.
    Broken,
    /// No response headers within the response timeout.
    TimedOut,
    /// Its member left the cluster while the request was in flight.
    Gone,
}

/// The rule: may a request whose attempt failed this way be sent to another
/// instance? Only if nothing reached the first one, or if sending it twice
/// is harmless (GET, HEAD, OPTIONS).
pub fn may_resend(failure: Failure, method: &Method) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::ServerError | Failure::Broken | Failure::TimedOut | Failure::Gone => {
            is_idempotent(method)
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What the request is, once for all its attempts.
struct Outgoing {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Outgoing {
    /// The request of one attempt to `endpoint` (its own copy of the
    /// headers: an attempt may be followed by another).
    fn to(&self, endpoint: &Endpoint, body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req.headers_mut()
            .insert(header::HOST, endpoint.host.clone());
        req
    }
}

/// The origin-form URI sent to an instance (`{path?query}`: the connection
/// says which instance, `Host` says its name), taking the path to send on
/// over without a copy; `None` if the client's path cannot be sent as one.
pub fn upstream_uri(upstream_path: String) -> Option<Uri> {
    let mut p = http::uri::Parts::default();
    p.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(upstream_path)).ok()?);
    Uri::from_parts(p).ok()
}

/// Sends the client's request for `service` (`parts` and `body`, path
/// rewritten to the call's `upstream_path`) to one instance after another
/// until one answers or the rules say stop. Returns the answer and what it
/// says of the service. The parts are borrowed, the headers taken.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice (see proxy::handle)"
)]
pub fn forward(
    gw: &Gateway,
    service: &Arc<ServiceState>,
    parts: &mut http::request::Parts,
    body: Incoming,
    call: Call<'_>,
) -> impl Future<Output = (Response<ProxyBody>, Verdict)> + Send {
    async move {
        let limit = gw.config.proxy.retry_body_limit;
        let replay = match Replay::new(&parts.headers, body, limit).await {
            Ok(replay) => replay,
            Err(why) => {
                return (
                    error_response(StatusCode::BAD_REQUEST, &why, call.path),
                    Verdict::None,
                );
            }
        };
        forward_parts(gw, service, parts, replay, call).await
    }
}

/// [`forward`] of a request already taken apart, its body in `replay`
/// (also how the gateway sends a request of its own: forward auth).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice (see proxy::handle)"
)]
pub fn forward_parts(
    gw: &Gateway,
    service: &Arc<ServiceState>,
    parts: &mut http::request::Parts,
    mut replay: Replay,
    call: Call<'_>,
) -> impl Future<Output = (Response<ProxyBody>, Verdict)> + Send {
    async move {
        let Call {
            path,
            upstream_path,
            peer,
            traceparent,
            log,
        } = call;
        let name = &*service.name;
        let Some(uri) = upstream_uri(upstream_path) else {
            return (
                error_response(
                    StatusCode::BAD_REQUEST,
                    "the request path cannot be forwarded",
                    path,
                ),
                Verdict::None,
            );
        };
        let proxy = &gw.config.proxy;
        let secure = parts
            .extensions
            .get::<crate::forward::headers::ClientTls>()
            .is_some();
        let affinity = match Affinity::of(service, &parts.headers, secure) {
            Ok(affinity) => affinity,
            Err(why) => {
                return (
                    error_response(StatusCode::SERVICE_UNAVAILABLE, &why, path),
                    Verdict::None,
                );
            }
        };
        let prefix = forwarded_prefix(path, uri.path());
        let outgoing = Outgoing {
            headers: upstream_headers(
                std::mem::take(&mut parts.headers),
                peer,
                prefix,
                traceparent,
            ),
            method: parts.method.clone(),
            uri,
        };
        let deadline = Instant::now() + proxy.request_timeout;
        let mut tried: Vec<SocketAddr> =
            Vec::with_capacity(gw.config.resilience.max_attempts as usize);
        // The answer to give if no further attempt is possible.
        let mut last_error: Option<Box<Response<ProxyBody>>> = None;
        let give_up = |last_error: Option<Box<Response<ProxyBody>>>, status, message: &str| {
            match last_error {
                Some(response) => (*response, Verdict::Failure),
                None => (error_response(status, message, path), Verdict::None),
            }
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return (
                    error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("no answer from {name} within {:?}", proxy.request_timeout),
                        path,
                    ),
                    Verdict::Failure,
                );
            }
            let Some(endpoint) =
                affinity.choose(service, &tried, proxy.max_in_flight_per_instance, now)
            else {
                // The gateway's own refusal says nothing of the service's
                // health, unless an attempt failed before.
                return give_up(
                    last_error,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("every instance of {name} is busy or ejected"),
                );
            };
            let Some(body) = replay.next() else {
                return give_up(
                    last_error,
                    StatusCode::BAD_GATEWAY,
                    "request body already consumed",
                );
            };
            tried.push(endpoint.addr());
            log.attempts += 1;
            log.upstream = Some(endpoint.addr());

            let guard = endpoint.start();
            let sent_at = Instant::now();
            let wait = proxy.response_timeout.min(deadline - sent_at);
            // `None`: the instance left the cluster meanwhile (gossip declared
            // it dead): no point waiting for the response timeout.
            let result = tokio::select! {
                biased;
                r = tokio::time::timeout(wait, gw.pool.request(endpoint.addr(), || outgoing.to(&endpoint, body))) => Some(r),
                () = endpoint.gone() => None,
            };
            let now = Instant::now();
            let latency = now - sent_at;
            match &result {
                Some(Ok(Ok(response))) => {
                    endpoint
                        .stats
                        .record(response.status().as_u16(), false, Some(latency))
                }
                Some(Ok(Err(_))) | None => endpoint.stats.record(502, true, None),
                Some(Err(_)) => endpoint.stats.record(504, true, None),
            }
            let Some(result) = result else {
                last_error = Some(Box::new(error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "{name} at {} left the cluster while the request was in flight",
                        endpoint.addr()
                    ),
                    path,
                )));
                if may_resend(Failure::Gone, &outgoing.method)
                    && may_retry(gw, service, &tried, &replay, now, Failure::Gone)
                {
                    continue;
                }
                return give_up(last_error, StatusCode::BAD_GATEWAY, "upstream left");
            };
            let (failure, answer) = match result {
                Ok(Ok(mut response)) => {
                    endpoint.observe(latency, now);
                    service.metrics.latency.observe(latency.as_secs_f64());
                    strip_hop_by_hop(response.headers_mut());
                    if !response.status().is_server_error() {
                        endpoint.record_success();
                        affinity.answer(service, &endpoint, response.headers_mut());
                        return (
                            response.map(|b| ProxyBody::Stream(b, Some(guard))),
                            Verdict::Success,
                        );
                    }
                    last_error = Some(Box::new(error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "{name} at {} answered {}",
                            endpoint.addr(),
                            response.status()
                        ),
                        path,
                    )));
                    (Failure::ServerError, Some(response))
                }
                Ok(Err(err)) if err.is_connect() => {
                    last_error = Some(Box::new(error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "could not connect to {name} at {}: {}",
                            endpoint.addr(),
                            error_chain(&err)
                        ),
                        path,
                    )));
                    (Failure::NotSent, None)
                }
                Ok(Err(err)) => {
                    last_error = Some(Box::new(exchange_failed(name, &endpoint, &err, path)));
                    (Failure::Broken, None)
                }
                Err(_) => {
                    endpoint.observe(latency, now);
                    last_error = Some(Box::new(error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "{name} at {} sent no answer within {wait:?}",
                            endpoint.addr()
                        ),
                        path,
                    )));
                    (Failure::TimedOut, None)
                }
            };
            service.note_failure(&gw.config.resilience, &endpoint, now);
            if may_resend(failure, &outgoing.method)
                && may_retry(gw, service, &tried, &replay, now, failure)
            {
                continue;
            }
            return match answer {
                // The instance's own 5xx, passed on as it is.
                Some(response) => (
                    response.map(|b| ProxyBody::Stream(b, Some(guard))),
                    Verdict::Failure,
                ),
                None => give_up(last_error, StatusCode::BAD_GATEWAY, "upstream failed"),
            };
        }
    }
}

/// The 502 for an exchange with an instance that failed once connected.
pub fn exchange_failed(
    name: &str,
    endpoint: &Endpoint,
    err: &PoolError,
    path: &str,
) -> Response<ProxyBody> {
    error_response(
        StatusCode::BAD_GATEWAY,
        &format!("{name} at {} failed: {}", endpoint.addr(), error_chain(err)),
        path,
    )
}

/// Whether one more attempt may go: attempts left, another instance to try,
/// the body still at hand, and — when the failed attempt may have made an
/// instance work (a 5xx, a broken exchange, a timeout) — the budget not
/// spent (this spends from it). An attempt that reached no instance (the
/// connection did not open, or its member left the cluster) costs the
/// service nothing, so sending it elsewhere adds no load, and is not
/// budgeted: when a Swarm node dies with two of three replicas, requests
/// still find the third (`SHOAL_MAX_ATTEMPTS` bounds them).
fn may_retry(
    gw: &Gateway,
    service: &ServiceState,
    tried: &[SocketAddr],
    replay: &Replay,
    now: Instant,
    failure: Failure,
) -> bool {
    if !replay.is_kept() || tried.len() >= gw.config.resilience.max_attempts as usize {
        return false;
    }
    let another = service
        .endpoints
        .iter()
        .any(|e| !tried.contains(&e.addr()) && !e.is_ejected(now));
    if !another {
        return false;
    }
    if matches!(failure, Failure::NotSent | Failure::Gone) || service.budget.withdraw() {
        service.metrics.retries.inc();
        true
    } else {
        service.metrics.budget_exhausted.inc();
        false
    }
}

#[cfg(test)]
mod tests;
