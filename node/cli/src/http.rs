//! Plain-HTTP GETs: `shoal healthcheck`, the sidecar's health probe, and
//! `shoal local`'s reading of the gateways' `/members`.

use std::time::Duration;

use anyhow::Context;

/// GETs `url`; Ok on a 2xx answer within `timeout`.
pub(crate) async fn healthcheck(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let (status, _) = http_get(url, timeout).await?;
    anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
    Ok(())
}

/// A plain-HTTP client for GETs.
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A new [`HttpClient`] (keep it to reuse its connections).
pub(crate) fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GETs `url` (plain HTTP) on a fresh connection and returns the status and
/// the whole body.
pub(crate) async fn http_get(
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    http_get_with(&http_client(), url, timeout).await
}

/// GETs `url` with `client` and returns the status and the whole body,
/// within `timeout`.
pub(crate) async fn http_get_with(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let work = async {
        let response = client
            .get(uri)
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("GET {url}: body"))?;
        anyhow::Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))?
}
