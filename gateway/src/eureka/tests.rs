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
    let i = r.apps["STORY-SERVICE"][0].json(42, "ADDED");
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
    r.apps["STORY-SERVICE"][0].xml(42, "ADDED", &mut x);
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
    r.apps["STORY-SERVICE"][0].xml(0, "ADDED", &mut x);
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
    r.apps["STORY-SERVICE"][0].xml(0, "ADDED", &mut x);
    let out = x.finish();
    assert!(
        out.contains("<shoal.host>bad\u{FFFD}host</shoal.host>"),
        "{out}"
    );
    if let Err(e) = well_formed(&out) {
        panic!("not well-formed: {e}: {out}");
    }
}
