use super::*;
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
    let transport = SealedTransport::new(Some(Sealer::new(&ring(&[&k]), "shoal")), stats.clone());
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
    let sender_transport =
        SealedTransport::new(Some(Sealer::new(&ring(&[&k]), "shoal")), sender_stats);
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
