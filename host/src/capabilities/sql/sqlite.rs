//! The embedded backend: one SQLite file per shard, migrated at start.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Arguments, Column, ConnectOptions, Row, Sqlite};

use super::group_commit::{GroupWriter, Member};

use crate::bindings::sql::{Error as SqlError, RowSet, Value};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/sqlite");

/// How long a statement waits for a lock before reporting the shard busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `begin` waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for a SQLite file that must not lose a commit: WAL, and
/// `synchronous = FULL` so a commit that answered 2xx survives power loss.
/// Shared by the shard files and the embedded event log. Creates the file's
/// directory.
pub fn durable_options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT))
}

pub struct SqliteShard {
    path: PathBuf,
    /// One connection: SQLite admits one writer, so writers queue here, in
    /// FIFO order, instead of spinning on SQLITE_BUSY, and commit in groups.
    writer: GroupWriter,
    readers: SqlitePool,
}

pub type SqliteTx = Transaction;

impl SqliteShard {
    pub async fn open(path: &Path, readers: u32) -> anyhow::Result<Self> {
        let options = durable_options(path)?.foreign_keys(true);
        let mut writer = options.clone().create_if_missing(true).connect().await?;
        MIGRATOR.run(&mut writer).await?;
        let writer = GroupWriter::new(writer, ACQUIRE_TIMEOUT);
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { path: path.to_path_buf(), writer, readers })
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
            Ok(Transaction::Read(self.readers.begin().await.map_err(map_error)?))
        }
    }

    /// The migration versions applied to the file.
    pub async fn applied_migrations(&self) -> anyhow::Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&self.readers)
            .await?)
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.readers).await.is_ok()
    }
}

/// A transaction on one SQLite shard: a member of the writer's group, or
/// a read-only transaction on a reader.
pub enum Transaction {
    Write(Member),
    Read(sqlx::Transaction<'static, Sqlite>),
}

impl Transaction {
    pub async fn query(&mut self, statement: &str, params: Vec<Value>) -> Result<RowSet, SqlError> {
        let query = sqlx::query_with(statement, bind(params)?);
        let rows = match self {
            Transaction::Write(member) => {
                let rows = query.fetch_all(member.conn()?).await.map_err(map_error);
                if let Err(e) = &rows {
                    member.check(e).await;
                }
                rows?
            }
            Transaction::Read(tx) => query.fetch_all(&mut **tx).await.map_err(map_error)?,
        };
        let columns = rows
            .first()
            .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
            .unwrap_or_default();
        let rows = rows.iter().map(decode_row).collect::<Result<_, _>>()?;
        Ok(RowSet { columns, rows })
    }

    pub async fn execute(&mut self, statement: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        let query = sqlx::query_with(statement, bind(params)?);
        let done = match self {
            Transaction::Write(member) => {
                let done = query.execute(member.conn()?).await.map_err(map_error);
                if let Err(e) = &done {
                    member.check(e).await;
                }
                done?
            }
            Transaction::Read(tx) => query.execute(&mut **tx).await.map_err(map_error)?,
        };
        Ok(done.rows_affected())
    }

    /// For a write: returns once the group holding it is durably committed.
    pub async fn commit(self) -> Result<(), SqlError> {
        match self {
            Transaction::Write(member) => member.commit().await,
            Transaction::Read(tx) => tx.commit().await.map_err(map_error),
        }
    }

    pub async fn rollback(self) {
        match self {
            Transaction::Write(member) => member.rollback().await,
            Transaction::Read(tx) => {
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(error = %e, "rollback failed; the connection discards the transaction");
                }
            }
        }
    }
}

fn bind(params: Vec<Value>) -> Result<SqliteArguments<'static>, SqlError> {
    super::values::bind::<Sqlite>(params, |args| args.add(None::<i64>))
}

fn decode_row(row: &SqliteRow) -> Result<Vec<Value>, SqlError> {
    super::values::decode_row(row, map_error, |i, type_name| {
        Ok(Some(match type_name {
            "INTEGER" | "INT8" | "BIGINT" => Value::Int64(row.try_get(i).map_err(map_error)?),
            "BOOLEAN" => Value::Boolean(row.try_get(i).map_err(map_error)?),
            "REAL" => Value::Float64(row.try_get(i).map_err(map_error)?),
            "BLOB" => Value::Blob(row.try_get(i).map_err(map_error)?),
            _ => Value::Text(row.try_get(i).map_err(map_error)?),
        }))
    })
}

/// Sorts a sqlx error into the WIT error the component can act on.
pub(super) fn map_error(e: sqlx::Error) -> SqlError {
    super::errors::map(e, |db| {
        // SQLITE_BUSY / SQLITE_LOCKED: another writer held the lock too long.
        matches!(db.code().as_deref(), Some("5" | "6" | "517"))
            .then(|| SqlError::Conflict(db.message().to_string()))
    })
}
