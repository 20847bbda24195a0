//! The README's first command: `shoal local` (what `scripts/run-local`
//! runs after building) starts, becomes ready, answers through the gateway,
//! and stops cleanly on Ctrl-C.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use shoal_tests::{Net, Proc, bin, wait_for};

#[test]
fn local_cluster_starts_answers_and_stops_cleanly() {
    let net = Net::new(51);
    let data = net.dir().join("data");
    let data = data.to_string_lossy().to_string();
    let mut local = Proc::spawn(
        &net,
        "local",
        &bin("shoal"),
        &["local", "--net", "127.51", "--data", &data],
        &[],
    );
    wait_for(
        "the local cluster to be ready",
        Duration::from_secs(60),
        || {
            local
                .lines()
                .iter()
                .any(|(_, l)| l.contains("up and routable"))
                .then_some(())
        },
    );
    let printed: Vec<String> = local.lines().into_iter().map(|(_, l)| l).collect();
    assert!(
        printed
            .iter()
            .any(|l| l.contains("curl 127.51.10.1:4000/api/story-service/story")),
        "{printed:#?}"
    );

    // Through the gateway: a write, then a read on another gateway.
    let gw1: SocketAddr = "127.51.10.1:4000".parse().unwrap();
    let gw3: SocketAddr = "127.51.10.3:4000".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = shoal_tests::http();
        let r = client
            .post(format!("http://{gw1}/api/story-service/story"))
            .json(&serde_json::json!({"id": "local", "message": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = client
            .get(format!("http://{gw3}/api/story/local"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body[0]["message"], "hi");
        let r = client
            .get(format!("http://{gw1}/api/notice-service/notice"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });

    // Ctrl-C: everything drains and stops, nothing keeps listening.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(local.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = local
        .wait_exit(Duration::from_secs(40))
        .expect("shoal local exits");
    assert!(status.success(), "{status}");
    assert!(
        local
            .lines()
            .iter()
            .any(|(_, l)| l.contains("no process left"))
    );
    for addr in [
        "127.51.10.1:4000",
        "127.51.10.2:8761",
        "127.51.11.1:8768",
        "127.51.12.3:8763",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "{addr} still listening"
        );
    }
}
