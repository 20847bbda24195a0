use super::*;
use crate::env::parse_duration;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

fn err_of(pairs: &[(&str, &str)]) -> String {
    NodeConfig::from_env(&env(pairs), "story-service", 8768)
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults_are_the_documented_ones() {
    let c =
        NodeConfig::from_env(&env(&[("SHOAL_CLUSTER_KEY", KEY)]), "story-service", 8768).unwrap();
    assert_eq!(c.service.as_str(), "story-service");
    assert_eq!(c.port, 8768);
    assert_eq!(c.gossip_port, DEFAULT_GOSSIP_PORT);
    assert_eq!(c.advertise, AdvertiseSpec::Auto);
    assert_eq!(c.cluster, "shoal");
    // auto (the default): V4 once every member can (phi 6, no random
    // members pulsed), V3's settings meanwhile; what is set holds for both.
    assert_eq!(c.protocol, GossipProtocol::Auto);
    let auto = |extra: &[(&str, &str)]| {
        let mut vars = vec![
            ("SHOAL_CLUSTER_KEY", KEY),
            ("SHOAL_GOSSIP_PROTOCOL", "auto"),
        ];
        vars.extend_from_slice(extra);
        NodeConfig::from_env(&env(&vars), "s", 1).unwrap()
    };
    let a = auto(&[]);
    assert_eq!(a.protocol, GossipProtocol::Auto);
    assert_eq!(a.timings, c.timings);
    // Pinned to V3: V3's own settings.
    let v3 = NodeConfig::from_env(
        &env(&[("SHOAL_CLUSTER_KEY", KEY), ("SHOAL_GOSSIP_PROTOCOL", "v3")]),
        "s",
        1,
    )
    .unwrap();
    assert_eq!(v3.protocol, GossipProtocol::V3);
    assert_eq!(v3.timings, Timings::default());
    assert_eq!(
        (v3.timings.gossip_interval, v3.timings.gossip_fanout),
        (Duration::from_millis(100), 3)
    );
    assert_eq!(
        a.timings,
        Timings {
            phi_threshold: 6.0,
            gossip_fanout: 0,
            v3: Some((8.0, 3)),
            ..Timings::default()
        }
    );
    let set = auto(&[("SHOAL_GOSSIP_FANOUT", "2")]);
    assert_eq!(set.timings.gossip_fanout, 2);
    assert_eq!(set.timings.v3, Some((8.0, 2)), "what is set holds for both");
    assert_eq!(c.gossip_mtu, 1_422);
    assert_eq!(c.keys.unwrap().all().len(), 1);
}

#[test]
fn missing_key_refuses_to_start_unless_insecure() {
    let e = err_of(&[]);
    assert!(
        e.contains("SHOAL_CLUSTER_KEY") && e.contains("shoal keygen"),
        "{e}"
    );
    let c = NodeConfig::from_env(&env(&[("SHOAL_INSECURE", "true")]), "s", 1).unwrap();
    assert!(c.keys.is_none());
}

#[test]
fn key_ring_takes_several_keys_and_never_echoes_them() {
    let two = format!("{KEY},{}", crate::key::ClusterKey::generate().to_base64());
    let c = NodeConfig::from_env(&env(&[("SHOAL_CLUSTER_KEY", &two)]), "s", 1).unwrap();
    assert_eq!(c.keys.unwrap().all().len(), 2);
    let e = err_of(&[("SHOAL_CLUSTER_KEY", "c2VjcmV0")]);
    assert!(
        e.contains("SHOAL_CLUSTER_KEY") && e.contains("6 bytes") && !e.contains("c2VjcmV0"),
        "{e}"
    );
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "a test's own thread, not a runtime's"
)]
fn key_file_is_read_and_a_missing_file_is_named() {
    let dir = std::env::temp_dir().join(format!("shoal-key-{}", std::process::id()));
    std::fs::write(&dir, format!("{KEY}\n")).unwrap();
    let path = dir.to_string_lossy().to_string();
    let c = NodeConfig::from_env(&env(&[("SHOAL_CLUSTER_KEY_FILE", &path)]), "s", 1).unwrap();
    assert!(c.keys.is_some());
    std::fs::remove_file(&dir).unwrap();
    let e = err_of(&[("SHOAL_CLUSTER_KEY_FILE", &path)]);
    assert!(
        e.contains("SHOAL_CLUSTER_KEY_FILE") && e.contains(&path),
        "{e}"
    );
}

#[test]
fn every_bad_value_names_variable_value_and_what_is_accepted() {
    let cases: &[(&str, &str, &str)] = &[
        ("SHOAL_SERVICE", "Story Service", "a-z"),
        ("SHOAL_PORT", "70000", "TCP port"),
        ("SHOAL_GOSSIP_PORT", "7946", "Swarm"),
        ("SHOAL_GOSSIP_PORT", "udp", "UDP port"),
        ("SHOAL_SEEDS", "gateway:notaport", "host:port"),
        ("SHOAL_ADVERTISE", "eth2", "iface:<name>"),
        ("SHOAL_GOSSIP_INTERVAL", "fast", "duration"),
        ("SHOAL_GOSSIP_INTERVAL", "1ms", "between 10ms and 10s"),
        ("SHOAL_PHI_THRESHOLD", "0.5", "between 1 and 32"),
        ("SHOAL_GOSSIP_PROTOCOL", "v9", "auto, v0, v1, v2, v3 or v4"),
        (
            "SHOAL_GOSSIP_FANOUT",
            "0",
            "0 only with SHOAL_GOSSIP_PROTOCOL=v4",
        ),
        ("SHOAL_GOSSIP_FANOUT", "three", "between 1 and 16"),
        ("SHOAL_INSECURE", "maybe", "true or false"),
        ("SHOAL_GOSSIP_BIND", "here", "IP address"),
        ("SHOAL_GOSSIP_MTU", "576", "1200-65507"),
        ("SHOAL_GOSSIP_MTU", "70000", "1200-65507"),
        ("SHOAL_GOSSIP_MTU", "jumbo", "1200-65507"),
    ];
    for (var, value, expected) in cases {
        let e = err_of(&[("SHOAL_CLUSTER_KEY", KEY), (var, value)]);
        assert!(e.contains(var), "{var}: {e}");
        assert!(e.contains(expected), "{var}={value}: {e}");
        if *var != "SHOAL_GOSSIP_PORT" || *value != "7946" {
            assert!(e.contains(value), "{var}={value}: {e}");
        }
    }
}

#[test]
fn seeds_get_the_gossip_port_when_none_is_given() {
    let seeds = parse_seeds("tasks.gateway, 10.0.9.3:7000,[::1]:7950", 7950).unwrap();
    assert_eq!(seeds, ["tasks.gateway:7950", "10.0.9.3:7000", "[::1]:7950"]);
    assert!(parse_seeds("", 7950).unwrap().is_empty());
}

#[test]
fn durations_accept_units() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("-1s"), None);
    assert_eq!(parse_duration("soon"), None);
}

#[test]
fn durations_too_large_for_a_duration_are_refused_not_a_panic() {
    assert_eq!(parse_duration("1e300s"), None);
    assert_eq!(parse_duration("1e30m"), None);
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
}
