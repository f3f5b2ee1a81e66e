//! MariaDB / MySQL shards.
//!
//! Sessions run at READ COMMITTED (as PostgreSQL does by default): steps
//! lock what they change with `FOR UPDATE`, and REPEATABLE READ's gap locks
//! would only add deadlocks. Tables use a binary collation, so ids and
//! idempotency keys compare byte for byte, as on the other dialects.
//!
//! One consequence: the wire protocol flags text in a binary collation as
//! binary, so values of binary-flagged columns are returned as `text` when
//! they are valid UTF-8 and as `blob` otherwise. Readers of blob columns
//! accept both (the SDK's `Row::bytes`, the host's idempotency lookup).

use std::borrow::Cow;
use std::fmt::Write;
use std::str::FromStr;

use sqlx::error::DatabaseError;
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlDatabaseError, MySqlQueryResult, MySqlRow,
};
use sqlx::pool::Pool;
use sqlx::{Arguments, ConnectOptions, Executor, Row};

use super::placeholders::{self, Syntax};
use super::runtime_config::ServerConfig;
use super::server::{pool_options, Driver};
use super::{batch, errors, values};
use crate::bindings::sql::{Error as SqlError, Value};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/mysql");

/// The MariaDB/MySQL [`Driver`].
pub struct Mysql;

/// Below this buffer pool, the operator is warned (MariaDB's default is
/// 128 MiB, less than one 100,000-payment merchant's rows and indexes).
const SMALL_BUFFER_POOL: u64 = 1 << 30;

impl Driver for Mysql {
    type Db = MySql;
    const ERROR_ABORTS_TRANSACTION: bool = false;

    /// Connections run with `autocommit = 0` (see [`Driver::pool`] below):
    /// the server opens a transaction at the first statement, and every one
    /// the host opens ends in COMMIT or ROLLBACK (server.rs, `ServerTx`).
    fn begin_statement(write: bool) -> Option<&'static str> {
        if write {
            None
        } else {
            Some("START TRANSACTION READ ONLY")
        }
    }

    fn snapshot_statements() -> &'static [&'static str] {
        // Sessions run READ COMMITTED; a consistent snapshot needs
        // REPEATABLE READ (set for the next transaction only).
        &[
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
        ]
    }

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn pool(url: &str, config: &ServerConfig) -> anyhow::Result<Pool<MySql>> {
        let options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").disable_statement_logging();
        // innodb_lock_wait_timeout is in whole seconds.
        let lock_secs = config.lock_timeout_ms.div_ceil(1000).max(1);
        let statement_ms = config.statement_timeout_ms;
        Ok(pool_options::<MySql>(config)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                    conn.execute(
                        format!(
                            "SET SESSION innodb_lock_wait_timeout = {lock_secs}, time_zone = '+00:00', \
                             autocommit = 0"
                        )
                        .as_str(),
                    )
                    .await?;
                    // MariaDB's statement limit is max_statement_time (seconds);
                    // MySQL's is max_execution_time (milliseconds, SELECT only).
                    let mariadb =
                        format!("SET SESSION max_statement_time = {}", statement_ms as f64 / 1000.0);
                    if conn.execute(mariadb.as_str()).await.is_err() {
                        conn.execute(format!("SET SESSION max_execution_time = {statement_ms}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options))
    }

    const SETTING: (&'static str, fn(&str) -> Option<String>) =
        ("SELECT CAST(@@innodb_buffer_pool_size AS CHAR)", |value| {
            let bytes: u64 = value.parse().ok()?;
            (bytes < SMALL_BUFFER_POOL).then(|| {
                format!(
                    "MariaDB's innodb_buffer_pool_size is {} MiB: less than the indexes of a busy shard, so \
                     reads go to disk as the tables grow; give it most of the server's memory",
                    bytes >> 20
                )
            })
        });
    const SYNTAX: Syntax = placeholders::MYSQL;

    fn statement(statement: &str) -> Cow<'_, str> {
        Cow::Borrowed(statement)
    }

    /// Text and bytes as hex (`_utf8mb4 X'…'`, `X'…'`): no value can close
    /// its literal, whatever the session's `sql_mode` says about
    /// backslashes. Negative numbers in parentheses.
    fn literal(value: &Value, out: &mut String) -> Result<(), SqlError> {
        match value {
            Value::Null => out.push_str("NULL"),
            Value::Int64(v) if *v < 0 => write!(out, "({v})").expect("writing to a String"),
            Value::Int64(v) => write!(out, "{v}").expect("writing to a String"),
            Value::Float64(v) if !v.is_finite() => {
                return Err(SqlError::InvalidStatement(format!("MariaDB cannot store the number {v}")))
            }
            Value::Float64(v) if v.is_sign_negative() => write!(out, "({v:e})").expect("writing to a String"),
            Value::Float64(v) => write!(out, "{v:e}").expect("writing to a String"),
            Value::Text(v) => batch::push_hex_literal(out, "_utf8mb4 X'", v.as_bytes(), "'"),
            Value::Blob(v) => batch::push_hex_literal(out, "X'", v, "'"),
            Value::Boolean(v) => out.push_str(if *v { "TRUE" } else { "FALSE" }),
        }
        Ok(())
    }

    fn bind(params: Vec<Value>) -> Result<MySqlArguments, SqlError> {
        values::bind::<MySql>(params, |args| args.add(None::<i64>))
    }

    fn decode_row(row: &MySqlRow) -> Result<Vec<Value>, SqlError> {
        let map = |e| errors::map(e, Self::classify);
        values::decode_row(row, map, |i, type_name| {
            Ok(Some(match type_name {
                "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
                    Value::Int64(row.try_get(i).map_err(map)?)
                }
                "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
                | "BIGINT UNSIGNED" => {
                    let v: u64 = row.try_get(i).map_err(map)?;
                    Value::Int64(i64::try_from(v).map_err(|_| {
                        SqlError::InvalidStatement(format!("{v} does not fit a signed 64-bit integer"))
                    })?)
                }
                "BOOLEAN" => Value::Boolean(row.try_get(i).map_err(map)?),
                "FLOAT" | "DOUBLE" => Value::Float64(row.try_get(i).map_err(map)?),
                // SUM() and exact numerics: whole numbers stay integers.
                "DECIMAL" => {
                    let v: rust_decimal::Decimal = row.try_get(i).map_err(map)?;
                    values::decimal(v)
                }
                "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET"
                | "JSON" => Value::Text(row.try_get(i).map_err(map)?),
                // The protocol flags text in a binary collation (utf8mb4_bin,
                // which the migrations use) exactly like binary strings, so
                // these come back as text when they are UTF-8.
                "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
                    let bytes: Vec<u8> = row.try_get(i).map_err(map)?;
                    match String::from_utf8(bytes) {
                        Ok(text) => Value::Text(text),
                        Err(e) => Value::Blob(e.into_bytes()),
                    }
                }
                _ => return Ok(None),
            }))
        })
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    fn classify(error: &(dyn DatabaseError + 'static)) -> Option<SqlError> {
        let number = error.try_downcast_ref::<MySqlDatabaseError>()?.number();
        let message = error.message().to_string();
        match number {
            // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT: another transaction holds
            // the rows; the caller may retry. ER_LOCK_NOWAIT (MySQL's NOWAIT;
            // MariaDB answers 1205), ER_XA_RBDEADLOCK.
            1213 | 1205 | 3572 | 1614 => Some(SqlError::Conflict(message)),
            // MariaDB's and MySQL's statement-time limits; server shutdown;
            // too many connections (server-wide, per user, per hour);
            // connection killed, query interrupted, idle session closed;
            // network read/write errors reported by the server; out of
            // memory, disk full, an error during COMMIT; a read-only server
            // (a replica after a failover); too many concurrent transactions;
            // a Galera node not ready (ER_UNKNOWN_COM_ERROR, "WSREP has not
            // yet prepared node"). All pass; none is the statement's fault.
            1969 | 3024 | 1053 | 1040 | 1203 | 1226 | 1927 | 1317 | 4031 | 1152 | 1158 | 1159 | 1160
            | 1161 | 1037 | 1038 | 1041 | 1021 | 1180 | 1290 | 1836 | 1637 | 1047 => {
                Some(SqlError::Unavailable(message))
            }
            // MariaDB's CHECK failure (MySQL's 3819 sqlx sorts itself).
            4025 => Some(SqlError::ConstraintViolation(message)),
            _ => None,
        }
    }
}
