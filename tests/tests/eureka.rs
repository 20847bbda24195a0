//! Eureka clients register through any gateway, with no Eureka server:
//! three real gateways, plain HTTP servers that are *not* shoal members
//! (they only speak to the Eureka API, like a Spring or Python service),
//! and the exact bodies and query strings those clients send
//! (`../shared/EUREKA.md`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use shoal_tests::{Net, Stack, http, ports, wait_for_async};

/// Spring Cloud Netflix's register body (Jackson), for an instance at `ip:port`.
fn spring_body(ip: &str, port: u16) -> String {
    format!(
        r#"{{"instance":{{"instanceId":"{ip}:orders:{port}","hostName":"{ip}","app":"ORDERS","ipAddr":"{ip}","status":"UP","overriddenStatus":"UNKNOWN","port":{{"$":{port},"@enabled":"true"}},"securePort":{{"$":443,"@enabled":"false"}},"countryId":1,"dataCenterInfo":{{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"}},"leaseInfo":{{"renewalIntervalInSecs":30,"durationInSecs":90,"registrationTimestamp":0,"lastRenewalTimestamp":0,"evictionTimestamp":0,"serviceUpTimestamp":0}},"metadata":{{"management.port":"{port}"}},"homePageUrl":"http://{ip}:{port}/","statusPageUrl":"http://{ip}:{port}/actuator/info","healthCheckUrl":"http://{ip}:{port}/actuator/health","vipAddress":"orders","secureVipAddress":"orders","isCoordinatingDiscoveryServer":"false","lastUpdatedTimestamp":"1764150000000","lastDirtyTimestamp":"1764150000000","actionType":"ADDED"}}}}"#
    )
}

/// py-eureka-client 0.13's register body (`eureka_basic.register`): note
/// `overriddenstatus` in lower case, `secureHealthCheckUrl`, timestamps as
/// strings; `duration` is its `duration_in_secs`.
fn python_body(ip: &str, port: u16, duration: u32) -> String {
    format!(
        r#"{{"instance": {{"instanceId": "{ip}:billing:{port}", "hostName": "{ip}", "app": "BILLING", "ipAddr": "{ip}", "status": "UP", "overriddenstatus": "UNKNOWN", "port": {{"$": {port}, "@enabled": "true"}}, "securePort": {{"$": 443, "@enabled": "false"}}, "countryId": 1, "dataCenterInfo": {{"@class": "com.netflix.appinfo.InstanceInfo$MyDataCenterInfo", "name": "MyOwn"}}, "leaseInfo": {{"renewalIntervalInSecs": 1, "durationInSecs": {duration}, "registrationTimestamp": 0, "lastRenewalTimestamp": 0, "evictionTimestamp": 0, "serviceUpTimestamp": 0}}, "metadata": {{"management.port": "{port}"}}, "homePageUrl": "http://{ip}:{port}/", "statusPageUrl": "http://{ip}:{port}/info", "healthCheckUrl": "http://{ip}:{port}/health", "secureHealthCheckUrl": "", "vipAddress": "billing", "secureVipAddress": "billing", "lastUpdatedTimestamp": "1764150000000", "lastDirtyTimestamp": "1764150000000", "isCoordinatingDiscoveryServer": "false"}}}}"#
    )
}

/// An XML register body (what XML-speaking clients send).
fn xml_body(ip: &str, port: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><instance><instanceId>{ip}:inventory:{port}</instanceId><hostName>{ip}</hostName><app>INVENTORY</app><ipAddr>{ip}</ipAddr><status>UP</status><overriddenstatus>UNKNOWN</overriddenstatus><port enabled="true">{port}</port><securePort enabled="false">443</securePort><countryId>1</countryId><dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo><leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs><durationInSecs>90</durationInSecs></leaseInfo><metadata><zone>a</zone></metadata><vipAddress>inventory</vipAddress></instance>"#
    )
}

/// A plain HTTP server (no shoal inside) answering `/host` with `name`.
async fn plain_server(addr: SocketAddr, name: &'static str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let app = Router::new().route("/host", get(move || async move { name }));
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// What `path` answers through the gateway at `gw` (status and body).
async fn through(client: &reqwest::Client, gw: SocketAddr, path: &str) -> (u16, String) {
    match client.get(format!("http://{gw}{path}")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Whether the gateway at `gw` has `node` (a member id) in its view.
async fn in_view(client: &reqwest::Client, gw: SocketAddr, node: &str) -> Option<bool> {
    let doc = shoal_tests::members_doc(client, gw).await?;
    Some(doc.members().any(|m| m.id.node == node))
}

/// The version of ORDERS' lease in gateway `gw`'s view (every operation
/// on a lease but a plain heartbeat adds one; panics when the view has no
/// such lease, so a wait on it cannot pass by accident).
async fn lease_version(client: &reqwest::Client, gw: SocketAddr, node: &str) -> u64 {
    let url = format!("http://{}:{}/members", gw.ip(), ports::ADMIN);
    let doc = shoal_tests::get_json(client, &url).await;
    doc["services"]["orders"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"]["node"] == node))
        .and_then(|m| m["lease"]["version"].as_u64())
        .unwrap_or_else(|| panic!("no lease {node} in {doc}"))
}

/// Waits until every gateway in `gws` has (or has not) `node` in its view;
/// gives the time it took.
async fn until_views(
    client: &reqwest::Client,
    gws: &[SocketAddr],
    node: &str,
    present: bool,
) -> Duration {
    let start = Instant::now();
    wait_for_async(
        &format!(
            "{node} {} every view",
            if present { "in" } else { "out of" }
        ),
        Duration::from_secs(20),
        || async {
            for gw in gws {
                if in_view(client, *gw, node).await? != present {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    start.elapsed()
}

#[tokio::test]
async fn eureka_clients_register_renew_and_cancel_through_any_gateway() {
    let net = Net::new(64);
    let mut stack = Stack::new(&net);
    let client = http();
    // Writes need a user of this file (the default rule, `auth`): spring's
    // password as `htpasswd -B` stores it (bcrypt), python's in clear.
    let users = net.dir().join("eureka-users");
    std::fs::write(
        &users,
        "# who may register\n\
         spring:$2y$04$NKTnKOdQPjLWliJO/fnRb.M6PapXMrXJIaiLJjMmpy6kA5bFaxZWG\n\
         python:py-pw\n",
    )
    .unwrap();
    let users = users.to_string_lossy().to_string();
    let gws: Vec<SocketAddr> = (1..=3)
        .map(|i| stack.gateway(i, &[("SHOAL_EUREKA_CREDENTIALS_FILE", &users)]))
        .collect();
    let writer = {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode("spring:s3cret");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Basic {token}").parse().unwrap());
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    let admin = |i: usize| format!("http://{}:{}/eureka", gws[i].ip(), ports::ADMIN);
    for gw in &gws {
        shoal_tests::wait_routable(&client, *gw, "gateway", 3).await;
    }
    let orders = SocketAddr::new(net.ip(4, 1), 8080);
    let billing = SocketAddr::new(net.ip(4, 2), 8080);
    let inventory = SocketAddr::new(net.ip(4, 3), 8080);
    plain_server(orders, "orders-1").await;
    plain_server(billing, "billing-1").await;
    plain_server(inventory, "inventory-1").await;
    let orders_id = format!("{}:orders:8080", orders.ip());
    let billing_id = format!("{}:billing:8080", billing.ip());

    // Without credentials, or with a wrong password: refused, nothing registered.
    for who in [None, Some(("spring", "guess"))] {
        let mut rb = client
            .post(format!("{}/apps/ORDERS", admin(0)))
            .header("content-type", "application/json")
            .body(spring_body(&orders.ip().to_string(), 8080));
        if let Some((u, p)) = who {
            rb = rb.basic_auth(u, Some(p));
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401, "{who:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        assert!(r.text().await.unwrap().contains("credentials required"));
    }
    let r = client
        .get(format!("{}/apps/ORDERS", admin(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "reads stay open; nothing was registered");

    // Spring's registration at gateway 1 → routable on gateway 3.
    let start = Instant::now();
    let r = writer
        .post(format!("{}/apps/ORDERS", admin(0)))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(spring_body(&orders.ip().to_string(), 8080))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.text().await.unwrap(), "");
    wait_for_async(
        "ORDERS routable on gateway 3",
        Duration::from_secs(10),
        || async {
            let (status, body) = through(&client, gws[2], "/api/orders/host").await;
            (status == 200 && body == "orders-1").then_some(())
        },
    )
    .await;
    let routable = start.elapsed();
    eprintln!("registration at gateway-1 → routable through gateway-3: {routable:?}");
    // README: 0.11–0.19 s.
    assert!(routable < Duration::from_millis(600), "took {routable:?}");

    // Read back on another gateway, as Spring (JSON) and Python (XML) do.
    let app: Value = wait_for_async(
        "ORDERS listed on gateway 2",
        Duration::from_secs(10),
        || async {
            let r = client
                .get(format!("{}/apps/ORDERS", admin(1)))
                .header("accept", "application/json")
                .send()
                .await
                .ok()?;
            r.json().await.ok()
        },
    )
    .await;
    let instance = &app["application"]["instance"][0];
    assert_eq!(instance["instanceId"], orders_id.as_str());
    assert_eq!(instance["status"], "UP");
    assert_eq!(instance["metadata"]["management.port"], "8080");
    assert_eq!(
        instance["healthCheckUrl"],
        format!("http://{orders}/actuator/health")
    );
    assert_eq!(instance["leaseInfo"]["durationInSecs"], 90);
    let xml = client
        .get(format!("{}/apps/", admin(2)))
        .header("accept", "*/*")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        xml.contains(&format!("<instanceId>{orders_id}</instanceId>")),
        "{xml}"
    );
    assert!(
        xml.contains("<management.port>8080</management.port>"),
        "{xml}"
    );

    // Python's registration at gateway 2 with a 3 s lease, renewed at
    // gateway 3 (a different gateway) with Python's query string.
    let r = writer
        .post(format!("{}/apps/BILLING", admin(1)))
        .header("content-type", "application/json")
        .body(python_body(&billing.ip().to_string(), 8080, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // An XML registration too.
    let r = writer
        .post(format!("{}/apps/INVENTORY", admin(2)))
        .header("content-type", "application/xml")
        .body(xml_body(&inventory.ip().to_string(), 8080))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let billing_url = format!(
        "{}/apps/BILLING/{}",
        admin(2),
        billing_id.replace(':', "%3A")
    );
    let mut last_heartbeat = Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = writer
            .put(format!(
                "{billing_url}?status=UP&lastDirtyTimestamp=1764150000000"
            ))
            .send()
            .await
            .unwrap();
        last_heartbeat = Instant::now();
        assert_eq!(r.status(), 200, "a heartbeat at another gateway renews");
        assert_eq!(r.content_length(), Some(0), "empty body (Java clients)");
    }
    // 6 s after registering a 3 s lease: still there, thanks to the renewals.
    let (status, body) = through(&client, gws[0], "/api/billing/host").await;
    assert_eq!((status, body.as_str()), (200, "billing-1"));
    let (status, body) = through(&client, gws[1], "/api/inventory/host").await;
    assert_eq!((status, body.as_str()), (200, "inventory-1"));
    // The client stops renewing: out of every view when the lease runs out.
    until_views(&client, &gws, &format!("eureka:{billing_id}"), false).await;
    let expired = last_heartbeat.elapsed();
    eprintln!("last heartbeat → out of every view (3 s lease): {expired:?}");
    // README: 3.02 s — at the lease's deadline, give or take the gossip
    // and this test's polling.
    assert!(
        expired >= Duration::from_millis(2900) && expired < Duration::from_millis(4500),
        "a 3 s lease ran out after {expired:?}"
    );
    let r = writer.put(&billing_url).send().await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "an expired lease is unknown: the client re-registers"
    );
    assert_eq!(r.content_length(), Some(0));

    // The delta has the registrations and the expiry, with one hash code.
    let delta: Value = shoal_tests::get_json(&client, &format!("{}/apps/delta", admin(0))).await;
    let changes: Vec<(String, String)> = delta["applications"]["application"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["instance"].as_array().unwrap().clone())
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap().to_string(),
                i["actionType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        changes.contains(&(orders_id.clone(), "ADDED".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&(billing_id.clone(), "DELETED".into())),
        "{changes:?}"
    );
    assert!(
        delta["applications"]["apps__hashcode"]
            .as_str()
            .unwrap()
            .contains("UP_")
    );

    // An operator's override takes ORDERS out of traffic everywhere, and back.
    let orders_url =
        |i: usize| format!("{}/apps/ORDERS/{}", admin(i), orders_id.replace(':', "%3A"));
    let r = writer
        .put(format!(
            "{}/status?value=OUT_OF_SERVICE&lastDirtyTimestamp=1",
            orders_url(1)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for_async("ORDERS out of traffic", Duration::from_secs(5), || async {
        (through(&client, gws[0], "/api/orders/host").await.0 == 503).then_some(())
    })
    .await;
    let r = writer
        .delete(format!("{}/status?value=UP", orders_url(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = writer
        .put(format!("{}/metadata?zone=b", orders_url(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for_async(
        "ORDERS back with its metadata",
        Duration::from_secs(5),
        || async {
            let ok = through(&client, gws[0], "/api/orders/host").await.0 == 200;
            let xml = client
                .get(format!("{}/apps/ORDERS", admin(0)))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (ok && xml.contains("<zone>b</zone>")).then_some(())
        },
    )
    .await;

    // Refused, with the reason, and nothing registered.
    let refusals: [(&str, String, u16, &str); 4] = [
        (
            "ORDERS",
            spring_body("not-an-ip", 8080),
            400,
            "instance.ipAddr \"not-an-ip\" is not an IP address",
        ),
        (
            "GATEWAY",
            spring_body(&gws[1].ip().to_string(), 4000)
                .replace(":orders:", ":gateway:")
                .replace("\"ORDERS\"", "\"GATEWAY\""),
            409,
            "belongs to a shoal member",
        ),
        (
            "ORDERS",
            spring_body("10.1.1.1", 1).replace(
                "\"management.port\":\"1\"",
                &format!("\"blob\":\"{}\"", "x".repeat(900)),
            ),
            413,
            "more than the 1000 a gossip record may hold",
        ),
        ("ORDERS", "x".repeat(100 * 1024), 413, ""),
    ];
    for (app, body, status, reason) in refusals {
        let r = writer
            .post(format!("{}/apps/{app}", admin(0)))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{reason}");
        let text = r.text().await.unwrap();
        assert!(text.contains(reason), "{status}: {text}");
    }
    let gateways: Value =
        shoal_tests::get_json(&client, &format!("{}/apps/GATEWAY", admin(0))).await;
    assert_eq!(
        gateways["application"]["instance"].as_array().map(Vec::len),
        Some(3)
    );

    // A metadata change at gateway 1 makes its copy of ORDERS' lease the
    // newest (a heartbeat writes only its time, beside the record); then it
    // dies. The lease lives on: adopted by another gateway, still routable,
    // renewed at gateway 2.
    let node = format!("eureka:{orders_id}");
    let before = lease_version(&client, gws[0], &node).await;
    let r = writer.put(orders_url(0)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        lease_version(&client, gws[0], &node).await,
        before,
        "a heartbeat does not write the record again"
    );
    let r = writer
        .put(format!("{}/metadata?zone=a", orders_url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for gw in &gws {
        wait_for_async(
            "gateway 1's copy in every view",
            Duration::from_secs(5),
            || async { (lease_version(&client, *gw, &node).await > before).then_some(()) },
        )
        .await;
    }
    stack.proc("gateway-1").sigkill();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !["gateway-2", "gateway-3"]
        .iter()
        .any(|g| stack.proc(g).log().contains("adopting the lease"))
    {
        assert!(
            Instant::now() < deadline,
            "no live gateway adopted gateway-1's lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gw in &gws[1..] {
        let (status, body) = through(&client, *gw, "/api/orders/host").await;
        assert_eq!((status, body.as_str()), (200, "orders-1"), "via {gw}");
    }
    let r = writer.put(orders_url(1)).send().await.unwrap();
    assert_eq!(r.status(), 200, "renewed after its gateway died");

    // Cancel at gateway 3 → out of every live view.
    let start = Instant::now();
    let r = writer.delete(orders_url(2)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let gone = until_views(&client, &gws[1..], &format!("eureka:{orders_id}"), false).await;
    let cancel = start.elapsed().max(gone);
    eprintln!("cancel at gateway-3 → out of every view: {cancel:?}");
    // README: ~0.19 s.
    assert!(cancel < Duration::from_millis(600), "took {cancel:?}");
    let (status, _) = through(&client, gws[1], "/api/orders/host").await;
    assert_eq!(status, 404, "orders is known no more");
    let r = writer.delete(orders_url(1)).send().await.unwrap();
    assert_eq!(r.status(), 404, "cancelled twice");
}

/// How many instances of `app` a gateway's Eureka API lists.
async fn listed(client: &reqwest::Client, gw: SocketAddr, app: &str) -> usize {
    let url = format!("http://{}:{}/eureka/apps/{app}", gw.ip(), ports::ADMIN);
    let Ok(r) = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
    else {
        return 0;
    };
    let Ok(doc) = r.json::<Value>().await else {
        return 0;
    };
    doc["application"]["instance"]
        .as_array()
        .map_or(0, |list| list.len())
}

/// Registrations of new instances beyond `SHOAL_EUREKA_MAX_LEASES_PER_APP`
/// and `SHOAL_EUREKA_MAX_LEASES` are refused, whichever gateway takes them,
/// with 507 and Spring's error body naming the limit; renewals and
/// re-registrations of instances already held are not, and a cancel makes
/// room.
#[tokio::test]
async fn registrations_beyond_the_cap_are_refused_with_507_naming_the_limit() {
    let net = Net::new(77);
    let mut stack = Stack::new(&net);
    let client = http();
    let caps = [
        ("SHOAL_EUREKA_WRITES", "open"),
        ("SHOAL_EUREKA_MAX_LEASES", "5"),
        ("SHOAL_EUREKA_MAX_LEASES_PER_APP", "3"),
    ];
    let gws: Vec<SocketAddr> = (1..=2).map(|i| stack.gateway(i, &caps)).collect();
    for gw in &gws {
        shoal_tests::wait_routable(&client, *gw, "gateway", 2).await;
    }
    let ip = net.ip(4, 1).to_string();
    let register = |gw: SocketAddr, app: &'static str, port: u16| {
        let client = client.clone();
        let ip = ip.clone();
        async move {
            let body = if app == "ORDERS" {
                spring_body(&ip, port)
            } else {
                python_body(&ip, port, 90)
            };
            let r = client
                .post(format!(
                    "http://{}:{}/eureka/apps/{app}",
                    gw.ip(),
                    ports::ADMIN
                ))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let seen_by = |gw: SocketAddr, app: &'static str, n: usize| {
        let client = client.clone();
        async move {
            wait_for_async(
                &format!("{n} of {app} listed"),
                Duration::from_secs(10),
                || async { (listed(&client, gw, app).await == n).then_some(()) },
            )
            .await
        }
    };
    for port in 1..=3 {
        assert_eq!(register(gws[0], "ORDERS", port).await.0, 204);
    }
    seen_by(gws[1], "ORDERS", 3).await;
    // A fourth ORDERS, at the other gateway: over the application's cap.
    let (status, body) = register(gws[1], "ORDERS", 4).await;
    assert_eq!(status, 507, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("Spring's error body");
    assert_eq!(doc["status"], 507);
    assert_eq!(doc["path"], "/eureka/apps/ORDERS");
    let message = doc["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("SHOAL_EUREKA_MAX_LEASES_PER_APP=3") && message.contains("ORDERS"),
        "{message}"
    );
    // Registering again an instance already held is no new lease.
    assert_eq!(register(gws[1], "ORDERS", 2).await.0, 204);
    // Two BILLING fill the cluster's cap; a third is over it.
    for port in 1..=2 {
        assert_eq!(register(gws[1], "BILLING", port).await.0, 204);
    }
    seen_by(gws[0], "BILLING", 2).await;
    let (status, body) = register(gws[0], "BILLING", 3).await;
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("SHOAL_EUREKA_MAX_LEASES=5"), "{body}");
    // A cancel makes room.
    let r = client
        .delete(format!(
            "http://{}:{}/eureka/apps/ORDERS/{ip}:orders:1",
            gws[0].ip(),
            ports::ADMIN
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    seen_by(gws[0], "ORDERS", 2).await;
    assert_eq!(register(gws[0], "BILLING", 3).await.0, 204);
}
