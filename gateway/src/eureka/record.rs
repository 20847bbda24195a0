//! Instances and the registry as Eureka shows them, in JSON and XML.

use std::collections::BTreeMap;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
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

/// How much of each instance an answer shows: all of it, or the compact
/// form a client asks for with `X-Eureka-Accept: compact` (Eureka's
/// `MiniInstanceInfoMixIn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Full,
    Compact,
}

/// The fields the compact form leaves out (those of them we write).
const NOT_COMPACT: [&str; 9] = [
    "overriddenStatus",
    "countryId",
    "leaseInfo",
    "metadata",
    "homePageUrl",
    "statusPageUrl",
    "healthCheckUrl",
    "isCoordinatingDiscoveryServer",
    "lastDirtyTimestamp",
];

/// What Eureka writes for an empty metadata map (for old clients).
const EMPTY_METADATA: (&str, &str) = ("class", "java.util.Collections$EmptyMap");

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

    /// The JSON record (`{"instanceId":…}`), field order as Eureka's
    /// (`EurekaJacksonCodec.InstanceInfoSerializer`).
    pub fn json(&self, now_ms: u64, action: &str, form: Form) -> Value {
        let (renewal, duration) = self.lease_secs;
        let metadata = if self.metadata.is_empty() {
            json!({ format!("@{}", EMPTY_METADATA.0): EMPTY_METADATA.1 })
        } else {
            json!(self.metadata)
        };
        let mut record = json!({
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
            "metadata": metadata,
            "homePageUrl": self.urls[0],
            "statusPageUrl": self.urls[1],
            "healthCheckUrl": self.urls[2],
            "vipAddress": self.vip,
            "secureVipAddress": self.secure_vip,
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": self.updated_ms.to_string(),
            "lastDirtyTimestamp": self.dirty_ms.to_string(),
            "actionType": action
        });
        if form == Form::Compact
            && let Some(fields) = record.as_object_mut()
        {
            fields.retain(|k, _| !NOT_COMPACT.contains(&k.as_str()));
        }
        record
    }

    /// The XML record (`<instance>…</instance>`), in Eureka's field order
    /// (`Converters.InstanceInfoConverter`).
    pub fn xml(&self, now_ms: u64, action: &str, form: Form, x: &mut Xml) {
        // Named as in JSON: one list says what the compact form leaves out.
        let shown = |field: &str| form == Form::Full || !NOT_COMPACT.contains(&field);
        x.open("instance");
        x.leaf("instanceId", &self.instance_id);
        x.leaf("hostName", &self.host_name);
        x.leaf("app", &self.app);
        x.leaf("ipAddr", &self.ip);
        x.leaf("status", self.status);
        if shown("overriddenStatus") {
            x.leaf("overriddenstatus", self.overridden);
        }
        x.leaf_with("port", ("enabled", "true"), &self.port.to_string());
        let secure_on = if self.secure_port.is_some() {
            "true"
        } else {
            "false"
        };
        let secure = self.secure_port.unwrap_or(443).to_string();
        x.leaf_with("securePort", ("enabled", secure_on), &secure);
        if shown("countryId") {
            x.leaf("countryId", "1");
        }
        x.open_with(
            "dataCenterInfo",
            (
                "class",
                "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            ),
        );
        x.leaf("name", &self.data_center);
        x.close("dataCenterInfo");
        if shown("leaseInfo") {
            self.xml_lease(now_ms, x);
        }
        if shown("metadata") {
            self.xml_metadata(x);
        }
        let later = [
            ("homePageUrl", &*self.urls[0]),
            ("statusPageUrl", &self.urls[1]),
            ("healthCheckUrl", &self.urls[2]),
            ("vipAddress", &self.vip),
            ("secureVipAddress", &self.secure_vip),
            ("isCoordinatingDiscoveryServer", "false"),
            ("lastUpdatedTimestamp", &self.updated_ms.to_string()),
            ("lastDirtyTimestamp", &self.dirty_ms.to_string()),
            ("actionType", action),
        ];
        for (name, value) in later {
            if shown(name) {
                x.leaf(name, value);
            }
        }
        x.close("instance");
    }

    /// `<leaseInfo>`.
    fn xml_lease(&self, now_ms: u64, x: &mut Xml) {
        let (renewal, duration) = self.lease_secs;
        let registered = self.registered_ms.to_string();
        x.open("leaseInfo");
        x.leaf("renewalIntervalInSecs", &renewal.to_string());
        x.leaf("durationInSecs", &duration.to_string());
        x.leaf("registrationTimestamp", &registered);
        x.leaf(
            "lastRenewalTimestamp",
            &self.renewed_ms.unwrap_or(now_ms).to_string(),
        );
        x.leaf("evictionTimestamp", "0");
        x.leaf("serviceUpTimestamp", &registered);
        x.close("leaseInfo");
    }

    /// `<metadata>` (`class="…EmptyMap"` when empty).
    fn xml_metadata(&self, x: &mut Xml) {
        if self.metadata.is_empty() {
            x.open_with("metadata", EMPTY_METADATA);
        } else {
            x.open("metadata");
        }
        for (k, v) in &self.metadata {
            // Keys are valid XML names: ours are, and registrations are checked.
            x.leaf(k, v);
        }
        x.close("metadata");
    }
}

/// An XML answer written with quick-xml's writer: text and attributes
/// escaped, elements balanced, and characters XML 1.0 cannot carry (from
/// gossip: registrations with them are refused) replaced by U+FFFD.
pub struct Xml {
    w: quick_xml::Writer<Vec<u8>>,
}

impl Default for Xml {
    fn default() -> Self {
        Self {
            w: quick_xml::Writer::new(Vec::new()),
        }
    }
}

impl Xml {
    // Writing into a Vec cannot fail: the io::Results are dropped.

    /// `<name>`.
    pub fn open(&mut self, name: &str) {
        let _ = self.w.write_event(Event::Start(BytesStart::new(name)));
    }

    /// `<name key="value">`.
    pub fn open_with(&mut self, name: &str, attr: (&str, &str)) {
        let mut start = BytesStart::new(name);
        start.push_attribute((attr.0, &*carriable(attr.1)));
        let _ = self.w.write_event(Event::Start(start));
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) {
        let _ = self.w.write_event(Event::End(BytesEnd::new(name)));
    }

    /// `<name>text</name>`.
    pub fn leaf(&mut self, name: &str, text: &str) {
        let _ = self
            .w
            .create_element(name)
            .write_text_content(BytesText::new(&carriable(text)));
    }

    /// `<name key="value">text</name>`.
    pub fn leaf_with(&mut self, name: &str, attr: (&str, &str), text: &str) {
        let _ = self
            .w
            .create_element(name)
            .with_attribute((attr.0, &*carriable(attr.1)))
            .write_text_content(BytesText::new(&carriable(text)));
    }

    /// The document, after the XML declaration Eureka sends.
    pub fn finish(self) -> String {
        let body = String::from_utf8(self.w.into_inner())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>{body}")
    }
}

/// Whether `text` reads as XML from start to end: what the tests and the
/// fuzz target ask of every answer.
pub fn well_formed(text: &str) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(text);
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether XML 1.0 can carry `c` (its `Char` production).
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `text` with what XML cannot carry replaced by U+FFFD.
fn carriable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().all(xml_char) {
        std::borrow::Cow::Borrowed(text)
    } else {
        text.chars()
            .map(|c| if xml_char(c) { c } else { '\u{FFFD}' })
            .collect::<String>()
            .into()
    }
}

/// Eureka's hash code of `instances`: `STATUS_count_` per status,
/// alphabetical; `""` when there are none.
pub fn hashcode<'a>(instances: impl Iterator<Item = &'a Instance>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in instances {
        *counts.entry(instance.status).or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, n)| format!("{status}_{n}_"))
        .collect()
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
        hashcode(self.instances())
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
