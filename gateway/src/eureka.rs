//! Eureka's REST reads on the admin port, so Eureka clients (Spring Cloud
//! Netflix, py-eureka-client, eureka-js-client) discover shoal services
//! with no Eureka server: every member of this gateway's view is an
//! instance of the application named after its service, upper-cased
//! (STORY-SERVICE, NOTICE-SERVICE, BOARD-SERVICE, GATEWAY).
//!
//! Paths under `/eureka/` and `/eureka/v2/`, with and without a trailing
//! slash: `apps`, `apps/delta`, `apps/{APP}`, `apps/{APP}/{ID}`,
//! `instances/{ID}`, `vips/{vip}`, `svips/{svip}`. JSON when `Accept`
//! contains `json`, XML otherwise (the Python client reads only XML).
//! Shapes follow `../shared/EUREKA.md`: `application` and `instance` are
//! always arrays, `versions__delta` always present, `apps__hashcode` is
//! `STATUS_count_` over the registry, ports carry `@enabled`.
//!
//! Registration (POST/PUT/DELETE under `apps/`) is not served yet: it
//! answers 501 and says so, rather than pretend to keep a lease.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use shoal_node::{ClusterView, Health, Member};

/// An instance as Eureka shows it, built from a member.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `10.0.9.5:story-service:8768`.
    pub instance_id: String,
    /// The upper-cased service name.
    pub app: String,
    /// The member's address (also its `hostName`: task names do not resolve
    /// everywhere, addresses do).
    pub ip: String,
    /// Its service port.
    pub port: u16,
    /// UP, STARTING or OUT_OF_SERVICE.
    pub status: &'static str,
    /// The service name, lower case (`vipAddress`).
    pub vip: String,
    /// Its start, ms since the epoch.
    pub started_ms: u64,
    /// shoal's facts about it, as Eureka metadata.
    pub metadata: BTreeMap<&'static str, String>,
}

/// Eureka's status for a member's health.
pub fn status(health: Health) -> &'static str {
    match health {
        Health::Up => "UP",
        Health::Starting => "STARTING",
        Health::Draining | Health::Left => "OUT_OF_SERVICE",
    }
}

impl Instance {
    fn of(member: &Member) -> Self {
        let ip = member.addr.ip().to_string();
        let mut metadata = BTreeMap::new();
        metadata.insert("shoal.member", member.id.to_string());
        metadata.insert("shoal.host", member.host.clone());
        metadata.insert("shoal.version", member.version.clone());
        if !member.routes.is_empty() {
            metadata.insert("shoal.routes", member.routes.join(","));
        }
        Self {
            instance_id: format!("{ip}:{}:{}", member.service, member.addr.port()),
            app: member.service.to_uppercase(),
            ip,
            port: member.addr.port(),
            status: status(member.health),
            vip: member.service.clone(),
            started_ms: member.started_ms,
            metadata,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}:{}/", self.ip, self.port)
    }

    /// The JSON record (`{"instanceId":…}`), field order as Eureka's.
    pub fn json(&self, now_ms: u64) -> Value {
        let base = self.base_url();
        json!({
            "instanceId": self.instance_id,
            "hostName": self.ip,
            "app": self.app,
            "ipAddr": self.ip,
            "status": self.status,
            "overriddenStatus": "UNKNOWN",
            "port": {"$": self.port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "countryId": 1,
            "dataCenterInfo": {
                "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": "MyOwn"
            },
            "leaseInfo": {
                "renewalIntervalInSecs": 30,
                "durationInSecs": 90,
                "registrationTimestamp": self.started_ms,
                "lastRenewalTimestamp": now_ms,
                "evictionTimestamp": 0,
                "serviceUpTimestamp": self.started_ms
            },
            "metadata": self.metadata,
            "homePageUrl": base,
            "statusPageUrl": format!("{base}health"),
            "healthCheckUrl": format!("{base}health"),
            "vipAddress": self.vip,
            "secureVipAddress": self.vip,
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": self.started_ms.to_string(),
            "lastDirtyTimestamp": self.started_ms.to_string(),
            "actionType": "ADDED"
        })
    }

    /// The XML record (`<instance>…</instance>`).
    pub fn xml(&self, now_ms: u64, out: &mut String) {
        let base = self.base_url();
        let e = escape;
        let _ = write!(
            out,
            "<instance><instanceId>{id}</instanceId><hostName>{ip}</hostName><app>{app}</app>\
             <ipAddr>{ip}</ipAddr><status>{status}</status><overriddenstatus>UNKNOWN</overriddenstatus>\
             <port enabled=\"true\">{port}</port><securePort enabled=\"false\">443</securePort>\
             <countryId>1</countryId>\
             <dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\"><name>MyOwn</name></dataCenterInfo>\
             <leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs><durationInSecs>90</durationInSecs>\
             <registrationTimestamp>{started}</registrationTimestamp><lastRenewalTimestamp>{now_ms}</lastRenewalTimestamp>\
             <evictionTimestamp>0</evictionTimestamp><serviceUpTimestamp>{started}</serviceUpTimestamp></leaseInfo>\
             <metadata>",
            id = e(&self.instance_id),
            ip = e(&self.ip),
            app = e(&self.app),
            status = self.status,
            port = self.port,
            started = self.started_ms,
        );
        for (k, v) in &self.metadata {
            // The keys are ours, valid XML names (letters and dots).
            let _ = write!(out, "<{k}>{}</{k}>", e(v));
        }
        let _ = write!(
            out,
            "</metadata><homePageUrl>{base}</homePageUrl><statusPageUrl>{base}health</statusPageUrl>\
             <healthCheckUrl>{base}health</healthCheckUrl><vipAddress>{vip}</vipAddress>\
             <secureVipAddress>{vip}</secureVipAddress>\
             <isCoordinatingDiscoveryServer>false</isCoordinatingDiscoveryServer>\
             <lastUpdatedTimestamp>{started}</lastUpdatedTimestamp><lastDirtyTimestamp>{started}</lastDirtyTimestamp>\
             <actionType>ADDED</actionType></instance>",
            base = e(&base),
            vip = e(&self.vip),
            started = self.started_ms,
        );
    }
}

/// The registry seen by this gateway: application name → instances.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    apps: BTreeMap<String, Vec<Instance>>,
}

impl Registry {
    /// The registry of `view`: every member, whatever its health.
    pub fn of(view: &ClusterView) -> Self {
        let mut apps: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for member in view.members() {
            let instance = Instance::of(member);
            apps.entry(instance.app.clone()).or_default().push(instance);
        }
        Self { apps }
    }

    /// `STATUS_count_` per status, alphabetical; `""` when empty.
    pub fn hashcode(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for instance in self.apps.values().flatten() {
            *counts.entry(instance.status).or_default() += 1;
        }
        counts
            .iter()
            .map(|(status, n)| format!("{status}_{n}_"))
            .collect()
    }

    fn select(&self, keep: impl Fn(&Instance) -> bool) -> Vec<(&str, Vec<&Instance>)> {
        self.apps
            .iter()
            .map(|(name, list)| {
                (
                    name.as_str(),
                    list.iter().filter(|i| keep(i)).collect::<Vec<_>>(),
                )
            })
            .filter(|(_, list)| !list.is_empty())
            .collect()
    }

    fn find(&self, id: &str) -> Option<&Instance> {
        self.apps.values().flatten().find(|i| i.instance_id == id)
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `applications` (the full registry, a delta, or a VIP), in either form.
fn applications(registry: &Registry, apps: &[(&str, Vec<&Instance>)], json: bool) -> Response {
    let now = now_ms();
    let hashcode = registry.hashcode();
    if json {
        let application: Vec<Value> = apps
            .iter()
            .map(|(name, list)| {
                json!({"name": name, "instance": list.iter().map(|i| i.json(now)).collect::<Vec<_>>()})
            })
            .collect();
        let body = json!({"applications": {
            "versions__delta": "1",
            "apps__hashcode": hashcode,
            "application": application,
        }});
        return json_response(&body);
    }
    let mut out = String::from("<applications><versions__delta>1</versions__delta>");
    let _ = write!(out, "<apps__hashcode>{hashcode}</apps__hashcode>");
    for (name, list) in apps {
        let _ = write!(out, "<application><name>{}</name>", escape(name));
        for i in list {
            i.xml(now, &mut out);
        }
        out.push_str("</application>");
    }
    out.push_str("</applications>");
    xml_response(out)
}

fn json_response(body: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn xml_response(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>{body}"),
    )
        .into_response()
}

/// The registry routes, for `/eureka` and `/eureka/v2`; the state gives
/// this gateway's current view.
pub fn router<S>(view: fn(&S) -> std::sync::Arc<ClusterView>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let all = move |State(s): State<S>, headers: HeaderMap| async move {
        let registry = Registry::of(&view(&s));
        let apps = registry.select(|_| true);
        applications(&registry, &apps, wants_json(&headers))
    };
    let one_app = move |State(s): State<S>, Path(app): Path<String>, headers: HeaderMap| async move {
        let registry = Registry::of(&view(&s));
        let app = app.to_uppercase();
        let Some(list) = registry.apps.get(&app) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let now = now_ms();
        if wants_json(&headers) {
            let body = json!({"application": {
                "name": app,
                "instance": list.iter().map(|i| i.json(now)).collect::<Vec<_>>(),
            }});
            return json_response(&body);
        }
        let mut out = format!("<application><name>{}</name>", escape(&app));
        for i in list {
            i.xml(now, &mut out);
        }
        out.push_str("</application>");
        xml_response(out)
    };
    let one_instance = move |s: S, app: Option<String>, id: String, headers: HeaderMap| {
        let registry = Registry::of(&view(&s));
        let found = registry
            .find(&id)
            .filter(|i| app.as_ref().is_none_or(|a| a.eq_ignore_ascii_case(&i.app)));
        let Some(instance) = found else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let now = now_ms();
        if wants_json(&headers) {
            return json_response(&json!({"instance": instance.json(now)}));
        }
        let mut out = String::new();
        instance.xml(now, &mut out);
        xml_response(out)
    };
    let by_app_and_id = move |State(s): State<S>,
                              Path((app, id)): Path<(String, String)>,
                              headers: HeaderMap| async move {
        one_instance(s, Some(app), id, headers)
    };
    let by_id = move |State(s): State<S>, Path(id): Path<String>, headers: HeaderMap| async move {
        one_instance(s, None, id, headers)
    };
    let by_vip = move |State(s): State<S>, Path(vip): Path<String>, headers: HeaderMap| async move {
        let registry = Registry::of(&view(&s));
        let apps = registry.select(|i| i.vip.eq_ignore_ascii_case(&vip));
        if apps.is_empty() {
            return StatusCode::NOT_FOUND.into_response();
        }
        applications(&registry, &apps, wants_json(&headers))
    };
    let writes = || async {
        (
            StatusCode::NOT_IMPLEMENTED,
            [(header::CONTENT_TYPE, "text/plain")],
            "this shoal gateway serves Eureka reads (every shoal member is listed); \
             registration through Eureka is not available yet\n",
        )
    };
    let prefix = Router::new()
        .route("/apps", get(all).post(writes))
        .route("/apps/", get(all))
        .route("/apps/delta", get(all))
        .route("/apps/{app}", get(one_app).post(writes))
        .route("/apps/{app}/", get(one_app).post(writes))
        .route(
            "/apps/{app}/{id}",
            get(by_app_and_id).put(writes).delete(writes),
        )
        .route(
            "/apps/{app}/{id}/status",
            axum::routing::put(writes).delete(writes),
        )
        .route("/apps/{app}/{id}/metadata", axum::routing::put(writes))
        .route("/instances/{id}", get(by_id))
        .route("/vips/{vip}", get(by_vip))
        .route("/svips/{vip}", get(by_vip));
    Router::new()
        .nest("/eureka", prefix.clone())
        .nest("/eureka/v2", prefix)
}

#[cfg(test)]
mod tests;
