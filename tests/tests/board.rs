//! board-service (Node.js + Express) behind `shoal sidecar -- node
//! server.js`, through the gateway: the `/bbs` contract of the classic
//! stack on SQLite and MariaDB, by both routes (`/api/bbs/**` and
//! `/api/board-service/bbs/**`); and the Node.js process killed under load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::{Net, Stack, gateway_view, http, wait_for_async, wait_routable};

/// A tag unique to this run, so runs sharing a database do not meet.
fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}", nanos % 0xffff_ffff)
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("an answer");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

/// The `/bbs` contract at `base` (`http://gw:4000/api`), both routes.
async fn board_contract(client: &reqwest::Client, gw: SocketAddr) {
    use reqwest::Method;
    let t = tag();
    let (alice, bob) = (format!("a{t}"), format!("b{t}"));
    let by_path = format!("http://{gw}/api/bbs");
    let by_id = format!("http://{gw}/api/board-service/bbs");
    let mut ids = vec![];
    for i in 1..=12 {
        let user = if i % 2 == 1 { &alice } else { &bob };
        let base = if i % 3 == 0 { &by_id } else { &by_path };
        let (status, body, text) = send(
            client,
            Method::POST,
            &format!("{base}/"),
            Some(json!({"id": user, "title": format!("title {i}"), "content": format!("content {i}")})),
        )
        .await;
        assert_eq!(status, 201, "{text}");
        let order: Vec<usize> = [
            "\"article_id\"",
            "\"id\"",
            "\"title\"",
            "\"content\"",
            "\"likeit\"",
        ]
        .iter()
        .map(|k| {
            text.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "field order: {text}");
        ids.push(body["article_id"].as_i64().expect("an article_id"));
    }

    // The newest 10, article_id descending; our 12 are the newest.
    let (status, latest, _) = send(client, Method::GET, &format!("{by_path}/latest/"), None).await;
    assert_eq!(status, 200);
    let latest = latest.as_array().expect("an array").clone();
    assert_eq!(latest.len(), 10);
    let got: Vec<i64> = latest
        .iter()
        .map(|a| a["article_id"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = ids.iter().rev().take(10).copied().collect();
    assert_eq!(got, want);
    assert_eq!(latest[0]["title"], "title 12");

    // Paging: the next 10 older than the last one shown.
    let last = got[9];
    let (_, older, _) = send(
        client,
        Method::GET,
        &format!("{by_id}/previous/{last}"),
        None,
    )
    .await;
    let older: Vec<i64> = older
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["article_id"].as_i64().unwrap())
        .collect();
    assert!(older.iter().all(|id| *id < last));
    assert!(older.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(&older[..2], &[ids[1], ids[0]]);

    // A user's articles.
    let (_, mine, _) = send(
        client,
        Method::GET,
        &format!("{by_path}/user/{alice}"),
        None,
    )
    .await;
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 6);
    assert!(mine.iter().all(|a| a["id"] == json!(alice)));

    // Likes, delete.
    let id = ids[0];
    for n in 1..=2 {
        let (status, a, _) = send(client, Method::PUT, &format!("{by_path}/{id}"), None).await;
        assert_eq!((status, a["likeit"].as_i64()), (200, Some(n)));
    }
    let (status, _, text) = send(client, Method::DELETE, &format!("{by_id}/{id}"), None).await;
    assert_eq!(status, 204);
    assert!(text.is_empty());
    let (status, err, _) = send(client, Method::DELETE, &format!("{by_path}/{id}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(err["status"], 404);

    // Bad requests: 400, Spring's shape, every field named, nothing written.
    let (status, err, text) = send(
        client,
        Method::POST,
        &format!("{by_path}/"),
        Some(json!({"id": "x".repeat(21), "title": ""})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    for key in ["timestamp", "status", "error", "message", "path", "errors"] {
        assert!(err.get(key).is_some(), "{key} missing: {text}");
    }
    let fields: Vec<&str> = err["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "title", "content"]);
    let (status, _, _) = send(
        client,
        Method::GET,
        &format!("{by_path}/previous/abc"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (_, after, _) = send(client, Method::GET, &format!("{by_path}/latest/"), None).await;
    assert_eq!(
        after.as_array().unwrap()[0]["title"],
        "title 12",
        "nothing written"
    );

    // Health, through the gateway too.
    let (status, health, _) = send(client, Method::GET, &format!("{by_path}/health"), None).await;
    assert_eq!((status, health), (200, json!({"status": "UP"})));
}

async fn contract(net_id: u8, database_url: String) {
    let net = Net::new(net_id);
    let mut stack = Stack::new(&net);
    let client = http();
    let gw = stack.gateway(1, &[]);
    stack.board(1, &database_url);
    stack.board(2, &database_url);
    wait_routable(&client, gw, "board-service", 2).await;
    board_contract(&client, gw).await;
}

#[tokio::test]
async fn board_contract_on_sqlite_through_the_gateway() {
    if !shoal_tests::board_runtime() {
        return;
    }
    let net_dir = std::env::temp_dir().join(format!("shoal-board-{}", tag()));
    std::fs::create_dir_all(&net_dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", net_dir.join("board.db").display());
    contract(61, url).await;
    let _ = std::fs::remove_dir_all(net_dir);
}

#[tokio::test]
async fn board_contract_on_mariadb_through_the_gateway() {
    if !shoal_tests::board_runtime() {
        return;
    }
    let Some(url) = std::env::var("SHOAL_TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        shoal_tests::skip_unless_ci(
            "SHOAL_TEST_MYSQL_URL is not set — MariaDB could not be started (scripts/test starts it)",
        );
        return;
    };
    contract(62, url).await;
}

/// The Node.js process (not the sidecar) SIGKILLed under load: GETs are
/// retried on the other replica, none fails; the sidecar takes the member
/// out at once and exits, saying why.
#[tokio::test]
async fn killing_the_node_process_fails_no_get_and_the_sidecar_reports_it() {
    if !shoal_tests::board_runtime() {
        return;
    }
    let net = Net::new(63);
    let db = format!("sqlite://{}?mode=rwc", net.dir().join("board.db").display());
    let mut stack = Stack::new(&net);
    let client = http();
    let gw = stack.gateway(1, &[]);
    stack.board(1, &db);
    stack.board(2, &db);
    wait_routable(&client, gw, "board-service", 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut failed = vec![];
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .get(format!("http://{gw}/api/bbs/latest/"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                failed
            })
        })
        .collect();
    let more = |n: usize| {
        let answered = answered.clone();
        let from = answered.load(Ordering::Relaxed);
        wait_for_async("answered GETs", Duration::from_secs(30), move || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::Relaxed) >= from + n).then_some(()) }
        })
    };
    more(50).await;

    let sidecar_pid = stack.proc("board-service-1").pid();
    let node = shoal_tests::children_named(sidecar_pid, "node");
    assert_eq!(node.len(), 1, "one node child of the sidecar");
    let killed_at = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for_async(
        "board-service-1 out of the gateway's rotation",
        Duration::from_secs(10),
        || async {
            let view = gateway_view(&client, gw).await?;
            let up = view
                .get("board-service")?
                .iter()
                .any(|(h, health)| h == "board-service-1" && health == "up");
            (!up).then_some(())
        },
    )
    .await;
    let out_after = killed_at.elapsed();
    more(100).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = vec![];
    for w in workers {
        failed.extend(w.await.unwrap());
    }
    eprintln!(
        "node killed under load: {} GETs answered, {} failed; out of rotation after {out_after:?}",
        answered.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty(), "failed GETs: {failed:?}");

    let sidecar = stack.proc("board-service-1");
    let status = sidecar
        .wait_exit(Duration::from_secs(10))
        .expect("the sidecar exits when its service dies");
    assert!(!status.success(), "{status}");
    let log = sidecar.log();
    assert!(
        log.contains("the service exited") && log.contains("SIGKILL"),
        "the sidecar says why: {log}"
    );
}
