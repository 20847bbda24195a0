//! Cluster-wide traffic figures: what this gateway records per request, what
//! it publishes by gossip once a second, and the membership event log — the
//! data behind `/stats`, the dashboard and its live updates.
//!
//! Recording is a few relaxed atomic increments per request (service) and
//! per attempt (instance), on counters that only grow. The publisher keeps
//! the last [`WINDOW_SECS`] seconds of snapshots, so a window is the
//! difference of two snapshots: no reset, no lock on the request path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shoal_node::{Cluster, ClusterView, Member, MemberEvent};
use shoal_node::{
    ClusterStats, Counts, Figures, GatewayStats, Histogram, Merged, WINDOW_SECS, now_ms,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::meter::record::Snapshot;
use crate::route::outcome::BreakerState;
use crate::route::table::{ServicePolicy, Table, Upstreams};

/// What the publisher remembers of each service and instance: one
/// snapshot per round, enough to span the window.
struct History {
    rings: HashMap<(Arc<str>, Option<String>), VecDeque<Snapshot>>,
    /// Snapshots kept: rounds in a window, plus one.
    slots: usize,
}

impl History {
    /// A history for a publisher that runs every `every`.
    fn new(every: Duration) -> Self {
        let rounds = (u128::from(WINDOW_SECS) * 1000 / every.as_millis().max(1)).max(1);
        Self {
            rings: HashMap::new(),
            slots: usize::try_from(rounds)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        }
    }

    /// Adds `now` and gives the figures over the window.
    fn figures(
        &mut self,
        key: (Arc<str>, Option<String>),
        now: Snapshot,
    ) -> (Counts, Counts, Histogram) {
        let ring = self.rings.entry(key).or_default();
        ring.push_back(now.clone());
        while ring.len() > self.slots {
            ring.pop_front();
        }
        let earlier = (ring.len() > 1).then(|| &ring[0]);
        let (window, latency) = now.figures_since(earlier);
        (now.counts, window, latency)
    }
}

/// Publishes this gateway's figures `every` so often (1 s by default).
pub fn spawn_publisher(upstreams: Arc<Upstreams>, cluster: Cluster, every: Duration) {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut history = History::new(every);
        // The span the snapshots cover (the window, or one round if longer).
        let span = every.max(Duration::from_secs(u64::from(WINDOW_SECS)));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stats = collect(&upstreams, &mut history, started.elapsed().min(span));
            cluster.publish_stats(&stats).await;
        }
    });
}

/// This gateway's figures now: services and instances that saw traffic
/// since start (idle ones publish nothing).
fn collect(upstreams: &Upstreams, history: &mut History, uptime: Duration) -> GatewayStats {
    let table = upstreams.snapshot();
    let now = Instant::now();
    let mut seen = HashMap::new();
    let mut services = BTreeMap::new();
    for service in table.services() {
        let snapshot = service.metrics.stats.snapshot();
        let key = (service.name.clone(), None);
        seen.insert(key.clone(), ());
        let (mut total, mut window, latency) = history.figures(key, snapshot);
        let retries = service.metrics.retries.get();
        total.retries = retries;
        window.retries = 0;
        let mut instances = BTreeMap::new();
        let mut in_flight = 0;
        for e in &service.endpoints {
            in_flight += e.in_flight();
            let addr = e.addr().to_string();
            let key = (service.name.clone(), Some(addr.clone()));
            seen.insert(key.clone(), ());
            let (total, window, latency) = history.figures(key, e.stats.snapshot());
            if total.requests == 0 {
                continue;
            }
            instances.insert(
                addr,
                Figures {
                    total,
                    window,
                    latency,
                    in_flight: e.in_flight(),
                    tripped: e.is_ejected(now),
                },
            );
        }
        if total.requests == 0 && instances.is_empty() {
            continue;
        }
        let figures = Figures {
            total,
            window,
            latency,
            in_flight,
            tripped: service.breaker.state(now) == BreakerState::Open,
        };
        services.insert(service.name.to_string(), (figures, instances));
    }
    history.rings.retain(|k, _| seen.contains_key(k));
    GatewayStats {
        window_secs: u32::try_from(uptime.as_secs()).unwrap_or(u32::MAX).max(1),
        services,
    }
}

/// One line of the event log.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When this gateway saw it, ms since the epoch.
    pub at_ms: u64,
    /// What happened.
    pub event: MemberEvent,
    /// The member (`story-service@10.0.9.5:8768`, `eureka:{instanceId}`).
    pub member: String,
    /// The member and its generation (`…#1764145371123`), as `/stats` names it.
    pub id: String,
    /// Its service.
    pub service: String,
    /// Its host.
    pub host: String,
    /// Its address.
    pub addr: String,
}

/// How many events the log keeps.
pub const EVENTS_KEPT: usize = 200;

/// The membership event log of this gateway, newest last; `changed()` on
/// the receiver fires with every new event.
pub fn follow_events(
    mut views: watch::Receiver<Arc<ClusterView>>,
) -> watch::Receiver<Arc<VecDeque<Event>>> {
    let (tx, rx) = watch::channel(Arc::new(VecDeque::new()));
    tokio::spawn(async move {
        let mut old = Arc::new(ClusterView::default());
        let mut log: VecDeque<Event> = VecDeque::new();
        loop {
            let view = views.borrow_and_update().clone();
            let events = view.events_since(&old);
            if !events.is_empty() {
                let at_ms = now_ms();
                for (event, m) in events {
                    log.push_back(event_of(at_ms, event, &m));
                }
                while log.len() > EVENTS_KEPT {
                    log.pop_front();
                }
                tx.send_replace(Arc::new(log.clone()));
            }
            old = view;
            if views.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

fn event_of(at_ms: u64, event: MemberEvent, m: &Member) -> Event {
    Event {
        at_ms,
        event,
        member: m.id.node.clone(),
        id: m.id.to_string(),
        service: m.service.clone(),
        host: m.host.clone(),
        addr: m.addr.to_string(),
    }
}

/// Merged figures as `/stats` shows them.
#[derive(Debug, Serialize)]
pub struct FiguresDoc {
    /// Requests since start, summed over all gateways.
    pub requests: u64,
    /// Errors since start: 5xx of instances and the gateway's 502/503/504.
    pub errors: u64,
    /// Since start, by class.
    pub errors_by_class: ErrorClasses,
    /// Requests per second over the window, summed over gateways.
    pub rps: f64,
    /// Errors per hundred requests over the window.
    pub error_pct: f64,
    /// Latency percentiles over the window, of all requests of all gateways.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// In flight now, summed.
    pub in_flight: u32,
    /// Retries since start (services).
    pub retries: u64,
    /// Gateways whose breaker is open for it (service) or that eject it (instance).
    pub tripped_on: u32,
    /// Gateways whose figures it includes.
    pub reported_by: u32,
}

/// Errors by class.
#[derive(Debug, Serialize)]
pub struct ErrorClasses {
    /// 4xx of instances (the client's errors; not counted in `errors`).
    #[serde(rename = "4xx")]
    pub client: u64,
    /// 5xx of instances.
    #[serde(rename = "5xx")]
    pub server: u64,
    /// 502/503/504 made by the gateway.
    #[serde(rename = "502")]
    pub bad_gateway: u64,
    /// 503 made by the gateway.
    #[serde(rename = "503")]
    pub unavailable: u64,
    /// 504 made by the gateway.
    #[serde(rename = "504")]
    pub timeout: u64,
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

impl FiguresDoc {
    /// The document of merged figures.
    pub fn of(m: &Merged) -> Self {
        let t = &m.figures.total;
        Self {
            requests: t.requests,
            errors: t.errors(),
            errors_by_class: ErrorClasses {
                client: t.client_errors,
                server: t.server_errors,
                bad_gateway: t.gateway_502,
                unavailable: t.gateway_503,
                timeout: t.gateway_504,
            },
            rps: round(m.rps, 1),
            error_pct: round(m.error_pct(), 2),
            p50_ms: m.figures.latency.quantile_ms(0.5).map(|v| round(v, 2)),
            p99_ms: m.figures.latency.quantile_ms(0.99).map(|v| round(v, 2)),
            in_flight: m.figures.in_flight,
            retries: t.retries,
            tripped_on: m.tripped_on,
            reported_by: m.reported_by,
        }
    }
}

/// `/stats`: `{"gateways", "window_secs", "services": {name: {…figures,
/// "instances": [{"addr", "member", "host", "health", …figures}]}}}`.
pub fn stats_doc(stats: &ClusterStats, view: &ClusterView, table: &Table) -> serde_json::Value {
    let mut services = serde_json::Map::new();
    let names: std::collections::BTreeSet<&str> = stats
        .services
        .keys()
        .map(String::as_str)
        .chain(view.services().map(|(s, _)| s))
        .collect();
    let empty = (Merged::default(), BTreeMap::new());
    for name in names {
        let (service, instances) = stats.services.get(name).unwrap_or(&empty);
        let members = view.service(name).unwrap_or(&[]);
        let mut list = Vec::new();
        let mut listed = std::collections::HashSet::new();
        let routed = table.service(name);
        for m in members {
            let addr = m.addr.to_string();
            let figures = instances.get(&addr).cloned().unwrap_or_default();
            listed.insert(addr.clone());
            let mut doc = instance_doc(&addr, Some(m), &figures);
            let endpoints = routed.map_or(&[][..], |s| &s.endpoints[..]);
            if let Some(e) = endpoints.iter().find(|e| e.member.id == m.id) {
                doc["share"] = round(e.relative_weight() / endpoints.len() as f64, 4).into();
            }
            list.push(doc);
        }
        // Figures of instances this gateway no longer sees (just gone).
        for (addr, figures) in instances {
            if !listed.contains(addr) {
                list.push(instance_doc(addr, None, figures));
            }
        }
        let mut doc = serde_json::to_value(FiguresDoc::of(service)).unwrap_or_default();
        doc["instances"] = serde_json::Value::Array(list);
        let policy = ServicePolicy::of(name, members);
        let here = routed.map(|s| s.limiter.figures(Instant::now()));
        doc["policy"] = serde_json::json!({
            "sticky": policy.sticky_cookie.is_some(),
            "sticky_cookie": policy.sticky_cookie,
            "rate_limit": policy.rate_limit.map(|l| l.to_string()),
            "rate_limit_per_client": policy.rate_limit_per_client.map(|l| l.to_string()),
            "auth_forward": policy.auth.as_ref().map(|a| a.forward.to_string()),
            "auth_jwt": policy.jwt,
            "limit_here": here.filter(|_| policy.rate_limit.is_some() || policy.rate_limit_per_client.is_some()).map(|f| serde_json::json!({
                "share_rps": f.share.map(|v| round(v, 1)),
                "demand_rps": round(f.demand, 1),
                "other_gateways_demand_rps": round(f.others_demand, 1),
                "admitted": f.admitted,
                "refused": f.refused,
                "clients": f.clients,
            })),
        });
        services.insert(name.to_string(), doc);
    }
    serde_json::json!({
        "gateways": stats.gateways,
        "window_secs": WINDOW_SECS,
        "services": services,
    })
}

fn instance_doc(addr: &str, member: Option<&Arc<Member>>, figures: &Merged) -> serde_json::Value {
    let mut doc = serde_json::to_value(FiguresDoc::of(figures)).unwrap_or_default();
    doc["addr"] = addr.into();
    if let Some(m) = member {
        doc["member"] = m.id.to_string().into();
        doc["host"] = m.host.clone().into();
        doc["health"] = m.health.as_str().into();
        doc["started_ms"] = m.started_ms.into();
        doc["routes"] = m.routes.clone().into();
        doc["eureka"] = m.lease.is_some().into();
        doc["weight"] = m.policy.weight.to_string().into();
        doc["label"] = m.policy.label.clone().into();
    } else {
        doc["health"] = "gone".into();
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::record::Recorder;

    #[test]
    fn the_window_is_the_difference_of_two_snapshots() {
        let r = Recorder::default();
        let mut h = History::new(Duration::from_secs(1));
        let key = || (Arc::<str>::from("s"), None);
        for _ in 0..5 {
            r.record(200, false, Some(Duration::from_millis(1)));
        }
        let (total, window, _) = h.figures(key(), r.snapshot());
        assert_eq!((total.requests, window.requests), (5, 5));
        let mut last = None;
        for _ in 0..12 {
            r.record(500, false, Some(Duration::from_millis(100)));
            last = Some(h.figures(key(), r.snapshot()));
        }
        let (total, window, latency) = last.unwrap();
        assert_eq!(total.requests, 5 + 12);
        assert_eq!(window.requests, 10, "the last ten seconds only");
        assert_eq!(window.server_errors, 10);
        assert!(latency.quantile_ms(0.5).unwrap() > 90.0);
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;
    use shoal_node::{Health, MemberId};

    #[test]
    fn stats_doc_lists_hundreds_of_members_and_none() {
        let empty = stats_doc(
            &ClusterStats::default(),
            &ClusterView::default(),
            &Table::default(),
        );
        assert_eq!(empty["gateways"], 0);
        assert!(empty["services"].as_object().unwrap().is_empty());
        let members = (0..300u32).map(|i| Member {
            id: MemberId {
                node: format!("svc-{i}"),
                generation: 1,
            },
            service: format!("service-{}", i % 30),
            addr: std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)),
            health: Health::Up,
            routes: vec![],
            host: format!("<b>host-{i}</b>"),
            version: "t".into(),
            started_ms: 0,
            gossip_addr: "10.0.0.1:7950".parse().unwrap(),
            lease: None,
            policy: Default::default(),
        });
        let view = ClusterView::from_members(members);
        let doc = stats_doc(&ClusterStats::default(), &view, &Table::default());
        let services = doc["services"].as_object().unwrap();
        assert_eq!(services.len(), 30);
        let listed: usize = services
            .values()
            .map(|s| s["instances"].as_array().unwrap().len())
            .sum();
        assert_eq!(listed, 300);
        // Text stays text in the document; the page writes it with textContent.
        assert_eq!(
            services["service-0"]["instances"][0]["host"],
            "<b>host-0</b>"
        );
    }
}
