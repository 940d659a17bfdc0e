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
//! WAL mode, and [`Tx::commit`] returns only once the commit is on stable storage, so a
//! committed transaction survives `kill -9` and a power cut.
//!
//! # Group commit (SQLite)
//!
//! A commit is durable once the WAL frames it appended are on stable storage. SQLite's
//! `synchronous = FULL` fsyncs the WAL inside every `COMMIT`, while the writer holds the
//! write turn: every writer then waits for every earlier writer's fsync, and a complete
//! guest flow pays two of them. So the write connection commits with `synchronous =
//! NORMAL` (its `COMMIT` writes the frames, without an fsync), takes a *ticket* (the
//! commit's place in the WAL's order) while it still holds the turn, passes the turn on,
//! and then waits until an `fdatasync` of the WAL file that *started after its `COMMIT`
//! returned* has succeeded (`GroupSync`). One `fdatasync` makes every frame written
//! before it durable, so concurrent committers share it: while one sync runs, the next
//! writers commit, and the next sync covers them all. The WAL is a log: a sync covering
//! ticket `n` covers every commit before `n`, so whatever a committed transaction read
//! (committed earlier) is durable whenever it is. A failed `fdatasync` fails that
//! commit and every later one (the process must restart: after a failed fsync Linux may
//! have dropped the dirty pages, so a later successful fsync proves nothing).
//! `Tx::commit` returning `Ok` therefore means exactly what it meant with `synchronous =
//! FULL`: a released key's audit record is on disk before the key is sent. In-memory
//! databases (tests) have nothing to sync and keep `FULL`.
//!
//! SQLite has one writer at a time, so this process writes through two dedicated
//! connections behind one FIFO lock (the *write turn*): every write transaction ([`Tx`],
//! `synchronous = FULL`) runs on one, new challenge sessions ([`Db::ephemeral`],
//! `synchronous = NORMAL`) on the other. Writers queue on the lock and start as soon as
//! the writer before them is done, instead of polling in SQLite's busy handler (which
//! sleeps up to 100 ms per attempt: the latency tail under load), and the connections
//! are not a pool's (a pool pings each connection it gets back). A transaction dropped
//! without commit is rolled back before the turn passes on. The reads of guest flows use
//! a few dedicated connections ([`Db::read`]) for the same reason; other reads use the
//! pool.
//! Another process writing the same file still meets the busy timeout. PostgreSQL uses
//! its pool for everything.
//!
//! # Batches
//!
//! sqlx's SQLite driver runs each connection on a thread of its own: every statement is
//! a round trip to that thread (two thread wake-ups), which cost more CPU than most of
//! the statements themselves. A guest flow's transactions therefore send their
//! statements in [`Batch`]es: [`Db::begin_with`] (`BEGIN IMMEDIATE` and the first
//! statements), [`Tx::run`], [`Tx::commit_with`] (the last statements and `COMMIT`),
//! each one round trip on SQLite. A batch is part of its transaction: a failing
//! statement fails the batch, and the transaction is rolled back, never committed in
//! part. On PostgreSQL the same statements run one by one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::store::audit::AuditKeys;

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
    /// The database server did not answer the first connection in time.
    #[error(
        "cannot connect to the database: no answer within {0} s (is the host right and reachable?)"
    )]
    ConnectTimeout(u64),
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
    /// An audit record was to be written before the audit key was loaded
    /// ([`crate::store::audit::load_key`]).
    #[error("the audit key is not loaded; no audit record can be written")]
    NoAuditKey,
    /// The database file's permissions could not be restricted to its owner.
    #[error("cannot restrict the permissions of the database file {path}")]
    Permissions {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A write transaction on the database; dereferences to its connection. On SQLite it
/// holds this process's write turn until it commits or rolls back; dropped, it is rolled
/// back before the turn passes on.
#[derive(Debug)]
pub struct Tx {
    inner: Option<TxInner>,
    audit: Option<Arc<AuditKeys>>,
    /// SQLite files: what makes a commit durable.
    sync: Option<Arc<GroupSync>>,
}

/// Group commit of a SQLite file (see the module docs): commits take tickets in WAL
/// order; [`GroupSync::wait`] returns once an `fdatasync` of the WAL that started after
/// the ticket's commit has succeeded.
#[derive(Debug)]
pub(crate) struct GroupSync {
    /// The database file (synced instead of the WAL if the WAL is gone: then SQLite has
    /// checkpointed every commit into it).
    db_path: std::path::PathBuf,
    /// Its `-wal` companion.
    wal_path: std::path::PathBuf,
    /// Tickets handed out: commits whose `COMMIT` has returned (taken under the turn).
    committed: std::sync::atomic::AtomicU64,
    /// Every ticket up to this one is durable.
    synced: std::sync::atomic::AtomicU64,
    /// One sync at a time; holds the open WAL file.
    syncer: Mutex<Option<std::fs::File>>,
    /// A sync failed: no commit is reported durable any more.
    failed: std::sync::atomic::AtomicBool,
    /// `fdatasync` calls made (tests and the benchmark's accounting).
    syncs: std::sync::atomic::AtomicU64,
    /// Tests: the next sync fails.
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicBool,
}

/// A group sync failed (the cause is kept; later commits report the same).
fn sync_failed(source: std::io::Error) -> sqlx::Error {
    sqlx::Error::Io(source)
}

impl GroupSync {
    fn new(db_path: std::path::PathBuf) -> Self {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            db_path,
            wal_path: wal.into(),
            committed: Default::default(),
            synced: Default::default(),
            syncer: Mutex::new(None),
            failed: Default::default(),
            syncs: Default::default(),
            #[cfg(test)]
            fail_next: Default::default(),
        }
    }

    /// The ticket of a commit whose `COMMIT` just returned (call while holding the turn).
    fn ticket(&self) -> u64 {
        self.committed
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            .wrapping_add(1)
    }

    fn poisoned() -> sqlx::Error {
        sync_failed(std::io::Error::other(
            "an earlier fdatasync of the database failed; restart the verifier",
        ))
    }

    /// Waits until commit `ticket` is on stable storage: shares a sync that started after
    /// it, or runs one covering every commit so far.
    async fn wait(&self, ticket: u64) -> Result<(), sqlx::Error> {
        use std::sync::atomic::Ordering;
        let durable = || self.synced.load(Ordering::Acquire) >= ticket;
        if self.failed.load(Ordering::Acquire) {
            return Err(Self::poisoned());
        }
        if durable() {
            return Ok(());
        }
        let mut file = self.syncer.lock().await;
        if self.failed.load(Ordering::Acquire) {
            return Err(Self::poisoned());
        }
        if durable() {
            return Ok(());
        }
        // Every ticket up to `upto` has finished its COMMIT (its frames are written):
        // the sync below, which starts now, covers them.
        let upto = self.committed.load(Ordering::Acquire);
        let current = file.take();
        let (db_path, wal_path) = (self.db_path.clone(), self.wal_path.clone());
        #[cfg(test)]
        let inject = self.fail_next.swap(false, Ordering::AcqRel);
        #[cfg(not(test))]
        let inject = false;
        let outcome = tokio::task::spawn_blocking(move || {
            let f = wal_file(current, &wal_path, &db_path)?;
            if inject {
                return Err(std::io::Error::other("injected fdatasync failure"));
            }
            f.sync_data()?;
            Ok(f)
        })
        .await
        .map_err(|e| sync_failed(std::io::Error::other(e)))
        .and_then(|r| r.map_err(sync_failed));
        self.syncs.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(f) => {
                *file = Some(f);
                self.synced.fetch_max(upto, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                tracing::error!(error = %e, "fdatasync of the database failed; no further commit is reported durable");
                Err(e)
            }
        }
    }
}

/// The file to sync: `current` while it is still the WAL at `wal` (same device and
/// inode), else the WAL opened anew, or the database file when there is no WAL.
fn wal_file(
    current: Option<std::fs::File>,
    wal: &std::path::Path,
    db: &std::path::Path,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let open = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).open(p);
    match std::fs::metadata(wal) {
        Ok(m) => {
            if let Some(f) = current {
                let same = f
                    .metadata()
                    .is_ok_and(|c| c.dev() == m.dev() && c.ino() == m.ino());
                if same {
                    return Ok(f);
                }
            }
            open(wal)
        }
        // No WAL: SQLite checkpointed every commit into the database file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => open(db),
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
enum TxInner {
    Pool(Transaction<'static, Any>),
    Sqlite(OwnedMutexGuard<Writers>),
}

/// SQLite: the connections this process writes on (see the module docs).
#[derive(Debug)]
struct Writers {
    /// Every write transaction: `synchronous = NORMAL` with [`GroupSync`] for a file,
    /// `FULL` for an in-memory database.
    durable: AnyConnection,
    /// `synchronous = NORMAL`: new challenge sessions.
    ephemeral: AnyConnection,
    /// `durable` has a transaction open.
    open: bool,
}

impl Writers {
    /// Rolls back a transaction a dropped [`Tx`] left open.
    async fn settle(&mut self) {
        if self.open {
            if let Err(e) = self.durable.execute("ROLLBACK").await {
                tracing::warn!(error = %e, "cannot roll back an abandoned transaction");
            }
            self.open = false;
        }
    }
}

impl Tx {
    /// The audit key loaded into the database this transaction runs on.
    pub fn audit_keys(&self) -> Option<Arc<AuditKeys>> {
        self.audit.clone()
    }

    /// Commits the transaction durably: returns `Ok` only once the commit is on stable
    /// storage (SQLite files: the group sync of the module docs, after the write turn
    /// has passed on; in-memory SQLite: `synchronous = FULL`).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.inner.take() {
            Some(TxInner::Pool(t)) => t.commit().await,
            Some(TxInner::Sqlite(mut w)) => {
                w.durable.execute("COMMIT").await?;
                w.open = false;
                let ticket = self.sync.as_ref().map(|s| s.ticket());
                drop(w);
                match (&self.sync, ticket) {
                    (Some(s), Some(t)) => s.wait(t).await,
                    _ => Ok(()),
                }
            }
            None => Ok(()),
        }
    }

    /// Runs `batch` in the transaction (SQLite: one round trip); one result per
    /// statement.
    pub async fn run(&mut self, batch: Batch<'_>) -> Result<Vec<StmtResult>, DbError> {
        batch.check()?;
        let backend = match &self.inner {
            Some(TxInner::Sqlite(_)) => Backend::Sqlite,
            _ => Backend::Postgres,
        };
        batch
            .run_on(self.conn_mut(), backend, None, None)
            .await
            .map_err(|(_, e)| e.into())
    }

    /// Runs `batch` and commits durably, as [`Tx::commit`]: on SQLite the statements
    /// and `COMMIT` in one round trip (a failed statement leaves the transaction
    /// uncommitted, and it is rolled back before the write turn passes on).
    pub async fn commit_with(mut self, batch: Batch<'_>) -> Result<Vec<StmtResult>, DbError> {
        batch.check()?;
        match self.inner.take() {
            Some(TxInner::Sqlite(mut w)) => {
                let run = batch
                    .run_on(&mut w.durable, Backend::Sqlite, None, Some("COMMIT"))
                    .await;
                let mut results = match run {
                    Ok(r) => r,
                    Err((_, e)) => {
                        w.settle().await;
                        return Err(e.into());
                    }
                };
                results.pop();
                w.open = false;
                let ticket = self.sync.as_ref().map(|s| s.ticket());
                drop(w);
                if let (Some(s), Some(t)) = (&self.sync, ticket) {
                    s.wait(t).await?;
                }
                Ok(results)
            }
            inner => {
                self.inner = inner;
                let results = self.run(batch).await?;
                self.commit().await?;
                Ok(results)
            }
        }
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        match self.inner.take() {
            Some(TxInner::Pool(t)) => t.rollback().await,
            Some(TxInner::Sqlite(mut w)) => {
                w.durable.execute("ROLLBACK").await?;
                w.open = false;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn conn(&self) -> &AnyConnection {
        match &self.inner {
            Some(TxInner::Pool(t)) => t,
            Some(TxInner::Sqlite(w)) => &w.durable,
            // Only `commit`/`rollback` (which consume the Tx) and `drop` take it.
            None => unreachable!("a Tx is used after it ended"),
        }
    }

    fn conn_mut(&mut self) -> &mut AnyConnection {
        match &mut self.inner {
            Some(TxInner::Pool(t)) => t,
            Some(TxInner::Sqlite(w)) => &mut w.durable,
            None => unreachable!("a Tx is used after it ended"),
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // A pool transaction rolls itself back. On SQLite the rollback runs before the
        // turn passes on: in a task holding it, or (outside a runtime) by the next
        // holder, which settles first.
        if let Some(TxInner::Sqlite(mut w)) = self.inner.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { w.settle().await });
            }
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        self.conn()
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn_mut()
    }
}

/// One parameter of a statement in a [`Batch`].
#[derive(Debug, Clone)]
pub enum Param<'a> {
    /// Text.
    Text(&'a str),
    /// Owned text.
    String(String),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// An integer.
    Int(i64),
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}

impl From<String> for Param<'_> {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::OptText(v)
    }
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

impl<'a> Param<'a> {
    fn bind<'q>(self, q: AnyQuery<'q>) -> AnyQuery<'q>
    where
        'a: 'q,
    {
        match self {
            Self::Text(v) => q.bind(v),
            Self::String(v) => q.bind(v),
            Self::OptText(v) => q.bind(v),
            Self::Int(v) => q.bind(v),
        }
    }
}

/// Statements of one transaction sent to the database together ([`Db::begin_with`],
/// [`Tx::run`], [`Tx::commit_with`]).
///
/// On SQLite a batch is one query text of several statements, with the placeholders of
/// each renumbered after those of the statements before it: sqlx hands it to the
/// connection's worker thread in one command, which runs the statements in order and
/// stops at the first error. Every statement costs a round trip to that thread (two
/// thread wake-ups), so a guest flow's transactions are batched (README
/// "Performance"). PostgreSQL's extended protocol takes one statement per query, so
/// there the statements run one after the other, with the same results. Each statement
/// is written with its own `$1…$n`, exactly as a single query, and is passed its `n`
/// parameters.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    stmts: Vec<(&'static str, Vec<Param<'a>>)>,
}

/// What one statement of a [`Batch`] returned.
#[derive(Default)]
pub struct StmtResult {
    /// Its rows (`RETURNING`, `SELECT`).
    pub rows: Vec<sqlx::any::AnyRow>,
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
}

impl std::fmt::Debug for StmtResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StmtResult")
            .field("rows", &self.rows.len())
            .field("rows_affected", &self.rows_affected)
            .finish()
    }
}

impl StmtResult {
    /// The only row (`RETURNING` of a statement that changes exactly one row, a
    /// `SELECT` of exactly one): an error if there is none.
    pub fn one(&self) -> Result<&sqlx::any::AnyRow, DbError> {
        self.rows
            .first()
            .ok_or(DbError::Query(sqlx::Error::RowNotFound))
    }
}

/// The highest `$n` placeholder of `sql` (our statements have no `$` in literals).
fn placeholders(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if let Ok(n) = sql[start..j].parse::<usize>() {
                max = max.max(n);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

/// The results of a batch of `N` statements as an array (an error, not a panic, if
/// their number differs).
pub fn results<const N: usize>(results: Vec<StmtResult>) -> Result<[StmtResult; N], DbError> {
    results
        .try_into()
        .map_err(|_| DbError::Corrupt("a batch returned an unexpected number of results"))
}

/// Appends `sql` to `out` with every `$n` placeholder shifted by `offset`.
fn renumbered(out: &mut String, sql: &str, offset: usize) {
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        match rest[at + 1..at + 1 + digits].parse::<usize>() {
            Ok(n) => {
                out.push('$');
                out.push_str(&(n + offset).to_string());
            }
            Err(_) => out.push('$'),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds statement `sql` (placeholders `$1…$n`) with its `n` parameters.
    pub fn push(&mut self, sql: &'static str, params: Vec<Param<'a>>) -> &mut Self {
        debug_assert_eq!(
            placeholders(sql),
            params.len(),
            "a batched statement's parameters: {sql}"
        );
        self.stmts.push((sql, params));
        self
    }

    /// How many statements it holds.
    pub fn len(&self) -> usize {
        self.stmts.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.stmts.is_empty()
    }

    /// Checks every statement's placeholders against its parameters (a mismatch would
    /// bind a value to the wrong statement once renumbered).
    fn check(&self) -> Result<(), DbError> {
        for (sql, params) in &self.stmts {
            if placeholders(sql) != params.len() {
                return Err(DbError::Corrupt(
                    "a batched statement's placeholders do not match its parameters",
                ));
            }
        }
        Ok(())
    }

    /// Runs the batch on `conn`, with `prefix` and `suffix` (parameterless statements,
    /// such as `BEGIN IMMEDIATE` and `COMMIT`) around it on SQLite; returns one result
    /// per statement, the prefix's and suffix's included. On error, the results of the
    /// statements that completed are returned with it.
    async fn run_on(
        self,
        conn: &mut AnyConnection,
        backend: Backend,
        prefix: Option<&'static str>,
        suffix: Option<&'static str>,
    ) -> Result<Vec<StmtResult>, (usize, sqlx::Error)> {
        let n = self.stmts.len() + usize::from(prefix.is_some()) + usize::from(suffix.is_some());
        let mut results: Vec<StmtResult> = Vec::with_capacity(n);
        match backend {
            Backend::Sqlite => {
                let mut sql = String::from(prefix.unwrap_or_default());
                let mut offset = 0;
                let mut params = Vec::new();
                let stmts = self.stmts.into_iter();
                for (stmt, p) in stmts.chain(suffix.map(|s| (s, Vec::new()))) {
                    if !sql.is_empty() {
                        sql.push_str(";\n");
                    }
                    renumbered(&mut sql, stmt, offset);
                    offset += p.len();
                    params.extend(p);
                }
                let mut q = sqlx::query(&sql);
                for p in params {
                    q = p.bind(q);
                }
                collect(&mut results, (&mut *conn).fetch_many(q))
                    .await
                    .map_err(|e| (results.len(), e))?;
            }
            Backend::Postgres => {
                let all = prefix
                    .map(|p| (p, Vec::new()))
                    .into_iter()
                    .chain(self.stmts)
                    .chain(suffix.map(|s| (s, Vec::new())));
                for (stmt, p) in all {
                    let mut q = sqlx::query(stmt);
                    for p in p {
                        q = p.bind(q);
                    }
                    collect(&mut results, (&mut *conn).fetch_many(q))
                        .await
                        .map_err(|e| (results.len(), e))?;
                }
            }
        }
        if results.len() != n {
            return Err((
                results.len(),
                sqlx::Error::Protocol(format!(
                    "a batch of {n} statements returned {} results",
                    results.len()
                )),
            ));
        }
        Ok(results)
    }
}

/// Adds the results of a `fetch_many` stream to `results`, one per statement.
async fn collect(
    results: &mut Vec<StmtResult>,
    mut stream: futures_util::stream::BoxStream<
        '_,
        Result<sqlx::Either<sqlx::any::AnyQueryResult, sqlx::any::AnyRow>, sqlx::Error>,
    >,
) -> Result<(), sqlx::Error> {
    use futures_util::TryStreamExt;
    let mut current = StmtResult::default();
    while let Some(item) = stream.try_next().await? {
        match item {
            sqlx::Either::Right(row) => current.rows.push(row),
            sqlx::Either::Left(done) => {
                current.rows_affected = done.rows_affected();
                results.push(std::mem::take(&mut current));
            }
        }
    }
    Ok(())
}

/// A connection for writes whose loss in a power failure is harmless (see
/// [`Db::ephemeral`]); dereferences to it. On SQLite it holds the write turn.
#[derive(Debug)]
pub struct EphemeralConn(EphemeralInner);

#[derive(Debug)]
enum EphemeralInner {
    Pool(PoolConnection<Any>),
    Sqlite(OwnedMutexGuard<Writers>),
}

impl std::ops::Deref for EphemeralConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            EphemeralInner::Pool(c) => c,
            EphemeralInner::Sqlite(w) => &w.ephemeral,
        }
    }
}

impl std::ops::DerefMut for EphemeralConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            EphemeralInner::Pool(c) => c,
            EphemeralInner::Sqlite(w) => &mut w.ephemeral,
        }
    }
}

/// SQLite: connections for the reads of every guest flow, handed out without the
/// pool's ping on return (a read dropped mid-statement resets its statement).
#[derive(Debug)]
struct Readers {
    free: std::sync::Mutex<Vec<AnyConnection>>,
    permits: Arc<Semaphore>,
}

/// How many SQLite connections serve [`Db::read`].
const SQLITE_READERS: usize = 4;

/// A connection for reads (see [`Db::read`]); dereferences to it.
#[derive(Debug)]
pub struct ReadConn(ReadInner);

#[derive(Debug)]
enum ReadInner {
    Pool(PoolConnection<Any>),
    Sqlite {
        conn: Option<AnyConnection>,
        readers: Arc<Readers>,
        _permit: OwnedSemaphorePermit,
    },
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        // Back on the free list before the permit is released.
        if let ReadInner::Sqlite { conn, readers, .. } = &mut self.0 {
            if let Some(c) = conn.take() {
                readers
                    .free
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c);
            }
        }
    }
}

impl std::ops::Deref for ReadConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            ReadInner::Pool(c) => c,
            ReadInner::Sqlite { conn, .. } => conn.as_ref().expect("held until drop"),
        }
    }
}

impl std::ops::DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            ReadInner::Pool(c) => c,
            ReadInner::Sqlite { conn, .. } => conn.as_mut().expect("held until drop"),
        }
    }
}

/// A pool of connections to the verifier's database (and, on SQLite, the connections
/// this process writes on and those its guest flows read on).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite only: the write connections behind the write turn.
    writers: Option<Arc<Mutex<Writers>>>,
    /// SQLite only: the connections of [`Db::read`].
    readers: Option<Arc<Readers>>,
    /// SQLite files only: the group commit of [`Tx::commit`].
    sync: Option<Arc<GroupSync>>,
    backend: Backend,
    /// The audit key, once loaded ([`crate::store::audit::load_key`]); shared by clones.
    audit: Arc<std::sync::RwLock<Option<Arc<AuditKeys>>>>,
}

const SQLITE_PRAGMAS: [&str; 3] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA busy_timeout = 15000",
    "PRAGMA foreign_keys = ON",
];

async fn sqlite_connection(
    opts: &AnyConnectOptions,
    synchronous: &str,
) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect_with(opts).await?;
    for pragma in SQLITE_PRAGMAS {
        conn.execute(pragma).await?;
    }
    conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
        .await?;
    Ok(conn)
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

/// The file behind a normalized SQLite URL (`None` for in-memory databases).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(path.into())
}

/// Owner-only permissions for the database file and its `-wal`/`-shm` companions.
///
/// SQLite creates a missing database file with mode 0644 (less the umask), and its WAL
/// and shared-memory files with the database file's mode. So the file is created here
/// with mode 0600 before SQLite opens it; an existing file (and companions) readable by
/// group or others is narrowed to 0600. `strict`: failing to do so is an error (the
/// serving process, which owns the file); otherwise a warning (read-only tools run by
/// another user).
fn restrict_files(path: &std::path::Path, create: bool, strict: bool) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &std::path::Path, source| DbError::Permissions {
        path: p.display().to_string(),
        source,
    };
    if create {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(path, e)),
        }
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(p.into());
    }
    for f in &files {
        let Ok(meta) = std::fs::metadata(f) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            continue;
        }
        let narrowed = mode & 0o700;
        match std::fs::set_permissions(f, std::fs::Permissions::from_mode(narrowed)) {
            Ok(()) => {}
            Err(e) if strict => return Err(err(f, e)),
            Err(e) => {
                tracing::warn!(file = %f.display(), mode = format!("{mode:o}"), error = %e, "the database file is readable by group or others")
            }
        }
    }
    Ok(())
}

/// How long the first PostgreSQL connection may take before startup fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens and closes one connection directly, so an unreachable server fails within
/// [`CONNECT_TIMEOUT`] with its cause (refused, unknown host, authentication) instead
/// of the pool retrying a refused connection until its acquire timeout and reporting
/// only "pool timed out".
async fn probe(opts: &AnyConnectOptions) -> Result<(), DbError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect_with(opts)).await {
        Err(_) => Err(DbError::ConnectTimeout(CONNECT_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(DbError::Connect(e)),
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Ok(())
        }
    }
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
        let file = match backend {
            Backend::Sqlite => sqlite_path(&url),
            Backend::Postgres => None,
        };
        if let Some(f) = &file {
            restrict_files(f, create, create)?;
        }
        let opts: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
        if backend == Backend::Postgres {
            probe(&opts).await?;
        }
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            // A local file: no connection to test before use (a ping per acquire).
            pool = pool
                .max_connections(8)
                .test_before_acquire(false)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        for pragma in SQLITE_PRAGMAS {
                            conn.execute(pragma).await?;
                        }
                        conn.execute("PRAGMA synchronous = FULL").await?;
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
        // A file's commits are made durable by the group sync; an in-memory database's
        // have nowhere to go.
        let sync = file.clone().map(|f| Arc::new(GroupSync::new(f)));
        let writers = if backend == Backend::Sqlite {
            let durable_mode = if sync.is_some() { "NORMAL" } else { "FULL" };
            let durable = sqlite_connection(&opts, durable_mode)
                .await
                .map_err(DbError::Connect)?;
            let ephemeral = sqlite_connection(&opts, "NORMAL")
                .await
                .map_err(DbError::Connect)?;
            Some(Arc::new(Mutex::new(Writers {
                durable,
                ephemeral,
                open: false,
            })))
        } else {
            None
        };
        let readers = if backend == Backend::Sqlite {
            let mut free = Vec::with_capacity(SQLITE_READERS);
            for _ in 0..SQLITE_READERS {
                free.push(
                    sqlite_connection(&opts, "FULL")
                        .await
                        .map_err(DbError::Connect)?,
                );
            }
            Some(Arc::new(Readers {
                free: std::sync::Mutex::new(free),
                permits: Arc::new(Semaphore::new(SQLITE_READERS)),
            }))
        } else {
            None
        };
        if let Some(f) = &file {
            // The companions exist now (WAL mode); SQLite gives them the file's mode.
            restrict_files(f, false, create)?;
        }
        Ok(Self {
            pool,
            writers,
            readers,
            sync: if backend == Backend::Sqlite {
                sync
            } else {
                None
            },
            backend,
            audit: Arc::default(),
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

    /// The connection for writes whose loss in a power failure is harmless: a new
    /// challenge session (the guest asks again). On SQLite it commits without an fsync
    /// (`synchronous = NORMAL` in WAL mode: the commit survives a crash of the process,
    /// and the next durable commit flushes it), holding the write turn; everything that
    /// releases or records anything uses [`Db::begin`], which fsyncs. PostgreSQL: a
    /// pool connection. Never call [`Db::begin`] while holding it.
    pub async fn ephemeral(&self) -> Result<EphemeralConn, DbError> {
        Ok(EphemeralConn(match &self.writers {
            Some(w) => {
                let mut w = Arc::clone(w).lock_owned().await;
                w.settle().await;
                EphemeralInner::Sqlite(w)
            }
            None => EphemeralInner::Pool(self.pool.acquire().await?),
        }))
    }

    /// A connection for the reads of a guest flow (SQLite: one of a few dedicated
    /// connections, returned without a ping; PostgreSQL: a pool connection).
    pub async fn read(&self) -> Result<ReadConn, DbError> {
        let Some(r) = &self.readers else {
            return Ok(ReadConn(ReadInner::Pool(self.pool.acquire().await?)));
        };
        let permit = Arc::clone(&r.permits)
            .acquire_owned()
            .await
            .map_err(|_| DbError::Query(sqlx::Error::PoolClosed))?;
        let conn = r.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A permit guarantees a free connection.
        let conn = conn.ok_or(DbError::Corrupt("no free reader connection"))?;
        Ok(ReadConn(ReadInner::Sqlite {
            conn: Some(conn),
            readers: Arc::clone(r),
            _permit: permit,
        }))
    }

    /// Sets the audit key every later transaction appends with.
    pub fn set_audit_keys(&self, keys: Arc<AuditKeys>) {
        *self.audit.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    }

    /// The loaded audit key, if any.
    pub fn audit_keys(&self) -> Option<Arc<AuditKeys>> {
        self.audit.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many `fdatasync` calls the group commit made (SQLite files; 0 otherwise).
    pub fn group_syncs(&self) -> u64 {
        self.sync
            .as_ref()
            .map_or(0, |s| s.syncs.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a write transaction (on SQLite: waits for the write turn, then `BEGIN
    /// IMMEDIATE`). The turn is not reentrant: never call this (or [`Db::ephemeral`])
    /// while holding a [`Tx`].
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let inner = match &self.writers {
            Some(w) => {
                let mut w = Arc::clone(w).lock_owned().await;
                w.settle().await;
                // Set first: if this future is dropped mid-BEGIN, the next holder
                // rolls back whatever it left.
                w.open = true;
                if let Err(e) = w.durable.execute("BEGIN IMMEDIATE").await {
                    w.open = false;
                    return Err(e.into());
                }
                TxInner::Sqlite(w)
            }
            None => TxInner::Pool(self.pool.begin().await?),
        };
        Ok(Tx {
            inner: Some(inner),
            audit: self.audit_keys(),
            sync: self.sync.clone(),
        })
    }

    /// Begins a write transaction as [`Db::begin`] and runs `batch` in it; on SQLite
    /// `BEGIN IMMEDIATE` and the batch go in one round trip. If a statement fails, the
    /// transaction is rolled back and the error returned.
    pub async fn begin_with(&self, batch: Batch<'_>) -> Result<(Tx, Vec<StmtResult>), DbError> {
        batch.check()?;
        let Some(w) = &self.writers else {
            let mut tx = self.begin().await?;
            let results = tx.run(batch).await?;
            return Ok((tx, results));
        };
        let mut w = Arc::clone(w).lock_owned().await;
        w.settle().await;
        // Set first: if this future is dropped mid-batch, the next holder rolls back.
        w.open = true;
        let run = batch
            .run_on(
                &mut w.durable,
                Backend::Sqlite,
                Some("BEGIN IMMEDIATE"),
                None,
            )
            .await;
        match run {
            Ok(mut results) => {
                results.remove(0);
                let tx = Tx {
                    inner: Some(TxInner::Sqlite(w)),
                    audit: self.audit_keys(),
                    sync: self.sync.clone(),
                };
                Ok((tx, results))
            }
            Err((done, e)) => {
                // `done == 0`: BEGIN itself failed, there is nothing to roll back.
                w.open = done > 0;
                w.settle().await;
                Err(e.into())
            }
        }
    }

    /// Closes the pool, waiting for connections to be returned (and for a pending
    /// rollback on SQLite's write connection).
    pub async fn close(&self) {
        if let Some(w) = &self.writers {
            w.lock().await.settle().await;
        }
        self.pool.close().await;
    }
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests;
