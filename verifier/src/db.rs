//! The database: SQLite (a file path or `sqlite:` URL, created on first start) or
//! PostgreSQL (`postgres://` URL), behind sqlx's `Any` driver.
//!
//! Queries are written once, portably: `$n` placeholders (SQLite accepts them as
//! numbered parameters when they appear in ascending order), `BIGINT` Unix-second
//! timestamps, `TEXT` and `BLOB`/`BYTEA` only, `INSERT … ON CONFLICT` and `RETURNING`.
//! The schema differs only where the dialects do (triggers, `BYTEA`), so migrations live
//! in `migrations/sqlite` and `migrations/postgres` and the matching set runs at start.
//!
//! Write transactions on SQLite start with `BEGIN IMMEDIATE`, so concurrent writers wait
//! on the busy timeout instead of failing with a lock upgrade deadlock; SQLite runs in
//! WAL mode with `synchronous = FULL`, so a committed transaction survives `kill -9`.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not a SQLite path/URL or a PostgreSQL URL.
    #[error("unsupported database URL; use a file path, sqlite:PATH or postgres://…")]
    Url,
    /// Connecting failed.
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    /// Running migrations failed.
    #[error("cannot apply database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("a database query failed")]
    Query(#[from] sqlx::Error),
    /// A value could not be encoded for storage.
    #[error("cannot encode a value for storage")]
    Encode(#[source] serde_json::Error),
    /// Stored data violates an invariant.
    #[error("the database holds corrupt data: {0}")]
    Corrupt(&'static str),
}

/// A transaction on the database.
pub type Tx = Transaction<'static, Any>;

/// A pool of connections to the verifier's database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite only: connections with `synchronous = NORMAL` for writes that may be lost
    /// on power failure without harm (see [`Db::ephemeral_pool`]).
    ephemeral: Option<AnyPool>,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Normalizes a database argument to a URL and its backend (SQLite files are created
/// if missing).
pub fn normalize_url(url: &str) -> Result<(String, Backend), DbError> {
    normalize(url, true)
}

fn normalize(url: &str, create: bool) -> Result<(String, Backend), DbError> {
    let mode = if create { "mode=rwc" } else { "mode=rw" };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((url.to_owned(), Backend::Postgres));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest.is_empty() {
            return Err(DbError::Url);
        }
        let u = if url.contains("mode=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&{mode}")
        } else {
            format!("{url}?{mode}")
        };
        return Ok((u, Backend::Sqlite));
    }
    if url.contains("://") || url.is_empty() {
        return Err(DbError::Url);
    }
    Ok((format!("sqlite://{url}?{mode}"), Backend::Sqlite))
}

impl Db {
    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        let db = Self::connect(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to an existing database without migrating (read-only tools: a missing
    /// SQLite file is an error, not a new empty database).
    pub async fn connect_existing(url: &str) -> Result<Self, DbError> {
        Self::connect_with(url, false).await
    }

    /// Connects without migrating (SQLite files are created if missing).
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::connect_with(url, true).await
    }

    async fn connect_with(url: &str, create: bool) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = normalize(url, create)?;
        let opts: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            pool = pool.max_connections(8).after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 15000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        } else {
            pool = pool.max_connections(16);
        }
        let pool = pool
            .connect_with(opts.clone())
            .await
            .map_err(DbError::Connect)?;
        let ephemeral = if backend == Backend::Sqlite {
            let p = AnyPoolOptions::new()
                .acquire_timeout(Duration::from_secs(30))
                .max_connections(2)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 15000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(DbError::Connect)?;
            Some(p)
        } else {
            None
        };
        Ok(Self {
            pool,
            ephemeral,
            backend,
        })
    }

    /// Applies pending migrations for this backend.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let m = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        m.run(&self.pool).await.map_err(DbError::Migrate)
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for writes whose loss in a power failure is harmless: a new challenge
    /// session (the guest asks again). On SQLite its connections commit without an
    /// fsync (`synchronous = NORMAL` in WAL mode: the commit survives a crash of the
    /// process, and the next durable commit flushes it); everything that releases or
    /// records anything uses [`Db::pool`] or [`Db::begin`], which fsync. PostgreSQL uses
    /// the one pool.
    pub fn ephemeral_pool(&self) -> &AnyPool {
        self.ephemeral.as_ref().unwrap_or(&self.pool)
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        if let Some(e) = &self.ephemeral {
            e.close().await;
        }
        self.pool.close().await;
    }
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("/tmp/a.db").unwrap(),
            ("sqlite:///tmp/a.db?mode=rwc".into(), Backend::Sqlite)
        );
        assert_eq!(
            normalize_url("sqlite:x.db").unwrap().0,
            "sqlite:x.db?mode=rwc"
        );
        assert_eq!(
            normalize_url("postgres://u@h/db").unwrap().1,
            Backend::Postgres
        );
        assert!(normalize_url("mysql://x").is_err());
        assert!(normalize_url("").is_err());
    }
}
