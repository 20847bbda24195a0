//! The admin port (8761, where Eureka's dashboard was): `/` — the live
//! dashboard (services, instances, cluster-wide traffic, membership events),
//! `/events` (its Server-Sent Events), `/stats` (cluster-wide figures, JSON),
//! `/metrics` (Prometheus, this gateway's own), `/members` (this gateway's
//! view), `/health`, and `/eureka/…` (Eureka's REST API, see
//! [`crate::eureka`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use futures_util::Stream;
use shoal_node::{Cluster, ClusterView};
use tokio::sync::watch;

use crate::edge::acme::Acme;
use crate::forward::state::Gateway;
use crate::report::delta::Shown;
use crate::report::stats::{Event, follow_events, stats_doc};
use shoal_node::now_ms;

/// How many events an update carries (the page keeps what it was sent).
const EVENTS_SENT: usize = 100;
/// How often the page is updated when nothing changes.
const UPDATE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Admin {
    gw: Arc<Gateway>,
    cluster: Cluster,
    events: watch::Receiver<Arc<VecDeque<Event>>>,
    acme: Option<Arc<Acme>>,
}

/// The admin router; `acme`, when the edge's certificate comes from a CA.
pub fn router(gw: Arc<Gateway>, cluster: Cluster, acme: Option<Arc<Acme>>) -> Router {
    let events = follow_events(cluster.view());
    let access = gw.config.eureka.clone();
    tracing::info!("{}", access.describe());
    if let Some(warning) = access.plain_warning() {
        tracing::warn!("{warning}");
    }
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/events", get(live))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/members", get(members))
        .route("/health", get(health))
        .route("/acme/certificate", get(certificate))
        .with_state(Admin {
            gw,
            cluster: cluster.clone(),
            events,
            acme,
        })
        .merge(crate::eureka::router(
            crate::eureka::Eureka::start(cluster, access.limits),
            access,
        ))
}

async fn metrics(State(a): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        a.gw.metrics.encode(
            a.cluster.stats(),
            a.gw.config.proxy.max_in_flight - a.gw.in_flight.available_permits(),
            a.gw.config.proxy.max_client_connections - a.gw.connections.available_permits(),
        ),
    )
        .into_response()
}

async fn members(State(a): State<Admin>) -> Response {
    let view = a.cluster.view().borrow().clone();
    let mut doc = shoal_node::MembersDoc::new(a.cluster.id().clone(), &view);
    doc.protocol = Some(a.cluster.protocol().await);
    Json(doc).into_response()
}

async fn health(State(a): State<Admin>) -> Response {
    if a.gw.drain.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "DRAINING"})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"status": "UP"})).into_response()
    }
}

async fn stats(State(a): State<Admin>) -> Response {
    let view = a.cluster.view().borrow().clone();
    let mut doc = stats_doc(
        &a.cluster.cluster_stats().await,
        &view,
        &a.gw.upstreams.snapshot(),
    );
    if let (Some(acme), Some(doc)) = (&a.acme, doc.as_object_mut()) {
        doc.insert("acme".into(), serde_json::json!(acme.status()));
    }
    Json(doc).into_response()
}

/// This gateway's copy of the ACME certificate, sealed with the edge key
/// (only gateways open it): what another gateway fetches.
async fn certificate(State(a): State<Admin>) -> Response {
    match a.acme.as_ref().and_then(|acme| acme.sealed()) {
        Some(sealed) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], sealed).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no ACME certificate held here").into_response(),
    }
}

/// What this gateway serves at the edge: ports, TLS, HTTP/2, ACME.
fn edge_doc(gw: &Gateway, acme: Option<&Acme>) -> serde_json::Value {
    let c = &gw.config;
    let m = &gw.metrics;
    serde_json::json!({
        "acme": acme.map(Acme::status),
        "port": c.port,
        "h2c": c.h2c,
        "tls_port": c.tls.as_ref().map(|t| t.port),
        "redirect": c.tls.as_ref().is_some_and(|t| t.redirect),
        "h2_requests": m.protocol("h2", true).get() + m.protocol("h2", false).get(),
        "certificate_loads": m.tls_loads.get_or_create(&crate::meter::metrics::ResultLabel { result: "ok".into() }).get(),
    })
}

/// One update of the page: who answers, the figures, the latest events —
/// what `shown` says the page lacks of them (see [`Shown`]).
async fn update(a: &Admin, view: &ClusterView, shown: &mut Shown) -> String {
    let events = a.events.borrow().clone();
    let skip = events.len().saturating_sub(EVENTS_SENT);
    let doc = serde_json::json!({
        "gateway": a.cluster.id().to_string(),
        "at_ms": now_ms(),
        "stats": stats_doc(&a.cluster.cluster_stats().await, view, &a.gw.upstreams.snapshot()),
        "edge": edge_doc(&a.gw, a.acme.as_deref()),
        "events": events.iter().skip(skip).collect::<Vec<_>>(),
    });
    shown.delta(doc).to_string()
}

/// Server-Sent Events: an update at once, then at once on every change of
/// who is a member or of their health, and every second otherwise. A view
/// that changed only in figures or lease times (an Eureka heartbeat
/// renews a lease: with 1,000 instances, 33 a second) waits for the next
/// second. The first update holds every instance's row, the next ones
/// the rows that changed ([`Shown`]).
async fn live(State(a): State<Admin>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let views = a.cluster.view();
    let start = (a, views, None::<u64>, Shown::default());
    let stream =
        futures_util::stream::unfold(start, |(a, mut views, sent, mut shown)| async move {
            if let Some(sent) = sent {
                let tick = tokio::time::sleep(UPDATE_EVERY);
                tokio::pin!(tick);
                loop {
                    tokio::select! {
                        changed = views.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                            if membership(&views.borrow()) != sent {
                                break;
                            }
                        }
                        () = &mut tick => break,
                    }
                }
            }
            let view = views.borrow_and_update().clone();
            let membership_now = membership(&view);
            let data = update(&a, &view, &mut shown).await;
            Some((
                Ok(SseEvent::default().data(data)),
                (a, views, Some(membership_now), shown),
            ))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Who is in `view` and how they are: what the page shows at once.
fn membership(view: &ClusterView) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in view.members() {
        (&m.id, m.health.as_str(), m.addr).hash(&mut h);
    }
    h.finish()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard/index.html"))
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("dashboard/dashboard.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("dashboard/dashboard.css"),
    )
        .into_response()
}
