//! ACME certificates shared by the gateways, against a real ACME CA
//! (pebble, `tests/src/pebble.rs`): one order at a time, its challenge
//! answered by a gateway other than the one that ordered, the orderer
//! killed mid-order and another completing it, every gateway serving the
//! certificate, and one that joins later serving it at once.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::pebble::Pebble;
use shoal_tests::{Net, Stack, http, new_key, wait_for_async};

const DOMAIN: &str = "shop.test";
const TLS_PORT: u16 = 4443;
const TLS_PORT_TEXT: &str = "4443";

/// The gateway at `ip`'s `/stats` `acme` section.
async fn acme_status(client: &reqwest::Client, ip: IpAddr) -> Option<Value> {
    let url = format!("http://{ip}:{}/stats", shoal_tests::ports::ADMIN);
    let doc: Value = client.get(url).send().await.ok()?.json().await.ok()?;
    doc.get("acme").cloned()
}

/// The status of an HTTPS request for `DOMAIN` to the gateway at `ip`
/// (a path no service serves), trusting only `root`: `None` when the
/// handshake or the check of the certificate fails.
fn https_status(ip: IpAddr, root: &std::path::Path) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(root)
        .args(["--resolve", &format!("{DOMAIN}:{TLS_PORT}:{ip}")])
        .arg(format!("https://{DOMAIN}:{TLS_PORT}/api/none/here"))
        .output()
        .expect("curl (scripts/test installs it)");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code > 0).then_some(code)
}

/// pebble, every name resolving to one address, and what a gateway needs
/// to obtain `DOMAIN` from it.
struct Ca {
    pebble: Pebble,
    edge_key: String,
    api_ca: String,
}

impl Ca {
    /// pebble's names resolve to `answer`; its certificates last
    /// `validity` seconds when given. `None`: pebble is not installed.
    fn start(net: &Net, answer: IpAddr, validity: Option<u64>) -> Option<Ca> {
        let pebble = Pebble::start(net, answer, shoal_tests::ports::GATEWAY, validity)?;
        let api_ca = pebble.api_ca.display().to_string();
        Some(Ca {
            pebble,
            edge_key: new_key(),
            api_ca,
        })
    }

    /// A gateway's settings for `DOMAIN` from `directory` (pebble's when `None`).
    fn env<'a>(&'a self, directory: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
        vec![
            ("SHOAL_ACME_DOMAINS", DOMAIN),
            (
                "SHOAL_ACME_DIRECTORY",
                directory.unwrap_or(&self.pebble.directory),
            ),
            ("SHOAL_ACME_CA_FILE", &self.api_ca),
            ("SHOAL_ACME_EMAIL", "ops@shop.test"),
            ("SHOAL_EDGE_KEY", &self.edge_key),
            ("SHOAL_TLS_PORT", TLS_PORT_TEXT),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_share_one_acme_certificate_ordered_once_and_answer_each_others_challenges() {
    let net = Net::new(82);
    // Every name resolves to gateway 3: the CA's HTTP-01 requests reach it
    // alone, and it never orders (its claim is the youngest).
    let Some(ca) = Ca::start(&net, net.ip(1, 3), None) else {
        return;
    };
    let client = http();
    let env = ca.env(None);
    let mut stack = Stack::new(&net);
    let started = Instant::now();
    for i in 1..=3 {
        stack.gateway(i, &env);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Gateway 1 claimed first and orders; killed once its order is under way.
    wait_for_async("gateway 1 ordering", Duration::from_secs(30), || async {
        let s = acme_status(&client, net.ip(1, 1)).await?;
        (s["orders"].as_u64()? >= 1).then_some(())
    })
    .await;
    stack.proc("gateway-1").sigkill();
    let killed = started.elapsed();

    // Gateway 2 (the next claim) orders anew; gateway 3 answers the CA.
    let status_of = |i: u8| {
        let client = client.clone();
        let ip = net.ip(1, i);
        async move { acme_status(&client, ip).await }
    };
    for i in [2, 3] {
        wait_for_async(
            &format!("gateway {i} serving the certificate"),
            Duration::from_secs(60),
            || async {
                let s = status_of(i).await?;
                (s["state"] == "valid").then_some(())
            },
        )
        .await;
    }
    let obtained = started.elapsed();
    let (two, three) = (status_of(2).await.unwrap(), status_of(3).await.unwrap());
    eprintln!(
        "ACME gateway 1 killed mid-order at {killed:?}; certificate on gateways 2 and 3 at {obtained:?}\n  gateway 2: {two}\n  gateway 3: {three}"
    );
    assert_eq!(two["from"], "ordered here", "{two}");
    assert_eq!(two["orders"], 1, "{two}");
    assert_eq!(two["failed"], 0, "{two}");
    assert_eq!(three["orders"], 0, "gateway 3 ordered too: {three}");
    assert!(
        three["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("gateway@")),
        "{three}"
    );

    // Both serve it over HTTPS, checked against the CA's root and the name.
    let root = ca.pebble.issuing_root();
    for i in [2, 3] {
        let status = https_status(net.ip(1, i), &root);
        assert!(
            status.is_some(),
            "gateway {i} over HTTPS with the certificate for {DOMAIN}"
        );
    }

    // A gateway that joins later serves it within a moment of joining.
    // (Seeded by gateway 2: gateway 1, everyone's seed, is dead.)
    let seed = format!("{}:{}", net.ip(1, 2), shoal_tests::GOSSIP_PORT);
    let mut env4 = env.clone();
    env4.push(("SHOAL_SEEDS", &seed));
    let joining = Instant::now();
    let four = stack.gateway(4, &env4);
    let two_at = SocketAddr::new(net.ip(1, 2), shoal_tests::ports::GATEWAY);
    let joined = wait_for_async("gateway 4 in the view", Duration::from_secs(20), || async {
        let doc = shoal_tests::members_doc(&client, two_at).await?;
        doc.members()
            .any(|m| m.addr == four)
            .then(|| joining.elapsed())
    })
    .await;
    let root2 = root.clone();
    let serving = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if https_status(four.ip(), &root2).is_some() {
                return Some(joining.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap()
    .expect("gateway 4 serves the certificate");
    let s4 = status_of(4).await.unwrap();
    eprintln!(
        "ACME gateway 4 joined after {joined:?}, served the certificate after {serving:?} ({:?} after joining): {s4}",
        serving.saturating_sub(joined)
    );
    assert_eq!(s4["orders"], 0, "{s4}");
    assert!(
        serving.saturating_sub(joined) < Duration::from_secs(3),
        "gateway 4 served the certificate {:?} after joining",
        serving.saturating_sub(joined)
    );
}

/// Renewal under pebble's short-lived certificates (20 s, renewed at two
/// thirds): two gateways under HTTPS load through two renewals, not one
/// request refused, each renewal ordered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_under_load_with_no_failed_request() {
    let net = Net::new(83);
    let Some(ca) = Ca::start(&net, net.ip(1, 2), Some(20)) else {
        return;
    };
    let client = http();
    let env = ca.env(None);
    let mut stack = Stack::new(&net);
    for i in 1..=2 {
        stack.gateway(i, &env);
    }
    let not_after = |i: u8| {
        let client = client.clone();
        let ip = net.ip(1, i);
        async move {
            let s = acme_status(&client, ip).await?;
            (s["state"] != "obtaining").then(|| s["not_after_ms"].as_u64())?
        }
    };
    for i in 1..=2 {
        wait_for_async(
            &format!("gateway {i} serving a certificate"),
            Duration::from_secs(60),
            || not_after(i),
        )
        .await;
    }
    let first = not_after(1).await.unwrap();
    let root = ca.pebble.issuing_root();
    // HTTPS requests, a new handshake each, to both gateways until two
    // renewals have gone by (~27 s).
    let ips = [net.ip(1, 1), net.ip(1, 2)];
    let load = tokio::task::spawn_blocking(move || {
        let (mut sent, mut failed) = (0u32, 0u32);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            for ip in ips {
                sent += 1;
                if https_status(ip, &root).is_none() {
                    failed += 1;
                }
            }
        }
        (sent, failed)
    });
    let (sent, failed) = load.await.unwrap();
    // A renewal ordered as the load ends reaches the other gateway by
    // gossip a round or two later: wait for the two to agree.
    wait_for_async(
        "both gateways serving the newest certificate",
        Duration::from_secs(5),
        || async {
            let (a, b) = (not_after(1).await?, not_after(2).await?);
            (a == b).then_some(())
        },
    )
    .await;
    let mut renewed = vec![];
    let mut orders = 0;
    for i in 1..=2 {
        let s = acme_status(&client, net.ip(1, i)).await.unwrap();
        renewed.push(s["not_after_ms"].as_u64().unwrap_or(0));
        orders += s["orders"].as_u64().unwrap_or(0);
        assert_eq!(s["failed"], 0, "gateway {i}: {s}");
        eprintln!("ACME renewal: gateway {i}: {s}");
    }
    let renewals = (renewed[0].saturating_sub(first)) / 1000;
    eprintln!(
        "ACME renewal: {sent} HTTPS requests (a handshake each), {failed} failed; not_after moved {renewals} s over {orders} orders"
    );
    assert_eq!(failed, 0, "HTTPS requests refused during renewals");
    assert_eq!(renewed[0], renewed[1], "both gateways serve the newest");
    assert!(renewed[0] > first, "never renewed: {first} → {renewed:?}");
    // The first order and one per renewal (a renewal every ~13.4 s).
    assert!(
        (2..=4).contains(&orders),
        "{orders} orders for two renewals"
    );
}

/// Failures say why, in `/stats` and the log, and nothing is served: the
/// CA's HTTP-01 request reaching no gateway (the name points elsewhere),
/// and a CA that does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_challenge_and_an_unreachable_ca_are_named() {
    let net = Net::new(84);
    // The name resolves to an address where no gateway listens.
    let Some(ca) = Ca::start(&net, net.ip(1, 9), None) else {
        return;
    };
    let client = http();
    let unreachable = format!("https://{}:14999/dir", net.ip(9, 1));
    let mut stack = Stack::new(&net);
    for (i, directory) in [(1, None), (2, Some(unreachable.as_str()))] {
        // Two clusters (gateway 2 seeds itself).
        let seed = format!("{}:{}", net.ip(1, i), shoal_tests::GOSSIP_PORT);
        let mut env = ca.env(directory);
        env.push(("SHOAL_SEEDS", &seed));
        stack.gateway(i, &env);
    }
    // Gateway 3 beside gateway 1: it waits while gateway 1 backs off.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.gateway(3, &ca.env(None));
    let mut causes = vec![];
    for (i, expected) in [(1, "refused the challenge"), (2, "unreachable")] {
        let error = wait_for_async(
            &format!("gateway {i}'s order failing"),
            Duration::from_secs(60),
            || async {
                let s = acme_status(&client, net.ip(1, i)).await?;
                s["last_error"].as_str().map(str::to_string)
            },
        )
        .await;
        let s = acme_status(&client, net.ip(1, i)).await.unwrap();
        eprintln!("ACME gateway {i}: {s}");
        assert!(error.contains(expected), "gateway {i}: {error}");
        assert_eq!(s["state"], "obtaining", "{s}");
        assert!(s["failed"].as_u64() >= Some(1), "{s}");
        assert!(
            stack
                .proc(&format!("gateway-{i}"))
                .log()
                .contains("ACME order failed"),
            "gateway {i} logs the failure"
        );
        causes.push(error);
    }
    assert!(causes[0].contains(DOMAIN), "{}", causes[0]);
    // One client of the CA backing off, not one per gateway: gateway 1
    // keeps its claim through its backoff, gateway 3 orders nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s3 = acme_status(&client, net.ip(1, 3)).await.unwrap();
    eprintln!("ACME gateway 3 beside the failing one: {s3}");
    assert_eq!(s3["orders"], 0, "{s3}");
    assert!(
        s3["ordering"]
            .as_str()
            .is_some_and(|o| o.contains(&net.ip(1, 1).to_string())),
        "{s3}"
    );
    // Nothing served meanwhile: the handshake fails.
    let root = ca.pebble.issuing_root();
    assert_eq!(https_status(net.ip(1, 1), &root), None);
}
