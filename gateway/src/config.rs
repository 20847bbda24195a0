//! The gateway's configuration: the member settings of `shoal-node` plus
//! ports, timeouts, limits and resilience knobs, all from `SHOAL_*`
//! variables with the classic stack's defaults.

use std::net::IpAddr;
use std::time::Duration;

use shoal_node::NodeConfig;
use shoal_node::{ConfigError, Env};

/// Everything the gateway reads at start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Membership settings (service `gateway`).
    pub node: NodeConfig,
    /// Address the public and admin ports bind to (`SHOAL_LISTEN`, default 0.0.0.0).
    pub listen: IpAddr,
    /// Public port (`SHOAL_PORT`, default 4000).
    pub port: u16,
    /// Admin port: metrics, members, health (`SHOAL_ADMIN_PORT`, default 8761).
    pub admin_port: u16,
    /// Upstream limits and timeouts.
    pub proxy: ProxyConfig,
    /// Retries, ejection, breaker.
    pub resilience: ResilienceConfig,
    /// Worker threads serving the public port, each with its own listener
    /// (SO_REUSEPORT), runtime and connection pool (`SHOAL_WORKERS`,
    /// default: one per CPU).
    pub workers: usize,
    /// One log line per request (`SHOAL_ACCESS_LOG`, default true).
    pub access_log: bool,
    /// JSON logs (`SHOAL_LOG_FORMAT=json`).
    pub log_json: bool,
    /// How often this gateway publishes its traffic figures by gossip for
    /// the cluster-wide `/stats` and dashboard (`SHOAL_STATS_EVERY`, default
    /// 1s; `0` publishes nothing: the dashboard then shows no traffic).
    pub stats_every: Option<Duration>,
    /// Who may use the Eureka API (`SHOAL_EUREKA_*`).
    pub eureka: crate::eureka::Access,
    /// TLS at the edge, when a certificate is given (`SHOAL_TLS_*`).
    pub tls: Option<TlsConfig>,
    /// HTTP/2 without TLS (prior knowledge) on the public port, beside
    /// HTTP/1.1 (`SHOAL_H2C`, default false).
    pub h2c: bool,
}

/// TLS termination at the gateway.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Where the certificate comes from: files, or an ACME CA.
    pub source: CertSource,
    /// Port of HTTPS, HTTP/2 over ALPN and HTTP/1.1 (`SHOAL_TLS_PORT`, 4443).
    pub port: u16,
    /// The plain port answers every request with a redirect to HTTPS
    /// (`SHOAL_TLS_REDIRECT`, default false: it serves as before). ACME's
    /// HTTP-01 challenges are answered on it all the same.
    pub redirect: bool,
}

/// Where the edge's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files, reloaded when they change.
    Files {
        /// PEM certificate chain (`SHOAL_TLS_CERT`, e.g. a Docker secret).
        cert: std::path::PathBuf,
        /// PEM private key (`SHOAL_TLS_KEY`).
        key: std::path::PathBuf,
        /// How often the files are checked for a change (`SHOAL_TLS_RELOAD_EVERY`, 2s).
        reload_every: Duration,
    },
    /// An ACME CA, the certificate shared by the gateways (`SHOAL_ACME_*`).
    Acme(AcmeConfig),
}

/// ACME (RFC 8555, HTTP-01): one certificate for `domains`, ordered by one
/// gateway at a time and shared with the others sealed with the edge key.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The names the certificate covers (`SHOAL_ACME_DOMAINS`, comma-separated).
    pub domains: Vec<String>,
    /// The CA's directory URL (`SHOAL_ACME_DIRECTORY`, Let's Encrypt's).
    pub directory: String,
    /// The account's contact (`SHOAL_ACME_EMAIL`), optional.
    pub email: Option<String>,
    /// PEM certificates of a private CA to trust for the directory, besides
    /// the public roots (`SHOAL_ACME_CA_FILE`, e.g. pebble's).
    pub ca_file: Option<std::path::PathBuf>,
    /// The keys only gateways have, that seal the certificate's private
    /// key as it travels between them (`SHOAL_EDGE_KEY` / `SHOAL_EDGE_KEY_FILE`).
    pub edge_keys: shoal_node::KeyRing,
    /// The share of a certificate's lifetime after which it is renewed
    /// (`SHOAL_ACME_RENEW_AT`, 0.67: two thirds).
    pub renew_at: f64,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl AcmeConfig {
    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let Some(raw) = env.get("SHOAL_ACME_DOMAINS") else {
            return Ok(None);
        };
        let mut domains = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let name = name.to_ascii_lowercase();
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            };
            if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
                return Err(shoal_node::invalid(
                    "SHOAL_ACME_DOMAINS",
                    raw,
                    &format!(
                        "a comma list of DNS names such as api.example.com (`{name}` is not one; \
                         HTTP-01 cannot prove a wildcard)"
                    ),
                ));
            }
            if !domains.contains(&name) {
                domains.push(name);
            }
        }
        if domains.is_empty() {
            return Err(shoal_node::invalid(
                "SHOAL_ACME_DOMAINS",
                raw,
                "at least one DNS name, e.g. api.example.com",
            ));
        }
        let directory = env.get("SHOAL_ACME_DIRECTORY").unwrap_or(LETS_ENCRYPT);
        if !directory.starts_with("https://") {
            return Err(shoal_node::invalid(
                "SHOAL_ACME_DIRECTORY",
                directory,
                "the https:// URL of the CA's ACME directory",
            ));
        }
        let edge_keys = shoal_node::read_key_ring(env, "SHOAL_EDGE_KEY", "SHOAL_EDGE_KEY_FILE")?
            .ok_or(ConfigError::Missing {
                var: "SHOAL_EDGE_KEY",
                hint: "the certificate's private key travels between gateways sealed with a \
                           key only gateways have (not the cluster key every replica holds): \
                           create one with `shoal keygen` and give it to the gateways alone \
                           (SHOAL_EDGE_KEY, or SHOAL_EDGE_KEY_FILE for a Docker secret)"
                    .into(),
            })?;
        let renew_at = env.parse_or("SHOAL_ACME_RENEW_AT", 0.67, "a share of the lifetime")?;
        if !(0.01..=0.95).contains(&renew_at) {
            return Err(shoal_node::invalid(
                "SHOAL_ACME_RENEW_AT",
                &renew_at.to_string(),
                "a share of the certificate's lifetime from 0.01 to 0.95 (0.67: two thirds)",
            ));
        }
        Ok(Some(Self {
            domains,
            directory: directory.to_string(),
            email: env.get("SHOAL_ACME_EMAIL").map(str::to_string),
            ca_file: env.get("SHOAL_ACME_CA_FILE").map(Into::into),
            edge_keys,
            renew_at,
        }))
    }

    /// The certificate's name among the gateways: its domains.
    pub fn name(&self) -> String {
        self.domains.join(",")
    }
}

impl TlsConfig {
    fn from_env(env: &Env, plain_port: u16) -> Result<Option<Self>, ConfigError> {
        let redirect = env.bool_or("SHOAL_TLS_REDIRECT", false)?;
        let acme = AcmeConfig::from_env(env)?;
        let source = match (env.get("SHOAL_TLS_CERT"), env.get("SHOAL_TLS_KEY"), acme) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(shoal_node::invalid(
                    "SHOAL_ACME_DOMAINS",
                    env.get("SHOAL_ACME_DOMAINS").unwrap_or_default(),
                    "either SHOAL_ACME_DOMAINS or SHOAL_TLS_CERT/SHOAL_TLS_KEY, not both: \
                     the certificate comes from the CA or from files",
                ));
            }
            (None, None, Some(acme)) => CertSource::Acme(acme),
            (None, None, None) if redirect => {
                return Err(ConfigError::Missing {
                    var: "SHOAL_TLS_CERT",
                    hint:
                        "SHOAL_TLS_REDIRECT=true needs TLS: set SHOAL_TLS_CERT and SHOAL_TLS_KEY \
                           to PEM files, or SHOAL_ACME_DOMAINS"
                            .into(),
                });
            }
            (None, None, None) => return Ok(None),
            (Some(_), None, None) => {
                return Err(ConfigError::Missing {
                    var: "SHOAL_TLS_KEY",
                    hint: "SHOAL_TLS_CERT is set: name the PEM private key file too".into(),
                });
            }
            (None, Some(_), None) => {
                return Err(ConfigError::Missing {
                    var: "SHOAL_TLS_CERT",
                    hint: "SHOAL_TLS_KEY is set: name the PEM certificate chain file too".into(),
                });
            }
            (Some(c), Some(k), None) => CertSource::Files {
                cert: c.into(),
                key: k.into(),
                reload_every: env.duration_in(
                    "SHOAL_TLS_RELOAD_EVERY",
                    Duration::from_secs(2),
                    Duration::from_millis(100)..,
                    "a duration of 100ms or more",
                )?,
            },
        };
        let port = env.parse_in("SHOAL_TLS_PORT", 4443, 1.., "a TCP port, 1-65535")?;
        if port == plain_port {
            return Err(shoal_node::invalid(
                "SHOAL_TLS_PORT",
                &port.to_string(),
                "a port other than SHOAL_PORT (which stays plain HTTP)",
            ));
        }
        Ok(Some(Self {
            source,
            port,
            redirect,
        }))
    }

    /// The ACME settings, when the certificate comes from a CA.
    pub fn acme(&self) -> Option<&AcmeConfig> {
        match &self.source {
            CertSource::Acme(acme) => Some(acme),
            CertSource::Files { .. } => None,
        }
    }
}

/// Timeouts and limits towards upstreams.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// TCP connect (`SHOAL_CONNECT_TIMEOUT`, 5s).
    pub connect_timeout: Duration,
    /// Until the response headers of one attempt (`SHOAL_RESPONSE_TIMEOUT`, 5s).
    pub response_timeout: Duration,
    /// Whole request including retries (`SHOAL_REQUEST_TIMEOUT`, 20s).
    pub request_timeout: Duration,
    /// Upstream requests in flight in total (`SHOAL_MAX_CONNECTIONS`, 4096).
    pub max_in_flight: usize,
    /// Upstream requests in flight per instance (`SHOAL_MAX_CONNECTIONS_PER_INSTANCE`, 1024).
    pub max_in_flight_per_instance: u32,
    /// Upstream connections this gateway opens to one instance, split among
    /// its workers (`SHOAL_UPSTREAM_CONNECTIONS`, 64): a request that finds
    /// them all busy waits for the next free one.
    pub upstream_connections: usize,
    /// Idle pooled connections are closed after this (`SHOAL_POOL_IDLE_TIMEOUT`, 60s),
    /// far below the 900 s after which Swarm's IPVS silently drops them.
    pub pool_idle_timeout: Duration,
    /// Request bodies up to this size are kept so the request can be retried
    /// (`SHOAL_RETRY_BODY_LIMIT`, 64 KiB); larger bodies stream and are not retried.
    pub retry_body_limit: usize,
    /// Client connections open at once (`SHOAL_MAX_CLIENT_CONNECTIONS`,
    /// 10,000): one more is answered 503 and closed at once, so a flood of
    /// connections (or slowloris) cannot take the gateway's memory.
    pub max_client_connections: usize,
    /// A client must send a request's headers within this
    /// (`SHOAL_HEADER_TIMEOUT`, 10s), or its connection is closed.
    pub header_timeout: Duration,
    /// A client that reads nothing of its answer for this long is
    /// disconnected (`SHOAL_CLIENT_WRITE_TIMEOUT`, 30s).
    pub client_write_timeout: Duration,
    /// Proxies in front of the gateway whose `X-Forwarded-For` names the
    /// client (`SHOAL_TRUSTED_PROXIES`: addresses and CIDR blocks; default
    /// none — the TCP peer is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The PROXY protocol (v1 and v2) from `trusted_proxies` on the public
    /// and TLS ports (`SHOAL_PROXY_PROTOCOL`: `false`, the default;
    /// `true`, a trusted peer must send a header; `optional`, it may).
    pub proxy_protocol: ProxyProtocol,
    /// Per-client rate limits key an IPv6 client by this many leading bits
    /// of its address (`SHOAL_RATE_LIMIT_IPV6_PREFIX`, 64: one host's
    /// usual allocation; 128 keys by the whole address).
    pub client_v6_prefix: u8,
}

/// Whether the gateway's ports take a PROXY header (`SHOAL_PROXY_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// No header taken (the default): every peer is the client.
    #[default]
    Off,
    /// A trusted peer may send one.
    Optional,
    /// A trusted peer must send one.
    Required,
}

/// Knobs of retries, outlier ejection and the circuit breaker.
#[derive(Debug, Clone)]
pub struct ResilienceConfig {
    /// Retries allowed as a share of requests (`SHOAL_RETRY_BUDGET_RATIO`, 0.2).
    pub retry_ratio: f64,
    /// Retries always allowed per second (`SHOAL_RETRY_BUDGET_MIN`, 10).
    pub retry_min_per_sec: u32,
    /// Attempts per request at most (`SHOAL_MAX_ATTEMPTS`, 3).
    pub max_attempts: u32,
    /// Consecutive failures that eject an instance (`SHOAL_EJECT_AFTER`, 5).
    pub eject_after: u32,
    /// Base ejection time, multiplied by times ejected (`SHOAL_EJECT_TIME`, 30s).
    pub eject_time: Duration,
    /// Requests in the window before the breaker may open (`SHOAL_BREAKER_MIN_REQUESTS`, 20).
    pub breaker_min_requests: u32,
    /// Error percentage that opens it (`SHOAL_BREAKER_ERROR_PERCENT`, 50).
    pub breaker_error_percent: u32,
    /// Rolling window (`SHOAL_BREAKER_WINDOW`, 10s).
    pub breaker_window: Duration,
    /// Time open before a trial request (`SHOAL_BREAKER_OPEN_TIME`, 5s).
    pub breaker_open_time: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_in_flight: 4096,
            max_in_flight_per_instance: 1024,
            upstream_connections: 64,
            pool_idle_timeout: Duration::from_secs(60),
            retry_body_limit: 64 * 1024,
            max_client_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            client_write_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            proxy_protocol: ProxyProtocol::Off,
            client_v6_prefix: 64,
        }
    }
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            retry_ratio: 0.2,
            retry_min_per_sec: 10,
            max_attempts: 3,
            eject_after: 5,
            eject_time: Duration::from_secs(30),
            breaker_min_requests: 20,
            breaker_error_percent: 50,
            breaker_window: Duration::from_secs(10),
            breaker_open_time: Duration::from_secs(5),
        }
    }
}

/// `SHOAL_PROXY_PROTOCOL`: `true`, `optional` or `false`; a header is
/// taken only from `SHOAL_TRUSTED_PROXIES`, which must then be set.
fn proxy_protocol(env: &Env) -> Result<ProxyProtocol, ConfigError> {
    use ProxyProtocol as Mode;
    let Some(value) = env.get("SHOAL_PROXY_PROTOCOL") else {
        return Ok(Mode::Off);
    };
    let mode = match value.trim().to_ascii_lowercase().as_str() {
        "false" | "0" | "no" | "off" => Mode::Off,
        "true" | "1" | "yes" | "on" => Mode::Required,
        "optional" => Mode::Optional,
        _ => {
            return Err(ConfigError::Invalid {
                var: "SHOAL_PROXY_PROTOCOL",
                value: value.to_string(),
                expected: "true (trusted proxies must send a PROXY header), optional (they may) \
                           or false"
                    .into(),
            });
        }
    };
    if mode != Mode::Off && env.get("SHOAL_TRUSTED_PROXIES").is_none() {
        return Err(ConfigError::Missing {
            var: "SHOAL_TRUSTED_PROXIES",
            hint: format!(
                "SHOAL_PROXY_PROTOCOL={value} takes a PROXY header only from trusted \
                 proxies: name the balancers' addresses, e.g. SHOAL_TRUSTED_PROXIES=10.0.0.0/24"
            ),
        });
    }
    Ok(mode)
}

/// `SHOAL_TRUSTED_PROXIES`: addresses (`192.168.1.5`) and CIDR blocks
/// (`10.0.0.0/8`), separated by commas.
fn trusted_proxies(env: &Env) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(value) = env.get("SHOAL_TRUSTED_PROXIES") else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    var: "SHOAL_TRUSTED_PROXIES",
                    value: value.to_string(),
                    expected: format!(
                        "IP addresses or CIDR blocks separated by commas, e.g. \
                         10.0.0.0/8,192.168.1.5 (`{item}` is neither)"
                    ),
                })
        })
        .collect()
}

impl GatewayConfig {
    /// Reads the configuration from `env`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let node = NodeConfig::from_env(env, "gateway", 4000)?;
        let p = ProxyConfig::default();
        let r = ResilienceConfig::default();
        let proxy = ProxyConfig {
            connect_timeout: env.duration_or("SHOAL_CONNECT_TIMEOUT", p.connect_timeout)?,
            response_timeout: env.duration_or("SHOAL_RESPONSE_TIMEOUT", p.response_timeout)?,
            request_timeout: env.duration_or("SHOAL_REQUEST_TIMEOUT", p.request_timeout)?,
            max_in_flight: env.parse_in(
                "SHOAL_MAX_CONNECTIONS",
                p.max_in_flight,
                1..=1_000_000,
                "a whole number, 1-1000000",
            )?,
            max_in_flight_per_instance: env.parse_in(
                "SHOAL_MAX_CONNECTIONS_PER_INSTANCE",
                p.max_in_flight_per_instance,
                1..=1_000_000,
                "a whole number, 1-1000000",
            )?,
            upstream_connections: env.parse_in(
                "SHOAL_UPSTREAM_CONNECTIONS",
                p.upstream_connections,
                1..=100_000,
                "a whole number, 1-100000",
            )?,
            max_client_connections: env.parse_in(
                "SHOAL_MAX_CLIENT_CONNECTIONS",
                p.max_client_connections,
                1..=10_000_000,
                "a whole number, 1-10000000",
            )?,
            header_timeout: env.duration_in(
                "SHOAL_HEADER_TIMEOUT",
                p.header_timeout,
                Duration::from_millis(100)..=Duration::from_secs(600),
                "a duration from 100ms to 10m",
            )?,
            client_write_timeout: env.duration_in(
                "SHOAL_CLIENT_WRITE_TIMEOUT",
                p.client_write_timeout,
                Duration::from_millis(100)..=Duration::from_secs(3600),
                "a duration from 100ms to 1h",
            )?,
            pool_idle_timeout: env.duration_in(
                "SHOAL_POOL_IDLE_TIMEOUT",
                p.pool_idle_timeout,
                ..Duration::from_secs(900),
                "a duration below 900s (Swarm's IPVS drops idle connections at 900 s)",
            )?,
            retry_body_limit: env.parse_or(
                "SHOAL_RETRY_BODY_LIMIT",
                p.retry_body_limit,
                "a size in bytes",
            )?,
            trusted_proxies: trusted_proxies(env)?,
            proxy_protocol: proxy_protocol(env)?,
            client_v6_prefix: env.parse_in(
                "SHOAL_RATE_LIMIT_IPV6_PREFIX",
                p.client_v6_prefix,
                32..=128,
                "a prefix length from 32 to 128, e.g. 64",
            )?,
        };
        let resilience = ResilienceConfig {
            retry_ratio: env.parse_in(
                "SHOAL_RETRY_BUDGET_RATIO",
                r.retry_ratio,
                0.0..=1.0,
                "a ratio between 0 and 1, e.g. 0.2",
            )?,
            retry_min_per_sec: env.parse_in(
                "SHOAL_RETRY_BUDGET_MIN",
                r.retry_min_per_sec,
                0..=100_000,
                "a whole number of retries per second, 0-100000",
            )?,
            max_attempts: env.parse_in(
                "SHOAL_MAX_ATTEMPTS",
                r.max_attempts,
                1..=10,
                "a whole number of attempts, 1-10",
            )?,
            eject_after: env.parse_in(
                "SHOAL_EJECT_AFTER",
                r.eject_after,
                1..,
                "a whole number above 0",
            )?,
            eject_time: env.duration_or("SHOAL_EJECT_TIME", r.eject_time)?,
            breaker_min_requests: env.parse_or(
                "SHOAL_BREAKER_MIN_REQUESTS",
                r.breaker_min_requests,
                "a whole number",
            )?,
            breaker_error_percent: env.parse_in(
                "SHOAL_BREAKER_ERROR_PERCENT",
                r.breaker_error_percent,
                1..=100,
                "a percentage, 1-100",
            )?,
            breaker_window: env.duration_in(
                "SHOAL_BREAKER_WINDOW",
                r.breaker_window,
                Duration::from_millis(10)..,
                "a duration of 10ms or more",
            )?,
            breaker_open_time: env.duration_or("SHOAL_BREAKER_OPEN_TIME", r.breaker_open_time)?,
        };
        let tls = TlsConfig::from_env(env, node.port)?;
        Ok(Self {
            listen: env.parse_or("SHOAL_LISTEN", IpAddr::from([0, 0, 0, 0]), "an IP address")?,
            port: node.port,
            admin_port: env.parse_or("SHOAL_ADMIN_PORT", 8761, "a TCP port, 1-65535")?,
            node,
            proxy,
            resilience,
            workers: env.parse_in(
                "SHOAL_WORKERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                1..=1024,
                "a number of threads, 1-1024",
            )?,
            access_log: env.bool_or("SHOAL_ACCESS_LOG", true)?,
            log_json: shoal_node::log_json(env)?,
            stats_every: Some(env.duration_in(
                "SHOAL_STATS_EVERY",
                Duration::from_secs(1),
                Duration::ZERO..=Duration::from_secs(60),
                "a duration up to 60s (0 to publish no figures)",
            )?)
            .filter(|d| !d.is_zero()),
            eureka: crate::eureka::Access::from_env(env)?,
            tls,
            h2c: env.bool_or("SHOAL_H2C", false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut all = vec![("SHOAL_INSECURE", "true")];
        all.extend_from_slice(pairs);
        Env::from_pairs(all)
    }

    #[test]
    fn classic_defaults() {
        let c = GatewayConfig::from_env(&env(&[])).unwrap();
        assert_eq!((c.port, c.admin_port), (4000, 8761));
        assert_eq!(c.node.service.as_str(), "gateway");
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.proxy.request_timeout, Duration::from_secs(20));
        assert_eq!(
            (c.proxy.max_in_flight, c.proxy.max_in_flight_per_instance),
            (4096, 1024)
        );
        assert_eq!(c.resilience.breaker_min_requests, 20);
        assert_eq!(c.stats_every, Some(Duration::from_secs(1)));
        let off = GatewayConfig::from_env(&env(&[("SHOAL_STATS_EVERY", "0")])).unwrap();
        assert_eq!(off.stats_every, None);
        let err = GatewayConfig::from_env(&env(&[("SHOAL_STATS_EVERY", "2h")])).unwrap_err();
        assert!(err.to_string().contains("SHOAL_STATS_EVERY"), "{err}");
    }

    #[test]
    fn acme_settings_take_defaults_and_name_what_is_wrong() {
        let key = shoal_node::ClusterKey::generate().to_base64();
        let c = |pairs: &[(&str, &str)]| GatewayConfig::from_env(&env(pairs));
        let ok = c(&[
            (
                "SHOAL_ACME_DOMAINS",
                " Api.Example.com, www.example.com,api.example.com ",
            ),
            ("SHOAL_EDGE_KEY", &key),
        ])
        .unwrap();
        let tls = ok.tls.expect("TLS on");
        let acme = tls.acme().expect("from ACME");
        assert_eq!(acme.domains, ["api.example.com", "www.example.com"]);
        assert_eq!(acme.name(), "api.example.com,www.example.com");
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!((acme.renew_at, tls.port), (0.67, 4443));
        let refused = |pairs: &[(&str, &str)], var: &str, why: &str| {
            let err = c(pairs).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(why), "{err}");
        };
        let domains = ("SHOAL_ACME_DOMAINS", "api.example.com");
        let edge = ("SHOAL_EDGE_KEY", key.as_str());
        refused(&[domains], "SHOAL_EDGE_KEY", "only gateways have");
        refused(
            &[("SHOAL_ACME_DOMAINS", "*.example.com"), edge],
            "SHOAL_ACME_DOMAINS",
            "wildcard",
        );
        refused(
            &[("SHOAL_ACME_DOMAINS", "localhost"), edge],
            "SHOAL_ACME_DOMAINS",
            "DNS names",
        );
        refused(
            &[
                domains,
                edge,
                ("SHOAL_ACME_DIRECTORY", "http://ca.example/dir"),
            ],
            "SHOAL_ACME_DIRECTORY",
            "https://",
        );
        refused(
            &[domains, edge, ("SHOAL_ACME_RENEW_AT", "1.5")],
            "SHOAL_ACME_RENEW_AT",
            "0.01 to 0.95",
        );
        refused(
            &[
                domains,
                edge,
                ("SHOAL_TLS_CERT", "c.pem"),
                ("SHOAL_TLS_KEY", "k.pem"),
            ],
            "SHOAL_ACME_DOMAINS",
            "not both",
        );
        refused(
            &[domains, ("SHOAL_EDGE_KEY", "short")],
            "SHOAL_EDGE_KEY",
            "shoal keygen",
        );
    }

    #[test]
    fn the_proxy_protocol_is_off_by_default_and_needs_trusted_proxies() {
        let c = |pairs: &[(&str, &str)]| GatewayConfig::from_env(&env(pairs));
        assert_eq!(c(&[]).unwrap().proxy.proxy_protocol, ProxyProtocol::Off);
        let trusted = ("SHOAL_TRUSTED_PROXIES", "10.0.0.0/24");
        for (value, mode) in [
            ("true", ProxyProtocol::Required),
            ("optional", ProxyProtocol::Optional),
            ("false", ProxyProtocol::Off),
        ] {
            let got = c(&[("SHOAL_PROXY_PROTOCOL", value), trusted]).unwrap();
            assert_eq!(got.proxy.proxy_protocol, mode);
        }
        let e = c(&[("SHOAL_PROXY_PROTOCOL", "true")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHOAL_TRUSTED_PROXIES"), "{e}");
        let e = c(&[("SHOAL_PROXY_PROTOCOL", "v2"), trusted])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SHOAL_PROXY_PROTOCOL") && e.contains("optional"),
            "{e}"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_and_blocks() {
        let c = GatewayConfig::from_env(&env(&[(
            "SHOAL_TRUSTED_PROXIES",
            "10.0.0.0/8, 192.168.1.5,,2001:db8::/32",
        )]))
        .unwrap();
        let shown: Vec<String> = c
            .proxy
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.5/32", "2001:db8::/32"]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value, expected) in [
            ("SHOAL_POOL_IDLE_TIMEOUT", "20m", "below 900s"),
            (
                "SHOAL_RATE_LIMIT_IPV6_PREFIX",
                "129",
                "prefix length from 32 to 128",
            ),
            ("SHOAL_RATE_LIMIT_IPV6_PREFIX", "/64", "prefix length"),
            ("SHOAL_RETRY_BUDGET_RATIO", "2", "between 0 and 1"),
            ("SHOAL_MAX_CONNECTIONS", "0", "1-1000000"),
            ("SHOAL_MAX_CONNECTIONS", "many", "1-1000000"),
            ("SHOAL_RETRY_BUDGET_MIN", "4000000000", "0-100000"),
            ("SHOAL_MAX_ATTEMPTS", "0", "1-10"),
            (
                "SHOAL_TRUSTED_PROXIES",
                "10.0.0.0/8, 10.0.0.0/33",
                "`10.0.0.0/33` is neither",
            ),
            ("SHOAL_WORKERS", "0", "1-1024"),
            ("SHOAL_EJECT_AFTER", "0", "above 0"),
            ("SHOAL_BREAKER_ERROR_PERCENT", "150", "percentage"),
            ("SHOAL_CONNECT_TIMEOUT", "soon", "duration"),
            ("SHOAL_LISTEN", "everywhere", "IP address"),
        ] {
            let e = GatewayConfig::from_env(&env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(var) && e.contains(expected),
                "{var}={value}: {e}"
            );
        }
    }
}
