//! Fuzz targets: every parser of bytes that come from the network or the
//! user. Each target takes arbitrary bytes and must never panic; where a
//! parser accepts its input, the target also checks a property (a round
//! trip, an invariant of the result), so a wrong answer is a finding too.
//!
//! - AFL++ drives them through `src/bin/*` (`scripts/fuzz`).
//! - `tests/corpus.rs` replays every file of `corpus/<target>/` as an
//!   ordinary test, so what the fuzzer found stays covered in CI.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use shoal_gateway::eureka::register;
use shoal_gateway::headers::{forwarded_prefix, traceparent, upstream_headers};
use shoal_gateway::path as route;
use shoal_node::testing::{Sealer, check_datagram};
use shoal_node::{ClusterKey, KeyRing};
use shoal_node::{ClusterStats, Figures, Histogram};
use shoal_node::{ClusterView, Env, Health, Lease, LeaseOp, Member, MemberId};

/// A fuzz target: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// The targets by name (the folders of `corpus/`).
pub const TARGETS: [(&str, Target); 8] = [
    ("gossip_sealed", gossip_sealed),
    ("gossip_plain", gossip_plain),
    ("member_keys", member_keys),
    ("route", route),
    ("eureka_register", eureka_register),
    ("env", env),
    ("credentials", credentials),
    ("proxy_header", proxy_header),
];

fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| {
        let key: ClusterKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
            .parse()
            .expect("a fixed test key");
        let ring = KeyRing::new(vec![key]).expect("one key");
        Sealer::new(&ring, "shoal")
    })
}

/// A sealed gossip datagram: opened with the cluster key, then decoded.
/// Property: whatever is sealed opens back to the same bytes.
pub fn gossip_sealed(data: &[u8]) {
    let _ = check_datagram(Some(sealer()), data);
    let sealed = sealer().seal(data);
    let opened = sealer().open(&sealed).ok();
    assert_eq!(
        opened.as_deref(),
        Some(data),
        "seal then open changed the bytes"
    );
}

/// A clear gossip datagram (`SHOAL_INSECURE`): chitchat's decoder alone.
pub fn gossip_plain(data: &[u8]) {
    let _ = check_datagram(None, data);
}

/// `key=value` lines, one member's gossip state: read as a member, its
/// leases and its traffic figures. Properties: a member read back has the
/// health and address it published; a lease or a figures record that
/// decodes encodes to something that decodes to the same.
pub fn member_keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let gossip: SocketAddr = "127.0.0.1:7950".parse().expect("an address");
    if let Ok(Some(member)) = Member::from_keys("fuzz@127.0.0.1:1", 1, gossip, get) {
        assert_eq!(
            get("health").and_then(|h| h.parse::<Health>().ok()),
            Some(member.health)
        );
        assert!(
            member
                .routes
                .iter()
                .all(|r| r.starts_with('/') && r.len() > 1)
        );
        let view = ClusterView::from_members([member]);
        let _ = view.service_for_path("/story/1");
    }
    let mut stats = ClusterStats::default();
    stats.add_gateway(pairs.iter().copied());
    for (key, value) in &pairs {
        if let Some(lease) = key
            .strip_prefix("eureka:")
            .and_then(|_| Lease::decode(value))
        {
            if let Ok(text) = lease.encode() {
                assert_eq!(Lease::decode(&text), Some(lease), "lease round trip");
            }
        }
        if let Some(figures) = Figures::decode(value) {
            assert_eq!(Figures::decode(&figures.encode()), Some(figures.clone()));
            for q in [0.0, 0.5, 0.99, 1.0] {
                let _ = figures.latency.quantile_ms(q);
            }
            let mut h = Histogram::default();
            h.merge(&figures.latency);
            assert_eq!(h.count(), figures.latency.count());
        }
    }
}

fn view() -> &'static ClusterView {
    static VIEW: OnceLock<ClusterView> = OnceLock::new();
    VIEW.get_or_init(|| {
        let member = |node: &str, service: &str, i: u8, routes: &[&str]| Member {
            id: MemberId {
                node: node.into(),
                generation: 1,
            },
            service: service.into(),
            addr: SocketAddr::from(([10, 0, 9, i], 8768)),
            health: Health::Up,
            routes: routes.iter().map(|r| r.to_string()).collect(),
            host: node.into(),
            version: "fuzz".into(),
            started_ms: 0,
            gossip_addr: SocketAddr::from(([10, 0, 9, i], 7950)),
            lease: None,
            policy: Default::default(),
        };
        ClusterView::from_members([
            member("a", "story-service", 1, &["/story"]),
            member("b", "story-admin", 2, &["/story/admin"]),
            member("c", "notice-service", 3, &["/notice"]),
            member("d", "board-service", 4, &["/bbs"]),
        ])
    })
}

/// A request as the gateway sees it: the first line is the path (and
/// query, after `?`), the next ones `name: value` headers. Routed, then the
/// headers rewritten for the instance. Properties: a routed path goes to a
/// known service with an upstream path starting with `/`; no hop-by-hop
/// header survives; the trace context is always well formed.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let view = view();
    if let Ok(r) = route::resolve(view, path, query) {
        assert!(
            view.service(r.service).is_some(),
            "routed to an unknown service"
        );
        assert!(
            r.upstream.starts_with('/'),
            "upstream path {:?}",
            r.upstream
        );
        let upstream_path = r.upstream.split('?').next().unwrap_or("");
        let _ = forwarded_prefix(path, upstream_path);
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    let trace = traceparent(&headers);
    let t = trace.to_str().expect("traceparent is ASCII");
    // Kept when valid (a future version may be longer), else a new `00-…`.
    assert!(t.len() >= 55 && &t[2..3] == "-", "traceparent {t:?}");
    let peer: SocketAddr = "192.0.2.1:5555".parse().expect("an address");
    let out = upstream_headers(headers, peer, "/api/story-service", &trace);
    for hop in [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!out.contains_key(hop), "{hop} sent upstream");
    }
    assert!(out.contains_key("x-forwarded-for"));
}

/// A registration body: the first byte picks the content type (odd: XML),
/// the rest is the body. Property: a registration that is accepted becomes
/// a lease (or is refused as too large) whose record decodes to itself.
pub fn eureka_register(data: &[u8]) {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let content_type = if first % 2 == 1 {
        "application/xml"
    } else {
        "application/json"
    };
    let Ok(registration) = register::parse("ORDERS", content_type, body) else {
        return;
    };
    assert_eq!(registration.app, "ORDERS");
    assert!(!registration.instance_id.contains('/'));
    assert!(registration.port > 0);
    let id = registration.instance_id.clone();
    if let Ok(lease) = Lease::apply(
        None,
        "ORDERS",
        &id,
        LeaseOp::Register(Box::new(registration)),
        1,
    ) {
        let text = lease.encode().expect("an applied lease encodes");
        assert_eq!(
            Lease::decode(&text),
            Some(lease.clone()),
            "lease round trip"
        );
        let member = Member::from_lease(
            &Arc::new(lease),
            "127.0.0.1:7950".parse().expect("an address"),
        );
        assert_eq!(member.service, "orders");
        // Served as XML, an accepted registration is well-formed XML.
        let registry = shoal_gateway::eureka::Registry::of(&ClusterView::from_members([member]));
        let mut x = shoal_gateway::eureka::Xml::default();
        for i in registry.instances() {
            i.xml(0, "ADDED", shoal_gateway::eureka::Form::Full, &mut x);
        }
        let xml = x.finish();
        if let Err(e) = shoal_gateway::eureka::well_formed(&xml) {
            panic!("an accepted registration served as broken XML: {e}: {xml}");
        }
    }
}

/// A credentials file (`SHOAL_EUREKA_CREDENTIALS_FILE`): read, or refused
/// with an error naming the file and the line.
pub fn credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = std::path::Path::new("/run/secrets/eureka");
    match shoal_gateway::eureka::parse_users(&text, path) {
        Ok(users) => assert!(users.len() <= text.lines().count()),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("SHOAL_EUREKA_CREDENTIALS_FILE")
                    && e.contains("/run/secrets/eureka, line "),
                "an error that names neither the setting nor the line: {e}"
            );
        }
    }
}

/// `KEY=VALUE` lines as the environment of a gateway: every `SHOAL_*`
/// value is read, and either accepted or refused with an error that names
/// the variable.
pub fn env(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("SHOAL_"))
        .collect();
    let env = Env::from_pairs(pairs.iter().copied());
    if let Err(err) = shoal_gateway::GatewayConfig::from_env(&env) {
        let message = err.to_string();
        assert!(
            message.contains("SHOAL_"),
            "an error that names no variable: {message}"
        );
    }
}

/// The first bytes of a connection from a trusted balancer (the PROXY
/// protocol, v1 or v2): a whole header no longer than what came, a wait
/// for more only below the size limit, or a refusal.
pub fn proxy_header(data: &[u8]) {
    use shoal_gateway::proxy_protocol::{MAX_HEADER, parse};
    match parse(data) {
        Ok(Some(h)) => assert!(h.len > 0 && h.len <= data.len(), "length {}", h.len),
        Ok(None) => assert!(data.len() < MAX_HEADER, "waits past the limit"),
        Err(e) => assert!(e.to_string().contains("PROXY header"), "{e}"),
    }
}
