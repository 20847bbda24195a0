//! The admin port (8761, where Eureka's dashboard was): `/metrics`
//! (Prometheus), `/members` (this gateway's view as JSON), `/health`,
//! `/eureka/…` (Eureka's REST reads, see [`crate::eureka`]), and `/` — a
//! small page listing every service and instance.

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use shoal_node::Cluster;

use crate::state::Gateway;

#[derive(Clone)]
struct Admin {
    gw: Arc<Gateway>,
    cluster: Cluster,
}

/// The admin router.
pub fn router(gw: Arc<Gateway>, cluster: Cluster) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/members", get(members))
        .route("/health", get(health))
        .with_state(Admin {
            gw,
            cluster: cluster.clone(),
        })
        .merge(crate::eureka::router(crate::eureka::Eureka::start(cluster)))
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
        ),
    )
        .into_response()
}

async fn members(State(a): State<Admin>) -> Response {
    let view = a.cluster.view().borrow().clone();
    Json(shoal_node::MembersDoc::new(a.cluster.id().clone(), &view)).into_response()
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

async fn dashboard(State(a): State<Admin>) -> Html<String> {
    let view = a.cluster.view().borrow().clone();
    let mut page = String::from(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=2><title>shoal</title>\
         <style>body{font:14px system-ui;margin:2em}td,th{padding:2px 12px;text-align:left}\
         .up{color:#080}.starting{color:#a60}.draining{color:#c00}</style>\
         <h1>shoal — cluster seen by this gateway</h1><table><tr><th>service<th>host<th>address<th>health<th>routes",
    );
    for (service, members) in view.services() {
        for m in members {
            let _ = write!(
                page,
                "<tr><td>{}<td>{}<td>{}<td class={h}>{h}<td>{}",
                escape(service),
                escape(&m.host),
                m.addr,
                escape(&m.routes.join(", ")),
                h = m.health
            );
        }
    }
    page.push_str("</table><p><a href=/metrics>metrics</a> · <a href=/members>members (JSON)</a>");
    Html(page)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
