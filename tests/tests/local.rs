//! The README's first command: `shoal local` (what `scripts/run-local`
//! runs after building) starts, becomes ready, answers through the gateway,
//! survives replicas killed at will, and stops cleanly on Ctrl-C.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use shoal_tests::chaos::Load;
use shoal_tests::{Net, Proc, bin};

#[test]
fn local_cluster_starts_answers_and_stops_cleanly() {
    let net = Net::new(51);
    let data = net.dir().join("data");
    let data = data.to_string_lossy().to_string();
    let mut local = shoal_tests::start_local(&net, &["local", "--net", "127.51", "--data", &data]);
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
    let board = shoal_tests::board_runtime();
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
        let body: serde_json::Value =
            shoal_tests::get_json(&client, &format!("http://{gw3}/api/story/local")).await;
        assert_eq!(body[0]["message"], "hi");
        let r = client
            .get(format!("http://{gw1}/api/notice-service/notice"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if board {
            // board-service (Node.js behind its sidecar) is part of it.
            let r = client
                .post(format!("http://{gw1}/api/bbs/"))
                .json(
                    &serde_json::json!({"id": "local", "title": "hi", "content": "from the test"}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let latest: serde_json::Value =
                shoal_tests::get_json(&client, &format!("http://{gw3}/api/bbs/latest/")).await;
            assert_eq!(latest[0]["title"], "hi");
        }
    });

    // `shoal members`, as the README shows it: the table and nothing else
    // on stdout (its own log stays quiet unless asked for).
    let members = std::process::Command::new(bin("shoal"))
        .args(["members", "--seeds", "127.51.10.1:7950"])
        .env("SHOAL_CLUSTER_KEY_FILE", format!("{data}/cluster.key"))
        .env_remove("SHOAL_CLUSTER_KEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("shoal members");
    let table = String::from_utf8_lossy(&members.stdout);
    assert!(members.status.success(), "{table}");
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("SERVICE")),
        "{table}"
    );
    for name in ["gateway-1", "story-service-3", "notice-service-2"] {
        assert!(table.contains(name), "{name} missing: {table}");
    }
    if board {
        assert!(table.contains("board-service-2"), "{table}");
    }
    let stderr = String::from_utf8_lossy(&members.stderr);
    assert!(!stderr.contains("INFO"), "one-shot command logs: {stderr}");

    // Ctrl-C: everything drains and stops, nothing keeps listening.
    shoal_tests::stop_local(&mut local, Duration::from_secs(40));
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

/// Issue 8: the user's command itself (`shoal local`, here with `--chaos`)
/// under load through the first gateway, while replicas and a gateway are
/// SIGKILLed from outside as a user would: every replica comes back on its
/// own address, no GET through the surviving gateway fails, no acknowledged
/// write is lost or duplicated, and after Ctrl-C nothing is left running.
#[test]
fn local_cluster_survives_kills_and_chaos() {
    let net = Net::new(52);
    let data = net.dir().join("data");
    let data = data.to_string_lossy().to_string();
    let mut local = shoal_tests::start_local(
        &net,
        &[
            "local",
            "--net",
            "127.52",
            "--data",
            &data,
            "--notice",
            "1",
            "--board",
            "0",
            "--chaos",
            "story-service:4s",
        ],
    );
    let printed =
        |local: &Proc| -> Vec<String> { local.lines().into_iter().map(|(_, l)| l).collect() };
    let parent = local.pid();
    let names = [
        "gateway-1",
        "gateway-2",
        "gateway-3",
        "story-service-1",
        "story-service-2",
        "story-service-3",
        "notice-service-1",
    ];
    let mut seen_pids: HashSet<u32> = HashSet::new();
    let note_pids = |seen: &mut HashSet<u32>| {
        for name in names {
            seen.extend(shoal_tests::children_named(parent, name));
        }
    };
    note_pids(&mut seen_pids);
    assert_eq!(seen_pids.len(), names.len(), "one process per replica");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw1: SocketAddr = "127.52.10.1:4000".parse().unwrap();
    let load = rt.block_on(async { Load::start(&format!("http://{gw1}"), 4, 2) });

    // The user, in another terminal: kill -9 of replicas and of a gateway
    // other than the one the load goes through.
    let external = [
        "story-service-1",
        "gateway-2",
        "story-service-3",
        "gateway-3",
        "story-service-2",
    ];
    let mut killed = Vec::new();
    for name in external {
        std::thread::sleep(Duration::from_secs(3));
        note_pids(&mut seen_pids);
        let pids = shoal_tests::children_named(parent, name);
        // A chaos kill may have just taken it: it is then restarting.
        if let Some(pid) = pids.first() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            killed.push((name, std::time::SystemTime::now()));
        }
    }
    std::thread::sleep(Duration::from_secs(3));

    // Every replica back in rotation on every gateway (between chaos kills).
    let client = shoal_tests::http();
    let gateways: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.52.10.{i}:4000").parse().unwrap())
        .collect();
    rt.block_on(shoal_tests::wait_for_async(
        "every replica up in every gateway's view",
        Duration::from_secs(30),
        || async {
            for gw in &gateways {
                let view = shoal_tests::gateway_view(&client, *gw).await?;
                let up = |s: &str| {
                    view.get(s)
                        .map_or(0, |m| m.iter().filter(|(_, h)| h == "up").count())
                };
                (up("gateway") == 3 && up("story-service") == 3 && up("notice-service") == 1)
                    .then_some(())?;
            }
            Some(())
        },
    ));
    note_pids(&mut seen_pids);
    let report = rt.block_on(load.finish());
    eprintln!("load through gateway-1:\n{}", report.render());
    if report.lost > 0 {
        let replicas: Vec<String> = (1..=3)
            .map(|i| format!("http://127.52.11.{i}:8768"))
            .collect();
        let found = rt.block_on(shoal_tests::chaos::locate(
            &client,
            &report.lost_ids,
            &replicas,
        ));
        eprintln!("writes missing through the gateway, asked of each replica:\n{found}");
    }
    assert_eq!(report.failed_gets(), 0, "{}", report.render());
    assert!(report.gets > 500, "{}", report.render());
    assert_eq!(report.lost, 0, "{}", report.render());
    assert_eq!(report.duplicated, 0, "{}", report.render());
    assert_eq!(report.unread(), 0, "{}", report.render());
    assert!(
        report.posts.get(&201).copied().unwrap_or(0) > 100,
        "{}",
        report.render()
    );

    // Each kill from outside was seen, restarted and reported on one line.
    let lines = printed(&local);
    for (name, _) in &killed {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{name} killed by SIGKILL, restarted in"))),
            "no restart line for {name}: {lines:#?}"
        );
    }
    assert!(killed.len() >= 4, "killed from outside: {killed:?}");

    // Ctrl-C: a summary, the chaos report, nothing left running.
    shoal_tests::stop_local(&mut local, Duration::from_secs(60));
    let lines = printed(&local);
    let back: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("back in rotation on every gateway"))
        .collect();
    eprintln!(
        "{}",
        back.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let from = lines
        .iter()
        .position(|l| l.starts_with("stopped:"))
        .expect("a stop line");
    eprintln!("{}", lines[from..].join("\n"));
    assert!(lines[from].contains("no process left"), "{}", lines[from]);
    let chaos_kills: usize = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("chaos report: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("a chaos report");
    assert!(chaos_kills >= 4, "chaos kills: {chaos_kills}");
    assert!(
        lines.iter().any(|l| l.starts_with("summary: ran")),
        "no summary"
    );
    for pid in &seen_pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "));
        assert!(!alive, "pid {pid} still runs after Ctrl-C");
    }
    for addr in [
        "127.52.10.1:4000",
        "127.52.10.2:8761",
        "127.52.11.1:8768",
        "127.52.12.1:8763",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "{addr} still listening"
        );
    }
}
