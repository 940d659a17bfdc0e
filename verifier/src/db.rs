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
//!
//! SQLite has one writer at a time. Within the process, writers take turns on a FIFO
//! lock ([`Db::write_turn`], held by every [`Tx`] until it commits or is dropped) before
//! they touch the database, so they queue and wake as soon as the writer before them
//! commits, instead of polling in SQLite's busy handler (which sleeps up to 100 ms per
//! attempt: the latency tail under load). Another process writing the same file still
//! meets the busy timeout. PostgreSQL needs no turn.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

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

/// A write transaction on the database; dereferences to its connection. On SQLite it
/// holds this process's write turn ([`Db::write_turn`]) until it commits, rolls back or
/// is dropped.
#[derive(Debug)]
pub struct Tx {
    // Dropped first: an uncommitted transaction queues its rollback on the connection
    // before the next writer is let in.
    inner: Transaction<'static, Any>,
    _turn: Option<WriteTurn>,
}

impl Tx {
    /// Commits the transaction (durably: `synchronous = FULL` on SQLite).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}

/// This process's turn to write to a SQLite database (see [`Db::write_turn`]).
#[derive(Debug)]
pub struct WriteTurn {
    _guard: OwnedMutexGuard<()>,
}

/// A pool of connections to the verifier's database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite only: connections with `synchronous = NORMAL` for writes that may be lost
    /// on power failure without harm (see [`Db::ephemeral_pool`]).
    ephemeral: Option<AnyPool>,
    /// SQLite only: the FIFO lock writers take turns on.
    writers: Option<Arc<Mutex<()>>>,
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
            // A local file: no connection to test before use (a ping per acquire).
            pool = pool
                .max_connections(8)
                .test_before_acquire(false)
                .after_connect(|conn, _meta| {
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
                .test_before_acquire(false)
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
        let writers = (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(())));
        Ok(Self {
            pool,
            ephemeral,
            writers,
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

    /// Waits for this process's turn to write (SQLite; `None` on PostgreSQL). Writers
    /// outside a [`Tx`] (single autocommit statements) hold it across their statement;
    /// never call [`Db::begin`] or this while holding a turn (the lock is not
    /// reentrant).
    pub async fn write_turn(&self) -> Option<WriteTurn> {
        match &self.writers {
            Some(m) => Some(WriteTurn {
                _guard: Arc::clone(m).lock_owned().await,
            }),
            None => None,
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, after waiting for this
    /// process's write turn).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let turn = self.write_turn().await;
        let inner = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx { inner, _turn: turn })
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

    /// Writers take turns: a dropped (uncommitted) transaction gives up its turn and
    /// its changes; many concurrent appenders all commit and the audit chain is intact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_take_turns() {
        use crate::store::audit::{self, AuditEvent, AuditKind};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("v.db").to_str().unwrap())
            .await
            .unwrap();
        let ev = |i: usize| AuditEvent {
            kind: AuditKind::Maintenance,
            actor: "system".into(),
            client: "-".into(),
            subject: format!("test:{i}"),
            outcome: "ok".into(),
            detail: serde_json::json!({ "i": i }),
        };
        let mut tx = db.begin().await.unwrap();
        audit::append(&mut tx, &ev(0)).await.unwrap();
        drop(tx);
        let mut tasks = Vec::new();
        for i in 1..=24 {
            let db = db.clone();
            let e = ev(i);
            tasks.push(tokio::spawn(async move {
                audit::append_now(&db, &e).await.unwrap()
            }));
        }
        let turn = tokio::time::timeout(Duration::from_secs(20), async {
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap());
            }
            seqs
        });
        let mut seqs = turn.await.expect("no writer waits forever");
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=24).collect::<Vec<i64>>());
        let report = audit::verify(&db).await.unwrap();
        assert!(report.ok, "{:?}", report.problem);
        assert_eq!(report.records, 24);
    }
}
