//! TLS at the edge: rustls with the certificate chain and key from files
//! (Docker secrets in the stack), offered with HTTP/2 and HTTP/1.1 over
//! ALPN, and reloaded without a restart when the files change.
//!
//! The files are read again every `SHOAL_TLS_RELOAD_EVERY` (2 s): a
//! changed pair that parses and matches is used for every handshake from
//! then on (connections already open keep theirs); a pair that does not
//! parse is logged and counted, and the previous certificate stays. Whole
//! files are compared, not timestamps: a secret swapped by rename, bind
//! mount or symlink (Kubernetes-style) is seen the same way.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, anyhow};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, version};
use tracing::{info, warn};

use crate::config::TlsConfig;
use crate::meter::metrics::{Metrics, ResultLabel};

/// The certificate in use, swapped whole on a reload.
#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The TLS side of the gateway: what accepts handshakes.
#[derive(Clone)]
pub struct Tls {
    /// Accepts TLS connections with the current certificate.
    pub acceptor: TlsAcceptor,
    current: Arc<Current>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads and checks a certificate chain and key.
fn load(cert: &[u8], key: &[u8], provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("the certificate file is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "the certificate file holds no certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        anyhow!("the key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| anyhow!("the key does not fit the certificate, or is not supported: {e}"))?;
    Ok(certified)
}

/// Reads a file at start (nothing else runs on the runtime yet).
#[allow(
    clippy::disallowed_methods,
    reason = "once at start, before the edge serves; the reloader reads with tokio::fs"
)]
fn read(path: &Path, var: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {var}={}", path.display()))
}

/// Reads a file off the runtime's threads (tokio's blocking pool): the
/// reloader runs every few seconds on the runtime that serves requests
/// and runs the gossip.
async fn read_off_runtime(path: &Path) -> Option<Vec<u8>> {
    tokio::fs::read(path).await.ok()
}

impl Tls {
    /// Loads the certificate and key named by `config`; fails (at start)
    /// with what is wrong and which setting to fix.
    pub fn new(config: &TlsConfig) -> anyhow::Result<Self> {
        let provider = provider();
        let (cert, key) = (
            read(&config.cert, "SHOAL_TLS_CERT")?,
            read(&config.key, "SHOAL_TLS_KEY")?,
        );
        let certified = load(&cert, &key, &provider).with_context(|| {
            format!(
                "SHOAL_TLS_CERT={} / SHOAL_TLS_KEY={}",
                config.cert.display(),
                config.key.display()
            )
        })?;
        let current = Arc::new(Current {
            key: RwLock::new(Arc::new(certified)),
        });
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
        })
    }

    /// Checks the files every `config.reload_every` and takes a changed
    /// pair that is valid; keeps the old one otherwise.
    pub fn spawn_reloader(&self, config: TlsConfig, metrics: Arc<Metrics>) {
        let current = self.current.clone();
        tokio::spawn(async move {
            let provider = provider();
            let mut last = (
                read_off_runtime(&config.cert).await,
                read_off_runtime(&config.key).await,
            );
            let count = |result: &str| {
                metrics
                    .tls_loads
                    .get_or_create(&ResultLabel {
                        result: result.to_string(),
                    })
                    .inc();
            };
            count("ok");
            let mut tick = tokio::time::interval(config.reload_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = (
                    read_off_runtime(&config.cert).await,
                    read_off_runtime(&config.key).await,
                );
                if now == last {
                    continue;
                }
                let (Some(cert), Some(key)) = (&now.0, &now.1) else {
                    // Mid-swap (one file gone): look again next time.
                    continue;
                };
                match load(cert, key, &provider) {
                    Ok(certified) => {
                        *current.key.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(certified);
                        info!(cert = %config.cert.display(), "TLS certificate reloaded");
                        count("ok");
                        last = now;
                    }
                    Err(err) => {
                        // A half-written pair is retried next time; a bad
                        // one is reported once per change.
                        warn!(error = %err, cert = %config.cert.display(), key = %config.key.display(),
                            "TLS certificate not reloaded: keeping the previous one");
                        count("failed");
                        last = now;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let p = provider();
        let err = load(b"hello", b"world", &p).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = load(cert, b"nothing", &p).unwrap_err().to_string();
        assert!(err.contains("private key"), "{err}");
    }
}
