//! Traffic policies a member announces in its own gossip record, so no
//! gateway is configured per service: its weight and version label (per
//! instance), and whether its service wants sticky sessions and rate limits
//! (per service: gateways take them from the newest up instance).
//!
//! Read from `SHOAL_WEIGHT`, `SHOAL_VERSION_LABEL`, `SHOAL_STICKY`,
//! `SHOAL_RATE_LIMIT`, `SHOAL_RATE_LIMIT_PER_CLIENT`, `SHOAL_AUTH_FORWARD`,
//! `SHOAL_AUTH_COPY_HEADERS` and `SHOAL_AUTH_JWT_*`; published only when
//! not the default, so a member without policies gossips no extra byte.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::env::{ConfigError, Env, invalid};

/// Gossip keys of the policies.
pub mod keys {
    /// [`super::Weight`] as text: `100` or `10%`.
    pub const WEIGHT: &str = "weight";
    /// Version label (`v2`, `canary`).
    pub const LABEL: &str = "label";
    /// `1` when the service wants sticky sessions.
    pub const STICKY: &str = "sticky";
    /// [`super::RateLimit`] of the whole service, across gateways.
    pub const RATE_LIMIT: &str = "rate_limit";
    /// [`super::RateLimit`] of each client IP, across gateways.
    pub const RATE_LIMIT_PER_CLIENT: &str = "rate_limit_client";
    /// [`super::AuthForward`] as text: `auth-service:/verify`.
    pub const AUTH_FORWARD: &str = "auth";
    /// The headers of the auth service's answer passed on, comma-separated.
    pub const AUTH_COPY_HEADERS: &str = "auth_copy";
    /// [`super::AuthJwt`]'s key set URL.
    pub const JWT_JWKS: &str = "jwt_jwks";
    /// [`super::AuthJwt`]'s issuer.
    pub const JWT_ISSUER: &str = "jwt_iss";
    /// [`super::AuthJwt`]'s audience.
    pub const JWT_AUDIENCE: &str = "jwt_aud";
    /// [`super::AuthJwt`]'s claims passed on: `sub=x-user,email=x-email`.
    pub const JWT_CLAIMS: &str = "jwt_claims";
}

/// Bearer tokens (JWT) checked by the gateway before a request reaches the
/// service: signed with a key of the issuer's JWKS (RS256, ES256, EdDSA),
/// `exp` and `nbf` in force, `iss` and `aud` as announced; chosen claims
/// passed on as headers. Spring Security's OAuth2 resource server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuthJwt {
    /// Where the issuer publishes its keys (`http://` or `https://`).
    pub jwks: String,
    /// The `iss` a token must carry, if announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The `aud` a token must carry (one of its audiences), if announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claims passed on, each as a request header (lowercase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<(String, String)>,
}

/// The longest URL, issuer or audience announced.
const MAX_JWT_TEXT: usize = 512;

fn parse_jwks_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    let ok = host.is_some_and(|h| !h.is_empty() && !h.starts_with(':') && !h.contains('@'))
        && s.len() <= MAX_JWT_TEXT
        && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "the http:// or https:// URL of the issuer's JSON Web Key Set, at most \
             {MAX_JWT_TEXT} characters (e.g. https://idp.example.com/.well-known/jwks.json)"
        ))
    }
}

fn parse_jwt_text(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= MAX_JWT_TEXT && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "1 to {MAX_JWT_TEXT} printable characters without spaces, as the token carries it"
        ))
    }
}

/// `sub=X-User, email=X-Email` → `[("sub", "x-user"), ("email", "x-email")]`.
fn parse_claims(s: &str) -> Result<Vec<(String, String)>, String> {
    let expected = || {
        "1 to 16 claim=header pairs separated by commas, e.g. sub=X-User,email=X-Email".to_string()
    };
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (claim, header) = pair.split_once('=').ok_or_else(expected)?;
        let claim = claim.trim();
        let claim_ok = !claim.is_empty()
            && claim.len() <= 64
            && claim
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        let header = parse_header_names(header).map_err(|_| expected())?;
        if !claim_ok || header.len() != 1 {
            return Err(expected());
        }
        out.push((claim.to_string(), header[0].clone()));
    }
    if out.is_empty() || out.len() > 16 {
        return Err(expected());
    }
    Ok(out)
}

impl AuthJwt {
    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let text = |var: &'static str| {
            env.get(var)
                .map(|raw| parse_jwt_text(raw).map_err(|why| invalid(var, raw, &why)))
                .transpose()
        };
        let issuer = text("SHOAL_AUTH_JWT_ISSUER")?;
        let audience = text("SHOAL_AUTH_JWT_AUDIENCE")?;
        let claims = env
            .get("SHOAL_AUTH_JWT_CLAIMS")
            .map(|raw| parse_claims(raw).map_err(|why| invalid("SHOAL_AUTH_JWT_CLAIMS", raw, &why)))
            .transpose()?
            .unwrap_or_default();
        let Some(raw) = env.get("SHOAL_AUTH_JWT_JWKS") else {
            let orphan = [
                ("SHOAL_AUTH_JWT_ISSUER", issuer.is_some()),
                ("SHOAL_AUTH_JWT_AUDIENCE", audience.is_some()),
                ("SHOAL_AUTH_JWT_CLAIMS", !claims.is_empty()),
            ];
            if let Some((var, _)) = orphan.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    var,
                    env.get(var).unwrap_or_default(),
                    "it applies to JWT checks, which need SHOAL_AUTH_JWT_JWKS (the issuer's key \
                     set URL) too",
                ));
            }
            return Ok(None);
        };
        let jwks = parse_jwks_url(raw).map_err(|why| invalid("SHOAL_AUTH_JWT_JWKS", raw, &why))?;
        Ok(Some(AuthJwt {
            jwks,
            issuer,
            audience,
            claims,
        }))
    }

    fn key_values(&self, kv: &mut Vec<(&'static str, String)>) {
        kv.push((keys::JWT_JWKS, self.jwks.clone()));
        if let Some(iss) = &self.issuer {
            kv.push((keys::JWT_ISSUER, iss.clone()));
        }
        if let Some(aud) = &self.audience {
            kv.push((keys::JWT_AUDIENCE, aud.clone()));
        }
        if !self.claims.is_empty() {
            let claims: Vec<String> = self
                .claims
                .iter()
                .map(|(c, h)| format!("{c}={h}"))
                .collect();
            kv.push((keys::JWT_CLAIMS, claims.join(",")));
        }
    }

    fn from_keys<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let jwks = get(keys::JWT_JWKS).and_then(|v| parse_jwks_url(v).ok())?;
        // A value this version cannot read keeps the check, never drops it:
        // an unreadable issuer or audience matches no token.
        let checked = |key| {
            get(key).map(|v| parse_jwt_text(v).unwrap_or_else(|_| "\u{0}unreadable".to_string()))
        };
        Some(AuthJwt {
            jwks,
            issuer: checked(keys::JWT_ISSUER),
            audience: checked(keys::JWT_AUDIENCE),
            claims: get(keys::JWT_CLAIMS)
                .and_then(|v| parse_claims(v).ok())
                .unwrap_or_default(),
        })
    }
}

/// Forward auth: before a request reaches the service, a gateway asks
/// `service` at `path` (a member like any) whether it may; Traefik
/// ForwardAuth's and nginx `auth_request`'s semantics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuthForward {
    /// The service asked.
    pub service: String,
    /// The path asked on it (`/verify`).
    pub path: String,
}

impl fmt::Display for AuthForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.path)
    }
}

impl FromStr for AuthForward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || {
            "a service and the path to ask it on, e.g. auth-service:/verify (letters, digits, \
             '-', '_' and '.' in the name; the path starts with /)"
                .to_string()
        };
        let (service, path) = s.trim().split_once(':').ok_or_else(expected)?;
        let name_ok = !service.is_empty()
            && service.len() <= 64
            && service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        let path_ok = path.starts_with('/')
            && path.len() <= 256
            && path.bytes().all(|b| b.is_ascii_graphic());
        if !name_ok || !path_ok {
            return Err(expected());
        }
        Ok(AuthForward {
            service: service.to_string(),
            path: path.to_string(),
        })
    }
}

/// `X-User, X-Roles` → `["x-user", "x-roles"]`: header names, lowercase.
fn parse_header_names(s: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = s
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let valid = |n: &str| {
        n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    };
    if names.is_empty() || names.len() > 16 || !names.iter().all(|n| valid(n)) {
        return Err("1 to 16 header names separated by commas, e.g. X-User,X-Roles".to_string());
    }
    Ok(names)
}

/// The largest relative weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// The relative weight of an instance that announces none.
pub const DEFAULT_WEIGHT: u32 = 100;

/// How much traffic an instance asks for, among its service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    /// Relative to the others' (default 100): weight 50 gets half of what a
    /// weight-100 instance gets.
    Relative(u32),
    /// A share of the service's traffic, in tenths of a percent (`10%` is
    /// 100): a canary asks for a share whatever the number of other
    /// instances.
    Share(u32),
}

impl Default for Weight {
    fn default() -> Self {
        Weight::Relative(DEFAULT_WEIGHT)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Weight::Relative(w) => write!(f, "{w}"),
            Weight::Share(permille) if permille % 10 == 0 => write!(f, "{}%", permille / 10),
            Weight::Share(permille) => write!(f, "{}.{}%", permille / 10, permille % 10),
        }
    }
}

impl FromStr for Weight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expected = || {
            format!(
                "a relative weight 1-{MAX_WEIGHT} (default {DEFAULT_WEIGHT}) or a share of the \
                 service's traffic such as 10% (0.1%-99.9%)"
            )
        };
        if let Some(pct) = s.strip_suffix('%') {
            let pct: f64 = pct.trim().parse().map_err(|_| expected())?;
            let permille = (pct * 10.0).round();
            if !(1.0..=999.0).contains(&permille) {
                return Err(expected());
            }
            return Ok(Weight::Share(permille as u32));
        }
        match s.parse::<u32>() {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(Weight::Relative(w)),
            _ => Err(expected()),
        }
    }
}

/// At most `requests` per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period, in seconds (1, 60 or 3600).
    pub per_secs: u32,
}

impl RateLimit {
    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.requests) / f64::from(self.per_secs)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.requests)
    }
}

impl FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            || "requests per second, minute or hour: 300, 300/s, 1000/m or 5000/h".to_string();
        let (n, unit) = s.trim().split_once('/').unwrap_or((s.trim(), "s"));
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(expected()),
        };
        match n.trim().parse::<u32>() {
            Ok(requests) if requests > 0 => Ok(RateLimit { requests, per_secs }),
            _ => Err(expected()),
        }
    }
}

/// What a member announces of traffic policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// This instance's weight.
    pub weight: Weight,
    /// This instance's version label (shown, and asked for with the
    /// `X-Shoal-Version` request header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its service pins each client to an instance with a cookie.
    #[serde(default)]
    pub sticky: bool,
    /// Its service's rate limit, across every gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Its service's rate limit per client IP, across every gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_client: Option<RateLimit>,
    /// Its service's requests are first checked by this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_forward: Option<AuthForward>,
    /// The headers of the auth service's answer passed on to the service
    /// (lowercase); what a client sent under those names never is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_copy_headers: Vec<String>,
    /// Its service's requests need a bearer token (JWT) that checks out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_jwt: Option<AuthJwt>,
}

/// The longest version label.
const MAX_LABEL: usize = 32;

fn parse_label(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "a version label of 1-{MAX_LABEL} letters, digits, '.', '-' or '_' (e.g. v2, canary)"
        ))
    }
}

impl Policy {
    /// Reads the policies of this member from its environment.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        fn parsed<T: FromStr<Err = String>>(
            env: &Env,
            var: &'static str,
        ) -> Result<Option<T>, ConfigError> {
            env.get(var)
                .map(|raw| raw.parse().map_err(|why: String| invalid(var, raw, &why)))
                .transpose()
        }
        Ok(Policy {
            weight: parsed(env, "SHOAL_WEIGHT")?.unwrap_or_default(),
            label: env
                .get("SHOAL_VERSION_LABEL")
                .map(|raw| {
                    parse_label(raw).map_err(|why| invalid("SHOAL_VERSION_LABEL", raw, &why))
                })
                .transpose()?,
            sticky: env.bool_or("SHOAL_STICKY", false)?,
            rate_limit: parsed(env, "SHOAL_RATE_LIMIT")?,
            rate_limit_per_client: parsed(env, "SHOAL_RATE_LIMIT_PER_CLIENT")?,
            auth_forward: parsed(env, "SHOAL_AUTH_FORWARD")?,
            auth_copy_headers: env
                .get("SHOAL_AUTH_COPY_HEADERS")
                .map(|raw| {
                    parse_header_names(raw)
                        .map_err(|why| invalid("SHOAL_AUTH_COPY_HEADERS", raw, &why))
                })
                .transpose()?
                .unwrap_or_default(),
            auth_jwt: AuthJwt::from_env(env)?,
        })
    }

    /// Its gossip keys: only those that differ from the default.
    pub fn key_values(&self) -> Vec<(&'static str, String)> {
        let mut kv = Vec::new();
        if self.weight != Weight::default() {
            kv.push((keys::WEIGHT, self.weight.to_string()));
        }
        if let Some(label) = &self.label {
            kv.push((keys::LABEL, label.clone()));
        }
        if self.sticky {
            kv.push((keys::STICKY, "1".to_string()));
        }
        if let Some(limit) = self.rate_limit {
            kv.push((keys::RATE_LIMIT, limit.to_string()));
        }
        if let Some(limit) = self.rate_limit_per_client {
            kv.push((keys::RATE_LIMIT_PER_CLIENT, limit.to_string()));
        }
        if let Some(auth) = &self.auth_forward {
            kv.push((keys::AUTH_FORWARD, auth.to_string()));
        }
        if !self.auth_copy_headers.is_empty() {
            kv.push((keys::AUTH_COPY_HEADERS, self.auth_copy_headers.join(",")));
        }
        if let Some(jwt) = &self.auth_jwt {
            jwt.key_values(&mut kv);
        }
        kv
    }

    /// Reads the policies back from gossip keys. A value this version cannot
    /// read (a newer member's, or garbage) counts as not announced: the
    /// member still serves, with the default.
    pub fn from_keys<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        Policy {
            weight: get(keys::WEIGHT)
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            label: get(keys::LABEL).and_then(|v| parse_label(v).ok()),
            sticky: get(keys::STICKY) == Some("1"),
            rate_limit: get(keys::RATE_LIMIT).and_then(|v| v.parse().ok()),
            rate_limit_per_client: get(keys::RATE_LIMIT_PER_CLIENT).and_then(|v| v.parse().ok()),
            auth_forward: get(keys::AUTH_FORWARD).and_then(|v| v.parse().ok()),
            auth_copy_headers: get(keys::AUTH_COPY_HEADERS)
                .and_then(|v| parse_header_names(v).ok())
                .unwrap_or_default(),
            auth_jwt: AuthJwt::from_keys(&get),
        }
    }

    /// Whether it announces anything of its service (not only of itself).
    pub fn has_service_policy(&self) -> bool {
        self.sticky
            || self.rate_limit.is_some()
            || self.rate_limit_per_client.is_some()
            || self.auth_forward.is_some()
            || self.auth_jwt.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_read_relative_and_shares() {
        assert_eq!("100".parse(), Ok(Weight::Relative(100)));
        assert_eq!("10%".parse(), Ok(Weight::Share(100)));
        assert_eq!(" 2.5 % ".parse(), Ok(Weight::Share(25)));
        for bad in [
            "0", "0%", "100%", "10001", "-3", "ten", "", "1e400%", "NaN%",
        ] {
            assert!(bad.parse::<Weight>().is_err(), "{bad}");
        }
        for w in [Weight::Relative(7), Weight::Share(100), Weight::Share(25)] {
            assert_eq!(w.to_string().parse(), Ok(w));
        }
    }

    #[test]
    fn rate_limits_read_per_second_minute_hour() {
        assert_eq!(
            "300".parse(),
            Ok(RateLimit {
                requests: 300,
                per_secs: 1
            })
        );
        let m: RateLimit = "1000/m".parse().unwrap();
        assert_eq!(m.per_secs, 60);
        assert!((m.per_second() - 1000.0 / 60.0).abs() < 1e-9);
        for bad in ["0", "300/d", "x/s", "-1"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_round_trip_through_gossip_keys_and_default_costs_nothing() {
        assert!(Policy::default().key_values().is_empty());
        let env = Env::from_pairs([
            ("SHOAL_WEIGHT", "10%"),
            ("SHOAL_VERSION_LABEL", "v2"),
            ("SHOAL_STICKY", "true"),
            ("SHOAL_RATE_LIMIT", "300/s"),
            ("SHOAL_RATE_LIMIT_PER_CLIENT", "20"),
            ("SHOAL_AUTH_FORWARD", "auth-service:/verify"),
            ("SHOAL_AUTH_COPY_HEADERS", "X-User, X-Roles"),
            (
                "SHOAL_AUTH_JWT_JWKS",
                "https://idp.example.com/.well-known/jwks.json",
            ),
            ("SHOAL_AUTH_JWT_ISSUER", "https://idp.example.com/"),
            ("SHOAL_AUTH_JWT_AUDIENCE", "story-service"),
            ("SHOAL_AUTH_JWT_CLAIMS", "sub=X-User, email=X-Email"),
        ]);
        let p = Policy::from_env(&env).unwrap();
        let jwt = p.auth_jwt.as_ref().expect("JWT announced");
        assert_eq!(jwt.audience.as_deref(), Some("story-service"));
        assert_eq!(
            jwt.claims,
            [
                ("sub".to_string(), "x-user".to_string()),
                ("email".to_string(), "x-email".to_string())
            ]
        );
        assert_eq!(
            p.auth_forward.as_ref().map(ToString::to_string).as_deref(),
            Some("auth-service:/verify")
        );
        assert_eq!(p.auth_copy_headers, ["x-user", "x-roles"]);
        let kv = p.key_values();
        let back = Policy::from_keys(|k| {
            kv.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        });
        assert_eq!(back, p);
        assert!(back.has_service_policy());
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (var, value) in [
            ("SHOAL_WEIGHT", "0"),
            ("SHOAL_VERSION_LABEL", "v 2"),
            ("SHOAL_STICKY", "maybe"),
            ("SHOAL_RATE_LIMIT", "lots"),
            ("SHOAL_RATE_LIMIT_PER_CLIENT", "5/d"),
            ("SHOAL_AUTH_FORWARD", "auth-service/verify"),
            ("SHOAL_AUTH_FORWARD", "auth service:/verify"),
            ("SHOAL_AUTH_COPY_HEADERS", "X User"),
            ("SHOAL_AUTH_JWT_JWKS", "idp.example.com/jwks"),
            ("SHOAL_AUTH_JWT_JWKS", "https:///jwks"),
            // Without the key set, the rest means nothing: said so.
            ("SHOAL_AUTH_JWT_AUDIENCE", "story-service"),
            ("SHOAL_AUTH_JWT_CLAIMS", "sub"),
        ] {
            let err = Policy::from_env(&Env::from_pairs([(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
        // Garbage in gossip is the default, not an error.
        let p = Policy::from_keys(|k| (k == keys::WEIGHT).then_some("lots"));
        assert_eq!(p, Policy::default());
        // An issuer this version cannot read keeps the check (nothing
        // matches it), never drops it.
        let p = Policy::from_keys(|k| match k {
            keys::JWT_JWKS => Some("http://idp:8000/jwks"),
            keys::JWT_ISSUER => Some("an issuer with spaces"),
            _ => None,
        });
        let jwt = p.auth_jwt.expect("still checked");
        assert!(jwt.issuer.is_some_and(|i| i.starts_with('\u{0}')));
    }
}
