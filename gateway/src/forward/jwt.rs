//! Bearer tokens (JWT) checked before routing, announced by the service
//! (`SHOAL_AUTH_JWT_JWKS`, `…_ISSUER`, `…_AUDIENCE`, `…_CLAIMS` in its own
//! environment; no gateway is configured per service). A request reaches
//! the service only with `Authorization: Bearer <token>` whose signature
//! checks out against a key of the issuer's JWKS — RS256/384/512,
//! PS256/384/512, ES256/384 or EdDSA, never HMAC nor `none` (a token
//! "signed" with the public key as an HMAC secret is refused by its `alg`)
//! — with `exp` in force (required), `nbf` reached, `iss` and `aud` as
//! announced, each with [`LEEWAY_SECS`] of leeway. The claims the service
//! names are passed on as request headers (a client's own values of those
//! never pass). Anything else is a 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"` (RFC 6750) and Spring's error JSON: what Spring
//! Security's OAuth2 resource server answers.
//!
//! Keys are fetched once per key set URL and shared by every worker and
//! service; a token naming a key the set does not hold (the issuer rotated
//! its keys) fetches the set again, at most every [`REFETCH_SECS`] seconds,
//! and a set older than [`MAX_AGE_SECS`] is fetched again in the
//! background (keys the issuer dropped stop counting).
//!
//! A client sends the same token with many requests: a token that checked
//! out is remembered (by the SHA-256 of the policy and the token, at most
//! [`MAX_VERIFIED`]) with its `exp`, `nbf` and the headers it passes, and
//! the next request with it checks only those times — Envoy's `jwt_authn`
//! cache. A token whose key the issuer drops stays good until its `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use shoal_node::AuthJwt;

use crate::forward::body::ProxyBody;
use crate::forward::error::error_response;
use crate::forward::fetch::{self, Get};

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// A token naming an unknown key fetches the set again at most that often.
pub const REFETCH_SECS: u64 = 5;
/// A key set older than that is fetched again (in the background).
pub const MAX_AGE_SECS: u64 = 600;
/// A key set's fetch: JSON, up to 256 KiB, given up after 5 s.
const JWKS: Get = Get {
    what: "the key set",
    accept: "application/json",
    max_bytes: 256 * 1024,
    timeout: Duration::from_secs(5),
};
/// Most tokens remembered as checked (then the expired ones go, or all).
pub const MAX_VERIFIED: usize = 10_000;

/// A token that checked out: when it stops being good, and what it passes.
struct Verified {
    exp: u64,
    nbf: Option<u64>,
    pass: Vec<(HeaderName, HeaderValue)>,
}

/// Why a request was refused; its label in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a JWT (three base64url parts, a JSON header).
    Malformed,
    /// `alg` none, HMAC, or not the key's.
    Algorithm,
    /// A `kid` the issuer's key set does not hold, even fetched again.
    UnknownKey,
    /// The signature does not check out.
    Signature,
    /// `exp` past (or missing).
    Expired,
    /// `nbf` not reached.
    NotYetValid,
    /// `iss` not the one announced.
    Issuer,
    /// `aud` not the one announced.
    Audience,
    /// The key set could not be fetched (and none is held): the gateway's
    /// 503, not the client's fault.
    Unavailable,
}

impl Refusal {
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// A refusal and what the client is told.
#[derive(Debug)]
pub struct Refused {
    pub reason: Refusal,
    pub detail: String,
}

fn refused(reason: Refusal, detail: impl Into<String>) -> Refused {
    Refused {
        reason,
        detail: detail.into(),
    }
}

impl Refused {
    /// The answer: 401 with `WWW-Authenticate` (no error code when no
    /// token came, RFC 6750 §3.1), or 503 when the keys are out of reach.
    pub fn response(&self, path: &str) -> Response<ProxyBody> {
        if self.reason == Refusal::Unavailable {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, &self.detail, path);
        }
        let mut answer = error_response(StatusCode::UNAUTHORIZED, &self.detail, path);
        let challenge = if self.reason == Refusal::Missing {
            "Bearer".to_string()
        } else {
            let detail = self.detail.replace(['"', '\\'], "'");
            format!("Bearer error=\"invalid_token\", error_description=\"{detail}\"")
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            answer.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        answer
    }
}

/// One usable key of a set.
struct Key {
    kid: Option<String>,
    /// The algorithm the set names for it, if any.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Default)]
struct Held {
    keys: Vec<Arc<Key>>,
    fetched_at: Option<Instant>,
    /// The last fetch, whatever came of it.
    tried_at: Option<Instant>,
    error: Option<String>,
}

/// One issuer's keys, fetched from its URL.
pub struct KeySet {
    url: String,
    refetch: Duration,
    held: RwLock<Held>,
    /// One fetch at a time; those who wait find its result.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh of a stale set is under way (one, not one per
    /// request while the issuer is slow).
    refreshing: std::sync::atomic::AtomicBool,
}

/// The key sets of every service's JWT check, by URL (shared by workers).
pub struct KeySets {
    sets: Mutex<HashMap<String, Arc<KeySet>>>,
    /// How long after a fetch an unknown key fetches the set again.
    refetch: Duration,
    /// Tokens that checked out, by the digest of policy and token.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

impl Default for KeySets {
    fn default() -> Self {
        KeySets {
            sets: Mutex::default(),
            refetch: Duration::from_secs(REFETCH_SECS),
            verified: Mutex::default(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The digest a checked token is remembered under: the policy it checked
/// out against (another service may announce another audience) and the
/// token itself.
fn digest(policy: &AuthJwt, token: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        policy.jwks.as_str(),
        policy.issuer.as_deref().unwrap_or(""),
        policy.audience.as_deref().unwrap_or(""),
    ] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    for (claim, header) in &policy.claims {
        ctx.update(claim.as_bytes());
        ctx.update(b"=");
        ctx.update(header.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl KeySets {
    /// What a token remembered as checked passes, if it is still in force.
    fn remembered(&self, key: &[u8; 32]) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let now = unix_now();
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let v = verified.get(key)?;
        let in_force = now <= v.exp.saturating_add(LEEWAY_SECS)
            && v.nbf
                .is_none_or(|nbf| nbf <= now.saturating_add(LEEWAY_SECS));
        in_force.then(|| v.pass.clone())
    }

    fn remember(&self, key: [u8; 32], v: Verified) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            let now = unix_now();
            verified.retain(|_, v| now <= v.exp.saturating_add(LEEWAY_SECS));
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(key, v);
    }

    /// The set at `url` (made on first use).
    pub fn get(&self, url: &str) -> Arc<KeySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.entry(url.to_string())
            .or_insert_with(|| {
                Arc::new(KeySet {
                    url: url.to_string(),
                    refetch: self.refetch,
                    held: RwLock::new(Held::default()),
                    fetching: tokio::sync::Mutex::new(()),
                    refreshing: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        match kid {
            Some(kid) => held
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .cloned(),
            // No kid: the set's only key, if it has one only.
            None if held.keys.len() == 1 => held.keys.first().cloned(),
            None => None,
        }
    }

    fn status(&self) -> (bool, Option<Instant>, Option<Instant>) {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        (!held.keys.is_empty(), held.fetched_at, held.tried_at)
    }

    /// Fetches the set again unless a fetch ended less than `gap` ago
    /// (then its result stands).
    async fn refresh(&self, gap: Duration) {
        let _one = self.fetching.lock().await;
        let (_, _, tried_at) = self.status();
        if tried_at.is_some_and(|at| at.elapsed() < gap) {
            return;
        }
        let result = fetch::get(&self.url, JWKS)
            .await
            .and_then(|body| parse_set(&body));
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        held.tried_at = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                held.keys = keys.into_iter().map(Arc::new).collect();
                held.fetched_at = Some(Instant::now());
                held.error = None;
            }
            Err(why) => {
                tracing::warn!(url = %self.url, %why, "JWKS fetch failed; the keys held stay");
                held.error = Some(why);
            }
        }
    }

    fn error(&self) -> Option<String> {
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.error.clone()
    }

    /// The key for a token's `kid`: held, else after fetching the set
    /// again (at most every `REFETCH_SECS`).
    async fn key_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<Key>, Refused> {
        let (any, fetched_at, _) = self.status();
        let stale = fetched_at.is_some_and(|at| at.elapsed() > Duration::from_secs(MAX_AGE_SECS));
        if any
            && stale
            && !self
                .refreshing
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let set = self.clone();
            tokio::spawn(async move {
                set.refresh(set.refetch).await;
                set.refreshing
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
        if let Some(key) = self.find(kid) {
            return Ok(key);
        }
        self.refresh(self.refetch).await;
        if let Some(key) = self.find(kid) {
            return Ok(key);
        }
        let (any, _, _) = self.status();
        if !any {
            let why = self
                .error()
                .unwrap_or_else(|| "it holds no signing key".into());
            return Err(refused(
                Refusal::Unavailable,
                format!("the issuer's keys ({}) could not be read: {why}", self.url),
            ));
        }
        Err(refused(
            Refusal::UnknownKey,
            match kid {
                Some(kid) => format!("the token's key ({kid}) is not one of the issuer's"),
                None => "the token names no key (kid) and the issuer has several".to_string(),
            },
        ))
    }
}

/// The usable keys of a JWKS document: signing keys of RSA, EC or OKP
/// type (HMAC secrets are never taken from it).
fn parse_set(body: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        if matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk.common.key_algorithm.and_then(signing_algorithm);
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The bearer token of `headers`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks the request's token against `policy`: the headers to set (the
/// claims passed on) when it checks out, else why not.
pub async fn check(
    sets: &KeySets,
    policy: &AuthJwt,
    headers: &HeaderMap,
) -> Result<Vec<(HeaderName, HeaderValue)>, Refused> {
    let token = bearer(headers).ok_or_else(|| {
        refused(
            Refusal::Missing,
            "this service needs a bearer token (Authorization: Bearer <JWT>)",
        )
    })?;
    let remembered_as = digest(policy, token);
    if let Some(pass) = sets.remembered(&remembered_as) {
        return Ok(pass);
    }
    let head = jsonwebtoken::decode_header(token)
        .map_err(|e| refused(Refusal::Malformed, format!("not a signed JWT: {e}")))?;
    if matches!(
        head.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(refused(
            Refusal::Algorithm,
            format!(
                "{:?} tokens are not taken: the issuer's keys are public",
                head.alg
            ),
        ));
    }
    let set = sets.get(&policy.jwks);
    let key = set.key_for(head.kid.as_deref()).await?;
    if key.alg.is_some_and(|alg| alg != head.alg) {
        return Err(refused(
            Refusal::Algorithm,
            format!(
                "the token says {:?}, its key is for another algorithm",
                head.alg
            ),
        ));
    }
    let mut validation = Validation::new(head.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    // A token without the claim announced is refused, not let through: the
    // crate checks `iss` and `aud` only when they are there.
    let mut required = vec!["exp"];
    required.extend(policy.issuer.as_ref().map(|_| "iss"));
    required.extend(policy.audience.as_ref().map(|_| "aud"));
    validation.set_required_spec_claims(&required);
    match &policy.issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    match &policy.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            let reason = match e.kind() {
                K::InvalidSignature => Refusal::Signature,
                K::ExpiredSignature => Refusal::Expired,
                K::ImmatureSignature => Refusal::NotYetValid,
                K::InvalidIssuer => Refusal::Issuer,
                K::InvalidAudience => Refusal::Audience,
                K::MissingRequiredClaim(claim) => match claim.as_str() {
                    "exp" => Refusal::Expired,
                    "iss" => Refusal::Issuer,
                    "aud" => Refusal::Audience,
                    _ => Refusal::Malformed,
                },
                K::InvalidAlgorithm | K::InvalidAlgorithmName => Refusal::Algorithm,
                _ => Refusal::Malformed,
            };
            refused(reason, describe(reason, &e))
        })?;
    let mut pass = Vec::new();
    for (claim, name) in &policy.claims {
        let Some(value) = data.claims.get(claim) else {
            continue;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&text),
        ) {
            pass.push((name, value));
        }
    }
    let time = |claim: &str| data.claims.get(claim).and_then(Value::as_u64);
    if let Some(exp) = time("exp") {
        let verified = Verified {
            exp,
            nbf: time("nbf"),
            pass: pass.clone(),
        };
        sets.remember(remembered_as, verified);
    }
    Ok(pass)
}

fn describe(reason: Refusal, e: &jsonwebtoken::errors::Error) -> String {
    match reason {
        Refusal::Signature => "the token's signature does not check out".into(),
        Refusal::Expired => "the token has expired (exp)".into(),
        Refusal::NotYetValid => "the token is not valid yet (nbf)".into(),
        Refusal::Issuer => "the token is from another issuer (iss)".into(),
        Refusal::Audience => "the token is for another audience (aud)".into(),
        Refusal::Algorithm => format!("the token's algorithm is not its key's: {e}"),
        _ => format!("the token could not be read: {e}"),
    }
}

#[cfg(test)]
mod tests;
