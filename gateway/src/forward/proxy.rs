//! One request through the gateway, in the order it passes the files of
//! this crate:
//!
//! 1. [`crate::route::path`]: the path names a service (`/api/{service}/**`, or a
//!    path route it announced) and the path to send on;
//! 2. [`crate::route::limit`] and [`crate::forward::auth`]: within the
//!    service's rate limits, allowed by the service that checks its requests
//!    (when it names one); [`crate::route::admission`]: an instance is up,
//!    the breaker is closed, the gateway is under its limit;
//! 3. [`crate::forward::retry`] (with [`crate::forward::replay`], [`crate::route::balance`] and
//!    [`crate::forward::headers`]): attempts on instances picked by P2C, by the rules
//!    that never duplicate a write — or [`crate::forward::upgrade`] for a WebSocket;
//! 4. [`crate::route::outcome`]: what the answer teaches (latency, ejection, the
//!    breaker's verdict, the budget), read by the next pick.
//!
//! This file holds the entry ([`handle`]): the trace context, the access
//! log line and the request metrics around those steps.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tracing::info;

use crate::forward::body::ProxyBody;
use crate::forward::call::{Call, ClientRequest, Log};
use crate::forward::error::GatewayMade;
use crate::forward::error::error_response;
use crate::forward::headers::{TRACEPARENT, client_ip, pass_checked, traceparent};
use crate::forward::state::Gateway;
use crate::forward::upgrade::is_upgrade;
use crate::forward::{auth, jwt, retry, upgrade};
use crate::route::admission::{Refusal, admit};
use crate::route::limit::{Limited, client_key};
use crate::route::path::{NoRoute, resolve};
use crate::route::table::ServiceState;

/// Handles one request from a client at `peer`.
///
/// The request is taken apart here, before its future is made, and every
/// step below borrows its parts: hyper holds a request's future for each
/// connection, and an `async fn` keeps each argument it owns twice (as it
/// came, and moved into its body), so passing the request down by value
/// stacked copies of it in every layer (ARCHITECTURE.md, "A connection's
/// memory"; figures in docs/bench.md).
pub fn handle(
    gw: Arc<Gateway>,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    // The path is read all along while the parts are lent out: the URI
    // leaves them (nothing below reads it from there).
    let uri = std::mem::take(&mut parts.uri);
    let traceparent = traceparent(&parts.headers);
    let client = client_ip(&parts.headers, peer.ip(), &gw.config.proxy.trusted_proxies);
    async move {
        let mut log = Log {
            service: None,
            upstream: None,
            attempts: 0,
        };
        let request = ClientRequest {
            parts: &mut parts,
            body,
            path: uri.path(),
            query: uri.query(),
        };
        let mut response = dispatch(&gw, request, peer, client, &traceparent, &mut log).await;
        let status = response.status();
        match &log.service {
            Some(service) => {
                service.metrics.request(status.as_u16());
                let made = response.extensions().get::<GatewayMade>().is_some();
                let latency = (!made).then(|| start.elapsed());
                service.metrics.stats.record(status.as_u16(), made, latency);
            }
            None => gw.metrics.unrouted(status.as_u16()),
        }
        if gw.config.access_log {
            info!(
                service = log.service.as_ref().map_or("-", |s| &s.name),
                client = %client,
                method = %parts.method,
                path = %uri.path(),
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
}

/// The 429 of a request over a rate limit, with `Retry-After` in whole
/// seconds (at least 1).
fn rate_limited(service: &ServiceState, limited: &Limited, path: &str) -> Response<ProxyBody> {
    let (whose, counter) = if limited.per_client {
        ("per client", &service.metrics.rate_limited_client)
    } else {
        ("in total", &service.metrics.rate_limited_service)
    };
    counter.inc();
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "{} allows {} requests {whose} across all gateways; retry later",
            service.name, limited.limit
        ),
        path,
    );
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// Route → admission → retry loop or upgrade → the breaker's verdict.
/// `client`: the client's address (the peer, or as a trusted proxy names it).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice (see proxy::handle)"
)]
fn dispatch(
    gw: &Gateway,
    req: ClientRequest<'_>,
    peer: SocketAddr,
    client: IpAddr,
    traceparent: &HeaderValue,
    log: &mut Log,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    async move {
        let path = req.path;
        let table = gw.upstreams.snapshot();
        let route = match resolve(&table.view, path, req.query) {
            Ok(route) => route,
            Err(NoRoute::NotApi) => {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "no route: paths start with /api/{service}",
                    path,
                );
            }
            Err(NoRoute::UnknownService(name)) => {
                // Knowing no service at all is not "no such service": this
                // gateway is starting, or cut off from the cluster.
                let alone = table
                    .view
                    .services()
                    .all(|(s, _)| s == gw.config.node.service.as_str());
                if alone {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this gateway sees no service at all: it is starting, or cut off from the cluster",
                        path,
                    );
                }
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
        if service.policy.rate_limit.is_some() || service.policy.rate_limit_per_client.is_some() {
            let key = client_key(client, gw.config.proxy.client_v6_prefix);
            if let Err(limited) = service.limiter.check(key, Instant::now()) {
                return rate_limited(service, &limited, path);
            }
        }
        // Bearer tokens: the service announced whose it takes.
        if let Some(policy) = service.policy.jwt.as_ref() {
            // Boxed, as the other checks below: only the services that ask
            // for them pay for their futures' room (a request's future is held
            // for each connection).
            match Box::pin(jwt::check(&gw.jwt_keys, policy, &req.parts.headers)).await {
                Ok(pass) => {
                    service.metrics.jwt(None);
                    let owned = policy.claims.iter().map(|(_, name)| name.as_str());
                    pass_checked(&mut req.parts.headers, owned, pass);
                }
                Err(refused) => {
                    service.metrics.jwt(Some(refused.reason.label()));
                    return refused.response(path);
                }
            }
        }
        // Forward auth: the service announced who checks its requests.
        if let Some(auth) = service.policy.auth.as_ref() {
            if auth.forward.service != *service.name {
                let checked = Box::pin(auth::check(
                    gw,
                    &table,
                    auth,
                    route.service,
                    &req,
                    peer,
                    traceparent,
                ))
                .await;
                match checked {
                    Ok(pass) => {
                        service.metrics.auth_allowed.inc();
                        pass_checked(&mut req.parts.headers, &auth.copy, pass);
                    }
                    Err(answer) => {
                        // Made by the gateway: no checker answered.
                        let made = answer.extensions().get::<GatewayMade>().is_some();
                        let counter = if made {
                            &service.metrics.auth_unavailable
                        } else {
                            &service.metrics.auth_refused
                        };
                        counter.inc();
                        return answer;
                    }
                }
            }
        }
        let (admitted, slot) = match admit(&gw.in_flight, service) {
            Ok(admitted) => admitted,
            Err(refusal) => return refused(refusal, route.service, path),
        };
        let call = Call {
            path,
            upstream_path: route.upstream,
            peer,
            traceparent,
            log,
        };
        let (response, verdict) = if is_upgrade(&req.parts.headers) {
            // The handshake takes the request whole: put back together,
            // leaving the method for the access log line.
            let mut left = Request::new(()).into_parts().0;
            left.method = req.parts.method.clone();
            let parts = std::mem::replace(req.parts, left);
            let req = Request::from_parts(parts, req.body);
            Box::pin(upgrade::forward(gw, service, req, slot, call)).await
        } else {
            let _slot = slot;
            retry::forward(gw, service, req.parts, req.body, call).await
        };
        admitted.settle(verdict);
        response
    }
}

/// The 503 that says why `refusal` turned a request of `service` at `path`
/// away.
fn refused(refusal: Refusal, service: &str, path: &str) -> Response<ProxyBody> {
    let message = match refusal {
        Refusal::NoInstance => format!("no instance of {service} is up"),
        Refusal::BreakerOpen => format!("circuit breaker of {service} is open"),
        Refusal::OverLimit => "gateway over its connection limit".to_string(),
    };
    error_response(StatusCode::SERVICE_UNAVAILABLE, &message, path)
}

#[cfg(test)]
mod tests {
    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// hyper holds one request future per connection for the connection's
    /// life, and at 1,000 clients 1,000 of them are in flight: its size is
    /// memory per connection. 2,480 bytes (4,952 when each layer was an
    /// `async fn` taking the request by value).
    #[test]
    fn a_request_future_stays_small() {
        let size = returned_size(super::handle);
        println!("a request's future: {size} bytes");
        assert!(
            size <= 3072,
            "a request's future is {size} bytes: something holds the request (or a large future) twice"
        );
    }
}
