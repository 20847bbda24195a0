//! Who may use the Eureka API. The gossip key keeps strangers out of
//! membership, but the admin port answers anyone who reaches it, and a
//! registration puts an instance in a service's rotation: so writes need
//! credentials unless configured otherwise.
//!
//! - `SHOAL_EUREKA_WRITES`: `auth` (default: HTTP basic auth with a user
//!   of `SHOAL_EUREKA_CREDENTIALS_FILE`), `open` (anyone who reaches the
//!   admin port: a trusted network, or `shoal local` on loopback), `off`.
//! - `SHOAL_EUREKA_READS`: `open` (default) or `auth`.
//! - `SHOAL_EUREKA_CREDENTIALS_FILE`: htpasswd lines (`#` comments), e.g. a
//!   Docker secret: `user:$2y$…` (bcrypt, `htpasswd -B`, as nginx and
//!   Traefik read it) or `user:password` in clear (read, with a warning).
//!   Eureka clients send the password from their URL:
//!   `defaultZone: http://user:password@gateway:8761/eureka/`. A bcrypt
//!   check costs milliseconds of CPU and every heartbeat carries the
//!   credentials, so a pair once verified is remembered (its SHA-256, not
//!   the password) and checks run off the runtime, two at a time.
//! - `SHOAL_EUREKA_MAX_LEASES` (default 1000) and
//!   `SHOAL_EUREKA_MAX_LEASES_PER_APP` (default 200): registrations of new
//!   instances beyond them are refused (every lease is gossip state that
//!   every member holds).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ring::digest;
use shoal_node::{ConfigError, Env};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Who may do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone who reaches the port.
    Open,
    /// A user of the credentials file.
    Auth,
    /// Nobody.
    Off,
}

/// The Eureka API's access rules and users.
#[derive(Debug, Clone)]
pub struct Access {
    /// Registration, heartbeats, cancels, status and metadata changes.
    pub writes: Rule,
    /// Every GET.
    pub reads: Rule,
    users: Arc<Vec<User>>,
    /// Most leases the cluster takes.
    pub limits: shoal_node::LeaseLimits,
    /// SHA-256 of `user \0 password` of the pairs verified (bounded).
    verified: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// bcrypt checks running at once.
    checks: Arc<Semaphore>,
}

/// A user of the credentials file.
#[derive(Debug, Clone)]
pub struct User {
    name: String,
    secret: Secret,
}

/// A password as the credentials file gives it.
#[derive(Debug, Clone)]
enum Secret {
    /// htpasswd's bcrypt (`$2y$`, `$2b$`, `$2a$`).
    Bcrypt(String),
    /// In clear.
    Plain(String),
}

/// Verified pairs remembered at most (then forgotten all at once).
const VERIFIED_MAX: usize = 4096;
/// bcrypt checks at once: wrong passwords queue, they do not take every
/// core.
const CHECKS_AT_ONCE: usize = 2;

impl Default for Access {
    fn default() -> Self {
        Self {
            limits: shoal_node::LeaseLimits::default(),
            writes: Rule::Auth,
            reads: Rule::Open,
            users: Arc::default(),
            verified: Arc::default(),
            checks: Arc::new(Semaphore::new(CHECKS_AT_ONCE)),
        }
    }
}

const WRITES: &str = "SHOAL_EUREKA_WRITES";
const READS: &str = "SHOAL_EUREKA_READS";
const FILE: &str = "SHOAL_EUREKA_CREDENTIALS_FILE";

fn rule(
    env: &Env,
    var: &'static str,
    default: Rule,
    allowed: &[&str],
) -> Result<Rule, ConfigError> {
    let Some(value) = env.get(var) else {
        return Ok(default);
    };
    let lower = value.to_ascii_lowercase();
    if !allowed.contains(&lower.as_str()) {
        return Err(ConfigError::Invalid {
            var,
            value: value.to_string(),
            expected: allowed.join(", "),
        });
    }
    Ok(match lower.as_str() {
        "open" => Rule::Open,
        "auth" => Rule::Auth,
        _ => Rule::Off,
    })
}

/// Reads htpasswd lines: `user:$2y$…` (bcrypt) or `user:password`.
pub fn parse_users(text: &str, path: &Path) -> Result<Vec<User>, ConfigError> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |expected: &str| ConfigError::Invalid {
            var: FILE,
            value: format!("{}, line {}", path.display(), n + 1),
            expected: expected.into(),
        };
        let Some((name, secret)) = line
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty())
        else {
            return Err(invalid(
                "user:password or user:bcrypt-hash lines (a non-empty user and password)",
            ));
        };
        let secret = if ["$2y$", "$2b$", "$2a$"]
            .iter()
            .any(|p| secret.starts_with(p))
        {
            if secret.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(
                    "a whole bcrypt hash after the user ($2y$, cost, 53 characters: htpasswd -B)",
                ));
            }
            Secret::Bcrypt(secret.to_string())
        } else if ["$apr1$", "{SHA}", "$1$", "$5$", "$6$", "$argon2"]
            .iter()
            .any(|p| secret.starts_with(p))
        {
            return Err(invalid(
                "bcrypt hashes (htpasswd -B) or passwords in clear; MD5, SHA-1, crypt and argon2 hashes are not read",
            ));
        } else {
            Secret::Plain(secret.to_string())
        };
        users.push(User {
            name: name.to_string(),
            secret,
        });
    }
    Ok(users)
}

impl Access {
    /// The rules from `SHOAL_EUREKA_*`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let writes = rule(env, WRITES, Rule::Auth, &["auth", "open", "off"])?;
        let reads = rule(env, READS, Rule::Open, &["open", "auth"])?;
        let users = match env.get(FILE) {
            None => Vec::new(),
            Some(path) => {
                let path = Path::new(path);
                #[allow(
                    clippy::disallowed_methods,
                    reason = "read once at start, before the gateway serves"
                )]
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    var: FILE,
                    path: path.to_path_buf(),
                    source,
                })?;
                let users = parse_users(&text, path)?;
                if users.is_empty() {
                    return Err(ConfigError::Invalid {
                        var: FILE,
                        value: path.display().to_string(),
                        expected: "a file with at least one user:password line".into(),
                    });
                }
                users
            }
        };
        if reads == Rule::Auth && users.is_empty() {
            return Err(ConfigError::Missing {
                var: FILE,
                hint: format!("{READS}=auth needs users: a file of user:password lines"),
            });
        }
        let d = shoal_node::LeaseLimits::default();
        let limits = shoal_node::LeaseLimits {
            total: env.parse_in(
                "SHOAL_EUREKA_MAX_LEASES",
                d.total,
                1..=100_000,
                "a whole number of registrations between 1 and 100000",
            )?,
            per_app: env.parse_in(
                "SHOAL_EUREKA_MAX_LEASES_PER_APP",
                d.per_app,
                1..=100_000,
                "a whole number of registrations between 1 and 100000",
            )?,
        };
        Ok(Self {
            limits,
            writes,
            reads,
            users: Arc::new(users),
            ..Self::default()
        })
    }

    /// A warning for entries in clear, if any.
    pub fn plain_warning(&self) -> Option<String> {
        let plain: Vec<&str> = self
            .users
            .iter()
            .filter(|u| matches!(u.secret, Secret::Plain(_)))
            .map(|u| u.name.as_str())
            .collect();
        (!plain.is_empty()).then(|| {
            format!(
                "{FILE}: the password of {} is in clear; store a bcrypt hash instead (htpasswd -nB {})",
                plain.join(", "),
                plain[0]
            )
        })
    }

    /// Whether the request carries the basic credentials of a user.
    async fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some((user, password)) = std::str::from_utf8(&decoded)
            .ok()
            .and_then(|s| s.split_once(':'))
        else {
            return false;
        };
        let pair = {
            let mut d = digest::Context::new(&digest::SHA256);
            d.update(user.as_bytes());
            d.update(&[0]);
            d.update(password.as_bytes());
            let mut pair = [0u8; 32];
            pair.copy_from_slice(d.finish().as_ref());
            pair
        };
        if self.remembered().contains(&pair) {
            return true;
        }
        let mut ok = false;
        for u in self.users.iter() {
            // Every user compared, in time independent of where names differ.
            let named = bool::from(u.name.as_bytes().ct_eq(user.as_bytes()));
            ok |= named
                && match &u.secret {
                    Secret::Plain(p) => bool::from(p.as_bytes().ct_eq(password.as_bytes())),
                    Secret::Bcrypt(hash) => self.bcrypt(password, hash).await,
                };
        }
        if ok {
            let mut verified = self.remembered();
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(pair);
        }
        ok
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// bcrypt's check, off the runtime's threads, a few at a time.
    async fn bcrypt(&self, password: &str, hash: &str) -> bool {
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let (password, hash) = (password.to_string(), hash.to_string());
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }

    /// What a gateway says at start about who may write.
    pub fn describe(&self) -> String {
        match (self.writes, self.users.is_empty()) {
            (Rule::Open, _) => {
                "Eureka registration open to anyone who reaches the admin port".into()
            }
            (Rule::Off, _) => "Eureka registration off".into(),
            (Rule::Auth, true) => format!(
                "Eureka registration refused: no users ({FILE} unset); set it, or {WRITES}=open on a trusted network"
            ),
            (Rule::Auth, false) => format!(
                "Eureka registration for {} user(s) of {FILE}",
                self.users.len()
            ),
        }
    }
}

/// The middleware in front of every Eureka route.
pub async fn check(State(access): State<Access>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let rule = if write { access.writes } else { access.reads };
    let refuse = |status: StatusCode, reason: String| {
        let mut r = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            reason + "\n",
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"shoal eureka\""),
            );
        }
        r
    };
    match rule {
        Rule::Open => next.run(req).await,
        Rule::Off => refuse(
            StatusCode::FORBIDDEN,
            format!(
                "Eureka {} are off on this gateway ({WRITES}=off)",
                if write { "writes" } else { "reads" }
            ),
        ),
        Rule::Auth if access.users.is_empty() => refuse(
            StatusCode::FORBIDDEN,
            format!(
                "registration through Eureka needs credentials, and this gateway has none: \
                 set {FILE} (user:password lines, e.g. a Docker secret), or {WRITES}=open on a trusted network"
            ),
        ),
        Rule::Auth if access.authorised(req.headers()).await => next.run(req).await,
        Rule::Auth => refuse(
            StatusCode::UNAUTHORIZED,
            "credentials required: HTTP basic auth with a user of the gateway's credentials file \
             (defaultZone: http://user:password@gateway:8761/eureka/)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        h
    }

    /// `htpasswd -nbB -C 4 ops py-pw`'s form (cost 4: tests stay fast).
    const OPS_BCRYPT: &str = "ops:$2y$04$rRHq5Cdf.lMhwJYoQnXUyer7Psi64r9feGSeXyaTt7DWdJk3Fr4kW";

    #[tokio::test]
    async fn only_a_listed_user_with_its_password_is_authorised() {
        let path = Path::new("users");
        let file = format!("# ops\nspring:s3cret\n\npython:pw:with:colons\n{OPS_BCRYPT}\n");
        let access = Access {
            users: Arc::new(parse_users(&file, path).unwrap()),
            ..Access::default()
        };
        assert!(access.authorised(&basic("spring", "s3cret")).await);
        assert!(access.authorised(&basic("python", "pw:with:colons")).await);
        assert!(access.authorised(&basic("ops", "py-pw")).await, "bcrypt");
        for (u, p) in [
            ("spring", "s3cre"),
            ("spring", "s3cret!"),
            ("nobody", "s3cret"),
            ("ops", "py-pw!"),
            ("ops", OPS_BCRYPT.split_once(':').unwrap().1),
            ("", ""),
        ] {
            assert!(!access.authorised(&basic(u, p)).await, "{u}:{p}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(!access.authorised(&h).await);
        assert!(!access.authorised(&HeaderMap::new()).await);
        // Verified pairs are remembered (a heartbeat does not pay bcrypt
        // again), wrong ones are not.
        assert_eq!(access.remembered().len(), 3);
        let warning = access.plain_warning().expect("plain entries");
        assert!(
            warning.contains("spring, python") && !warning.contains("ops"),
            "{warning}"
        );
    }

    #[test]
    fn hashes_other_than_bcrypt_and_cut_hashes_are_refused_naming_the_line() {
        for (line, says) in [
            ("ops:$apr1$abc$def", "MD5, SHA-1"),
            ("ops:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "MD5, SHA-1"),
            ("ops:$6$salt$hash", "MD5, SHA-1"),
            ("ops:$2y$04$tooshort", "a whole bcrypt hash"),
        ] {
            let text = format!("spring:s3cret\n{line}\n");
            let err = parse_users(&text, Path::new("/run/secrets/eureka"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("/run/secrets/eureka, line 2") && err.contains(says),
                "{line}: {err}"
            );
        }
        let access = Access {
            users: Arc::new(parse_users(OPS_BCRYPT, Path::new("f")).unwrap()),
            ..Access::default()
        };
        assert_eq!(access.plain_warning(), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = parse_users("spring\n", Path::new("/run/secrets/eureka")).unwrap_err();
        assert!(
            err.to_string().contains("/run/secrets/eureka, line 1"),
            "{err}"
        );
        let env = Env::from_pairs([(WRITES, "maybe")]);
        let err = Access::from_env(&env).unwrap_err();
        assert!(
            err.to_string().contains("SHOAL_EUREKA_WRITES=\"maybe\""),
            "{err}"
        );
        let env = Env::from_pairs([(READS, "auth")]);
        let err = Access::from_env(&env).unwrap_err();
        assert!(err.to_string().contains(FILE), "{err}");
        let env = Env::from_pairs([(FILE, "/nonexistent/users")]);
        assert!(Access::from_env(&env).is_err());
        let ok = Access::from_env(&Env::from_pairs([(WRITES, "open")])).unwrap();
        assert_eq!((ok.writes, ok.reads), (Rule::Open, Rule::Open));
    }
}
