//! Forward auth, announced by the service (`SHOAL_AUTH_FORWARD=
//! auth-service:/verify` in its own environment; no gateway is configured
//! per service). Before a request reaches the service, the gateway asks the
//! auth service — a member like any, balanced, retried and broken-circuited
//! like any — with a GET on its path carrying the request's headers and
//! `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto` and `-For`, no body. A
//! 2xx lets the request through with the answer's headers the service
//! names (`SHOAL_AUTH_COPY_HEADERS`; a client's own values of those never
//! pass); any other answer goes back to the client as it came. Traefik
//! ForwardAuth's and nginx `auth_request`'s semantics.

use std::net::SocketAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::forward::body::ProxyBody;
use crate::forward::call::{Call, ClientRequest, Log};
use crate::forward::error::{GatewayMade, error_response};
use crate::forward::headers::ClientTls;
use crate::forward::replay::Replay;
use crate::forward::retry::forward_parts;
use crate::forward::state::Gateway;
use crate::route::admission::admit;
use crate::route::table::{AuthPolicy, Table};

/// The request headers not sent to the auth service: its own body's.
const NOT_SENT: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_TYPE,
    header::EXPECT,
];

/// Asks `auth` about `req`, a request of `service` from `peer`: the
/// headers to set on it when allowed, else the answer the client gets.
pub async fn check(
    gw: &Gateway,
    table: &Table,
    auth: &AuthPolicy,
    service: &str,
    req: &ClientRequest<'_>,
    peer: SocketAddr,
    traceparent: &HeaderValue,
) -> Result<Vec<(HeaderName, HeaderValue)>, Response<ProxyBody>> {
    let (method, headers) = (&req.parts.method, &req.parts.headers);
    let tls = req.parts.extensions.get::<ClientTls>().is_some();
    let (path, query) = (req.path, req.query);
    let name = &auth.forward.service;
    let unavailable_as = |status, why: String| {
        error_response(
            status,
            &format!("{service} checks its requests with {name} (SHOAL_AUTH_FORWARD), which {why}"),
            path,
        )
    };
    let unavailable = |why: String| unavailable_as(StatusCode::SERVICE_UNAVAILABLE, why);
    let Some(checker) = table.service(name) else {
        return Err(unavailable("this gateway does not know".into()));
    };
    let (admitted, _slot) = admit(&gw.in_flight, checker)
        .map_err(|_| unavailable("has no instance to take it".into()))?;

    let mut sent = headers.clone();
    for h in &NOT_SENT {
        sent.remove(h);
    }
    let forwarded = [
        ("x-forwarded-method", method.as_str().to_string()),
        (
            "x-forwarded-uri",
            match query {
                Some(query) => format!("{path}?{query}"),
                None => path.to_string(),
            },
        ),
        (
            "x-forwarded-proto",
            if tls { "https" } else { "http" }.to_string(),
        ),
    ];
    for (h, v) in forwarded {
        if let Ok(v) = HeaderValue::from_str(&v) {
            sent.insert(HeaderName::from_static(h), v);
        }
    }
    if let Some(host) = headers.get(header::HOST).cloned() {
        sent.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.headers_mut() = sent;
    let (mut parts, ()) = request.into_parts();
    let mut log = Log {
        service: None,
        upstream: None,
        attempts: 0,
    };
    let call = Call {
        path,
        upstream_path: auth.forward.path.clone(),
        peer,
        traceparent,
        log: &mut log,
    };
    let (answer, verdict) = forward_parts(gw, checker, &mut parts, Replay::empty(), call).await;
    admitted.settle(verdict);
    if let Some(GatewayMade(why)) = answer.extensions().get::<GatewayMade>() {
        // No checker answered (all ejected, gone, timed out): the client
        // learns which policy stopped its request, not only the checker's
        // name.
        return Err(unavailable_as(
            answer.status(),
            format!("could not answer: {why}"),
        ));
    }
    if !answer.status().is_success() {
        return Err(answer);
    }
    Ok(auth
        .copy
        .iter()
        .flat_map(|h| {
            answer
                .headers()
                .get_all(h)
                .iter()
                .map(move |v| (h.clone(), v.clone()))
        })
        .collect())
}
