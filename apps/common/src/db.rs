//! The database: chosen by `DATABASE_URL` (SQLite, MariaDB/MySQL or
//! PostgreSQL), connected in the background with backoff, migrated at start,
//! and watched while running.
//!
//! Queries are written once with `?` placeholders; [`Db::sql`] rewrites
//! them to `$1, $2…` for PostgreSQL. Requests that need the database while
//! it is not there get [`ApiError::Unavailable`] (503), never a hang.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::error::ApiError;

/// Which kind of database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path` (embedded, the default).
    Sqlite,
    /// `mysql://` or `mariadb://`.
    MySql,
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl Backend {
    /// The backend of a URL, or `None` for an unknown scheme.
    pub fn of(url: &str) -> Option<Backend> {
        let scheme = url.split_once("://").map(|(s, _)| s)?;
        match scheme {
            "sqlite" => Some(Backend::Sqlite),
            "mysql" | "mariadb" => Some(Backend::MySql),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

/// The migrations of a service, one set per backend (their DDL differs).
pub struct Migrations {
    /// For SQLite.
    pub sqlite: &'static Migrator,
    /// For MariaDB/MySQL.
    pub mysql: &'static Migrator,
    /// For PostgreSQL.
    pub postgres: &'static Migrator,
}

/// Makes a service's migrator tolerate the migrations of other services in
/// the same database (one `_sqlx_migrations` table for all).
pub fn shared(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    backend: Backend,
    pool: OnceCell<AnyPool>,
    reachable: AtomicBool,
    misses: AtomicU32,
}

/// Slow checks in a row after which a reachable database counts as lost.
const LOST_AFTER_SLOW_CHECKS: u32 = 2;

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Db")
            .field("url", &redact(&self.inner.url))
            .field("reachable", &self.is_reachable())
            .finish()
    }
}

impl Db {
    /// A handle for `url`; nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, String> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url).ok_or_else(|| {
            "a URL starting with sqlite://, mysql://, mariadb:// or postgres://".to_string()
        })?;
        // mariadb:// is a friendlier spelling; sqlx knows it as mysql://.
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        url.parse::<AnyConnectOptions>()
            .map_err(|e| format!("a valid database URL ({e})"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                backend,
                pool: OnceCell::new(),
                reachable: AtomicBool::new(false),
                misses: AtomicU32::new(0),
            }),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The pool, or 503 while the database is not reachable.
    pub fn pool(&self) -> Result<&AnyPool, ApiError> {
        match self.inner.pool.get() {
            Some(pool) if self.inner.reachable.load(Ordering::Relaxed) => Ok(pool),
            _ => Err(ApiError::Unavailable(
                "the database is not reachable; try again shortly".into(),
            )),
        }
    }

    /// Whether the last check reached the database.
    pub fn is_reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// A query for this backend: `?` placeholders rewritten as `$n` for
    /// PostgreSQL. Only literals go in (`&'static str`), so nothing a request
    /// carries can reach the SQL text: that is what makes the assertion to
    /// sqlx (`AssertSqlSafe`) true.
    pub fn sql(&self, query: &'static str) -> sqlx::AssertSqlSafe<Cow<'static, str>> {
        sqlx::AssertSqlSafe(self.placeholders(query))
    }

    fn placeholders(&self, query: &'static str) -> Cow<'static, str> {
        if self.inner.backend != Backend::Postgres {
            return Cow::Borrowed(query);
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// Connects and migrates, retrying with backoff until it works.
    pub async fn connect_with_retry(&self, migrations: &Migrations, max_connections: u32) {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1u32;
        loop {
            match self.connect_once(migrations, max_connections).await {
                Ok(()) => {
                    info!(backend = ?self.inner.backend, "database ready");
                    return;
                }
                Err(err) => {
                    warn!(attempt, retry_in = ?delay, error = %err, "database not ready; staying `starting`");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
    }

    async fn connect_once(
        &self,
        migrations: &Migrations,
        max_connections: u32,
    ) -> Result<(), sqlx::Error> {
        let pool = match self.inner.pool.get() {
            Some(pool) => pool.clone(),
            None => {
                if self.inner.backend == Backend::Sqlite {
                    create_sqlite_dir(&self.inner.url).await;
                }
                let sqlite = self.inner.backend == Backend::Sqlite;
                AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(3))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            if sqlite {
                                // WAL: readers never block the writer, and several
                                // replicas on one host can share the file; the busy
                                // timeout makes a writer wait for another's lock.
                                conn.execute("PRAGMA journal_mode=WAL").await?;
                                conn.execute("PRAGMA busy_timeout=5000").await?;
                                conn.execute("PRAGMA synchronous=NORMAL").await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&self.inner.url)
                    .await?
            }
        };
        let migrator = match self.inner.backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::MySql => migrations.mysql,
            Backend::Postgres => migrations.postgres,
        };
        migrator.run(&pool).await?;
        let _ = self.inner.pool.set(pool);
        self.inner.reachable.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the database once; returns whether it answered.
    pub async fn check(&self) -> bool {
        let Some(pool) = self.inner.pool.get() else {
            return false;
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::query("SELECT 1").execute(pool),
        )
        .await;
        // A refused or broken connection is a lost database at once; a slow
        // answer (a busy SQLite file, a pool whose connections are all at
        // work) only after several in a row.
        let ok = match answer {
            Ok(Ok(_)) => {
                self.inner.misses.store(0, Ordering::Relaxed);
                true
            }
            // No connection within the timeout while the pool is not full:
            // new connections fail, the database is not there.
            Ok(Err(sqlx::Error::PoolTimedOut))
                if pool.size() < pool.options().get_max_connections() =>
            {
                false
            }
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => {
                let misses = self.inner.misses.fetch_add(1, Ordering::Relaxed) + 1;
                misses < LOST_AFTER_SLOW_CHECKS && self.is_reachable()
            }
            Ok(Err(_)) => false,
        };
        let was = self.inner.reachable.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                info!("database reachable again");
            } else {
                warn!("database lost; answering 503 until it returns");
            }
        }
        ok
    }

    /// Closes the pool (at the end of a drain).
    pub async fn close(&self) {
        if let Some(pool) = self.inner.pool.get() {
            pool.close().await;
        }
    }
}

async fn create_sqlite_dir(url: &str) {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or("");
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            let _ = tokio::fs::create_dir_all(parent).await;
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_scheme() {
        assert_eq!(Backend::of("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("mariadb://u@h/db"), Some(Backend::MySql));
        assert_eq!(Backend::of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("redis://h"), None);
        assert!(Db::new("oracle://h").unwrap_err().contains("sqlite://"));
    }

    /// SQLite before 3.51.3 has the WAL-reset race (sqlite.org/wal.html,
    /// "WAL-reset bug"): with several connections writing and checkpointing
    /// one file — three replicas of `shoal local` on one database — a
    /// checkpoint can skip frames and committed writes are lost. The bundled
    /// library must stay at a fixed version.
    #[test]
    fn the_bundled_sqlite_has_the_wal_reset_fix() {
        sqlx::any::install_default_drivers();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let version: String = rt.block_on(async {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect("sqlite::memory:")
                .await
                .unwrap();
            sqlx::query_scalar("SELECT sqlite_version()")
                .fetch_one(&pool)
                .await
                .unwrap()
        });
        let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
        assert!(parts >= vec![3, 51, 3], "SQLite {version}");
    }

    #[test]
    fn placeholders_become_numbered_for_postgres() {
        let pg = Db::new("postgres://u@localhost/db").unwrap();
        assert_eq!(
            pg.sql("SELECT a FROM t WHERE b = ? AND c < ?").0,
            "SELECT a FROM t WHERE b = $1 AND c < $2"
        );
        let lite = Db::new("sqlite://x.db").unwrap();
        assert_eq!(lite.sql("b = ?").0, "b = ?");
    }
}
