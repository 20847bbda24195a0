use super::*;
use base64::Engine;
use rand::Rng;

use crate::key::ClusterKey;

fn ring(keys: &[&ClusterKey]) -> KeyRing {
    KeyRing::new(keys.iter().map(|k| (*k).clone()).collect()).unwrap()
}

#[test]
fn sealed_datagram_opens_with_the_same_key_only() {
    let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
    let sealer = Sealer::new(&ring(&[&a]), "shoal");
    let datagram = sealer.seal(b"hello gossip");
    assert_eq!(datagram.len(), b"hello gossip".len() + OVERHEAD);
    assert_eq!(sealer.open(&datagram).unwrap(), b"hello gossip");
    let stranger = Sealer::new(&ring(&[&b]), "shoal");
    assert_eq!(stranger.open(&datagram), Err(OpenError::Unauthenticated));
}

#[test]
fn another_cluster_with_the_same_key_cannot_open() {
    let k = ClusterKey::generate();
    let datagram = Sealer::new(&ring(&[&k]), "prod").seal(b"x");
    assert_eq!(
        Sealer::new(&ring(&[&k]), "staging").open(&datagram),
        Err(OpenError::Unauthenticated)
    );
}

#[test]
fn rotation_ring_opens_old_and_new_and_seals_with_the_first() {
    let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
    let rotating = Sealer::new(&ring(&[&new, &old]), "shoal");
    let from_old = Sealer::new(&ring(&[&old]), "shoal").seal(b"old");
    assert_eq!(rotating.open(&from_old).unwrap(), b"old");
    let sent = rotating.seal(b"new");
    assert!(Sealer::new(&ring(&[&new]), "shoal").open(&sent).is_ok());
    assert!(Sealer::new(&ring(&[&old]), "shoal").open(&sent).is_err());
}

#[test]
fn truncated_tampered_and_garbage_datagrams_are_refused() {
    let k = ClusterKey::generate();
    let sealer = Sealer::new(&ring(&[&k]), "shoal");
    let datagram = sealer.seal(b"payload");
    assert_eq!(sealer.open(&datagram[..10]), Err(OpenError::Truncated(10)));
    assert!(matches!(
        sealer.open(&datagram[..datagram.len() - 1]),
        Err(OpenError::Unauthenticated)
    ));
    let mut flipped = datagram.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(sealer.open(&flipped), Err(OpenError::Unauthenticated));
    assert_eq!(sealer.open(&[0u8; 64]), Err(OpenError::NotShoal));
}

#[test]
fn two_seals_of_the_same_bytes_differ() {
    let k = ClusterKey::generate();
    let sealer = Sealer::new(&ring(&[&k]), "shoal");
    assert_ne!(
        sealer.seal(b"same"),
        sealer.seal(b"same"),
        "nonces must be fresh"
    );
}

#[tokio::test]
async fn garbage_on_the_wire_is_counted_and_gossip_still_flows() {
    use chitchat::ChitchatId;
    let k = ClusterKey::generate();
    let stats = Arc::new(GossipStats::default());
    let transport = SealedTransport::new(
        Some(Sealer::new(&ring(&[&k]), "shoal")),
        stats.clone(),
        MAX_DATAGRAM,
        Arc::new(Udp),
    );
    let mut receiver = transport
        .open("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [0usize, 1, 5, 40, 1500] {
        junk.send_to(&vec![0xAB; len], to).await.unwrap();
    }
    // A real chitchat node sends a Syn through a sealed socket of its own.
    let sender_stats = Arc::new(GossipStats::default());
    let sender_transport = SealedTransport::new(
        Some(Sealer::new(&ring(&[&k]), "shoal")),
        sender_stats,
        MAX_DATAGRAM,
        Arc::new(Udp),
    );
    let config = chitchat::ChitchatConfig {
        chitchat_id: ChitchatId::new("a", 1, "127.0.0.1:1".parse().unwrap()),
        cluster_id: "shoal".into(),
        gossip_interval: std::time::Duration::from_millis(50),
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        seed_nodes: vec![to.to_string()],
        failure_detector_config: Default::default(),
        marked_for_deletion_grace_period: std::time::Duration::from_secs(60),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V1,
        max_message_len: max_message_len(MAX_DATAGRAM, true),
        gossip_fanout: 3,
        upgrade: None,
    };
    let _handle = chitchat::spawn_chitchat(config, vec![], &sender_transport)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv())
        .await
        .expect("a valid sealed Syn arrives")
        .unwrap();
    assert!(matches!(
        outcome.envelope.message,
        chitchat::ChitchatMessage::Syn { .. }
    ));
    assert_eq!(stats.packets_rejected.load(Ordering::Relaxed), 5);
    assert_eq!(stats.packets_received.load(Ordering::Relaxed), 1);
}

#[test]
fn a_full_message_sealed_fits_the_datagram() {
    assert_eq!(max_message_len(MAX_DATAGRAM, true) + OVERHEAD, MAX_DATAGRAM);
    assert_eq!(max_message_len(1_450, true) + OVERHEAD, 1_450);
    assert_eq!(max_message_len(1_450, false), 1_450);
    assert_eq!(max_message_len(usize::MAX, false), MAX_DATAGRAM);
    let k = ClusterKey::generate();
    let sealer = Sealer::new(&ring(&[&k]), "shoal");
    let full = vec![7u8; max_message_len(MAX_DATAGRAM, true)];
    assert_eq!(sealer.seal(&full).len(), MAX_DATAGRAM);
}

/// A free UDP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A state larger than one datagram reaches a new member whole, through
/// sealed sockets: chitchat fills each delta up to the room the seal leaves,
/// so no datagram is ever dropped for size (the full-state delta a new
/// member needs is the largest message gossip sends) — at the default MTU,
/// and at the default, a VXLAN overlay's 1,422 bytes of UDP payload, where no datagram exceeds it.
#[tokio::test]
async fn a_state_larger_than_a_datagram_reaches_a_new_member_sealed() {
    // About 90 KB (compressed) at the default MTU, 13 KB at 1,450: more
    // than one datagram either way.
    for (mtu, keys) in [(MAX_DATAGRAM, 400), (1_422, 60)] {
        state_transfer(mtu, keys).await;
    }
}

async fn state_transfer(mtu: usize, keys: usize) {
    use chitchat::{ChitchatConfig, ChitchatId, ProtocolVersion, spawn_chitchat};
    use std::time::Duration;
    let k = ClusterKey::generate();
    let (port_a, port_b) = (free_port(), free_port());
    let config = |name: &str, port: u16, seeds: Vec<String>| ChitchatConfig {
        chitchat_id: ChitchatId::new(name, 1, ([127, 0, 0, 1], port).into()),
        cluster_id: "shoal".into(),
        gossip_interval: Duration::from_millis(50),
        listen_addr: ([127, 0, 0, 1], port).into(),
        seed_nodes: seeds,
        failure_detector_config: Default::default(),
        marked_for_deletion_grace_period: Duration::from_secs(60),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
        max_message_len: max_message_len(mtu, true),
        gossip_fanout: 3,
        upgrade: None,
    };
    let transport = |stats: Arc<GossipStats>| {
        SealedTransport::new(
            Some(Sealer::new(&ring(&[&k]), "shoal")),
            stats,
            mtu,
            Arc::new(Udp),
        )
    };
    // Random values of 300 base64 characters: they compress by a quarter only.
    let big: Vec<(String, String)> = (0..keys)
        .map(|i| {
            let mut raw = [0u8; 225];
            rand::rng().fill_bytes(&mut raw);
            (
                format!("key-{i:04}"),
                base64::engine::general_purpose::STANDARD.encode(raw),
            )
        })
        .collect();
    let stats_a = Arc::new(GossipStats::default());
    let stats_b = Arc::new(GossipStats::default());
    let a = spawn_chitchat(
        config("a", port_a, vec![]),
        big,
        &transport(stats_a.clone()),
    )
    .await
    .unwrap();
    let b = spawn_chitchat(
        config("b", port_b, vec![format!("127.0.0.1:{port_a}")]),
        vec![],
        &transport(stats_b.clone()),
    )
    .await
    .unwrap();
    let a_id = a.chitchat_id().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = {
            let chitchat = b.chitchat();
            let guard = chitchat.lock().await;
            guard
                .node_state(&a_id)
                .map(|s| {
                    s.key_values()
                        .filter(|(k, _)| k.starts_with("key-"))
                        .count()
                })
                .unwrap_or(0)
        };
        if seen == keys {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "MTU {mtu}: b has {seen} of a's {keys} keys after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for stats in [&stats_a, &stats_b] {
        assert_eq!(stats.packets_dropped_oversized.load(Ordering::Relaxed), 0);
        assert_eq!(
            stats.packets_oversized.load(Ordering::Relaxed),
            0,
            "MTU {mtu}"
        );
        assert_eq!(stats.packets_rejected.load(Ordering::Relaxed), 0);
    }
    assert!(
        stats_a.bytes_sent.load(Ordering::Relaxed) > mtu as u64,
        "MTU {mtu}: the state took more than one datagram"
    );
}

#[test]
fn every_message_kind_has_its_own_counter() {
    for (i, kind) in MessageKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, i, "{} out of place in ALL", kind.name());
    }
}
