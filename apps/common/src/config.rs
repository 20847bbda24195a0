//! A service's configuration: the member settings of `shoal-node` plus its
//! listen address, database URL and pool size.

use std::net::IpAddr;

use shoal_node::NodeConfig;
use shoal_node::{ConfigError, Env, invalid};

use crate::db::{Backend, redact};

/// Everything a service reads at start.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Membership settings.
    pub node: NodeConfig,
    /// Address the HTTP port binds to (`SHOAL_LISTEN`, default 0.0.0.0).
    pub listen: IpAddr,
    /// Database (`DATABASE_URL`, default `sqlite://data/{service}.db`).
    pub database_url: String,
    /// Pool size (`SHOAL_DB_POOL`, default 10).
    pub db_pool: u32,
    /// JSON logs (`SHOAL_LOG_FORMAT=json`).
    pub log_json: bool,
    /// One log line per request (`SHOAL_ACCESS_LOG`, default true).
    pub access_log: bool,
}

impl AppConfig {
    /// Reads the configuration of `service` (default port `port`).
    pub fn from_env(env: &Env, service: &str, port: u16) -> Result<Self, ConfigError> {
        let node = NodeConfig::from_env(env, service, port)?;
        let database_url = env
            .get("DATABASE_URL")
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://data/{}.db?mode=rwc", node.service));
        if Backend::of(&database_url).is_none() {
            return Err(invalid(
                "DATABASE_URL",
                &redact(&database_url),
                "sqlite://<file>, mysql://…, mariadb://… or postgres://…",
            ));
        }
        let db_pool: u32 = env.parse_in("SHOAL_DB_POOL", 10, 1..=1000, "a pool size, 1-1000")?;
        Ok(Self {
            listen: env.parse_or("SHOAL_LISTEN", IpAddr::from([0, 0, 0, 0]), "an IP address")?,
            database_url,
            db_pool,
            log_json: shoal_node::log_json(env)?,
            access_log: env.bool_or("SHOAL_ACCESS_LOG", true)?,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_is_the_default_and_bad_urls_are_named_without_password() {
        let env = Env::from_pairs([("SHOAL_INSECURE", "1")]);
        let c = AppConfig::from_env(&env, "story-service", 8768).unwrap();
        assert_eq!(c.database_url, "sqlite://data/story-service.db?mode=rwc");
        let env = Env::from_pairs([
            ("SHOAL_INSECURE", "1"),
            ("DATABASE_URL", "oracle://scott:tiger@h/db"),
        ]);
        let e = AppConfig::from_env(&env, "s", 1).unwrap_err().to_string();
        assert!(
            e.contains("DATABASE_URL") && e.contains("scott:***") && !e.contains("tiger"),
            "{e}"
        );
    }
}
