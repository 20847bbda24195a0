//! Headers on the way through: hop-by-hop headers removed both ways (and
//! those the `Connection` header names), `X-Forwarded-For/Proto/Host/Prefix`
//! set for the instance, and a W3C `traceparent` kept or started. Header
//! names are constants and values are rewritten in place: this runs on
//! every request, so it allocates as little as it can.

use std::net::{IpAddr, SocketAddr};

/// Marks a request that came over TLS (a request extension the edge
/// sets): its `X-Forwarded-Proto` is `https`.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use rand::Rng;

/// `/api/story-service` for `/api/story-service/story` sent as `/story`.
pub fn forwarded_prefix<'a>(path: &'a str, upstream: &str) -> &'a str {
    if upstream == "/" {
        return path.trim_end_matches('/');
    }
    path.strip_suffix(upstream).unwrap_or("")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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

/// Sets what a check let through: every header named in `owned` (the
/// check's to give, whatever the client sent under those names) goes, then
/// `pass` is added. Forward auth's copied headers and a JWT's claims.
pub fn pass_checked<N: header::AsHeaderName>(
    headers: &mut HeaderMap,
    owned: impl IntoIterator<Item = N>,
    pass: Vec<(HeaderName, HeaderValue)>,
) {
    for name in owned {
        headers.remove(name);
    }
    for (name, value) in pass {
        headers.append(name, value);
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// The client's address: the TCP peer, unless the peer is a trusted proxy
/// (`SHOAL_TRUSTED_PROXIES`); then the right-most address of
/// `X-Forwarded-For` that is not itself a trusted proxy (as nginx's
/// `real_ip_recursive`): the entries left of it were written by whoever
/// sent the request, so a client cannot pick its own address by sending
/// the header. An entry that is no address ends the walk.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let hop = hop.trim();
        // `1.2.3.4`, `2001:db8::1`, or with a port: `1.2.3.4:5678`, `[2001:db8::1]:5678`.
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The headers sent upstream: end-to-end headers (Authorization included),
/// hop-by-hop removed, `X-Forwarded-*` and `traceparent` set.
pub fn upstream_headers(
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

/// Copies a request's head — its path and its header values — out of the
/// connection's read buffer into one allocation of its own size.
///
/// hyper parses a request's path and header values as slices of the
/// connection's 8 KiB read buffer. While the request is in flight (waiting
/// for an upstream connection, or for the answer) they keep that buffer
/// alive, and hyper, reading on to see the connection close, takes a new
/// 8 KiB one: at 1,000 connections with a request in flight each, 8 MiB
/// held for a head of a few hundred bytes, and a buffer taken and freed per
/// request. Called before the first await of the request's future, the old
/// buffer is hyper's alone again when it reads next, and is reused.
pub fn detach_head<B>(req: &mut http::Request<B>) {
    let path = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    let origin_form = req.uri().scheme().is_none() && req.uri().authority().is_none();
    let mut len = if origin_form { path.len() } else { 0 };
    for value in req.headers().values() {
        len += value.len();
    }
    let mut buf = Vec::with_capacity(len);
    if origin_form {
        buf.extend_from_slice(path.as_bytes());
    }
    for value in req.headers().values() {
        buf.extend_from_slice(value.as_bytes());
    }
    let head = Bytes::from(buf);
    let mut at = 0;
    if origin_form && !path.is_empty() {
        let slice = head.slice(..path.len());
        at = path.len();
        // Parsed from the same bytes that were a valid path: cannot fail.
        if let Ok(pq) = http::uri::PathAndQuery::from_maybe_shared(slice) {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    for value in req.headers_mut().values_mut() {
        let end = at + value.len();
        let sensitive = value.is_sensitive();
        // The same bytes as a valid value: cannot fail.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(head.slice(at..end)) {
            copy.set_sensitive(sensitive);
            *value = copy;
        }
        at = end;
    }
}

/// The request's W3C `traceparent` if valid, else a new one.
pub fn traceparent(headers: &HeaderMap) -> HeaderValue {
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
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_it() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.5/32".parse().unwrap(),
        ];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            h
        };
        // No trust configured, or an untrusted peer: the header is ignored.
        assert_eq!(client_ip(&with(&["1.2.3.4"]), peer, &[]), peer);
        assert_eq!(
            client_ip(&with(&["1.2.3.4"]), ip("8.8.8.8"), &trusted),
            ip("8.8.8.8")
        );
        // A trusted peer: the right-most untrusted entry, past trusted hops;
        // what the client wrote on the left does not count.
        let h = with(&["6.6.6.6, 1.2.3.4, 192.168.1.5"]);
        assert_eq!(client_ip(&h, peer, &trusted), ip("1.2.3.4"));
        let h = with(&["6.6.6.6", "1.2.3.4:5678", "10.9.9.9"]);
        assert_eq!(client_ip(&h, peer, &trusted), ip("1.2.3.4"));
        let h = with(&["[2001:db8::1]:443"]);
        assert_eq!(client_ip(&h, peer, &trusted), ip("2001:db8::1"));
        // Nothing, garbage, or only trusted hops: the last address seen.
        assert_eq!(client_ip(&HeaderMap::new(), peer, &trusted), peer);
        assert_eq!(
            client_ip(&with(&["1.2.3.4, unknown"]), peer, &trusted),
            peer
        );
        assert_eq!(
            client_ip(&with(&["10.1.1.1"]), peer, &trusted),
            ip("10.1.1.1")
        );
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
    fn a_detached_head_is_equal_and_holds_nothing_of_the_read_buffer() {
        // A read buffer as hyper's: the request's parts are slices of it.
        let read_buffer =
            Bytes::from(b"/api/story-service/story?x=1 tokenvalue 127.0.0.1".to_vec());
        let path = http::uri::PathAndQuery::from_maybe_shared(read_buffer.slice(0..28)).unwrap();
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(path);
        let mut req = http::Request::new(());
        *req.uri_mut() = http::Uri::from_parts(parts).unwrap();
        let mut token = HeaderValue::from_maybe_shared(read_buffer.slice(29..39)).unwrap();
        token.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, token);
        req.headers_mut().append(
            HeaderName::from_static("x-real-ip"),
            HeaderValue::from_maybe_shared(read_buffer.slice(40..)).unwrap(),
        );
        req.headers_mut()
            .append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!read_buffer.is_unique());

        detach_head(&mut req);

        assert!(
            read_buffer.is_unique(),
            "the request still holds the read buffer"
        );
        assert_eq!(req.uri(), "/api/story-service/story?x=1");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.headers()[header::AUTHORIZATION], "tokenvalue");
        assert!(req.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(req.headers()["x-real-ip"], "127.0.0.1");
        assert_eq!(req.headers()[header::ACCEPT], "*/*");
        assert_eq!(req.headers().len(), 3);

        // An absolute-form URI (a request to a proxy) is left as it is.
        let mut req = http::Request::new(());
        *req.uri_mut() = "http://shop.test/api/x".parse().unwrap();
        detach_head(&mut req);
        assert_eq!(req.uri(), "http://shop.test/api/x");
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
}
