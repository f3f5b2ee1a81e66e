//! The embedded backend: one SQLite file per shard, migrated at start.
//!
//! Statements run inline on the calling task through rusqlite: a SQLite
//! statement on a local file takes microseconds, far less than the two
//! thread hand-offs per statement a worker-thread driver costs (sqlx's
//! SQLite driver spent more CPU on futex wake-ups than on SQL; see
//! docs/BENCHMARKS.md). What may wait (taking the file's write lock, the
//! fsync of a COMMIT) runs under `block_in_place`, and a progress handler
//! interrupts any statement past its deadline, so a runaway query cannot
//! hold a worker thread.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::{Value as SqliteValue, ValueRef};
use rusqlite::{ffi, Connection, ErrorCode, OpenFlags};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::ConnectOptions;

use super::checkpoint::Checkpointer;
use super::group_commit::{GroupWriter, Member};
use super::placeholders;

use crate::bindings::sql::{Error as SqlError, RowSet, Value};

static MIGRATOR: Migrator = sqlx::migrate!("../infra/migrations/sqlite");

/// How long a statement waits for a lock before reporting the shard busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `begin` waits for the writer or a reader.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one statement may run before it is interrupted.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection: every statement the steps use.
const STATEMENT_CACHE: usize = 128;

/// Options for a SQLite file that must not lose a commit: WAL, and
/// `synchronous = FULL` so a commit that answered 2xx survives power loss.
/// Used to migrate the file (through sqlx). Creates the file's directory.
fn durable_options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT))
}

/// Creates the file if needed, applies `migrator` (through sqlx, on a
/// connection of its own) and opens the file's one writer with automatic
/// checkpoints off: a [`Checkpointer`] runs them off the writer's path.
/// The shards and the embedded event log open their files this way.
pub(crate) async fn migrate_and_open_writer(path: &Path, migrator: &Migrator) -> anyhow::Result<Connection> {
    let mut conn = durable_options(path)?.create_if_missing(true).connect().await?;
    migrator.run(&mut conn).await?;
    sqlx::Connection::close(conn).await?;
    let writer = connect(path, false)?;
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(writer)
}

/// The migration versions applied to the file at `path`; none if there is
/// no file yet, or no migration table in it.
pub(crate) fn applied_in(path: &Path) -> anyhow::Result<Vec<i64>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = connect(path, true)?;
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        [],
        |row| row.get(0),
    )?;
    if !has_table {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")?;
    let versions = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok(versions)
}

/// Opens a shard connection with the same settings as [`durable_options`],
/// foreign keys on and a statement deadline.
pub(crate) fn connect(path: &Path, read_only: bool) -> anyhow::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoint sub-journals (one per group member, see group_commit) in
    // memory: they only serve ROLLBACK TO, never recovery (the WAL does),
    // and on disk they cost a 4 KiB pwrite per page a member first touches,
    // more than the WAL's own writes.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

pub struct SqliteShard {
    path: PathBuf,
    /// One connection: SQLite admits one writer, so writers queue here, in
    /// FIFO order, instead of spinning on SQLITE_BUSY, and commit in groups.
    writer: GroupWriter,
    readers: Arc<Readers>,
    /// Copies the WAL into the file off the writer's path (checkpoint.rs).
    _checkpointer: Checkpointer,
}

pub type SqliteTx = Transaction;

impl SqliteShard {
    /// Creates and migrates the file if needed, then opens the writer and
    /// `readers` read-only connections.
    pub async fn open(path: &Path, readers: u32) -> anyhow::Result<Self> {
        let writer = GroupWriter::new(migrate_and_open_writer(path, &MIGRATOR).await?, ACQUIRE_TIMEOUT);
        let readers = (0..readers.max(1)).map(|_| connect(path, true)).collect::<anyhow::Result<_>>()?;
        let checkpointer = Checkpointer::start(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            readers: Arc::new(Readers::new(readers)),
            _checkpointer: checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction joins the writer's current group (see
    /// [`group_commit`](super::group_commit)); a read one takes a reader.
    pub async fn begin(&self, write: bool) -> Result<SqliteTx, SqlError> {
        if write {
            Ok(Transaction::Write(self.writer.begin().await?))
        } else {
            Ok(Transaction::Read(Readers::begin(&self.readers).await?))
        }
    }

    /// A write transaction that sees durable data only (see
    /// [`GroupWriter::begin_durable`]).
    pub async fn begin_durable(&self) -> Result<SqliteTx, SqlError> {
        Ok(Transaction::Write(self.writer.begin_durable().await?))
    }

    /// The migration versions applied to the file.
    pub async fn applied_migrations(&self) -> anyhow::Result<Vec<i64>> {
        let mut tx = Readers::begin(&self.readers).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let rows = query(
            tx.conn(),
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            Vec::new(),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        rows.rows
            .into_iter()
            .map(|row| match row.as_slice() {
                [Value::Int64(v)] => Ok(*v),
                other => anyhow::bail!("unexpected migration row {other:?}"),
            })
            .collect()
    }

    pub async fn ping(&self) -> bool {
        match Readers::begin(&self.readers).await {
            Ok(mut tx) => query(tx.conn(), "SELECT 1", Vec::new()).is_ok(),
            Err(_) => false,
        }
    }

    /// `(COMMITs, members acknowledged)` of the writer's groups so far.
    pub fn group_commits(&self) -> (u64, u64) {
        self.writer.counts().get()
    }

    /// The writer and the readers: how many are in a transaction now.
    pub fn pool_use(&self) -> super::PoolUse {
        let readers = u32::try_from(self.readers.count).unwrap_or(u32::MAX);
        let free = u32::try_from(self.readers.permits.available_permits()).unwrap_or(readers);
        let in_use = readers.saturating_sub(free) + u32::from(self.writer.busy());
        let all = readers.saturating_add(1);
        super::PoolUse { in_use, open: all, max: all }
    }
}

/// A transaction on one SQLite shard: a member of the writer's group, or
/// a read-only transaction on a reader.
pub enum Transaction {
    Write(Member),
    Read(ReadTx),
}

impl Transaction {
    pub async fn query(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        match self {
            Transaction::Write(member) => {
                let rows = query(member.conn()?, statement, params);
                if let Err(e) = &rows {
                    member.check(e);
                }
                rows
            }
            Transaction::Read(tx) => query(tx.conn(), statement, params),
        }
    }

    /// [`query`](Self::query) for a statement that reads many rows (a
    /// count over one merchant's rows): run where it may block, so the
    /// worker's other tasks (requests) move to another thread meanwhile.
    pub async fn scan(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        match self {
            Transaction::Write(member) => {
                let rows = blocking(|| query(member.conn()?, statement, params));
                if let Err(e) = &rows {
                    member.check(e);
                }
                rows
            }
            Transaction::Read(tx) => blocking(|| query(tx.conn(), statement, params)),
        }
    }

    pub async fn execute(&mut self, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        match self {
            Transaction::Write(member) => {
                let done = execute(member.conn()?, statement, params);
                if let Err(e) = &done {
                    member.check(e);
                }
                done
            }
            Transaction::Read(tx) => execute(tx.conn(), statement, params),
        }
    }

    /// For a write: returns once the group holding it is durably committed.
    pub async fn commit(self) -> Result<(), SqlError> {
        match self {
            Transaction::Write(member) => member.commit().await,
            Transaction::Read(tx) => {
                drop(tx);
                Ok(())
            }
        }
    }

    pub async fn rollback(self) {
        match self {
            Transaction::Write(member) => member.rollback(),
            Transaction::Read(tx) => drop(tx),
        }
    }
}

/// The read-only connections, handed out one per read transaction.
struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
    count: usize,
}

impl Readers {
    fn new(connections: Vec<Connection>) -> Self {
        let count = connections.len();
        let permits = tokio::sync::Semaphore::new(count);
        Self { idle: Mutex::new(connections), permits, count }
    }

    async fn begin(readers: &Arc<Readers>) -> Result<ReadTx, SqlError> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, readers.permits.acquire())
            .await
            .map_err(|_| SqlError::Unavailable("every reader of the shard stayed busy".into()))?
            .map_err(|_| SqlError::Unavailable("the shard is closed".into()))?;
        let conn = readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(conn) = conn else {
            return Err(SqlError::Unavailable("no idle reader despite a permit".into()));
        };
        permit.forget();
        // A read transaction: one snapshot for every statement of it.
        let mut tx = ReadTx { readers: readers.clone(), conn: Some(conn) };
        tx.conn().execute_batch("BEGIN").map_err(map_error)?;
        Ok(tx)
    }
}

/// A read transaction on a borrowed reader; returned to the pool on drop.
pub struct ReadTx {
    readers: Arc<Readers>,
    conn: Option<Connection>,
}

impl ReadTx {
    fn conn(&mut self) -> &Connection {
        self.conn.as_ref().expect("a reader is held until drop")
    }
}

impl Drop for ReadTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Reads change nothing: ending the snapshot is all there is to do.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            self.readers.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            self.readers.permits.add_permits(1);
        }
    }
}

/// Runs `f` where it may block (a lock wait, an fsync): on a multi-thread
/// runtime the worker's other tasks move to another thread meanwhile.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `statement` on `conn` with `params`, returning every row.
fn query(conn: &Connection, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
    let _deadline = Deadline::arm(conn);
    let mut stmt = prepare(conn, statement)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
    let declared: Vec<Option<String>> =
        stmt.columns().iter().map(|c| c.decl_type().map(str::to_ascii_uppercase)).collect();
    let mut rows =
        stmt.query(rusqlite::params_from_iter(params.into_iter().map(to_sqlite))).map_err(map_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(map_error)? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, declared) in declared.iter().enumerate() {
            values.push(from_sqlite(row.get_ref(i).map_err(map_error)?, declared.as_deref(), &columns[i])?);
        }
        out.push(values);
    }
    // Like the other dialects: no rows, no column names.
    let columns = if out.is_empty() { Vec::new() } else { columns };
    Ok(RowSet { columns, rows: out })
}

/// Runs `statement` on `conn` with `params`, returning the rows it changed.
/// A statement that yields rows (`INSERT ... RETURNING`) runs to the end.
fn execute(conn: &Connection, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
    let _deadline = Deadline::arm(conn);
    let mut stmt = prepare(conn, statement)?;
    let params = rusqlite::params_from_iter(params.into_iter().map(to_sqlite));
    if stmt.column_count() == 0 {
        return stmt.execute(params).map(|n| n as u64).map_err(map_error);
    }
    let mut rows = stmt.query(params).map_err(map_error)?;
    while rows.next().map_err(map_error)?.is_some() {}
    Ok(conn.changes())
}

/// `statement`, compiled or from the cache. SQLite compiles the first
/// statement of a text and ignores the rest, so a second one is refused
/// here rather than silently dropped (the servers refuse it themselves).
fn prepare<'c>(conn: &'c Connection, statement: &str) -> Result<rusqlite::CachedStatement<'c>, SqlError> {
    if placeholders::several_statements(statement, placeholders::STANDARD) {
        return Err(SqlError::InvalidStatement(
            "the text holds more than one statement; run each on its own".into(),
        ));
    }
    conn.prepare_cached(statement).map_err(map_error)
}

/// Interrupts the statement running on `conn` once [`STATEMENT_DEADLINE`]
/// has passed, until dropped.
struct Deadline<'a>(&'a Connection);

impl<'a> Deadline<'a> {
    fn arm(conn: &'a Connection) -> Self {
        let deadline = Instant::now() + STATEMENT_DEADLINE;
        // Checked every 10,000 virtual machine steps: negligible, and a
        // statement cannot run long between two checks.
        conn.progress_handler(10_000, Some(move || Instant::now() > deadline));
        Deadline(conn)
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        self.0.progress_handler(0, None::<fn() -> bool>);
    }
}

fn to_sqlite(value: Value) -> SqliteValue {
    match value {
        Value::Null => SqliteValue::Null,
        Value::Int64(v) => SqliteValue::Integer(v),
        Value::Float64(v) => SqliteValue::Real(v),
        Value::Text(v) => SqliteValue::Text(v),
        Value::Blob(v) => SqliteValue::Blob(v),
        Value::Boolean(v) => SqliteValue::Integer(i64::from(v)),
    }
}

/// A cell as a WIT value: by what SQLite stored, except that a BOOLEAN
/// column reads as a boolean and a TEXT column as text, whatever is in it.
fn from_sqlite(cell: ValueRef<'_>, declared: Option<&str>, column: &str) -> Result<Value, SqlError> {
    let texty = declared.is_some_and(|t| t.contains("CHAR") || t.contains("TEXT") || t.contains("CLOB"));
    Ok(match cell {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) if declared == Some("BOOLEAN") => Value::Boolean(v != 0),
        ValueRef::Integer(v) if texty => Value::Text(v.to_string()),
        ValueRef::Integer(v) => Value::Int64(v),
        ValueRef::Real(v) if texty => Value::Text(v.to_string()),
        ValueRef::Real(v) => Value::Float64(v),
        ValueRef::Text(v) => Value::Text(
            String::from_utf8(v.to_vec())
                .map_err(|_| super::errors::unsupported(column, "non-UTF-8 TEXT"))?,
        ),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    })
}

/// Sorts a rusqlite error into the WIT error the component can act on.
pub(super) fn map_error(e: rusqlite::Error) -> SqlError {
    let message = e.to_string();
    match &e {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::ConstraintViolation => SqlError::ConstraintViolation(message),
            // Another writer held the lock past the busy timeout.
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => SqlError::Conflict(message),
            ErrorCode::OperationInterrupted => {
                SqlError::InvalidStatement(format!("statement ran past {STATEMENT_DEADLINE:?}: {message}"))
            }
            ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::FileLockingProtocolFailed => SqlError::Unavailable(message),
            _ if failure.extended_code == ffi::SQLITE_ERROR => SqlError::InvalidStatement(message),
            _ => SqlError::Other(message),
        },
        rusqlite::Error::InvalidParameterCount(..)
        | rusqlite::Error::InvalidParameterName(_)
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::MultipleStatement
        | rusqlite::Error::ExecuteReturnedResults
        | rusqlite::Error::InvalidQuery => SqlError::InvalidStatement(message),
        _ => SqlError::Other(message),
    }
}
