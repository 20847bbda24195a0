//! A small upstream for the gateway's end-to-end tests: a real HTTP server
//! that joins the cluster like any service and answers in ways the tests
//! can steer (delays, statuses, echoes, slow writes, WebSocket echo).
//!
//! Env: the usual `SHOAL_*`, plus `TEST_DELAY_MS` (added to every answer),
//! `TEST_ROUTES` (announced path prefixes), `TEST_WRITES` (file that slow
//! writes append to), `TEST_STATUS` (status `/host` answers, default 200;
//! `POST /answer/{code}` changes it while running).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use shoal_node::{Cluster, Env, Health, NodeConfig, Role};

#[derive(Clone)]
struct Upstream {
    host: Arc<str>,
    delay: Duration,
    writes: Arc<str>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    shoal_http::telemetry::init(false);
    let config = NodeConfig::from_env(&env, "echo", 9000)?;
    let delay = Duration::from_millis(env.parse_or("TEST_DELAY_MS", 0u64, "milliseconds")?);
    let routes = env
        .get("TEST_ROUTES")
        .unwrap_or("")
        .split(',')
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    let state = Upstream {
        host: config.hostname.clone().into(),
        delay,
        writes: env.get("TEST_WRITES").unwrap_or("/dev/null").into(),
        status: Arc::new(std::sync::atomic::AtomicU16::new(
            StatusCode::from_u16(env.parse_or("TEST_STATUS", 200u16, "an HTTP status")?)?.as_u16(),
        )),
    };
    let listen: std::net::IpAddr = env.parse_or("SHOAL_LISTEN", [0, 0, 0, 0].into(), "an IP")?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(listen, config.port)).await?;
    let cluster = Cluster::join(&config, Role::Service { routes }).await?;
    let app = Router::new()
        .route("/host", get(host))
        .route("/answer/{code}", post(set_answer))
        .route("/echo", any(echo))
        .route("/headers", any(headers))
        .route("/verify", get(verify))
        .route("/status/{code}", any(status))
        .route("/write/{id}", post(slow_write))
        .route("/ws", get(ws))
        .route("/big/{bytes}", get(big))
        .fallback(host)
        .with_state(state);
    cluster.set_health(Health::Up).await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });
    shoal_http::signal::terminate().await;
    cluster.begin_drain().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    cluster.leave().await;
    Ok(())
}

/// `bytes` bytes of `x` (at most 256 MiB): an answer larger than any socket buffer.
async fn big(Path(bytes): Path<usize>) -> Vec<u8> {
    vec![b'x'; bytes.min(256 << 20)]
}

async fn host(State(s): State<Upstream>) -> (StatusCode, String) {
    tokio::time::sleep(s.delay).await;
    let status = StatusCode::from_u16(s.status.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, s.host.to_string())
}

/// Makes `/host` answer `code` from now on.
async fn set_answer(
    State(s): State<Upstream>,
    axum::extract::Path(code): axum::extract::Path<u16>,
) -> StatusCode {
    match StatusCode::from_u16(code) {
        Ok(_) => {
            s.status.store(code, std::sync::atomic::Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn echo(State(s): State<Upstream>, req: Request) -> Response {
    tokio::time::sleep(s.delay).await;
    let auth = req.headers().get("authorization").cloned();
    let mut response = Response::new(Body::from_stream(req.into_body().into_data_stream()));
    if let Some(auth) = auth {
        response.headers_mut().insert("x-seen-authorization", auth);
    }
    response
}

async fn headers(State(s): State<Upstream>, headers: HeaderMap) -> axum::Json<serde_json::Value> {
    tokio::time::sleep(s.delay).await;
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    axum::Json(map.into())
}

/// A forward-auth checker: `Authorization: Bearer good-{user}` is allowed,
/// the user in `X-User`, what was asked in `X-Asked` (`X-Forwarded-Method`
/// and `-Uri`); anything else is 401 with a `WWW-Authenticate` and a body.
async fn verify(headers: HeaderMap) -> Response {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    let asked = format!("{} {}", get("x-forwarded-method"), get("x-forwarded-uri"));
    match get("authorization").strip_prefix("Bearer good-") {
        Some(user) => (
            StatusCode::NO_CONTENT,
            [
                ("x-user", user.to_string()),
                ("x-asked", asked),
                ("x-other", "not copied".into()),
            ],
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", "Bearer realm=\"test\"".to_string()),
                ("x-asked", asked),
            ],
            "who are you?",
        )
            .into_response(),
    }
}

async fn status(State(s): State<Upstream>, Path(code): Path<u16>) -> Response {
    tokio::time::sleep(s.delay).await;
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::BAD_REQUEST)
        .into_response()
}

/// Takes 500 ms, then appends `id` to the writes file: a write that can be
/// caught in flight.
async fn slow_write(State(s): State<Upstream>, Path(id): Path<String>) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(500)).await;
    use std::io::Write;
    let ok = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&*s.writes)
        // One write(2) per record: with O_APPEND it lands whole, never
        // interleaved with a concurrent write of this or another replica.
        .and_then(|mut f| f.write_all(format!("{id}\n").as_bytes()));
    if ok.is_ok() {
        StatusCode::CREATED
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Echoes text (`echo: …`) and binary; the text `host` is answered with
/// this instance's host name.
async fn ws(State(s): State<Upstream>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) if t.as_str() == "host" => {
                    Message::Text(s.host.to_string().into())
                }
                Message::Text(t) => Message::Text(format!("echo: {t}").into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}
