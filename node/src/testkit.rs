//! What the unit tests of the gossip-backed modules share: real members
//! gossiping over UDP on 127.0.0.1 in this process, and waits with a
//! deadline (never a fixed sleep).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::env::Env;
use crate::gossip::Role;
use crate::lease::{Lease, LeaseOp, Registration, Status};

/// A free UDP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `n` members of `service` on 127.0.0.1, the first the others' seed,
/// gossiping every 50 ms; returned once each sees all of them.
pub(crate) async fn members(service: &str, n: usize) -> Vec<Cluster> {
    let seed = free_port();
    let mut out = Vec::new();
    for i in 0..n {
        let port = if i == 0 { seed } else { free_port() };
        // The service port is the gossip port: distinct, and never bound.
        let service_port = port.to_string();
        let env = Env::from_pairs([
            ("SHOAL_SERVICE", service),
            ("SHOAL_PORT", service_port.as_str()),
            ("SHOAL_ADVERTISE", "127.0.0.1"),
            ("SHOAL_GOSSIP_PORT", &port.to_string()),
            ("SHOAL_SEEDS", &format!("127.0.0.1:{seed}")),
            ("SHOAL_INSECURE", "true"),
            ("SHOAL_GOSSIP_INTERVAL", "50ms"),
            ("SHOAL_HOSTNAME", &format!("host-{i}")),
        ]);
        let config = NodeConfig::from_env(&env, service, 8080).expect("a valid test configuration");
        let role = Role::Service { routes: Vec::new() };
        out.push(Cluster::join(&config, role).await.expect("join"));
    }
    for m in &out {
        m.set_health(crate::member::Health::Up).await;
    }
    for m in &out {
        let mut view = m.view();
        wait_for("every member in every view", || {
            let count = view.borrow_and_update().members().count();
            async move { count == n }
        })
        .await;
    }
    out
}

/// Waits until `check` holds, polling every 20 ms, for at most 10 s; panics
/// naming `what` when it never does.
pub(crate) async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers instance `id` of ORDERS through `c`, as a Spring client
/// would at that gateway.
pub(crate) async fn register(c: &Cluster, id: &str) -> std::sync::Arc<Lease> {
    c.lease("ORDERS", id, LeaseOp::Register(Box::new(registration(id))))
        .await
        .expect("registers")
}

/// An instance's registration as a Spring client sends it.
pub(crate) fn registration(id: &str) -> Registration {
    Registration {
        instance_id: id.into(),
        app: "ORDERS".into(),
        host_name: "10.0.9.5".into(),
        ip_addr: "10.0.9.5".parse().expect("an address"),
        port: 8080,
        secure_port: None,
        status: Status::Up,
        overridden_status: Status::Unknown,
        vip_address: "orders".into(),
        secure_vip_address: "orders".into(),
        data_center: "MyOwn".into(),
        metadata: BTreeMap::from([("management.port".into(), "8080".into())]),
        home_page_url: "http://10.0.9.5:8080/".into(),
        status_page_url: "http://10.0.9.5:8080/actuator/info".into(),
        health_check_url: "http://10.0.9.5:8080/actuator/health".into(),
        renewal_interval_secs: 30,
        duration_secs: 90,
        dirty_ms: 1,
    }
}
