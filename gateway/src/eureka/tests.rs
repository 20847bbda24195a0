use super::*;
use shoal_node::{ClusterView, Health, Member, MemberId};

fn member(service: &str, ip: &str, port: u16, health: Health) -> Member {
    Member {
        id: MemberId {
            node: format!("{service}@{ip}:{port}"),
            generation: 7,
        },
        service: service.into(),
        addr: format!("{ip}:{port}").parse().unwrap(),
        health,
        routes: if service == "story-service" {
            vec!["/story".into()]
        } else {
            vec![]
        },
        host: format!("{service}-host"),
        version: "0.1.0".into(),
        started_ms: 1_700_000_000_000,
        gossip_addr: format!("{ip}:7950").parse().unwrap(),
        lease: None,
        policy: Default::default(),
    }
}

fn registry() -> Registry {
    Registry::of(&ClusterView::from_members([
        member("story-service", "10.0.9.5", 8768, Health::Up),
        member("story-service", "10.0.9.6", 8768, Health::Starting),
        member("notice-service", "10.0.9.7", 8763, Health::Draining),
        member("gateway", "10.0.9.2", 4000, Health::Up),
    ]))
}

#[test]
fn every_member_is_an_instance_of_its_upper_cased_service() {
    let r = registry();
    let names: Vec<&String> = r.apps.keys().collect();
    assert_eq!(names, ["GATEWAY", "NOTICE-SERVICE", "STORY-SERVICE"]);
    let story = &r.apps["STORY-SERVICE"];
    assert_eq!(story.len(), 2);
    assert_eq!(story[0].instance_id, "10.0.9.5:story-service:8768");
    assert_eq!(story[0].status, "UP");
    assert_eq!(story[1].status, "STARTING");
    assert_eq!(r.apps["NOTICE-SERVICE"][0].status, "OUT_OF_SERVICE");
    assert_eq!(
        r.find("10.0.9.7:notice-service:8763").unwrap().vip,
        "notice-service"
    );
}

#[test]
fn hashcode_counts_statuses_in_alphabetical_order() {
    assert_eq!(registry().hashcode(), "OUT_OF_SERVICE_1_STARTING_1_UP_2_");
    assert_eq!(Registry::default().hashcode(), "");
}

#[test]
fn the_json_record_has_what_clients_read() {
    let r = registry();
    let i = r.apps["STORY-SERVICE"][0].json(42, "ADDED", Form::Full);
    assert_eq!(i["app"], "STORY-SERVICE");
    assert_eq!(i["ipAddr"], "10.0.9.5");
    assert_eq!(i["hostName"], "10.0.9.5");
    assert_eq!(i["port"], json!({"$": 8768, "@enabled": "true"}));
    assert_eq!(i["securePort"]["@enabled"], "false");
    assert_eq!(
        i["dataCenterInfo"]["@class"],
        "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
    );
    assert_eq!(i["leaseInfo"]["lastRenewalTimestamp"], 42);
    assert_eq!(i["metadata"]["shoal.routes"], "/story");
    assert_eq!(i["vipAddress"], "story-service");
    assert_eq!(i["healthCheckUrl"], "http://10.0.9.5:8768/health");
    assert_eq!(i["lastDirtyTimestamp"], "1700000000000");
}

#[test]
fn the_xml_record_has_the_attributes_and_integers_parsers_require() {
    let r = registry();
    let mut x = Xml::default();
    r.apps["STORY-SERVICE"][0].xml(42, "ADDED", Form::Full, &mut x);
    let out = x.finish();
    for part in [
        "<instanceId>10.0.9.5:story-service:8768</instanceId>",
        "<port enabled=\"true\">8768</port>",
        "<securePort enabled=\"false\">443</securePort>",
        "<dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\"><name>MyOwn</name></dataCenterInfo>",
        "<overriddenstatus>UNKNOWN</overriddenstatus>",
        "<countryId>1</countryId>",
        "<lastRenewalTimestamp>42</lastRenewalTimestamp>",
        "<shoal.routes>/story</shoal.routes>",
        "<vipAddress>story-service</vipAddress>",
    ] {
        assert!(out.contains(part), "{part} missing in {out}");
    }
    assert!(out.contains("?><instance>") && out.ends_with("</instance>"));
}

#[test]
fn json_only_when_accept_mentions_it() {
    let mut h = HeaderMap::new();
    assert!(!wants_json(&h), "no Accept: XML");
    h.insert(header::ACCEPT, "*/*".parse().unwrap());
    assert!(!wants_json(&h), "the Python client's */*: XML");
    h.insert(header::ACCEPT, "application/json".parse().unwrap());
    assert!(wants_json(&h));
    h.insert(
        header::ACCEPT,
        "application/vnd.x+JSON;q=0.9".parse().unwrap(),
    );
    assert!(wants_json(&h));
}

#[test]
fn text_from_gossip_is_escaped_in_xml() {
    let mut m = member("story-service", "10.0.9.5", 8768, Health::Up);
    m.host = "<script>&".into();
    let r = Registry::of(&ClusterView::from_members([m]));
    let mut x = Xml::default();
    r.apps["STORY-SERVICE"][0].xml(0, "ADDED", Form::Full, &mut x);
    let out = x.finish();
    assert!(
        out.contains("<shoal.host>&lt;script&gt;&amp;</shoal.host>"),
        "{out}"
    );
    // What XML cannot carry (a control character from a member's record)
    // is replaced, and the answer still parses.
    let mut m = member("story-service", "10.0.9.5", 8768, Health::Up);
    m.host = "bad\u{1}host".into();
    let r = Registry::of(&ClusterView::from_members([m]));
    let mut x = Xml::default();
    r.apps["STORY-SERVICE"][0].xml(0, "ADDED", Form::Full, &mut x);
    let out = x.finish();
    assert!(
        out.contains("<shoal.host>bad\u{FFFD}host</shoal.host>"),
        "{out}"
    );
    if let Err(e) = well_formed(&out) {
        panic!("not well-formed: {e}: {out}");
    }
}

// Eureka 2.x's own answers (`fixtures/`, written from its encoders) against
// ours for the same registry, field by field: names, order, types, values.

/// `ORDERS` as a Spring client registers it: one instance up, one with
/// a status override, a secure port and no metadata.
fn orders() -> Registry {
    let instance = |ip: &str, registered: u64| Instance {
        instance_id: format!("{ip}:orders:8080"),
        app: "ORDERS".into(),
        host_name: ip.into(),
        ip: ip.into(),
        port: 8080,
        secure_port: None,
        status: "UP",
        overridden: "UNKNOWN",
        vip: "orders".into(),
        secure_vip: "orders".into(),
        data_center: "MyOwn".into(),
        metadata: [("management.port".to_string(), "8080".to_string())].into(),
        urls: [
            format!("http://{ip}:8080/"),
            format!("http://{ip}:8080/actuator/info"),
            format!("http://{ip}:8080/actuator/health"),
        ],
        lease_secs: (30, 90),
        registered_ms: registered,
        renewed_ms: Some(registered + 30_000),
        updated_ms: registered,
        dirty_ms: 1_699_999_999_000,
    };
    let up = instance("10.0.9.5", 1_700_000_000_000);
    let out = Instance {
        secure_port: Some(8443),
        status: "OUT_OF_SERVICE",
        overridden: "OUT_OF_SERVICE",
        secure_vip: "orders-secure".into(),
        metadata: Default::default(),
        updated_ms: 1_700_000_002_000,
        dirty_ms: 1_700_000_000_500,
        ..instance("10.0.9.6", 1_700_000_001_000)
    };
    Registry {
        apps: [("ORDERS".to_string(), vec![up, out])].into(),
    }
}

/// The whole registry, as [`all`] answers it.
fn orders_answer(registry: &Registry, json: bool, form: Form) -> String {
    let apps = select(registry, |_| true);
    applications_body(&apps, "1", &registry.hashcode(), Answer { json, form }, 0)
}

/// `Ok` when `ours` is `theirs` field by field, in the same order; else
/// the first difference and where.
fn same_json(at: &str, ours: &Value, theirs: &Value) -> Result<(), String> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb): (Vec<&String>, Vec<&String>) = (a.keys().collect(), b.keys().collect());
            if ka != kb {
                return Err(format!("{at}: fields {ka:?}, Eureka's {kb:?}"));
            }
            a.iter()
                .try_for_each(|(k, v)| same_json(&format!("{at}.{k}"), v, &b[k]))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(n, (x, y))| same_json(&format!("{at}[{n}]"), x, y)),
        _ if ours == theirs => Ok(()),
        _ => Err(format!("{at}: {ours}, Eureka's {theirs}")),
    }
}

fn check_json(ours: &str, fixture: &str) {
    let parsed: Value = serde_json::from_str(ours).expect("our answer parses");
    let theirs: Value = serde_json::from_str(fixture).expect("the fixture parses");
    if let Err(diff) = same_json("", &parsed, &theirs) {
        panic!("{diff}");
    }
    // And byte for byte (the fixtures break lines between instances only):
    // field order holds whatever map serde_json was built with.
    assert_eq!(ours, fixture.replace('\n', ""));
}

/// An XML element: name, attributes, text, children (whitespace between
/// elements dropped; `<a/>` and `<a></a>` alike).
#[derive(Debug, PartialEq)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
}

fn parse_xml(text: &str) -> Element {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let open = |e: &quick_xml::events::BytesStart| Element {
        name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.expect("an attribute");
                let value = a
                    .normalized_value(quick_xml::XmlVersion::default())
                    .expect("an attribute value")
                    .into_owned();
                (String::from_utf8_lossy(a.key.as_ref()).into_owned(), value)
            })
            .collect(),
        text: String::new(),
        children: Vec::new(),
    };
    let mut stack: Vec<Element> = Vec::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => stack.push(open(&e)),
            Event::Empty(e) => {
                let element = open(&e);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return element,
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.decode().expect("text"));
                }
            }
            Event::End(_) => {
                let done = stack.pop().expect("balanced");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return done,
                }
            }
            Event::Eof => panic!("no root element"),
            _ => {}
        }
    }
}

fn same_xml(at: &str, ours: &Element, theirs: &Element) -> Result<(), String> {
    let at = format!("{at}/{}", theirs.name);
    if ours.name != theirs.name || ours.attrs != theirs.attrs || ours.text != theirs.text {
        return Err(format!(
            "{at}: <{} {:?}>{}, Eureka's <{} {:?}>{}",
            ours.name, ours.attrs, ours.text, theirs.name, theirs.attrs, theirs.text
        ));
    }
    let names = |e: &Element| {
        e.children
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    if names(ours) != names(theirs) {
        return Err(format!(
            "{at}: children {:?}, Eureka's {:?}",
            names(ours),
            names(theirs)
        ));
    }
    ours.children
        .iter()
        .zip(&theirs.children)
        .try_for_each(|(a, b)| same_xml(&at, a, b))
}

#[test]
fn eureka_answers_the_registry_in_json_as_eureka_2_writes_it() {
    check_json(
        &orders_answer(&orders(), true, Form::Full),
        include_str!("fixtures/apps.json"),
    );
}

#[test]
fn eureka_answers_the_registry_in_xml_as_eureka_2_writes_it() {
    let ours = orders_answer(&orders(), false, Form::Full);
    let theirs = include_str!("fixtures/apps.xml");
    if let Err(diff) = same_xml("", &parse_xml(&ours), &parse_xml(theirs)) {
        panic!("{diff}");
    }
}

#[test]
fn eureka_answers_the_compact_form_as_eureka_2_writes_it() {
    check_json(
        &orders_answer(&orders(), true, Form::Compact),
        include_str!("fixtures/apps-compact.json"),
    );
    // In XML, the same fields go.
    let xml = parse_xml(&orders_answer(&orders(), false, Form::Compact));
    let instance = &xml.children[2].children[1];
    let names: Vec<&str> = instance.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "instanceId",
            "hostName",
            "app",
            "ipAddr",
            "status",
            "port",
            "securePort",
            "dataCenterInfo",
            "vipAddress",
            "secureVipAddress",
            "lastUpdatedTimestamp",
            "actionType"
        ]
    );
}

#[test]
fn eureka_answers_one_instance_as_eureka_2_writes_it() {
    let registry = orders();
    let up = &registry.apps["ORDERS"][0];
    let ours = json!({"instance": up.json(0, "ADDED", Form::Full)}).to_string();
    check_json(&ours, include_str!("fixtures/instance.json"));
}

#[test]
fn eureka_answers_a_vip_as_eureka_2_writes_it() {
    let registry = orders();
    let (apps, hashcode) = vip_apps(&registry, |i| &i.vip, "orders");
    // Both instances list `orders` as their VIP.
    assert_eq!(apps["ORDERS"].len(), 2);
    // The secure VIP `orders` is the first instance's alone.
    let (apps, hashcode_secure) = vip_apps(&registry, |i| &i.secure_vip, "orders");
    let answer = Answer {
        json: true,
        form: Form::Full,
    };
    check_json(
        &applications_body(&apps, "-1", &hashcode_secure, answer, 0),
        include_str!("fixtures/vips.json"),
    );
    assert_eq!(hashcode, "OUT_OF_SERVICE_1_UP_1_");
    // Exact and comma-separated: no prefix, no case folding, no miss of a
    // second address.
    let mut listed = orders();
    listed.apps.get_mut("ORDERS").unwrap()[1].vip = "billing,orders".into();
    assert_eq!(vip_apps(&listed, |i| &i.vip, "orders").0["ORDERS"].len(), 2);
    assert!(vip_apps(&listed, |i| &i.vip, "order").0.is_empty());
    assert!(vip_apps(&listed, |i| &i.vip, "ORDERS").0.is_empty());
    // None: an empty list (Eureka answers 200 with it).
    let (none, hashcode) = vip_apps(&listed, |i| &i.vip, "nope");
    let body = applications_body(&none, "-1", &hashcode, answer, 0);
    assert_eq!(
        body,
        r#"{"applications":{"versions__delta":"-1","apps__hashcode":"","application":[]}}"#
    );
}
