//! ACME certificates shared by the gateways, with no shared storage
//! (`SHOAL_ACME_DOMAINS`; RFC 8555, HTTP-01).
//!
//! - **Any gateway answers a challenge**: the gateway that orders publishes
//!   each challenge's key authorization in gossip (`shoal_node`'s `acme`
//!   keys), and every gateway answers `/.well-known/acme-challenge/{token}`
//!   on its plain port from it — whichever gateway the CA's request reaches.
//!   The order waits until every live gateway answers it before telling the
//!   CA to look.
//! - **One gateway orders at a time**: a gateway that needs the certificate
//!   claims the order in gossip, waits [`CLAIM_SETTLE`] for the others'
//!   claims to arrive, and orders only if its claim is the oldest live one.
//!   A gateway that dies mid-order leaves the view and its claim with it;
//!   the next claim orders anew.
//! - **Shared sealed**: the certificate and its key are sealed with the
//!   edge key (`SHOAL_EDGE_KEY`, given to gateways alone, not the cluster
//!   key every replica holds), served on the admin port
//!   (`/acme/certificate/{name}`) and announced in gossip with their
//!   digest; a gateway that lacks them or holds an older copy fetches,
//!   checks the digest, opens and serves them at once. Every holder
//!   announces its copy, so the certificate lives as long as one gateway
//!   does; a gateway that joins has it within a round or two.
//! - **Renewed** at [`AcmeConfig::renew_at`] of its lifetime (two thirds);
//!   until then, and whenever an order fails, the old certificate stays.
//!   Failures are logged with their cause (the CA unreachable, a challenge
//!   refused and why, a rate limit) and shown in `/stats`; the next try
//!   backs off from 5 s to an hour, the gateway keeping its claim (the
//!   others wait with it) until it has failed [`GIVE_UP_AFTER`] times in a
//!   row and lets another gateway order.

mod der;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::Serialize;
use shoal_node::{CertAnnouncement, Cluster, Sealer, now_ms};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tracing::{info, warn};

use crate::config::AcmeConfig;
use crate::edge::tls::{self, Tls};
use crate::forward::fetch::{self, Get};

/// How long a claim to order waits for the other gateways' claims.
pub const CLAIM_SETTLE: Duration = Duration::from_secs(2);
/// The first retry after a failed order; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// Failed orders in a row after which a gateway lets another one order.
const GIVE_UP_AFTER: u32 = 3;
/// How long an order waits for every gateway to answer its challenge.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);
/// Another gateway's sealed copy: a few KB (a chain and a key).
const SEALED_COPY: Get = Get {
    what: "the sealed certificate",
    accept: "application/octet-stream",
    max_bytes: 256 * 1024,
    timeout: Duration::from_secs(5),
};
/// A gateway's answer to a challenge, while an order waits for it.
const CHALLENGE_ANSWER: Get = Get {
    what: "the challenge's answer",
    accept: "text/plain",
    max_bytes: 4096,
    timeout: Duration::from_secs(1),
};
/// The path prefix of HTTP-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What this gateway holds of the certificate.
struct Held {
    /// The chain and key, PEM, sealed with the edge key.
    sealed: Bytes,
    digest: String,
    not_before_ms: u64,
    not_after_ms: u64,
}

/// The ACME side of the TLS edge, shared by its task, the admin port and
/// `/stats`.
pub struct Acme {
    config: AcmeConfig,
    name: String,
    tls: Tls,
    sealer: Sealer,
    held: Mutex<Option<Held>>,
    status: Mutex<Status>,
}

/// What `/stats` shows of the certificate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The domains.
    pub name: String,
    /// `obtaining` (none yet), `valid`, `renewing` (past the renewal point).
    pub state: &'static str,
    /// When the certificate served ends, ms since the epoch.
    pub not_after_ms: Option<u64>,
    /// Where it came from: `ordered here` or the gateway it was taken from.
    pub from: Option<String>,
    /// Orders this gateway placed, and how many failed.
    pub orders: u64,
    /// Orders that failed.
    pub failed: u64,
    /// The last failure's cause, and when (ms since the epoch).
    pub last_error: Option<String>,
    /// When that was.
    pub last_error_at_ms: Option<u64>,
    /// Which gateway orders now, while this one needs the certificate.
    pub ordering: Option<String>,
}

/// Why an order failed, as the log and `/stats` say it.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("the CA at {directory} is unreachable or answered no directory: {why}")]
    Unreachable { directory: String, why: String },
    #[error("the CA rate-limits this account or these names: {0}")]
    RateLimited(String),
    #[error("the CA refused the challenge for {name}: {why}")]
    Challenge { name: String, why: String },
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: instant_acme::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl OrderError {
    fn at(step: &'static str) -> impl FnOnce(instant_acme::Error) -> OrderError {
        move |source| match &source {
            instant_acme::Error::Api(p) if rate_limited(p) => {
                OrderError::RateLimited(p.to_string())
            }
            _ => OrderError::Step { step, source },
        }
    }
}

/// Whether the CA's problem is a rate limit (RFC 8555 `rateLimited`).
fn rate_limited(problem: &instant_acme::Problem) -> bool {
    problem
        .r#type
        .as_deref()
        .is_some_and(|t| t.ends_with(":rateLimited"))
}

impl Acme {
    /// The ACME side of `tls`, for `config`.
    pub fn new(config: AcmeConfig, tls: Tls) -> Arc<Self> {
        let name = config.name();
        let sealer = Sealer::new(&config.edge_keys, &format!("shoal-edge-acme:{name}"));
        let status = Status {
            name: name.clone(),
            state: "obtaining",
            ..Status::default()
        };
        Arc::new(Self {
            config,
            name,
            tls,
            sealer,
            held: Mutex::new(None),
            status: Mutex::new(status),
        })
    }

    /// What `/stats` shows.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The sealed chain and key, for the admin port.
    pub fn sealed(&self) -> Option<Bytes> {
        self.lock_held().as_ref().map(|h| h.sealed.clone())
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Obtains, shares and renews the certificate while the gateway runs.
    /// `admin` is where this gateway serves its sealed copy.
    pub fn spawn(self: &Arc<Self>, cluster: Cluster, admin: SocketAddr) {
        let acme = self.clone();
        tokio::spawn(async move { acme.run(cluster, admin).await });
    }

    async fn run(self: Arc<Self>, cluster: Cluster, admin: SocketAddr) {
        let mut claimed_at: Option<Instant> = None;
        let mut next_try = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A newer copy held by another gateway: take it.
            if self.take_newer(&cluster, admin).await {
                continue;
            }
            let now = now_ms();
            let needed = match &*self.lock_held() {
                None => true,
                Some(h) => now >= self.renew_point(h),
            };
            if !needed {
                if claimed_at.take().is_some() {
                    cluster.set_acme_claim(&self.name, None).await;
                    self.update(|s| s.ordering = None);
                }
                continue;
            }
            if Instant::now() < next_try {
                continue;
            }
            let Some(at) = claimed_at else {
                cluster.set_acme_claim(&self.name, Some(now)).await;
                claimed_at = Some(Instant::now());
                continue;
            };
            if at.elapsed() < CLAIM_SETTLE {
                continue;
            }
            let claims = cluster.acme_claims(&self.name).await;
            let first = claims.first().map(|(id, _)| id.clone());
            self.update(|s| s.ordering = first.as_ref().map(|id| id.node.clone()));
            if first.as_ref() != Some(cluster.id()) {
                continue;
            }
            info!(name = %self.name, directory = %self.config.directory, "ordering an ACME certificate");
            self.update(|s| s.orders += 1);
            let result = self.order(&cluster).await;
            match result.and_then(|(chain, key)| self.hold(&chain, &key)) {
                Ok(()) => {
                    cluster.set_acme_claim(&self.name, None).await;
                    claimed_at = None;
                    failures = 0;
                    backoff = FIRST_BACKOFF;
                    self.update(|s| {
                        s.from = Some("ordered here".into());
                        s.ordering = None;
                    });
                    self.announce(&cluster, admin).await;
                }
                Err(err) => {
                    warn!(name = %self.name, error = %err, retry_in = ?backoff,
                        "ACME order failed; the certificate served (if any) stays");
                    self.update(|s| {
                        s.failed += 1;
                        s.last_error = Some(err.to_string());
                        s.last_error_at_ms = Some(now_ms());
                    });
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // The claim is kept through the backoff, so the other
                    // gateways wait too (the CA sees one client backing
                    // off, not one per gateway); after a few failures in a
                    // row it goes, and another gateway tries its luck.
                    failures += 1;
                    if failures >= GIVE_UP_AFTER {
                        cluster.set_acme_claim(&self.name, None).await;
                        claimed_at = None;
                        failures = 0;
                    }
                }
            }
        }
    }

    /// When the certificate `h` is renewed.
    fn renew_point(&self, h: &Held) -> u64 {
        let life = h.not_after_ms.saturating_sub(h.not_before_ms) as f64;
        h.not_before_ms + (life * self.config.renew_at) as u64
    }

    /// Takes the longest-lived copy another gateway announces, if it
    /// outlives ours. True when one was taken.
    async fn take_newer(&self, cluster: &Cluster, admin: SocketAddr) -> bool {
        let ours = self.lock_held().as_ref().map(|h| h.not_after_ms);
        for (holder, a) in cluster.acme_certs(&self.name).await {
            if ours.is_some_and(|o| o >= a.not_after_ms) {
                return false;
            }
            match self.fetch(&a).await {
                Ok(sealed) => match self.open(sealed, a.digest.clone()) {
                    Ok(()) => {
                        info!(name = %self.name, from = %holder.node, "ACME certificate taken from a gateway");
                        self.update(|s| s.from = Some(holder.node.clone()));
                        self.announce(cluster, admin).await;
                        return true;
                    }
                    Err(err) => {
                        warn!(name = %self.name, from = %holder.node, error = %err,
                            "a gateway's copy of the certificate does not open: is SHOAL_EDGE_KEY the same on every gateway?");
                    }
                },
                Err(err) => {
                    warn!(name = %self.name, from = %holder.node, error = %err, "could not fetch the certificate");
                }
            }
        }
        false
    }

    /// The sealed copy `a` announces, checked against its digest.
    async fn fetch(&self, a: &CertAnnouncement) -> Result<Bytes, String> {
        let uri = format!("http://{}/acme/certificate", a.fetch_from);
        let answer = fetch::get(&uri, SEALED_COPY)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        if digest(&answer) != a.digest {
            return Err(format!(
                "{uri} sent a copy whose digest is not the one announced"
            ));
        }
        Ok(Bytes::from(answer))
    }

    /// Opens a sealed copy (whose digest is `digest`) and serves it.
    fn open(&self, sealed: Bytes, digest: String) -> Result<(), String> {
        let plain = self
            .sealer
            .open(&sealed)
            .map_err(|e| format!("sealed copy: {e}"))?;
        let pem = String::from_utf8(plain).map_err(|_| "sealed copy: not PEM".to_string())?;
        self.install(&pem, &pem, Some((sealed, digest)))
            .map_err(|e| e.to_string())
    }

    /// Serves the certificate just ordered, sealed for the other gateways.
    fn hold(&self, chain: &str, key: &str) -> Result<(), OrderError> {
        self.install(chain, key, None)
            .map_err(|e| OrderError::Other(format!("the CA's certificate does not load: {e}")))
    }

    /// Loads `chain` and `key` (PEM), serves them, and keeps them sealed
    /// (`sealed` with its digest, or sealed now).
    fn install(
        &self,
        chain: &str,
        key: &str,
        sealed: Option<(Bytes, String)>,
    ) -> anyhow::Result<()> {
        let certified = tls::load(chain.as_bytes(), key.as_bytes(), &tls::provider())?;
        let leaf = certified
            .cert
            .first()
            .ok_or_else(|| anyhow::anyhow!("no certificate in the chain"))?;
        let (not_before_ms, not_after_ms) = der::validity(leaf)
            .ok_or_else(|| anyhow::anyhow!("the certificate's validity does not parse"))?;
        let (sealed, digest) = sealed.unwrap_or_else(|| {
            let mut both = chain.to_string();
            if !both.ends_with('\n') {
                both.push('\n');
            }
            both.push_str(key);
            let sealed = Bytes::from(self.sealer.seal(both.as_bytes()));
            let digest = digest(&sealed);
            (sealed, digest)
        });
        self.tls.install(certified);
        let held = Held {
            digest,
            sealed,
            not_before_ms,
            not_after_ms,
        };
        let renewing = now_ms() >= self.renew_point(&held);
        *self.lock_held() = Some(held);
        self.update(|s| {
            s.state = if renewing { "renewing" } else { "valid" };
            s.not_after_ms = Some(not_after_ms);
        });
        info!(name = %self.name, not_after_ms, "serving the ACME certificate");
        Ok(())
    }

    /// Tells the other gateways that this one holds the certificate.
    async fn announce(&self, cluster: &Cluster, admin: SocketAddr) {
        let Some(a) = self.lock_held().as_ref().map(|h| CertAnnouncement {
            not_after_ms: h.not_after_ms,
            digest: h.digest.clone(),
            fetch_from: SocketAddr::new(cluster.advertised().ip(), admin.port()).to_string(),
        }) else {
            return;
        };
        cluster.set_acme_cert(&self.name, Some(&a)).await;
    }

    /// One order, from the account to the certificate: `(chain, key)` PEM.
    async fn order(&self, cluster: &Cluster) -> Result<(String, String), OrderError> {
        let directory = self.config.directory.clone();
        let ca = match &self.config.ca_file {
            Some(path) => Some(tokio::fs::read(path).await.map_err(|e| {
                OrderError::Other(format!("SHOAL_ACME_CA_FILE={}: {e}", path.display()))
            })?),
            None => None,
        };
        let http = http_client(ca.as_deref()).map_err(OrderError::Other)?;
        let contact: Vec<String> = self
            .config
            .email
            .iter()
            .map(|e| format!("mailto:{e}"))
            .collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, _) = Account::builder_with_http(Box::new(http))
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .map_err(|source| match source {
                instant_acme::Error::Api(_) => OrderError::at("creating the account")(source),
                source => OrderError::Unreachable {
                    directory,
                    why: crate::forward::error::error_chain(&source),
                },
            })?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(OrderError::at("placing the order"))?;
        let mut tokens = Vec::new();
        let result = match self.prove(cluster, &mut order, &mut tokens).await {
            Ok(()) => self.finish(&mut order).await,
            Err(e) => Err(e),
        };
        for token in tokens {
            cluster.set_acme_challenge(&token, None).await;
        }
        result
    }

    /// Publishes each pending authorization's HTTP-01 answer, waits until
    /// every gateway serves it, and tells the CA to look.
    async fn prove(
        &self,
        cluster: &Cluster,
        order: &mut instant_acme::Order,
        tokens: &mut Vec<String>,
    ) -> Result<(), OrderError> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(OrderError::at("reading an authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(OrderError::Challenge {
                        name: authz.identifier().to_string(),
                        why: format!("the authorization is {other:?}"),
                    });
                }
            }
            let name = authz.identifier().to_string();
            let mut challenge =
                authz
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| OrderError::Challenge {
                        name: name.clone(),
                        why: "the CA offers no HTTP-01 challenge".into(),
                    })?;
            let token = challenge.token.clone();
            let answer = challenge.key_authorization().as_str().to_string();
            cluster.set_acme_challenge(&token, Some(&answer)).await;
            tokens.push(token.clone());
            published(cluster, &token, &answer).await;
            challenge
                .set_ready()
                .await
                .map_err(OrderError::at("telling the CA the challenge is ready"))?;
        }
        Ok(())
    }

    /// Waits for the CA's verdict, then finalizes and downloads.
    async fn finish(
        &self,
        order: &mut instant_acme::Order,
    ) -> Result<(String, String), OrderError> {
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        let status = match order.poll_ready(&retries).await {
            Ok(status) => status,
            // The order went invalid: the CA's problem says why (the
            // challenge's request refused, timed out, a wrong answer).
            Err(instant_acme::Error::Api(problem)) if !rate_limited(&problem) => {
                return Err(OrderError::Challenge {
                    name: self.name.clone(),
                    why: problem.to_string(),
                });
            }
            Err(e) => return Err(OrderError::at("waiting for the CA to validate")(e)),
        };
        if status != OrderStatus::Ready {
            return Err(self.why_refused(order).await);
        }
        let key = order
            .finalize()
            .await
            .map_err(OrderError::at("finalizing the order"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(OrderError::at("downloading the certificate"))?;
        Ok((chain, key))
    }

    /// Why the CA refused the order: its failed challenge's problem.
    async fn why_refused(&self, order: &mut instant_acme::Order) -> OrderError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let name = authz.identifier().to_string();
            if let Some(problem) = authz
                .challenge(ChallengeType::Http01)
                .and_then(|c| c.error.as_ref().map(ToString::to_string))
            {
                return OrderError::Challenge { name, why: problem };
            }
        }
        OrderError::Other(format!(
            "the order ended {:?}",
            order.state().error.as_ref().map(ToString::to_string)
        ))
    }
}

/// Waits (at most [`PUBLISH_WAIT`]) until every live gateway answers
/// challenge `token` with `answer` on its plain port.
async fn published(cluster: &Cluster, token: &str, answer: &str) {
    let deadline = Instant::now() + PUBLISH_WAIT;
    loop {
        let view = cluster.view().borrow().clone();
        let mut all = true;
        for m in view.members().filter(|m| m.service == "gateway") {
            let url = format!("http://{}{CHALLENGE_PREFIX}{token}", m.addr);
            all &= fetch::get(&url, CHALLENGE_ANSWER)
                .await
                .is_ok_and(|body| body == answer.as_bytes());
        }
        if all || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The answer to a request for an HTTP-01 challenge (`path` under
/// [`CHALLENGE_PREFIX`]) from what the gateways publish: `None` when the
/// token is unknown.
pub async fn challenge_answer(cluster: &Cluster, path: &str) -> Option<String> {
    let token = path.strip_prefix(CHALLENGE_PREFIX)?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    cluster.acme_challenge(token).await
}

/// The hex SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTPS client for the CA: the public roots, and the PEM certificates
/// `ca` (`SHOAL_ACME_CA_FILE`: a private CA such as pebble's) when given.
fn http_client(
    ca: Option<&[u8]>,
) -> Result<
    Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<Bytes>,
    >,
    String,
> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("SHOAL_ACME_CA_FILE is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("SHOAL_ACME_CA_FILE holds no certificate".into());
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("SHOAL_ACME_CA_FILE: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CertSource, TlsConfig};

    fn acme(edge_key: &shoal_node::ClusterKey) -> Arc<Acme> {
        let config = AcmeConfig {
            domains: vec!["shop.example".into()],
            directory: "https://ca.example/dir".into(),
            email: None,
            ca_file: None,
            edge_keys: shoal_node::KeyRing::new(vec![edge_key.clone()]).unwrap(),
            renew_at: 0.67,
        };
        let tls = Tls::new(&TlsConfig {
            source: CertSource::Acme(config.clone()),
            port: 4443,
            redirect: false,
        })
        .unwrap();
        Acme::new(config, tls)
    }

    /// A certificate for shop.example valid from 2026-12-01 for 90 days.
    fn issued() -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["shop.example".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 12, 1);
        params.not_after = rcgen::date_time_ymd(2027, 3, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_sealed_copy_opens_with_the_edge_key_only() {
        let edge = shoal_node::ClusterKey::generate();
        let orderer = acme(&edge);
        let (chain, key) = issued();
        orderer.hold(&chain, &key).unwrap();
        let sealed = orderer.sealed().unwrap();
        // Neither the certificate's key nor its PEM shows in the copy.
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("PRIVATE KEY") && !text.contains("CERTIFICATE"));

        // A gateway with the same edge key serves it, with its validity.
        let peer = acme(&edge);
        peer.open(sealed.clone(), digest(&sealed)).unwrap();
        let status = peer.status();
        let (from, to) = (1_796_083_200_000u64, 1_803_859_200_000u64);
        let renew = from + ((to - from) as f64 * 0.67) as u64;
        let expected = if now_ms() >= renew {
            "renewing"
        } else {
            "valid"
        };
        assert_eq!(status.state, expected, "{status:?}");
        assert_eq!(status.not_after_ms, Some(to));
        assert_eq!(peer.sealed(), Some(sealed.clone()));

        // A replica with another key (the cluster key, say) cannot.
        let other = acme(&shoal_node::ClusterKey::generate());
        assert!(other.open(sealed.clone(), digest(&sealed)).is_err());
        assert!(other.sealed().is_none());
        // Nor opens a tampered copy.
        let mut tampered = sealed.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let tampered = Bytes::from(tampered);
        assert!(peer.open(tampered.clone(), digest(&tampered)).is_err());
    }

    #[test]
    fn a_certificate_that_does_not_load_is_refused_with_its_cause() {
        let a = acme(&shoal_node::ClusterKey::generate());
        let (chain, _) = issued();
        let (_, other_key) = issued();
        let err = a.hold(&chain, &other_key).unwrap_err().to_string();
        assert!(err.contains("does not load"), "{err}");
        assert!(a.sealed().is_none());
    }

    #[tokio::test]
    async fn a_challenge_path_names_a_token_or_nothing() {
        assert_eq!(
            CHALLENGE_PREFIX.to_string() + "abc",
            "/.well-known/acme-challenge/abc"
        );
        assert_eq!(digest(b"abc").len(), 64);
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
