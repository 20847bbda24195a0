//! What a request asks of the choice of its instance: a version label
//! (`X-Shoal-Version: v2`: only instances announcing that label) and, for a
//! service with sticky sessions, its pin (the `shoal-{service}` cookie).
//! Requests and WebSocket handshakes choose alike, so a socket.io client's
//! polling requests and its upgrade reach the same instance.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderValue};
use tokio::time::Instant;

use crate::route::balance::{self, Eligible, Endpoint};
use crate::route::table::ServiceState;

/// The request header that asks for instances of one version label.
pub const VERSION_HEADER: &str = "x-shoal-version";

/// One request's wishes, read from its headers.
#[derive(Debug)]
pub struct Affinity<'a> {
    /// The version label asked for.
    label: Option<String>,
    /// The service's sticky cookie and this client's pin, if the service
    /// has sticky sessions.
    sticky: Option<Sticky<'a>>,
}

/// A sticky-session service's cookie on this request.
#[derive(Debug)]
struct Sticky<'a> {
    /// The cookie's name (`shoal-{service}`).
    cookie: &'a str,
    /// Its value in the request: the token of the client's instance.
    token: Option<String>,
    /// The client came over TLS: the cookie is `Secure`.
    secure: bool,
}

impl<'a> Affinity<'a> {
    /// What the request with `headers` asks of `service`; `secure`: it came
    /// over TLS. `Err` (the message of a 503) when it asks for a version
    /// label no instance announces.
    pub fn of(
        service: &'a ServiceState,
        headers: &HeaderMap,
        secure: bool,
    ) -> Result<Self, String> {
        let label = headers
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if let Some(label) = &label {
            if !service.endpoints.iter().any(|e| e.has_label(label)) {
                return Err(format!(
                    "no instance of {} is up with version label {label} (X-Shoal-Version)",
                    service.name
                ));
            }
        }
        let sticky = service
            .policy
            .sticky_cookie
            .as_deref()
            .map(|cookie| Sticky {
                cookie,
                token: cookie_value(headers, cookie),
                secure,
            });
        Ok(Affinity { label, sticky })
    }

    /// The instance for the next attempt, none of `tried`: the client's
    /// pinned instance first while it is eligible; a sticky client without
    /// a live pin is pinned by share (a pin lasts the session, the moment's
    /// latency should not decide it); retries and other services by cost.
    pub fn choose(
        &self,
        service: &ServiceState,
        tried: &[SocketAddr],
        max_in_flight: u32,
        now: Instant,
    ) -> Option<Arc<Endpoint>> {
        let first = tried.is_empty();
        let eligible = Eligible {
            exclude: tried,
            max_in_flight,
            label: self.label.as_deref(),
            now,
        };
        if let (
            true,
            Some(Sticky {
                token: Some(token), ..
            }),
        ) = (first, &self.sticky)
        {
            let pinned = service
                .endpoints
                .iter()
                .find(|e| e.pinned_by(token) && eligible.admits(e));
            if let Some(pinned) = pinned {
                return Some(pinned.clone());
            }
        }
        let choose = if self.sticky.is_some() && first {
            balance::pick_fair
        } else {
            balance::pick
        };
        choose(&service.endpoints, &service.clock, eligible)
    }

    /// On the answer `endpoint` gave: pins the client to it (a sticky
    /// service whose client is not pinned to it already), counting what
    /// happened.
    pub fn answer(&self, service: &ServiceState, endpoint: &Endpoint, headers: &mut HeaderMap) {
        let Some(sticky) = &self.sticky else {
            return;
        };
        let m = &service.metrics;
        match &sticky.token {
            Some(token) if token == endpoint.sticky_token() => {
                m.sticky_kept.inc();
                return;
            }
            // Its instance, under a key the ring is rotating away from: set
            // again under the new one.
            Some(token) if endpoint.pinned_by(token) => m.sticky_kept.inc(),
            Some(_) => m.sticky_repinned.inc(),
            None => m.sticky_pinned.inc(),
        };
        let secure = if sticky.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax{secure}",
            sticky.cookie,
            endpoint.sticky_token()
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; shoal-svc=\"0123abcd\""),
        );
        h.append(header::COOKIE, HeaderValue::from_static("shoal-svc-2=zz"));
        assert_eq!(cookie_value(&h, "shoal-svc").as_deref(), Some("0123abcd"));
        assert_eq!(cookie_value(&h, "shoal-svc-2").as_deref(), Some("zz"));
        assert_eq!(cookie_value(&h, "shoal"), None);
        h.insert(header::COOKIE, HeaderValue::from_static(";;=;garbage"));
        assert_eq!(cookie_value(&h, "shoal-svc"), None);
    }
}
