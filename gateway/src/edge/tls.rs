//! TLS at the edge: rustls with the certificate chain and key from files
//! (Docker secrets in the stack) or from an ACME CA (`edge::acme`), offered
//! with HTTP/2 and HTTP/1.1 over ALPN, and replaced without a restart: when
//! the files change, or when a new certificate is obtained or renewed.
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

use crate::config::{CertSource, TlsConfig};
use crate::meter::metrics::{Metrics, ResultLabel};

/// The certificate in use, swapped whole on a reload; none yet while an
/// ACME certificate is being obtained (handshakes then fail).
#[derive(Debug)]
struct Current {
    key: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The TLS side of the gateway: what accepts handshakes.
#[derive(Clone)]
pub struct Tls {
    /// Accepts TLS connections with the current certificate.
    pub acceptor: TlsAcceptor,
    current: Arc<Current>,
}

/// The crypto provider certificates are loaded and checked with (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads and checks a certificate chain and key (PEM).
pub fn load(cert: &[u8], key: &[u8], provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
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
    /// The TLS edge `config` describes: with the certificate and key its
    /// files name (read now: fails at start with what is wrong and which
    /// setting to fix), or with none yet (ACME: [`Tls::install`] puts it in).
    pub fn new(config: &TlsConfig) -> anyhow::Result<Self> {
        let provider = provider();
        let certified = match &config.source {
            CertSource::Files { cert, key, .. } => {
                let (cert_pem, key_pem) =
                    (read(cert, "SHOAL_TLS_CERT")?, read(key, "SHOAL_TLS_KEY")?);
                let certified = load(&cert_pem, &key_pem, &provider).with_context(|| {
                    format!(
                        "SHOAL_TLS_CERT={} / SHOAL_TLS_KEY={}",
                        cert.display(),
                        key.display()
                    )
                })?;
                Some(Arc::new(certified))
            }
            CertSource::Acme(_) => None,
        };
        let current = Arc::new(Current {
            key: RwLock::new(certified),
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

    /// Serves `certified` for every handshake from now on (connections
    /// already open keep theirs).
    pub fn install(&self, certified: CertifiedKey) {
        *self.current.key.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(certified));
    }

    /// Checks the files every `reload_every` and takes a changed pair that
    /// is valid; keeps the old one otherwise. Nothing to do for ACME.
    pub fn spawn_reloader(&self, config: TlsConfig, metrics: Arc<Metrics>) {
        let CertSource::Files {
            cert: cert_path,
            key: key_path,
            reload_every,
        } = config.source
        else {
            return;
        };
        let tls = self.clone();
        tokio::spawn(async move {
            let provider = provider();
            let mut last = (
                read_off_runtime(&cert_path).await,
                read_off_runtime(&key_path).await,
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
            let mut tick = tokio::time::interval(reload_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = (
                    read_off_runtime(&cert_path).await,
                    read_off_runtime(&key_path).await,
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
                        tls.install(certified);
                        info!(cert = %cert_path.display(), "TLS certificate reloaded");
                        count("ok");
                        last = now;
                    }
                    Err(err) => {
                        // A half-written pair is retried next time; a bad
                        // one is reported once per change.
                        warn!(error = %err, cert = %cert_path.display(), key = %key_path.display(),
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
