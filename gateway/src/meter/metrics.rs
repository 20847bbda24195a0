//! Prometheus metrics of the gateway, served on the admin port.

use std::sync::RwLock;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shoal_node::ClusterView;
use shoal_node::GossipStats;

/// What the upstream connection pools of all workers count (`forward::pool`), for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct PoolMetrics {
    /// Connections opened to instances.
    pub opened: Counter,
    /// Connections open now.
    pub open: Gauge,
    /// Requests that found their instance at its limit and waited.
    pub waited: Counter,
}

/// `service` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// Service name.
    pub service: String,
}

/// `service` and `status` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Service name (`-` when unrouted).
    pub service: String,
    /// HTTP status answered.
    pub status: u16,
}

/// `service` and `health` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// Service name.
    pub service: String,
    /// starting, up, draining.
    pub health: String,
}

/// `service` and `scope` (service, client) labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    /// Service name.
    pub service: String,
    /// `service` (its limit in total) or `client` (its per-client limit).
    pub scope: String,
}

/// `service` and `outcome` labels: of sticky sessions, of forward auth.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Service name.
    pub service: String,
    /// Sticky: `kept` (the cookie's instance served), `pinned` (a new client
    /// got a cookie), `repinned` (its instance was gone: moved, cookie
    /// re-issued). Forward auth: `allowed`, `refused` (the checker's answer
    /// went to the client), `unavailable` (no checker answered: the
    /// gateway's 503, 502 or 504).
    pub outcome: String,
}

/// One instance's weight.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Service name.
    pub service: String,
    /// `ip:port`.
    pub instance: String,
    /// Its version label (empty when none).
    pub version_label: String,
    /// What it announces (`100`, `10%`).
    pub weight: String,
}

/// `protocol` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `http/1.1` or `h2`, and whether over TLS.
    pub protocol: String,
    /// `tls` or `plain`.
    pub transport: String,
}

/// `result` label of certificate reloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: String,
}

/// `reason` label of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why (a fixed word).
    pub reason: &'static str,
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by service and status.
    pub requests: Family<StatusLabels, Counter>,
    /// Time to response headers, by service.
    pub latency: Family<ServiceLabel, Histogram>,
    /// Retries sent.
    pub retries: Family<ServiceLabel, Counter>,
    /// Retries refused because the budget was spent.
    pub budget_exhausted: Family<ServiceLabel, Counter>,
    /// Instances ejected.
    pub ejections: Family<ServiceLabel, Counter>,
    /// Breaker state: 0 closed, 1 open, 2 half-open.
    pub breaker: Family<ServiceLabel, Gauge>,
    /// Members by service and health in this gateway's view.
    pub members: Family<HealthLabels, Gauge>,
    /// Requests and tunnels in flight through this gateway (set when read).
    pub in_flight: Gauge,
    /// Client connections open (set when read).
    pub client_connections: Gauge,
    gossip_sent: Counter,
    gossip_received: Counter,
    gossip_rejected: Counter,
    rate_limited: Family<ScopeLabels, Counter>,
    /// This gateway's share of each service's rate limit (req/s).
    pub rate_limit_share: Family<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    sticky: Family<OutcomeLabels, Counter>,
    /// Forward auth's outcomes by service.
    auth: Family<OutcomeLabels, Counter>,
    /// JWT checks' outcomes by service.
    jwt: Family<OutcomeLabels, Counter>,
    /// Each instance's expected share of its service's traffic (0-1).
    pub instance_share: Family<InstanceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Requests by client protocol.
    pub protocols: Family<ProtocolLabels, Counter>,
    /// TLS certificate (re)loads by result.
    pub tls_loads: Family<ResultLabel, Counter>,
    /// Failed TLS handshakes.
    pub tls_handshake_failures: Counter,
    /// Connections closed for their PROXY header, by reason.
    proxy_protocol_refused: Family<ReasonLabel, Counter>,
    /// The upstream connection pools' counts (all workers).
    pub pool: PoolMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal_gateway");
        let requests = Family::<StatusLabels, Counter>::default();
        let latency = Family::<ServiceLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let retries = Family::<ServiceLabel, Counter>::default();
        let budget_exhausted = Family::<ServiceLabel, Counter>::default();
        let ejections = Family::<ServiceLabel, Counter>::default();
        let breaker = Family::<ServiceLabel, Gauge>::default();
        let members = Family::<HealthLabels, Gauge>::default();
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        let rate_limit_share = Family::default();
        let sticky = Family::<OutcomeLabels, Counter>::default();
        let auth = Family::<OutcomeLabels, Counter>::default();
        let jwt = Family::<OutcomeLabels, Counter>::default();
        let instance_share = Family::default();
        let protocols = Family::<ProtocolLabels, Counter>::default();
        let tls_loads = Family::<ResultLabel, Counter>::default();
        let tls_handshake_failures = Counter::default();
        let proxy_protocol_refused = Family::<ReasonLabel, Counter>::default();
        let pool = PoolMetrics::default();
        registry.register(
            "upstream_connections_opened",
            "Connections opened to instances",
            pool.opened.clone(),
        );
        registry.register(
            "upstream_connections",
            "Connections open to instances (SHOAL_UPSTREAM_CONNECTIONS bounds them per instance)",
            pool.open.clone(),
        );
        registry.register(
            "upstream_connection_waits",
            "Requests that found every connection to their instance busy and waited for one",
            pool.waited.clone(),
        );
        registry.register(
            "proxy_protocol_refused",
            "Connections closed before a request for their PROXY header, by reason \
             (untrusted: a header from a peer not in SHOAL_TRUSTED_PROXIES; missing: none \
             from a trusted one with SHOAL_PROXY_PROTOCOL=true; malformed; timeout; io)",
            proxy_protocol_refused.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests answered 429, by service and limit (service: in total, client: per client IP)",
            rate_limited.clone(),
        );
        registry.register(
            "rate_limit_share",
            "This gateway's share of the service's rate limit (requests/s)",
            rate_limit_share.clone(),
        );
        registry.register(
            "sticky",
            "Sticky-session requests: kept (the cookie's instance), pinned (new cookie), repinned (instance gone)",
            sticky.clone(),
        );
        registry.register(
            "auth_checks",
            "Requests checked by the service's forward auth (SHOAL_AUTH_FORWARD): allowed, refused \
             (the checker's answer went to the client), unavailable (no checker answered)",
            auth.clone(),
        );
        registry.register(
            "jwt_checks",
            "Requests checked for the service's bearer token (SHOAL_AUTH_JWT_JWKS): allowed, or \
             refused by reason (missing, malformed, algorithm, unknown_key, signature, expired, \
             not_yet_valid, issuer, audience, unavailable: the issuer's keys out of reach)",
            jwt.clone(),
        );
        registry.register(
            "instance_share",
            "Each instance's share of its service's traffic by weight (0-1)",
            instance_share.clone(),
        );
        registry.register(
            "client_requests",
            "Requests received, by client protocol",
            protocols.clone(),
        );
        registry.register(
            "tls_certificate_loads",
            "TLS certificate and key (re)loads, by result",
            tls_loads.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed",
            tls_handshake_failures.clone(),
        );
        let (gossip_sent, gossip_received, gossip_rejected) =
            (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "requests",
            "Requests answered, by service and status",
            requests.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time to upstream response headers",
            latency.clone(),
        );
        registry.register(
            "retries",
            "Retries sent to another instance",
            retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused: budget spent",
            budget_exhausted.clone(),
        );
        registry.register(
            "ejections",
            "Instances ejected as outliers",
            ejections.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        registry.register("members", "Members in this gateway's view", members.clone());
        let in_flight = Gauge::default();
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open to this gateway",
            client_connections.clone(),
        );
        registry.register(
            "in_flight",
            "Requests and tunnels in flight through this gateway",
            in_flight.clone(),
        );
        registry.register(
            "gossip_sent_bytes",
            "Gossip bytes sent",
            gossip_sent.clone(),
        );
        registry.register(
            "gossip_received_bytes",
            "Gossip bytes received",
            gossip_received.clone(),
        );
        registry.register(
            "gossip_rejected_packets",
            "Gossip datagrams that failed to open",
            gossip_rejected.clone(),
        );
        Self {
            registry,
            in_flight,
            client_connections,
            requests,
            latency,
            retries,
            budget_exhausted,
            ejections,
            breaker,
            members,
            gossip_sent,
            gossip_received,
            gossip_rejected,
            rate_limited,
            rate_limit_share,
            sticky,
            auth,
            jwt,
            instance_share,
            protocols,
            tls_loads,
            tls_handshake_failures,
            proxy_protocol_refused,
            pool,
        }
    }
}

/// The metrics of one service, looked up once (when the service appears)
/// rather than on every request.
#[derive(Debug)]
pub struct ServiceMetrics {
    service: String,
    requests: Family<StatusLabels, Counter>,
    statuses: RwLock<Vec<(u16, Counter)>>,
    /// Time to response headers.
    pub latency: Histogram,
    /// Retries sent.
    pub retries: Counter,
    /// Retries refused: budget spent.
    pub budget_exhausted: Counter,
    /// Instances ejected.
    pub ejections: Counter,
    /// Breaker state gauge.
    pub breaker: Gauge,
    /// What the dashboard and `/stats` show, shared by gossip.
    pub stats: crate::meter::record::Recorder,
    /// 429s of its limit in total.
    pub rate_limited_service: Counter,
    /// 429s of its per-client limit.
    pub rate_limited_client: Counter,
    /// Sticky requests served by the cookie's instance.
    pub sticky_kept: Counter,
    /// Sticky requests of a new client (cookie issued).
    pub sticky_pinned: Counter,
    /// Sticky requests whose instance was gone (cookie re-issued).
    pub sticky_repinned: Counter,
    /// Requests forward auth let through.
    pub auth_allowed: Counter,
    /// Requests forward auth refused (the checker's answer given).
    pub auth_refused: Counter,
    /// Requests no checker answered (the gateway's 503, 502 or 504).
    pub auth_unavailable: Counter,
    /// JWT checks by outcome (made on first use: most services have none).
    jwt: Family<OutcomeLabels, Counter>,
    jwt_allowed: std::sync::OnceLock<Counter>,
}

impl ServiceMetrics {
    /// Counts a request answered with `status`.
    pub fn request(&self, status: u16) {
        let cached = {
            let statuses = self.statuses.read().unwrap_or_else(|p| p.into_inner());
            statuses
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, c)| c.clone())
        };
        let counter = cached.unwrap_or_else(|| {
            let counter = self
                .requests
                .get_or_create(&StatusLabels {
                    service: self.service.clone(),
                    status,
                })
                .clone();
            self.statuses
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push((status, counter.clone()));
            counter
        });
        counter.inc();
    }

    /// Counts a JWT check: allowed (`None`) or refused for `reason`.
    pub fn jwt(&self, refused: Option<&str>) {
        let labels = |outcome: &str| OutcomeLabels {
            service: self.service.clone(),
            outcome: outcome.to_string(),
        };
        match refused {
            None => self
                .jwt_allowed
                .get_or_init(|| self.jwt.get_or_create(&labels("allowed")).clone())
                .inc(),
            Some(reason) => self.jwt.get_or_create(&labels(reason)).inc(),
        };
    }

    /// Sets the breaker gauge: 0 closed, 1 open, 2 half-open.
    pub fn set_breaker(&self, code: i64) {
        self.breaker.set(code);
    }
}

fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

impl Metrics {
    /// The handles of `service`'s metrics.
    pub fn for_service(&self, service: &str) -> ServiceMetrics {
        let label = ServiceLabel {
            service: service.to_string(),
        };
        let scope = |scope: &str| ScopeLabels {
            service: service.to_string(),
            scope: scope.to_string(),
        };
        let outcome = |outcome: &str| OutcomeLabels {
            service: service.to_string(),
            outcome: outcome.to_string(),
        };
        // One statement each: a family's read guard lives to the end of
        // its statement, and a second `get_or_create` on the same family
        // in that statement would wait for it forever.
        let rate_limited_service = self.rate_limited.get_or_create(&scope("service")).clone();
        let rate_limited_client = self.rate_limited.get_or_create(&scope("client")).clone();
        let sticky_kept = self.sticky.get_or_create(&outcome("kept")).clone();
        let sticky_pinned = self.sticky.get_or_create(&outcome("pinned")).clone();
        let sticky_repinned = self.sticky.get_or_create(&outcome("repinned")).clone();
        let auth_allowed = self.auth.get_or_create(&outcome("allowed")).clone();
        let auth_refused = self.auth.get_or_create(&outcome("refused")).clone();
        let auth_unavailable = self.auth.get_or_create(&outcome("unavailable")).clone();
        ServiceMetrics {
            service: service.to_string(),
            requests: self.requests.clone(),
            statuses: RwLock::new(Vec::new()),
            latency: self.latency.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
            budget_exhausted: self.budget_exhausted.get_or_create(&label).clone(),
            ejections: self.ejections.get_or_create(&label).clone(),
            breaker: self.breaker.get_or_create(&label).clone(),
            stats: crate::meter::record::Recorder::default(),
            rate_limited_service,
            rate_limited_client,
            sticky_kept,
            sticky_pinned,
            sticky_repinned,
            auth_allowed,
            auth_refused,
            auth_unavailable,
            jwt: self.jwt.clone(),
            jwt_allowed: std::sync::OnceLock::new(),
        }
    }

    /// The counter of requests of one client protocol.
    pub fn protocol(&self, protocol: &str, tls: bool) -> Counter {
        self.protocols
            .get_or_create(&ProtocolLabels {
                protocol: protocol.to_string(),
                transport: if tls { "tls" } else { "plain" }.to_string(),
            })
            .clone()
    }

    /// Counts a connection closed for its PROXY header.
    pub fn proxy_protocol_refused(&self, reason: &'static str) {
        self.proxy_protocol_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a request that matched no service.
    pub fn unrouted(&self, status: u16) {
        self.requests
            .get_or_create(&StatusLabels {
                service: "-".into(),
                status,
            })
            .inc();
    }

    /// Replaces the member gauges with the counts of `view`.
    pub fn set_members(&self, view: &ClusterView) {
        self.members.clear();
        for (service, members) in view.services() {
            for m in members {
                self.members
                    .get_or_create(&HealthLabels {
                        service: service.to_string(),
                        health: m.health.to_string(),
                    })
                    .inc();
            }
        }
    }

    /// The text exposition, with gossip counters and the in-flight count
    /// (`in_flight`, read from the gateway's limit) brought up to date.
    pub fn encode(&self, gossip: &GossipStats, in_flight: usize, connections: usize) -> String {
        self.in_flight.set(in_flight as i64);
        self.client_connections.set(connections as i64);
        catch_up(&self.gossip_sent, gossip.bytes_sent.load(Ordering::Relaxed));
        catch_up(
            &self.gossip_received,
            gossip.bytes_received.load(Ordering::Relaxed),
        );
        catch_up(
            &self.gossip_rejected,
            gossip.packets_rejected.load(Ordering::Relaxed),
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
