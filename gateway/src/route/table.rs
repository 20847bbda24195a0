//! Upstreams: the gateway's routing table, rebuilt from every new view.
//!
//! A table is an immutable snapshot (`Arc`) swapped in whole, so a request
//! reads one consistent table with a single short read lock. What must
//! outlive a rebuild (latency averages, failure streaks, breakers, budgets)
//! is carried over by member id and service name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use shoal_node::{AuthForward, ClusterView, Member, MemberId, RateLimit};
use tokio::time::Instant;
use tracing::warn;

use crate::config::ResilienceConfig;
use crate::meter::metrics::{InstanceLabels, Metrics, ServiceMetrics};
use crate::route::balance::{Clock, Endpoint, set_weights};
use crate::route::limit::Limiter;
use crate::route::outcome::{Breaker, RetryBudget, retry_budget};
use crate::route::sticky::StickyKeys;

/// One service in the table.
#[derive(Debug)]
pub struct ServiceState {
    /// Its name.
    pub name: Arc<str>,
    /// Its `up` instances.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Its breaker.
    pub breaker: Arc<Breaker>,
    /// Its retry budget.
    pub budget: Arc<RetryBudget>,
    /// Its metrics.
    pub metrics: Arc<ServiceMetrics>,
    /// The policies its newest instance announces.
    pub policy: ServicePolicy,
    /// Its rate limits at this gateway.
    pub limiter: Arc<Limiter>,
    /// Its balancer's virtual clock.
    pub clock: Arc<Clock>,
}

/// What a service asks of every gateway (announced by its instances; the
/// newest up instance's word counts, so a rolling update changes it).
#[derive(Debug, Clone, Default)]
pub struct ServicePolicy {
    /// The sticky-session cookie's name, when the service wants one.
    pub sticky_cookie: Option<String>,
    /// Its rate limit across every gateway.
    pub rate_limit: Option<RateLimit>,
    /// Its rate limit per client IP across every gateway.
    pub rate_limit_per_client: Option<RateLimit>,
    /// Forward auth: the service that checks its requests first.
    pub auth: Option<AuthPolicy>,
    /// The bearer tokens (JWT) its requests need.
    pub jwt: Option<shoal_node::AuthJwt>,
}

/// Forward auth as a service announces it (`SHOAL_AUTH_FORWARD`,
/// `SHOAL_AUTH_COPY_HEADERS`).
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Whom to ask, on which path.
    pub forward: AuthForward,
    /// The auth answer's headers passed on to the service.
    pub copy: Vec<http::HeaderName>,
}

impl ServicePolicy {
    /// The policies of `service`, from its members.
    pub fn of(service: &str, members: &[Arc<Member>]) -> Self {
        let Some(newest) = members
            .iter()
            .filter(|m| m.is_up())
            .max_by_key(|m| (m.started_ms, &m.id))
        else {
            return Self::default();
        };
        let p = &newest.policy;
        Self {
            sticky_cookie: p.sticky.then(|| format!("shoal-{service}")),
            rate_limit: p.rate_limit,
            rate_limit_per_client: p.rate_limit_per_client,
            auth: p.auth_forward.clone().map(|forward| AuthPolicy {
                forward,
                copy: p
                    .auth_copy_headers
                    .iter()
                    .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                    .collect(),
            }),
            jwt: p.auth_jwt.clone(),
        }
    }
}

impl ServiceState {
    /// Whether one more instance may be ejected: never more than half.
    pub fn may_eject(&self, now: Instant) -> bool {
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        (ejected + 1) * 2 <= self.endpoints.len()
    }

    /// Counts a failure of `endpoint`; ejects it after
    /// `SHOAL_EJECT_AFTER` failures in a row, unless half the service is
    /// already out.
    pub fn note_failure(&self, config: &ResilienceConfig, endpoint: &Endpoint, now: Instant) {
        let streak = endpoint.record_failure();
        if streak >= config.eject_after && self.may_eject(now) {
            let time = endpoint.eject(config.eject_time, now);
            self.metrics.ejections.inc();
            warn!(service = %self.name, instance = %endpoint.addr(), streak, ejected_for = ?time, "instance ejected");
        }
    }
}

/// A snapshot of the routing table.
#[derive(Debug, Default)]
pub struct Table {
    /// The view it was built from.
    pub view: Arc<ClusterView>,
    services: HashMap<String, Arc<ServiceState>>,
}

impl Table {
    /// The state of a service known to the view.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceState>> {
        self.services.get(name)
    }

    /// Every service known to the view.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceState>> {
        self.services.values()
    }
}

/// The current table and how to rebuild it.
pub struct Upstreams {
    table: RwLock<Arc<Table>>,
    resilience: ResilienceConfig,
    sticky: StickyKeys,
}

impl Upstreams {
    /// An empty table; instances' sticky tokens made with `sticky`.
    pub fn new(resilience: ResilienceConfig, sticky: StickyKeys) -> Self {
        Self {
            table: RwLock::new(Arc::new(Table::default())),
            resilience,
            sticky,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the table from `view`, keeping the state of known instances.
    pub fn update(&self, view: Arc<ClusterView>, metrics: &Metrics) {
        let old = self.snapshot();
        let now = Instant::now();
        let old_endpoints: HashMap<&MemberId, &Arc<Endpoint>> = old
            .services
            .values()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| (&e.member.id, e))
            .collect();
        let mut services = HashMap::new();
        metrics.instance_share.clear();
        for (name, members) in view.services() {
            let endpoints: Vec<_> = members
                .iter()
                .filter(|m| m.is_up())
                .map(|m| match old_endpoints.get(&m.id) {
                    Some(e) if e.member.addr == m.addr => Arc::clone(e),
                    _ => Arc::new(Endpoint::new(m.clone(), &self.sticky)),
                })
                .collect();
            set_weights(&endpoints);
            for e in &endpoints {
                let p = &e.member.policy;
                metrics
                    .instance_share
                    .get_or_create(&InstanceLabels {
                        service: name.to_string(),
                        instance: e.addr().to_string(),
                        version_label: p.label.clone().unwrap_or_default(),
                        weight: p.weight.to_string(),
                    })
                    .set(e.relative_weight() / endpoints.len() as f64);
            }
            let (breaker, budget, service_metrics, limiter, clock) = match old.services.get(name) {
                Some(s) => (
                    s.breaker.clone(),
                    s.budget.clone(),
                    s.metrics.clone(),
                    s.limiter.clone(),
                    s.clock.clone(),
                ),
                None => (
                    Arc::new(Breaker::new(&self.resilience, now)),
                    Arc::new(retry_budget(&self.resilience)),
                    Arc::new(metrics.for_service(name)),
                    Arc::new(Limiter::default()),
                    Arc::new(Clock::default()),
                ),
            };
            let policy = ServicePolicy::of(name, members);
            limiter.set_limits(policy.rate_limit, policy.rate_limit_per_client);
            services.insert(
                name.to_string(),
                Arc::new(ServiceState {
                    name: name.into(),
                    endpoints,
                    breaker,
                    budget,
                    metrics: service_metrics,
                    policy,
                    limiter,
                    clock,
                }),
            );
        }
        // Members no longer in the view at all (dead, partitioned away,
        // replaced by their next generation): what is in flight to them is
        // abandoned now rather than left to the response timeout.
        let present: std::collections::HashSet<&MemberId> = view.members().map(|m| &m.id).collect();
        for (id, endpoint) in &old_endpoints {
            if !present.contains(id) {
                endpoint.mark_gone();
            }
        }
        let table = Arc::new(Table { view, services });
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }
}
