//! Eureka's REST API on the admin port, so Eureka clients (Spring Cloud
//! Netflix, py-eureka-client, eureka-js-client) register and discover with
//! no Eureka server.
//!
//! - **Reads**: every member of this gateway's view is an instance of the
//!   application named after its service, upper-cased (STORY-SERVICE,
//!   GATEWAY…), beside the instances registered through this API. Paths
//!   under `/eureka/` and `/eureka/v2/`, with and without a trailing slash:
//!   `apps`, `apps/delta`, `apps/{APP}`, `apps/{APP}/{ID}`, `instances/{ID}`,
//!   `vips/{vip}`, `svips/{svip}`. JSON when `Accept` contains `json`, XML
//!   otherwise (the Python client reads only XML); the compact form when
//!   `X-Eureka-Accept: compact`; `?regions=` taken and ignored (one
//!   region). Shapes are Eureka 2.x's, pinned field by field against its
//!   encoders (`eureka/fixtures/`): `application` and `instance` always
//!   arrays, `versions__delta` `1` for the registry, the delta's version
//!   for a delta, `-1` for a VIP, `apps__hashcode` `STATUS_count_` over
//!   what the answer holds (the whole registry for a delta).
//! - **Writes**: register (`POST apps/{APP}`, JSON or XML → 204), heartbeat
//!   (`PUT apps/{APP}/{ID}` → 200 or 404, empty bodies), cancel, status
//!   override, metadata. Each becomes a lease in gossip
//!   ([`shoal_node::Lease`]): every gateway routes `/api/{app}/**` to the
//!   instance within a few gossip rounds, a heartbeat to any gateway renews
//!   it, and it leaves every view on cancel or when its lease runs out.
//!
//! Writes need credentials by default ([`access`]).
//!
//! [`record`] renders instances, [`register`](mod@register) reads registration bodies,
//! [`changes`] keeps the registry and its recent changes for deltas.

mod access;
mod changes;
mod record;
pub mod register;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use shoal_node::{Cluster, LeaseError, LeaseLimits, LeaseOp, Status};
use tokio::sync::watch;
use tracing::info;

use shoal_node::now_ms;

pub use access::{Access, parse_users};
pub use changes::Snapshot;
pub use record::{Form, Instance, Registry, Xml, well_formed};

/// The largest registration body taken (Eureka's own records are ~1.5 KB).
const MAX_BODY: usize = 64 * 1024;

/// What the Eureka routes share: the cluster (to write leases) and the
/// registry snapshots.
#[derive(Clone)]
pub struct Eureka {
    cluster: Cluster,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    limits: LeaseLimits,
}

impl Eureka {
    /// Starts following `cluster`'s view; call once per gateway. New
    /// registrations beyond `limits` are refused.
    pub fn start(cluster: Cluster, limits: LeaseLimits) -> Self {
        let snapshots = changes::follow(cluster.view());
        cluster.keep_leases();
        Self {
            cluster,
            snapshots,
            limits,
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }
}

/// How to answer: JSON when `Accept` contains `json`, else XML.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("json"))
}

/// What an answer looks like: JSON or XML, full or compact.
#[derive(Debug, Clone, Copy)]
struct Answer {
    json: bool,
    form: Form,
}

impl Answer {
    /// JSON when `Accept` names it; compact when `X-Eureka-Accept` says so.
    fn of(headers: &HeaderMap) -> Self {
        let compact = headers
            .get("x-eureka-accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("compact"));
        Self {
            json: wants_json(headers),
            form: if compact { Form::Compact } else { Form::Full },
        }
    }
}

/// Applications grouped by name, each with its `(action, instance)` list.
type Apps<'a> = BTreeMap<&'a str, Vec<(&'a str, &'a Instance)>>;

/// The body of an `applications` answer (the full registry, a delta, or a
/// VIP) with its `versions__delta` and `apps__hashcode`.
fn applications_body(
    apps: &Apps,
    version: &str,
    hashcode: &str,
    answer: Answer,
    now: u64,
) -> String {
    if answer.json {
        let application: Vec<Value> = apps
            .iter()
            .map(|(name, list)| application_json(name, list, answer.form, now))
            .collect();
        let body = json!({"applications": {
            "versions__delta": version,
            "apps__hashcode": hashcode,
            "application": application,
        }});
        return body.to_string();
    }
    let mut x = Xml::default();
    x.open("applications");
    x.leaf("versions__delta", version);
    x.leaf("apps__hashcode", hashcode);
    for (name, list) in apps {
        application_xml(name, list, answer.form, now, &mut x);
    }
    x.close("applications");
    x.finish()
}

/// One application: its name and its `(action, instance)` list.
fn application_json(name: &str, list: &[(&str, &Instance)], form: Form, now: u64) -> Value {
    let instances: Vec<Value> = list.iter().map(|(a, i)| i.json(now, a, form)).collect();
    json!({"name": name, "instance": instances})
}

/// [`application_json`] in XML.
fn application_xml(name: &str, list: &[(&str, &Instance)], form: Form, now: u64, x: &mut Xml) {
    x.open("application");
    x.leaf("name", name);
    for (action, i) in list {
        i.xml(now, action, form, x);
    }
    x.close("application");
}

/// [`applications_body`] as a response.
fn applications(apps: &Apps, version: &str, hashcode: &str, answer: Answer) -> Response {
    let body = applications_body(apps, version, hashcode, answer, now_ms());
    let kind = if answer.json {
        "application/json"
    } else {
        "application/xml"
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The registry's instances that `keep`, grouped by application, as ADDED.
fn select(registry: &Registry, keep: impl Fn(&Instance) -> bool) -> Apps<'_> {
    let mut apps: Apps = BTreeMap::new();
    for i in registry.instances().filter(|i| keep(i)) {
        apps.entry(i.app.as_str()).or_default().push(("ADDED", i));
    }
    apps
}

fn json_response(body: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn xml_response(x: Xml) -> Response {
    ([(header::CONTENT_TYPE, "application/xml")], x.finish()).into_response()
}

/// One instance, always in full (Eureka's instance lookups have no
/// compact form).
fn one_instance(instance: &Instance, headers: &HeaderMap) -> Response {
    let now = now_ms();
    if wants_json(headers) {
        return json_response(&json!({"instance": instance.json(now, "ADDED", Form::Full)}));
    }
    let mut x = Xml::default();
    instance.xml(now, "ADDED", Form::Full, &mut x);
    xml_response(x)
}

/// A refusal, in plain text (what Eureka answers), with an empty body for
/// the answers Java clients must find empty.
fn refused(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// A new registration over the cap: 507, with Spring's error body naming
/// the limit.
fn over_cap(err: &LeaseError, path: &str) -> Response {
    let status = StatusCode::INSUFFICIENT_STORAGE;
    let body = shoal_http::spring::error_json::<String>(status, &err.to_string(), path, &[]);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The answer to a lease operation: 200 or `ok` with an empty body; 404
/// with an empty body when unknown (clients then re-register); a new
/// registration over the cap, 507 with Spring's error body.
fn lease_answer(result: Result<(), LeaseError>, ok: StatusCode) -> Response {
    match result {
        Ok(()) => ok.into_response(),
        Err(err @ (LeaseError::TooMany { .. } | LeaseError::TooManyOfApp { .. })) => {
            over_cap(&err, "/eureka/apps")
        }
        Err(LeaseError::NotFound { .. }) => StatusCode::NOT_FOUND.into_response(),
        Err(err @ LeaseError::Native(_)) => refused(StatusCode::CONFLICT, err),
        Err(err @ LeaseError::TooLarge { .. }) => refused(StatusCode::PAYLOAD_TOO_LARGE, err),
    }
}

/// The whole registry: version `1`, as Eureka's (`setVersion(1L)`).
async fn all(State(e): State<Eureka>, headers: HeaderMap) -> Response {
    let s = e.snapshot();
    let apps = select(&s.registry, |_| true);
    applications(&apps, "1", &s.registry.hashcode(), Answer::of(&headers))
}

/// The recent changes, at the delta's version, with the hash code of the
/// whole registry (what a client reconciles against).
async fn delta(State(e): State<Eureka>, headers: HeaderMap) -> Response {
    let s = e.snapshot();
    let mut apps: Apps = BTreeMap::new();
    for (action, i) in &s.changes {
        apps.entry(i.app.as_str())
            .or_default()
            .push((action.as_str(), i));
    }
    let version = s.version.to_string();
    applications(
        &apps,
        &version,
        &s.registry.hashcode(),
        Answer::of(&headers),
    )
}

async fn one_app(State(e): State<Eureka>, Path(app): Path<String>, headers: HeaderMap) -> Response {
    let s = e.snapshot();
    let app = app.to_uppercase();
    let Some(list) = s.registry.app(&app) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now = now_ms();
    let answer = Answer::of(&headers);
    let list: Vec<(&str, &Instance)> = list.iter().map(|i| ("ADDED", i)).collect();
    if answer.json {
        let application = application_json(&app, &list, answer.form, now);
        return json_response(&json!({ "application": application }));
    }
    let mut x = Xml::default();
    application_xml(&app, &list, answer.form, now, &mut x);
    xml_response(x)
}

async fn by_app_and_id(
    State(e): State<Eureka>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = e.snapshot();
    match s
        .registry
        .find(&id)
        .filter(|i| i.app.eq_ignore_ascii_case(&app))
    {
        Some(i) => one_instance(i, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn by_id(State(e): State<Eureka>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match e.snapshot().registry.find(&id) {
        Some(i) => one_instance(i, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The instances whose `vipAddress` lists `vip` (comma-separated, exact),
/// as Eureka's `getApplicationsForVip` answers: version `-1`, the hash
/// code of what it holds, an empty list when none.
async fn by_vip(State(e): State<Eureka>, Path(vip): Path<String>, headers: HeaderMap) -> Response {
    vip_answer(&e, &headers, |i| &i.vip, &vip)
}

/// The same over `secureVipAddress`.
async fn by_svip(State(e): State<Eureka>, Path(vip): Path<String>, headers: HeaderMap) -> Response {
    vip_answer(&e, &headers, |i| &i.secure_vip, &vip)
}

fn vip_answer(
    e: &Eureka,
    headers: &HeaderMap,
    field: impl Fn(&Instance) -> &String,
    vip: &str,
) -> Response {
    let s = e.snapshot();
    let (apps, hashcode) = vip_apps(&s.registry, field, vip);
    applications(&apps, "-1", &hashcode, Answer::of(headers))
}

/// The instances whose `field` (a comma-separated list) holds `vip`, and
/// their hash code.
fn vip_apps<'a>(
    registry: &'a Registry,
    field: impl Fn(&Instance) -> &String,
    vip: &str,
) -> (Apps<'a>, String) {
    let apps = select(registry, |i| field(i).split(',').any(|v| v == vip));
    let hashcode = record::hashcode(apps.values().flatten().map(|(_, i)| *i));
    (apps, hashcode)
}

async fn register(
    State(e): State<Eureka>,
    Path(app): Path<String>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let registration = match register::parse(&app, content_type, &body) {
        Ok(r) => r,
        Err(reason) => return refused(StatusCode::BAD_REQUEST, reason),
    };
    let (app, id) = (registration.app.clone(), registration.instance_id.clone());
    let addr = std::net::SocketAddr::new(registration.ip_addr, registration.port);
    let result = e
        .cluster
        .lease_within(
            &app,
            &id,
            LeaseOp::Register(Box::new(registration)),
            Some(e.limits),
        )
        .await;
    match &result {
        Ok(_) => info!(%app, instance = %id, %addr, "registered through Eureka"),
        Err(err @ (LeaseError::TooMany { .. } | LeaseError::TooManyOfApp { .. })) => {
            tracing::warn!(%app, instance = %id, "registration refused: {err}");
            return over_cap(err, uri.path());
        }
        Err(_) => {}
    }
    lease_answer(result.map(drop), StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(e): State<Eureka>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    // A heartbeat is never refused for its query: a status Eureka does not
    // know is ignored.
    let status = q.get("status").and_then(|s| s.parse().ok());
    let result = e.cluster.lease(&app, &id, LeaseOp::Renew { status }).await;
    lease_answer(result.map(drop), StatusCode::OK)
}

async fn cancel(State(e): State<Eureka>, Path((app, id)): Path<(String, String)>) -> Response {
    let result = e.cluster.lease(&app, &id, LeaseOp::Cancel).await;
    if result.is_ok() {
        info!(%app, instance = %id, "cancelled through Eureka");
    }
    lease_answer(result.map(drop), StatusCode::OK)
}

async fn set_status(
    State(e): State<Eureka>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let status: Status = match q.get("value").map(|v| v.parse()) {
        Some(Ok(s)) => s,
        Some(Err(err)) => return refused(StatusCode::BAD_REQUEST, err),
        None => {
            return refused(
                StatusCode::BAD_REQUEST,
                "the status to set is missing: PUT …/status?value=OUT_OF_SERVICE",
            );
        }
    };
    let result = e.cluster.lease(&app, &id, LeaseOp::Override(status)).await;
    lease_answer(result.map(drop), StatusCode::OK)
}

async fn clear_status(
    State(e): State<Eureka>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let status = match q.get("value").map(|v| v.parse::<Status>()) {
        Some(Ok(s)) => Some(s),
        Some(Err(err)) => return refused(StatusCode::BAD_REQUEST, err),
        None => None,
    };
    let result = e
        .cluster
        .lease(&app, &id, LeaseOp::ClearOverride(status))
        .await;
    lease_answer(result.map(drop), StatusCode::OK)
}

async fn set_metadata(
    State(e): State<Eureka>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let metadata = match register::metadata(q.iter().map(|(k, v)| (k, Some(v.clone())))) {
        Ok(m) => m,
        Err(reason) => return refused(StatusCode::BAD_REQUEST, reason),
    };
    let result = e
        .cluster
        .lease(&app, &id, LeaseOp::Metadata(metadata))
        .await;
    lease_answer(result.map(drop), StatusCode::OK)
}

/// The Eureka routes, under `/eureka` and `/eureka/v2`, behind `access`.
pub fn router(eureka: Eureka, access: Access) -> Router {
    let prefix = Router::new()
        .route("/apps", get(all))
        .route("/apps/", get(all))
        .route("/apps/delta", get(delta))
        .route("/apps/delta/", get(delta))
        .route("/apps/{app}", get(one_app).post(register))
        .route("/apps/{app}/", get(one_app).post(register))
        .route(
            "/apps/{app}/{id}",
            get(by_app_and_id).put(heartbeat).delete(cancel),
        )
        .route(
            "/apps/{app}/{id}/status",
            put(set_status).delete(clear_status),
        )
        .route("/apps/{app}/{id}/metadata", put(set_metadata))
        .route("/instances/{id}", get(by_id))
        .route("/vips/{vip}", get(by_vip))
        .route("/svips/{vip}", get(by_svip))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(access, access::check));
    Router::new()
        .nest("/eureka", prefix.clone())
        .nest("/eureka/v2", prefix)
        .with_state(eureka)
}

#[cfg(test)]
mod tests;
