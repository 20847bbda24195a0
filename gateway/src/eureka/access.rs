//! Who may use the Eureka API. The gossip key keeps strangers out of
//! membership, but the admin port answers anyone who reaches it, and a
//! registration puts an instance in a service's rotation: so writes need
//! credentials unless configured otherwise.
//!
//! - `SHOAL_EUREKA_WRITES`: `auth` (default: HTTP basic auth with a user
//!   of `SHOAL_EUREKA_CREDENTIALS_FILE`), `open` (anyone who reaches the
//!   admin port: a trusted network, or `shoal local` on loopback), `off`.
//! - `SHOAL_EUREKA_READS`: `open` (default) or `auth`.
//! - `SHOAL_EUREKA_CREDENTIALS_FILE`: `user:password` lines (`#` comments),
//!   e.g. a Docker secret. Eureka clients send them from their URL:
//!   `defaultZone: http://user:password@gateway:8761/eureka/`.
//! - `SHOAL_EUREKA_MAX_LEASES` (default 1000) and
//!   `SHOAL_EUREKA_MAX_LEASES_PER_APP` (default 200): registrations of new
//!   instances beyond them are refused (every lease is gossip state that
//!   every member holds).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use shoal_node::{ConfigError, Env};

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
    users: Arc<Vec<(String, String)>>,
    /// Most leases the cluster takes.
    pub limits: shoal_node::LeaseLimits,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            limits: shoal_node::LeaseLimits::default(),
            writes: Rule::Auth,
            reads: Rule::Open,
            users: Arc::default(),
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

/// Reads `user:password` lines.
pub fn parse_users(text: &str, path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                users.push((user.to_string(), password.to_string()));
            }
            _ => {
                return Err(ConfigError::Invalid {
                    var: FILE,
                    value: format!("{}, line {}", path.display(), n + 1),
                    expected: "user:password lines (a non-empty user and password)".into(),
                });
            }
        }
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
        })
    }

    /// Whether the request carries the basic credentials of a user.
    fn authorised(&self, headers: &HeaderMap) -> bool {
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
        // Every user compared, in time independent of where they differ.
        self.users.iter().fold(false, |found, (u, p)| {
            found | (same(u.as_bytes(), user.as_bytes()) & same(p.as_bytes(), password.as_bytes()))
        })
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

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        Rule::Auth if access.authorised(req.headers()) => next.run(req).await,
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

    #[test]
    fn only_a_listed_user_with_its_password_is_authorised() {
        let path = Path::new("users");
        let access = Access {
            users: Arc::new(
                parse_users("# ops\nspring:s3cret\n\npython:pw:with:colons\n", path).unwrap(),
            ),
            ..Access::default()
        };
        assert!(access.authorised(&basic("spring", "s3cret")));
        assert!(access.authorised(&basic("python", "pw:with:colons")));
        for (u, p) in [
            ("spring", "s3cre"),
            ("spring", "s3cret!"),
            ("nobody", "s3cret"),
            ("", ""),
        ] {
            assert!(!access.authorised(&basic(u, p)), "{u}:{p}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(!access.authorised(&h));
        assert!(!access.authorised(&HeaderMap::new()));
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
