//! The gateway's own GETs: a JWT issuer's key set, another gateway's sealed
//! certificate, a challenge answer — http or https (the public CA roots),
//! one connection each, bounded in time and in size.

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What a GET takes and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct Get {
    /// What is fetched, for the error messages ("the key set").
    pub what: &'static str,
    /// The `Accept` header.
    pub accept: &'static str,
    /// The largest answer read.
    pub max_bytes: usize,
    /// Given up after that long.
    pub timeout: Duration,
}

/// GETs `url`: its body when it answers 200, else why not.
pub async fn get(url: &str, limits: Get) -> Result<Vec<u8>, String> {
    tokio::time::timeout(limits.timeout, get_once(url, limits))
        .await
        .map_err(|_| format!("no answer in {} s", limits.timeout.as_secs()))?
}

async fn get_once(url: &str, limits: Get) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("no host in the URL")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let request = http::Request::get(path)
        .header(header::HOST, host_header)
        .header(header::ACCEPT, limits.accept)
        .header(header::USER_AGENT, "shoal-gateway")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = if https {
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(bare)
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), limits.max_bytes)
        .collect()
        .await
        .map_err(|e| format!("reading {}: {e}", limits.what))?;
    Ok(body.to_bytes().to_vec())
}

async fn send<T>(
    io: T,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request: {e}"))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = tokio_rustls::rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // ring offers every default version: not reached.
                tokio_rustls::rustls::ClientConfig::builder()
                    .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}
