//! The API contract of story-service and notice-service (CLASSIC-STACK.md),
//! against SQLite always and against MariaDB and PostgreSQL when
//! `scripts/test` could start them; and the services behind the gateway.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::{Net, Stack, http, wait_for_async, wait_healthy, wait_routable};

/// Suffix that keeps user ids of this run apart from earlier runs on a
/// persistent database.
fn run_tag() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}", (t.as_millis() as u64) & 0xffffff)
}

/// The `id` field of every notice of a JSON array answer.
fn ids(body: &Value) -> Vec<i64> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect()
}

async fn get_json(client: &reqwest::Client, url: String) -> (u16, Value, String) {
    let r = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

async fn post(client: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn key_order(text: &str, keys: &[&str]) {
    let first = text.find('{').map(|i| &text[i..]).unwrap_or("");
    let end = first.find('}').unwrap_or(first.len());
    let object = &first[..end];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            object
                .find(&format!("\"{k}\""))
                .unwrap_or_else(|| panic!("{k} missing in {object}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "field order of {object}, expected {keys:?}"
    );
}

async fn story_contract(client: &reqwest::Client, base: &str, host: &str) {
    let tag = run_tag();
    let (u1, u2, u3) = (
        format!("u1-{tag}"),
        format!("u2-{tag}"),
        format!("u3-{tag}"),
    );
    let url = format!("{base}/story");
    for (user, n) in [(&u1, 3), (&u2, 2), (&u3, 7)] {
        for i in 0..n {
            let (status, _) = post(
                client,
                &url,
                &json!({"id": user, "message": format!("{user} says {i}")}).to_string(),
            )
            .await;
            assert_eq!(status, 201);
        }
    }
    let r = client
        .post(&url)
        .json(&json!({"id": u1, "message": "empty body?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.text().await.unwrap().is_empty(), "201 has an empty body");

    let (status, body, text) = get_json(client, url.clone()).await;
    assert_eq!(status, 200);
    let list = body.as_array().expect("an array");
    assert!(list.len() <= 15);
    key_order(&text, &["story_id", "message", "id"]);
    let ids: Vec<i64> = list
        .iter()
        .map(|s| s["story_id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "descending story_id: {ids:?}"
    );
    assert_eq!(list[0]["id"], json!(u1), "newest first");
    for i in 0..20 {
        post(
            client,
            &url,
            &json!({"id": u2, "message": format!("more {i}")}).to_string(),
        )
        .await;
    }
    let (_, body, _) = get_json(client, url.clone()).await;
    assert_eq!(body.as_array().unwrap().len(), 15, "newest 15 only");

    let (status, body, _) = get_json(client, format!("{url}/{u3}")).await;
    assert_eq!(status, 200);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 5, "newest 5 of a user");
    assert!(list.iter().all(|s| s["id"] == json!(u3)));
    assert_eq!(list[0]["message"], json!(format!("{u3} says 6")));

    // Invalid bodies: 400 naming the field, nothing written.
    let long_id = "x".repeat(21);
    for (body, field) in [
        ("not json".to_string(), "body"),
        (json!({"message": "no id"}).to_string(), "id"),
        (json!({"id": u1}).to_string(), "message"),
        (json!({"id": long_id, "message": "m"}).to_string(), "id"),
        (
            json!({"id": u1, "message": "m".repeat(301)}).to_string(),
            "message",
        ),
        (json!({"id": 5, "message": "m"}).to_string(), "body"),
    ] {
        let (status, err) = post(client, &url, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["status"], json!(400));
        let fields: Vec<&str> = err["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field), "{body}: {err}");
        for key in ["timestamp", "error", "message", "path"] {
            assert!(err.get(key).is_some(), "{key} missing in {err}");
        }
    }
    let (status, _) = post(
        client,
        &url,
        &json!({"id": u1, "message": "m".repeat(300)}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "exactly 300 characters is fine");
    let (_, body, _) = get_json(client, format!("{url}/{u1}")).await;
    assert_eq!(body.as_array().unwrap().len(), 5);

    let (status, _, _) = get_json(client, format!("{url}/{long_id}")).await;
    assert_eq!(status, 400, "path parameter too long");

    let r = client.delete(format!("{url}/{u1}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, body, _) = get_json(client, format!("{url}/{u1}")).await;
    assert_eq!(body, json!([]));

    let r = client
        .get(format!("{url}/service/host"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), host);
}

async fn notice_contract(client: &reqwest::Client, base: &str, host: &str) {
    let tag = run_tag();
    let receiver = format!("r-{tag}");
    let url = format!("{base}/notice");
    for i in 0..25 {
        let (status, _) = post(
            client,
            &url,
            &json!({"receiver_id": receiver, "sender_id": "s", "article_id": i}).to_string(),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, body, text) = get_json(client, url.clone()).await;
    assert_eq!(status, 200);
    key_order(&text, &["id", "receiver_id", "sender_id", "article_id"]);
    assert!(
        body.as_array()
            .unwrap()
            .iter()
            .filter(|n| n["receiver_id"] == json!(receiver))
            .count()
            == 25
    );

    let (_, body, _) = get_json(client, format!("{url}/{receiver}")).await;
    let all = ids(&body);
    assert_eq!(all.len(), 25);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "descending ids");

    let (_, body, _) = get_json(client, format!("{url}/latest/{receiver}")).await;
    let page = ids(&body);
    assert_eq!(page, all[..10]);
    assert_eq!(body[0]["article_id"], json!(24));

    // Paging with /previous: 10, 10, 5, then nothing.
    let mut seen = page.clone();
    let mut sizes = vec![];
    let mut last = *page.last().unwrap();
    loop {
        let (status, body, _) = get_json(client, format!("{url}/previous/{receiver}/{last}")).await;
        assert_eq!(status, 200);
        let next = ids(&body);
        sizes.push(next.len());
        if next.is_empty() {
            break;
        }
        assert!(next.iter().all(|i| *i < last));
        last = *next.last().unwrap();
        seen.extend(next);
    }
    assert_eq!(sizes, [10, 5, 0]);
    assert_eq!(seen, all);

    for (body, field) in [
        (
            json!({"receiver_id": receiver, "sender_id": "s", "article_id": "x"}).to_string(),
            "body",
        ),
        (
            json!({"receiver_id": receiver, "sender_id": "s"}).to_string(),
            "article_id",
        ),
        (
            json!({"receiver_id": "r".repeat(21), "sender_id": "s", "article_id": 1}).to_string(),
            "receiver_id",
        ),
        (
            json!({"receiver_id": receiver, "sender_id": "", "article_id": 1}).to_string(),
            "sender_id",
        ),
    ] {
        let (status, err) = post(client, &url, &body).await;
        assert_eq!(status, 400, "{body}");
        let fields: Vec<&str> = err["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field), "{body}: {err}");
    }
    let (_, body, _) = get_json(client, format!("{url}/{receiver}")).await;
    assert_eq!(
        body.as_array().unwrap().len(),
        25,
        "invalid posts wrote nothing"
    );
    let (status, _, _) = get_json(client, format!("{url}/previous/{receiver}/abc")).await;
    assert_eq!(status, 400);

    let r = client
        .get(format!("{url}/service/host"))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), host);
}

async fn contract(net_id: u8, database_url: Option<String>) {
    let net = Net::new(net_id);
    let mut stack = Stack::new(&net);
    let client = http();
    let (story_db, notice_db) = match &database_url {
        Some(url) => (url.clone(), url.clone()),
        None => (
            "sqlite://story.db?mode=rwc".into(),
            "sqlite://notice.db?mode=rwc".into(),
        ),
    };
    stack.gateway(1, &[]);
    let story = stack.service(
        "story-service",
        "story-service",
        2,
        1,
        &[("DATABASE_URL", &story_db)],
    );
    let notice = stack.service(
        "notice-service",
        "notice-service",
        3,
        1,
        &[("DATABASE_URL", &notice_db)],
    );
    wait_healthy(&client, story, Duration::from_secs(60)).await;
    wait_healthy(&client, notice, Duration::from_secs(60)).await;
    story_contract(&client, &format!("http://{story}"), "story-service-1").await;
    notice_contract(&client, &format!("http://{notice}"), "notice-service-1").await;
}

#[tokio::test]
async fn contract_on_sqlite() {
    contract(21, None).await;
}

fn backend_url(var: &str, name: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            shoal_tests::skip_unless_ci(&format!(
                "{var} is not set — {name} could not be started (scripts/test starts it)"
            ));
            None
        }
    }
}

#[tokio::test]
async fn contract_on_mariadb() {
    if let Some(url) = backend_url("SHOAL_TEST_MYSQL_URL", "MariaDB") {
        contract(22, Some(url)).await;
    }
}

#[tokio::test]
async fn contract_on_postgresql() {
    if let Some(url) = backend_url("SHOAL_TEST_POSTGRES_URL", "PostgreSQL") {
        contract(23, Some(url)).await;
    }
}

#[tokio::test]
async fn three_replicas_behind_the_gateway_share_one_database() {
    let net = Net::new(24);
    let mut stack = Stack::new(&net);
    let client = http();
    let gw = stack.gateway(1, &[]);
    let db = format!("sqlite://{}/story.db?mode=rwc", net.dir().display());
    let replicas: Vec<SocketAddr> = (1..=3)
        .map(|i| {
            stack.service(
                "story-service",
                "story-service",
                2,
                i,
                &[("DATABASE_URL", &db)],
            )
        })
        .collect();
    wait_routable(&client, gw, "story-service", 3).await;

    // A POST through the gateway is visible through every replica.
    let (status, _) = post(
        &client,
        &format!("http://{gw}/api/story-service/story"),
        r#"{"id":"shared","message":"one"}"#,
    )
    .await;
    assert_eq!(status, 201);
    for r in &replicas {
        let (_, body, _) = get_json(&client, format!("http://{r}/story/shared")).await;
        assert_eq!(body.as_array().map(Vec::len), Some(1), "replica {r}");
    }
    // The path route announced by the service works too.
    let (status, body, _) = get_json(&client, format!("http://{gw}/api/story/shared")).await;
    assert_eq!((status, body[0]["message"].clone()), (200, json!("one")));

    // Sequential GETs see the three hostnames, evenly.
    shoal_tests::assert_even_spread(
        &client,
        &format!("http://{gw}/api/story-service/story/service/host"),
        3,
    )
    .await;
}

#[tokio::test]
async fn a_service_without_its_database_stays_starting_and_is_not_routed() {
    let net = Net::new(25);
    let client = http();
    // Nothing listens on this port: the database is down at start.
    let (mut stack, gw, story) = gateway_and_story(&net, "mysql://u:p@127.0.0.1:1/none");
    wait_starting(&client, gw).await;
    let r = client
        .get(format!("http://{story}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let (status, body, _) = get_json(&client, format!("http://{gw}/api/story-service/story")).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], json!(503));
    let proc = stack.proc("story-service-1");
    shoal_tests::wait_for("the retry to be logged", Duration::from_secs(10), || {
        proc.log().contains("database not ready").then_some(())
    });
}

/// The database URL with its `host:port` replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let (head, rest) = url.split_once('@').expect("a URL with user@host");
    let (hostport, tail) = rest.split_once('/').expect("a URL with a database name");
    let target = hostport.parse().expect("the test database on ip:port");
    (format!("{head}@{addr}/{tail}"), target)
}

/// A gateway and one story-service replica on `database_url`.
fn gateway_and_story<'a>(net: &'a Net, database_url: &str) -> (Stack<'a>, SocketAddr, SocketAddr) {
    let mut stack = Stack::new(net);
    let gw = stack.gateway(1, &[]);
    let story = stack.service(
        "story-service",
        "story-service",
        2,
        1,
        &[("DATABASE_URL", database_url)],
    );
    (stack, gw, story)
}

/// Waits until the gateway sees the story-service member `starting`.
async fn wait_starting(client: &reqwest::Client, gw: SocketAddr) {
    wait_for_async(
        "the member to be seen starting",
        Duration::from_secs(20),
        || async {
            let view = shoal_tests::gateway_view(client, gw).await?;
            (view.get("story-service")?.first()?.1 == "starting").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_database_lost_while_running_gives_503_and_the_service_comes_back_with_it() {
    let Some(url) = backend_url("SHOAL_TEST_MYSQL_URL", "MariaDB")
        .or_else(|| backend_url("SHOAL_TEST_POSTGRES_URL", "PostgreSQL"))
    else {
        return;
    };
    let (_, target) = via(&url, "127.0.0.1:1".parse().unwrap());
    let mut cut = shoal_tests::cut::Cut::start("127.0.0.1:0".parse().unwrap(), target)
        .await
        .expect("the forwarder to the database");
    let (url, _) = via(&url, cut.addr());
    let net = Net::new(26);
    let client = http();
    let (_stack, gw, story) = gateway_and_story(&net, &url);
    wait_routable(&client, gw, "story-service", 1).await;
    let user = format!("lost{}", run_tag());
    let (status, _) = post(
        &client,
        &format!("http://{gw}/api/story-service/story"),
        &format!(r#"{{"id":"{user}","message":"before"}}"#),
    )
    .await;
    assert_eq!(status, 201);

    // The network path to the database breaks.
    let lost_at = std::time::Instant::now();
    cut.cut().await;
    let (status, body, _) = get_json(&client, format!("http://{story}/story/{user}")).await;
    assert_eq!(
        status, 503,
        "a request that needs the lost database: {body}"
    );
    assert_eq!(body["error"], json!("Service Unavailable"));
    assert!(
        body["message"].as_str().unwrap_or("").contains("database"),
        "{body}"
    );
    wait_starting(&client, gw).await;
    let left_after = lost_at.elapsed();
    let (status, body, _) = get_json(&client, format!("http://{gw}/api/story-service/story")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (503, json!(503)),
        "{body}"
    );
    let (status, _) = post(
        &client,
        &format!("http://{gw}/api/story-service/story"),
        &format!(r#"{{"id":"{user}","message":"during"}}"#),
    )
    .await;
    assert_eq!(status, 503, "a write while the database is lost");

    // The path comes back: so does the service, with what it had.
    cut.restore().await.expect("the forwarder to listen again");
    let back_at = std::time::Instant::now();
    wait_routable(&client, gw, "story-service", 1).await;
    let up_after = back_at.elapsed();
    let (status, body, _) = get_json(
        &client,
        format!("http://{gw}/api/story-service/story/{user}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let messages: Vec<&str> = body
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["message"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(messages, ["before"], "nothing lost, nothing half-written");
    eprintln!("DB lost: member `starting` after {left_after:?}; back `up` after {up_after:?}");
}
