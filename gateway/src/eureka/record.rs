//! Instances and the registry as Eureka shows them, in JSON and XML.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};
use shoal_node::{ClusterView, Health, Member};

/// An instance as Eureka shows it: a member that joined by itself, or one
/// registered through the Eureka API (then shown as it registered).
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `10.0.9.5:story-service:8768`.
    pub instance_id: String,
    /// The upper-cased service name.
    pub app: String,
    /// `hostName` (a member's address: task names do not resolve
    /// everywhere, addresses do).
    pub host_name: String,
    /// `ipAddr`.
    pub ip: String,
    /// Its service port.
    pub port: u16,
    /// Its secure port, when enabled.
    pub secure_port: Option<u16>,
    /// UP, DOWN, STARTING, OUT_OF_SERVICE (the override when one is set).
    pub status: &'static str,
    /// The operator's override, `UNKNOWN` when none.
    pub overridden: &'static str,
    /// `vipAddress`.
    pub vip: String,
    /// `secureVipAddress`.
    pub secure_vip: String,
    /// `dataCenterInfo.name`.
    pub data_center: String,
    /// Metadata (keys are valid XML names).
    pub metadata: BTreeMap<String, String>,
    /// `homePageUrl`, `statusPageUrl`, `healthCheckUrl`.
    pub urls: [String; 3],
    /// `leaseInfo.renewalIntervalInSecs`, `durationInSecs`.
    pub lease_secs: (u32, u32),
    /// Registration (or start), ms since the epoch.
    pub registered_ms: u64,
    /// Last renewal; `None` for a member that joined by itself (gossip
    /// renews it continuously: shown as now).
    pub renewed_ms: Option<u64>,
    /// Last change, ms (`lastUpdatedTimestamp`).
    pub updated_ms: u64,
    /// The client's `lastDirtyTimestamp`.
    pub dirty_ms: u64,
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
    /// The instance a member stands for.
    pub fn of(member: &Member) -> Self {
        if let Some(lease) = &member.lease {
            let r = &lease.registration;
            return Self {
                instance_id: r.instance_id.clone(),
                app: r.app.clone(),
                host_name: r.host_name.clone(),
                ip: r.ip_addr.to_string(),
                port: r.port,
                secure_port: r.secure_port,
                status: r.effective_status().as_str(),
                overridden: r.overridden_status.as_str(),
                vip: r.vip_address.clone(),
                secure_vip: r.secure_vip_address.clone(),
                data_center: r.data_center.clone(),
                metadata: r.metadata.clone(),
                urls: [
                    r.home_page_url.clone(),
                    r.status_page_url.clone(),
                    r.health_check_url.clone(),
                ],
                lease_secs: (r.renewal_interval_secs, r.duration_secs),
                registered_ms: lease.registered_ms,
                renewed_ms: Some(lease.renewed_ms),
                updated_ms: lease.updated_ms,
                dirty_ms: r.dirty_ms,
            };
        }
        let ip = member.addr.ip().to_string();
        let mut metadata = BTreeMap::new();
        metadata.insert("shoal.member".to_string(), member.id.to_string());
        metadata.insert("shoal.host".to_string(), member.host.clone());
        metadata.insert("shoal.version".to_string(), member.version.clone());
        if !member.routes.is_empty() {
            metadata.insert("shoal.routes".to_string(), member.routes.join(","));
        }
        let base = format!("http://{ip}:{}/", member.addr.port());
        Self {
            instance_id: member.instance_id(),
            app: member.service.to_uppercase(),
            host_name: ip.clone(),
            ip,
            port: member.addr.port(),
            secure_port: None,
            status: status(member.health),
            overridden: "UNKNOWN",
            vip: member.service.clone(),
            secure_vip: member.service.clone(),
            data_center: "MyOwn".to_string(),
            metadata,
            urls: [
                base.clone(),
                format!("{base}health"),
                format!("{base}health"),
            ],
            lease_secs: (30, 90),
            registered_ms: member.started_ms,
            renewed_ms: None,
            updated_ms: member.started_ms,
            dirty_ms: member.started_ms,
        }
    }

    /// Whether `other` is this instance changed in a way a delta reports
    /// (anything but a renewal).
    pub fn differs(&self, other: &Instance) -> bool {
        let mut a = self.clone();
        a.renewed_ms = other.renewed_ms;
        a != *other
    }

    /// The JSON record (`{"instanceId":…}`), field order as Eureka's.
    pub fn json(&self, now_ms: u64, action: &str) -> Value {
        let (renewal, duration) = self.lease_secs;
        json!({
            "instanceId": self.instance_id,
            "hostName": self.host_name,
            "app": self.app,
            "ipAddr": self.ip,
            "status": self.status,
            "overriddenStatus": self.overridden,
            "port": {"$": self.port, "@enabled": "true"},
            "securePort": {"$": self.secure_port.unwrap_or(443), "@enabled": self.secure_port.is_some().to_string()},
            "countryId": 1,
            "dataCenterInfo": {
                "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": self.data_center
            },
            "leaseInfo": {
                "renewalIntervalInSecs": renewal,
                "durationInSecs": duration,
                "registrationTimestamp": self.registered_ms,
                "lastRenewalTimestamp": self.renewed_ms.unwrap_or(now_ms),
                "evictionTimestamp": 0,
                "serviceUpTimestamp": self.registered_ms
            },
            "metadata": self.metadata,
            "homePageUrl": self.urls[0],
            "statusPageUrl": self.urls[1],
            "healthCheckUrl": self.urls[2],
            "vipAddress": self.vip,
            "secureVipAddress": self.secure_vip,
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": self.updated_ms.to_string(),
            "lastDirtyTimestamp": self.dirty_ms.to_string(),
            "actionType": action
        })
    }

    /// The XML record (`<instance>…</instance>`).
    pub fn xml(&self, now_ms: u64, action: &str, out: &mut String) {
        let e = escape;
        let (renewal, duration) = self.lease_secs;
        let _ = write!(
            out,
            "<instance><instanceId>{id}</instanceId><hostName>{host}</hostName><app>{app}</app>\
             <ipAddr>{ip}</ipAddr><status>{status}</status><overriddenstatus>{overridden}</overriddenstatus>\
             <port enabled=\"true\">{port}</port><securePort enabled=\"{secure_on}\">{secure}</securePort>\
             <countryId>1</countryId>\
             <dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\"><name>{dc}</name></dataCenterInfo>\
             <leaseInfo><renewalIntervalInSecs>{renewal}</renewalIntervalInSecs><durationInSecs>{duration}</durationInSecs>\
             <registrationTimestamp>{registered}</registrationTimestamp><lastRenewalTimestamp>{renewed}</lastRenewalTimestamp>\
             <evictionTimestamp>0</evictionTimestamp><serviceUpTimestamp>{registered}</serviceUpTimestamp></leaseInfo>\
             <metadata>",
            id = e(&self.instance_id),
            host = e(&self.host_name),
            ip = e(&self.ip),
            app = e(&self.app),
            status = self.status,
            overridden = self.overridden,
            port = self.port,
            secure_on = self.secure_port.is_some(),
            secure = self.secure_port.unwrap_or(443),
            dc = e(&self.data_center),
            registered = self.registered_ms,
            renewed = self.renewed_ms.unwrap_or(now_ms),
        );
        for (k, v) in &self.metadata {
            // Keys are valid XML names: ours are, and registrations are checked.
            let _ = write!(out, "<{k}>{}</{k}>", e(v));
        }
        let _ = write!(
            out,
            "</metadata><homePageUrl>{home}</homePageUrl><statusPageUrl>{status}</statusPageUrl>\
             <healthCheckUrl>{health}</healthCheckUrl><vipAddress>{vip}</vipAddress>\
             <secureVipAddress>{svip}</secureVipAddress>\
             <isCoordinatingDiscoveryServer>false</isCoordinatingDiscoveryServer>\
             <lastUpdatedTimestamp>{updated}</lastUpdatedTimestamp><lastDirtyTimestamp>{dirty}</lastDirtyTimestamp>\
             <actionType>{action}</actionType></instance>",
            home = e(&self.urls[0]),
            status = e(&self.urls[1]),
            health = e(&self.urls[2]),
            vip = e(&self.vip),
            svip = e(&self.secure_vip),
            updated = self.updated_ms,
            dirty = self.dirty_ms,
        );
    }
}

/// The registry seen by this gateway: application name → instances.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    pub(super) apps: BTreeMap<String, Vec<Instance>>,
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

    /// Every instance.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.apps.values().flatten()
    }

    /// The instance with that id.
    pub fn find(&self, id: &str) -> Option<&Instance> {
        self.instances().find(|i| i.instance_id == id)
    }

    /// The instances of one application (upper case).
    pub fn app(&self, app: &str) -> Option<&[Instance]> {
        self.apps.get(app).map(Vec::as_slice)
    }
}

/// Escapes text for XML and HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
