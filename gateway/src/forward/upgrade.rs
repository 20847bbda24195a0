//! HTTP/1.1 Upgrade (WebSocket): the handshake goes to one instance (never
//! retried: the client's connection is handed over once), chosen as for any
//! request (version label, sticky pin: [`crate::route::affinity`]), and once both
//! sides have switched protocols, bytes are copied both ways until either
//! side closes.
//!
//! A tunnel is in-flight work like a request: it keeps its place under the
//! gateway's in-flight limit and its instance's in-flight count for its
//! whole life, and the drain waits for it (up to the grace period).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::forward::body::ProxyBody;
use crate::forward::call::Call;
use crate::forward::error::error_response;
use crate::forward::headers::{forwarded_prefix, strip_hop_by_hop, upstream_headers};
use crate::forward::retry::{exchange_failed, upstream_uri};
use crate::forward::state::Gateway;
use crate::route::admission::Verdict;
use crate::route::affinity::Affinity;
use crate::route::table::ServiceState;

/// Whether a request with `headers` asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header).
pub fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Proxies the handshake of `req` to one instance of `service`; on `101`
/// spawns the tunnel, which takes `slot` with it.
pub async fn forward(
    gw: &Gateway,
    service: &ServiceState,
    mut req: Request<Incoming>,
    slot: OwnedSemaphorePermit,
    call: Call<'_>,
) -> (Response<ProxyBody>, Verdict) {
    let Call {
        path,
        upstream_path,
        peer,
        traceparent,
        log,
    } = call;
    let name = &*service.name;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let now = Instant::now();
    let secure = req
        .extensions()
        .get::<crate::forward::headers::ClientTls>()
        .is_some();
    let affinity = match Affinity::of(service, req.headers(), secure) {
        Ok(affinity) => affinity,
        Err(why) => {
            return (
                error_response(StatusCode::SERVICE_UNAVAILABLE, &why, path),
                Verdict::None,
            );
        }
    };
    let Some(endpoint) = affinity.choose(
        service,
        &[],
        gw.config.proxy.max_in_flight_per_instance,
        now,
    ) else {
        return (
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("every instance of {name} is busy or ejected"),
                path,
            ),
            Verdict::None,
        );
    };
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
    log.attempts = 1;
    log.upstream = Some(endpoint.addr());
    let (parts, _) = req.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    // The client's `Host` goes through unchanged on upgrades (WebSocket
    // servers check it against `Origin`).
    let mut headers = upstream_headers(
        parts.headers,
        peer,
        forwarded_prefix(path, uri.path()),
        traceparent,
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
    }
    let mut upstream_req = Request::new(ProxyBody::empty());
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;

    let guard = endpoint.start();
    let wait = gw.config.proxy.response_timeout;
    let sent_at = Instant::now();
    let mut response =
        match tokio::time::timeout(wait, gw.pool.request(endpoint.addr(), || upstream_req)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                service.note_failure(&gw.config.resilience, &endpoint, Instant::now());
                return (
                    exchange_failed(name, &endpoint, &err, path),
                    Verdict::Failure,
                );
            }
            Err(_) => {
                let now = Instant::now();
                endpoint.observe(now - sent_at, now);
                service.note_failure(&gw.config.resilience, &endpoint, now);
                return (
                    error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "{name} at {} did not answer the upgrade within {wait:?}",
                            endpoint.addr()
                        ),
                        path,
                    ),
                    Verdict::Failure,
                );
            }
        };
    let now = Instant::now();
    endpoint.observe(now - sent_at, now);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // An answer instead of a switch: passed on like any answer.
        let verdict = if response.status().is_server_error() {
            service.note_failure(&gw.config.resilience, &endpoint, now);
            Verdict::Failure
        } else {
            endpoint.record_success();
            affinity.answer(service, &endpoint, response.headers_mut());
            Verdict::Success
        };
        strip_hop_by_hop(response.headers_mut());
        return (response.map(|b| ProxyBody::Stream(b, Some(guard))), verdict);
    }
    endpoint.record_success();
    affinity.answer(service, &endpoint, response.headers_mut());
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let tunnel = gw.drain.watch(shoal_http::Work::Tunnel);
    tokio::spawn(async move {
        // Held for the tunnel's life: the drain waits for it, and it keeps
        // its place under both in-flight limits.
        let (_tunnel, _slot, _guard) = (tunnel, slot, guard);
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(error = %err, "tunnel ended with an error");
                }
            }
            Err(err) => warn!(error = %err, "upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    (
        Response::from_parts(parts, ProxyBody::empty()),
        Verdict::Success,
    )
}
