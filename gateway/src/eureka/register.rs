//! Reading a registration body (`POST apps/{APP}`), JSON or XML, into a
//! [`Registration`], with a reason for everything refused.
//!
//! Clients differ in small ways (`"$"` a number or a string, `"@enabled"` a
//! string or a bool, timestamps as numbers or strings, empty metadata sent as
//! `{"@class":"java.util.Collections$EmptyMap"}`); all of those are taken.
//! XML is read into the same tree as JSON, Eureka's way: attributes become
//! `@name`, an element's text beside attributes becomes `$`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use quick_xml::events::Event;
use serde_json::{Map, Value};
use shoal_node::{Registration, Status};

/// Why a registration was refused: said in the 400's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(reason: impl Into<String>) -> Invalid {
    Invalid(reason.into())
}

/// Reads a registration for application `path_app` from `body`, JSON when
/// `content_type` says so or the body starts with `{`, XML otherwise.
pub fn parse(path_app: &str, content_type: &str, body: &[u8]) -> Result<Registration, Invalid> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("the body is not UTF-8"))?;
    let json =
        content_type.to_ascii_lowercase().contains("json") || text.trim_start().starts_with('{');
    let doc = if json {
        serde_json::from_str::<Value>(text)
            .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?
    } else {
        xml_tree(text)?
    };
    let instance = doc
        .get("instance")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            invalid("the body must be an instance: {\"instance\":{…}} or <instance>…</instance>")
        })?;
    registration(path_app, instance)
}

/// A field as text: strings, numbers and booleans all read.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => o.get("$").and_then(text),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

fn field(o: &Map<String, Value>, name: &str) -> Option<String> {
    o.get(name).and_then(text)
}

fn required(o: &Map<String, Value>, name: &str) -> Result<String, Invalid> {
    field(o, name).ok_or_else(|| invalid(format!("instance.{name} is missing")))
}

fn number<T: std::str::FromStr>(
    o: &Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Option<T>, Invalid> {
    field(o, name)
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(format!("{what} {s:?} is not a valid number")))
        })
        .transpose()
}

/// A port with its `@enabled` flag: `(port, enabled)`.
fn port_field(o: &Map<String, Value>, name: &str) -> Result<Option<(u16, bool)>, Invalid> {
    let Some(v) = o.get(name) else {
        return Ok(None);
    };
    let Some(port) = text(v) else {
        return Ok(None);
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(format!("instance.{name} {port:?} is not a port (1-65535)")))?;
    let enabled = v
        .get("@enabled")
        .and_then(text)
        .is_none_or(|e| e.eq_ignore_ascii_case("true"));
    Ok(Some((port, enabled)))
}

/// Refuses text XML 1.0 cannot carry (control characters but tab and line
/// ends, U+FFFE, U+FFFF): the registry is served as XML, and one such
/// character makes the whole answer unreadable to every XML client.
pub fn xml_text(field: &str, value: &str) -> Result<(), Invalid> {
    match value.chars().find(|c| !super::record::xml_char(*c)) {
        None => Ok(()),
        Some(c) => Err(invalid(format!(
            "{field} holds U+{:04X}, a character XML cannot carry: Eureka's XML clients could not read the registry",
            u32::from(c)
        ))),
    }
}

/// Whether `name` may be an XML element name (metadata keys become elements).
pub fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.to_ascii_lowercase().starts_with("xml")
}

/// Checks an application name: it becomes the service `/api/{app}/**` routes to.
pub fn app_name(app: &str) -> Result<String, Invalid> {
    if app.is_empty()
        || app.len() > 100
        || !app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(format!(
            "application name {app:?} must be 1 to 100 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(app.to_ascii_uppercase())
}

/// Checks metadata as sent (`@class` dropped, keys valid XML names).
pub fn metadata<'a>(
    entries: impl Iterator<Item = (&'a String, Option<String>)>,
) -> Result<BTreeMap<String, String>, Invalid> {
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        if key == "@class" {
            continue;
        }
        if !xml_name(key) {
            return Err(invalid(format!(
                "metadata key {key:?} is not a valid XML name (letters, digits, '.', '-', '_'; \
                 not starting with a digit or 'xml'): XML clients could not read it"
            )));
        }
        let value = value.unwrap_or_default();
        xml_text(&format!("instance.metadata.{key}"), &value)?;
        out.insert(key.clone(), value);
    }
    Ok(out)
}

fn registration(path_app: &str, o: &Map<String, Value>) -> Result<Registration, Invalid> {
    let path_app = app_name(path_app)?;
    let host_name = required(o, "hostName")?;
    let instance_id = field(o, "instanceId").unwrap_or_else(|| host_name.clone());
    if instance_id.contains('/') || instance_id.len() > 200 {
        return Err(invalid(format!(
            "instance.instanceId {instance_id:?} must be at most 200 characters, with no '/'"
        )));
    }
    let app = app_name(&required(o, "app")?)?;
    if app != path_app {
        return Err(invalid(format!(
            "instance.app {app} does not match the application in the path, {path_app}"
        )));
    }
    let ip = required(o, "ipAddr")?;
    let ip_addr: IpAddr = ip
        .parse()
        .map_err(|_| invalid(format!("instance.ipAddr {ip:?} is not an IP address")))?;
    let data_center = o
        .get("dataCenterInfo")
        .and_then(|d| d.get("name"))
        .and_then(text)
        .ok_or_else(|| invalid("instance.dataCenterInfo.name is missing"))?;
    let (port, enabled) = port_field(o, "port")?.ok_or_else(|| {
        invalid("instance.port is missing: shoal routes plain HTTP to ipAddr:port")
    })?;
    if !enabled || port == 0 {
        return Err(invalid(
            "instance.port is disabled or 0: shoal routes plain HTTP to ipAddr:port",
        ));
    }
    let secure_port = port_field(o, "securePort")?.and_then(|(p, on)| on.then_some(p));
    let status = |name: &str| -> Result<Option<Status>, Invalid> {
        field(o, name)
            .map(|s| {
                s.parse()
                    .map_err(|e| invalid(format!("instance.{name}: {e}")))
            })
            .transpose()
    };
    let status_now = status("status")?.unwrap_or(Status::Up);
    let overridden = match status("overriddenStatus")? {
        Some(s) => s,
        None => status("overriddenstatus")?.unwrap_or(Status::Unknown),
    };
    let empty = Map::new();
    let lease = o
        .get("leaseInfo")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let secs = |name: &str, default: u32| -> Result<u32, Invalid> {
        let n: Option<u32> = number(lease, name, &format!("instance.leaseInfo.{name}"))?;
        Ok(n.filter(|n| *n > 0).unwrap_or(default))
    };
    let duration_secs = secs("durationInSecs", 90)?;
    if duration_secs > 86_400 {
        return Err(invalid(
            "instance.leaseInfo.durationInSecs must be at most 86400 (a day)",
        ));
    }
    let metadata = match o.get("metadata") {
        Some(Value::Object(m)) => metadata(m.iter().map(|(k, v)| (k, text(v))))?,
        Some(Value::Null) | None => BTreeMap::new(),
        Some(Value::String(s)) if s.trim().is_empty() => BTreeMap::new(),
        Some(_) => return Err(invalid("instance.metadata must be an object of strings")),
    };
    let vip_address = field(o, "vipAddress").unwrap_or_default();
    let secure_vip_address = field(o, "secureVipAddress").unwrap_or_default();
    let home_page_url = field(o, "homePageUrl").unwrap_or_default();
    let status_page_url = field(o, "statusPageUrl").unwrap_or_default();
    let health_check_url = field(o, "healthCheckUrl").unwrap_or_default();
    for (name, value) in [
        ("instance.instanceId", &instance_id),
        ("instance.hostName", &host_name),
        ("instance.dataCenterInfo.name", &data_center),
        ("instance.vipAddress", &vip_address),
        ("instance.secureVipAddress", &secure_vip_address),
        ("instance.homePageUrl", &home_page_url),
        ("instance.statusPageUrl", &status_page_url),
        ("instance.healthCheckUrl", &health_check_url),
    ] {
        xml_text(name, value)?;
    }
    Ok(Registration {
        instance_id,
        app,
        host_name,
        ip_addr,
        port,
        secure_port,
        status: status_now,
        overridden_status: overridden,
        vip_address,
        secure_vip_address,
        data_center,
        metadata,
        home_page_url,
        status_page_url,
        health_check_url,
        renewal_interval_secs: secs("renewalIntervalInSecs", 30)?,
        duration_secs,
        dirty_ms: number(o, "lastDirtyTimestamp", "instance.lastDirtyTimestamp")?.unwrap_or(0),
    })
}

/// Reads XML into Eureka's JSON shape: `{"instance": {"port": {"@enabled":
/// "true", "$": "8080"}, "app": "ORDERS", …}}`.
pub fn xml_tree(text: &str) -> Result<Value, Invalid> {
    let mut reader = quick_xml::Reader::from_str(text);
    // (name, attributes and children, text)
    let mut stack: Vec<(String, Map<String, Value>, String)> =
        vec![(String::new(), Map::new(), String::new())];
    let bad = |e: &dyn std::fmt::Display| invalid(format!("the body is not valid XML: {e}"));
    let open =
        |e: &quick_xml::events::BytesStart| -> Result<(String, Map<String, Value>), Invalid> {
            let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
            let mut attrs = Map::new();
            for a in e.attributes() {
                let a = a.map_err(|e| bad(&e))?;
                let value = a
                    .normalized_value(quick_xml::XmlVersion::default())
                    .map_err(|e| bad(&e))?;
                attrs.insert(
                    format!("@{}", String::from_utf8_lossy(a.key.as_ref())),
                    Value::String(value.into_owned()),
                );
            }
            Ok((name, attrs))
        };
    fn close(stack: &mut Vec<(String, Map<String, Value>, String)>) {
        let Some((name, mut children, text)) = stack.pop() else {
            return;
        };
        let value = if children.is_empty() {
            Value::String(text)
        } else {
            if !text.trim().is_empty() {
                children.insert("$".into(), Value::String(text));
            }
            Value::Object(children)
        };
        if let Some(parent) = stack.last_mut() {
            parent.1.insert(name, value);
        }
    }
    loop {
        match reader.read_event().map_err(|e| bad(&e))? {
            Event::Start(e) => {
                if stack.len() > 16 {
                    return Err(invalid("the XML body is nested too deeply"));
                }
                let (name, attrs) = open(&e)?;
                stack.push((name, attrs, String::new()));
            }
            Event::Empty(e) => {
                let (name, attrs) = open(&e)?;
                stack.push((name, attrs, String::new()));
                close(&mut stack);
            }
            Event::Text(t) => {
                // Entities arrive apart, as `GeneralRef`.
                let t = t.decode().map_err(|e| bad(&e))?;
                if let Some(top) = stack.last_mut() {
                    top.2.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| bad(&e))?;
                let ch = match &*name {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    other => {
                        return Err(invalid(format!(
                            "the XML body uses an unknown entity &{other};"
                        )));
                    }
                };
                if let Some(top) = stack.last_mut() {
                    top.2.push_str(ch);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.2.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::End(_) => {
                if stack.len() < 2 {
                    return Err(invalid("the XML body closes an element it never opened"));
                }
                close(&mut stack);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err(invalid("the XML body ends inside an element"));
    }
    Ok(Value::Object(
        stack.pop().map(|(_, m, _)| m).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Spring Cloud Netflix's client sends (Jackson, `EurekaJacksonCodec`).
    pub const SPRING: &str = r#"{"instance":{"instanceId":"10.0.9.5:orders:8080","hostName":"10.0.9.5","app":"ORDERS","ipAddr":"10.0.9.5","status":"UP","overriddenStatus":"UNKNOWN","port":{"$":8080,"@enabled":"true"},"securePort":{"$":443,"@enabled":"false"},"countryId":1,"dataCenterInfo":{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"},"leaseInfo":{"renewalIntervalInSecs":30,"durationInSecs":90,"registrationTimestamp":0,"lastRenewalTimestamp":0,"evictionTimestamp":0,"serviceUpTimestamp":0},"metadata":{"management.port":"8080"},"homePageUrl":"http://10.0.9.5:8080/","statusPageUrl":"http://10.0.9.5:8080/info","healthCheckUrl":"http://10.0.9.5:8080/health","vipAddress":"orders","secureVipAddress":"orders","isCoordinatingDiscoveryServer":"false","lastUpdatedTimestamp":"1700000000000","lastDirtyTimestamp":"1700000000000","actionType":"ADDED"}}"#;

    #[test]
    fn spring_body_reads_whole() {
        let r = parse("orders", "application/json", SPRING.as_bytes()).unwrap();
        assert_eq!(r.instance_id, "10.0.9.5:orders:8080");
        assert_eq!(
            (r.app.as_str(), r.port, r.secure_port),
            ("ORDERS", 8080, None)
        );
        assert_eq!(r.ip_addr.to_string(), "10.0.9.5");
        assert_eq!(
            (r.status, r.overridden_status),
            (Status::Up, Status::Unknown)
        );
        assert_eq!(r.metadata["management.port"], "8080");
        assert_eq!((r.renewal_interval_secs, r.duration_secs), (30, 90));
        assert_eq!(r.dirty_ms, 1_700_000_000_000);
        assert_eq!(r.health_check_url, "http://10.0.9.5:8080/health");
    }

    #[test]
    fn loose_forms_of_clients_read_too() {
        let body = r#"{"instance":{"hostName":"h1","app":"orders","ipAddr":"10.0.0.1",
            "port":{"$":"8080","@enabled":true},"securePort":{"$":"8443","@enabled":true},
            "dataCenterInfo":{"name":"MyOwn"},"leaseInfo":{"durationInSecs":"5"},
            "metadata":{"@class":"java.util.Collections$EmptyMap"},"lastDirtyTimestamp":"12"}}"#;
        let r = parse("ORDERS", "application/json", body.as_bytes()).unwrap();
        assert_eq!(r.instance_id, "h1", "the Node client sends no instanceId");
        assert_eq!(
            (r.port, r.secure_port, r.duration_secs),
            (8080, Some(8443), 5)
        );
        assert!(r.metadata.is_empty());
        assert_eq!((r.status, r.dirty_ms), (Status::Up, 12));
    }

    #[test]
    fn xml_bodies_read_like_json() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
            <instance><instanceId>10.0.0.2:orders:81</instanceId><hostName>box &amp; co</hostName>
            <app>ORDERS</app><ipAddr>10.0.0.2</ipAddr><status>STARTING</status>
            <port enabled="true">81</port><securePort enabled="false">443</securePort>
            <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
            <leaseInfo><renewalIntervalInSecs>10</renewalIntervalInSecs><durationInSecs>30</durationInSecs></leaseInfo>
            <metadata><zone>a</zone></metadata><vipAddress>orders</vipAddress></instance>"#;
        let r = parse("ORDERS", "application/xml", body.as_bytes()).unwrap();
        assert_eq!(r.instance_id, "10.0.0.2:orders:81");
        assert_eq!(r.host_name, "box & co");
        assert_eq!(
            (r.port, r.status, r.duration_secs),
            (81, Status::Starting, 30)
        );
        assert_eq!(r.metadata["zone"], "a");
        assert_eq!(r.data_center, "MyOwn");
    }

    #[test]
    fn each_missing_or_wrong_field_is_named() {
        let spring: Value = serde_json::from_str(SPRING).unwrap();
        let cases: &[(&str, Value, &str)] = &[
            ("hostName", Value::Null, "instance.hostName is missing"),
            ("ipAddr", Value::Null, "instance.ipAddr is missing"),
            ("ipAddr", "box".into(), "is not an IP address"),
            ("app", Value::Null, "instance.app is missing"),
            (
                "app",
                "BILLING".into(),
                "does not match the application in the path",
            ),
            (
                "dataCenterInfo",
                Value::Null,
                "dataCenterInfo.name is missing",
            ),
            ("port", Value::Null, "instance.port is missing"),
            ("port", serde_json::json!({"$": 99999}), "is not a port"),
            (
                "port",
                serde_json::json!({"$": 80, "@enabled": "false"}),
                "disabled",
            ),
            ("status", "SLEEPY".into(), "unknown status"),
            ("instanceId", "a/b".into(), "no '/'"),
            (
                "metadata",
                serde_json::json!({"1st": "x"}),
                "not a valid XML name",
            ),
            ("metadata", serde_json::json!([1]), "must be an object"),
            (
                "hostName",
                "box\u{1}".into(),
                "instance.hostName holds U+0001, a character XML cannot carry",
            ),
            (
                "healthCheckUrl",
                "http://x/\u{FFFF}".into(),
                "instance.healthCheckUrl holds U+FFFF",
            ),
            (
                "metadata",
                serde_json::json!({"zone": "a\u{7}"}),
                "instance.metadata.zone holds U+0007",
            ),
        ];
        for (name, value, reason) in cases {
            let mut body = spring.clone();
            body["instance"][*name] = value.clone();
            let err =
                parse("ORDERS", "application/json", body.to_string().as_bytes()).expect_err(name);
            assert!(err.0.contains(reason), "{name}: {err}");
        }
        for (body, reason) in [
            ("{", "not valid JSON"),
            ("[]", "must be an instance"),
            ("<instance><app>", "ends inside an element"),
            ("<a></b>", "not valid XML"),
            ("\u{0}\u{ff}", "must be an instance"),
        ] {
            let err = parse("ORDERS", "", body.as_bytes()).expect_err(body);
            assert!(err.0.contains(reason), "{body}: {err}");
        }
        assert!(parse("ORDERS", "", &[0xff, 0xfe]).is_err());
        assert!(parse("bad app", "", SPRING.as_bytes()).is_err());
    }
}
