//! PostgreSQL shards.
//!
//! Statements carry `?` placeholders like on every dialect; they are
//! numbered (`$1, $2, …`) here. NULL parameters are sent untyped, so the
//! server infers their type from the column, as it does for `?` elsewhere.

use std::borrow::Cow;
use std::fmt::Write;
use std::str::FromStr;

use sqlx::encode::IsNull;
use sqlx::error::{BoxDynError, DatabaseError};
use sqlx::pool::Pool;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgConnectOptions, PgDatabaseError, PgQueryResult, PgRow, PgTypeInfo,
    Postgres as Pg,
};
use sqlx::{Arguments, ConnectOptions, Encode, Row, Type};

use super::placeholders::{self, Syntax};
use super::runtime_config::ServerConfig;
use super::server::{pool_options, Driver};
use super::{batch, errors, values};
use crate::bindings::sql::{Error as SqlError, Value};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/postgres");

/// The PostgreSQL [`Driver`].
pub struct Postgres;

impl Driver for Postgres {
    type Db = Pg;
    const ERROR_ABORTS_TRANSACTION: bool = true;

    fn begin_statement(write: bool) -> Option<&'static str> {
        Some(if write { "BEGIN" } else { "BEGIN READ ONLY" })
    }

    fn snapshot_statements() -> &'static [&'static str] {
        &["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"]
    }

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn pool(url: &str, config: &ServerConfig) -> anyhow::Result<Pool<Pg>> {
        // Session settings travel in the startup packet: no extra round trip.
        let statement = config.statement_timeout_ms.to_string();
        let lock = config.lock_timeout_ms.to_string();
        let options = PgConnectOptions::from_str(url)?
            .application_name("payfn")
            .options([
                ("statement_timeout", statement.as_str()),
                ("lock_timeout", lock.as_str()),
                ("TimeZone", "UTC"),
                // Backslashes in '…' are characters (the default since 9.1,
                // pinned: batch.rs quotes text relying on it).
                ("standard_conforming_strings", "on"),
            ])
            .disable_statement_logging();
        Ok(pool_options::<Pg>(config).connect_lazy_with(options))
    }

    const SETTING: (&'static str, fn(&str) -> Option<String>) =
        ("SELECT current_setting('autovacuum')", |value| {
            (value == "off").then(|| {
                "PostgreSQL runs with autovacuum off: dead row versions of every update pile up and every \
             statement slows as the tables grow; turn it on"
                    .to_string()
            })
        });
    const SYNTAX: Syntax = placeholders::STANDARD;

    fn statement(statement: &str) -> Cow<'_, str> {
        placeholders::numbered(statement)
    }

    /// Quoted and cast to the type sqlx declares for a bound parameter;
    /// text with its quotes doubled (the session has
    /// `standard_conforming_strings = on`, so backslashes are characters).
    fn literal(value: &Value, out: &mut String) -> Result<(), SqlError> {
        match value {
            Value::Null => out.push_str("NULL"),
            Value::Int64(v) => write!(out, "'{v}'::int8").expect("writing to a String"),
            Value::Float64(v) if v.is_nan() => out.push_str("'NaN'::float8"),
            Value::Float64(v) if v.is_infinite() => {
                out.push_str(if *v > 0.0 { "'Infinity'::float8" } else { "'-Infinity'::float8" })
            }
            Value::Float64(v) => write!(out, "'{v:e}'::float8").expect("writing to a String"),
            Value::Text(v) if v.contains('\0') => {
                return Err(SqlError::InvalidStatement(
                    "PostgreSQL text cannot contain NUL characters".into(),
                ))
            }
            Value::Text(v) => {
                out.push('\'');
                for c in v.chars() {
                    if c == '\'' {
                        out.push('\'');
                    }
                    out.push(c);
                }
                out.push_str("'::text");
            }
            Value::Blob(v) => batch::push_hex_literal(out, "'\\x", v, "'::bytea"),
            Value::Boolean(v) => out.push_str(if *v { "TRUE" } else { "FALSE" }),
        }
        Ok(())
    }

    fn bind(params: Vec<Value>) -> Result<PgArguments, SqlError> {
        values::bind::<Pg>(params, |args| args.add(UntypedNull))
    }

    fn decode_row(row: &PgRow) -> Result<Vec<Value>, SqlError> {
        let map = |e| errors::map(e, Self::classify);
        values::decode_row(row, map, |i, type_name| {
            Ok(Some(match type_name {
                "INT8" => Value::Int64(row.try_get(i).map_err(map)?),
                "INT4" => Value::Int64(row.try_get::<i32, _>(i).map_err(map)?.into()),
                "INT2" => Value::Int64(row.try_get::<i16, _>(i).map_err(map)?.into()),
                "BOOL" => Value::Boolean(row.try_get(i).map_err(map)?),
                "FLOAT8" => Value::Float64(row.try_get(i).map_err(map)?),
                "FLOAT4" => Value::Float64(row.try_get::<f32, _>(i).map_err(map)?.into()),
                // SUM(bigint) is NUMERIC: whole numbers stay integers.
                "NUMERIC" => values::decimal(row.try_get(i).map_err(map)?),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => Value::Text(row.try_get(i).map_err(map)?),
                "BYTEA" => Value::Blob(row.try_get(i).map_err(map)?),
                _ => return Ok(None),
            }))
        })
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn classify(error: &(dyn DatabaseError + 'static)) -> Option<SqlError> {
        let code = error.try_downcast_ref::<PgDatabaseError>()?.code();
        let message = error.message().to_string();
        match code {
            // serialization_failure, deadlock_detected, lock_not_available
            // (lock_timeout, NOWAIT), and the rest of class 40 (transaction
            // rollback) but its integrity-constraint code.
            "40001" | "40P01" | "55P03" => Some(SqlError::Conflict(message)),
            // statement_completion_unknown: the connection went mid-COMMIT.
            "40003" => Some(SqlError::Unavailable(message)),
            "40002" => Some(SqlError::ConstraintViolation(message)),
            _ if code.starts_with("40") => Some(SqlError::Conflict(message)),
            // query_canceled (statement_timeout), connection exceptions,
            // insufficient resources, operator intervention (shutdown),
            // system errors (I/O), a read-only server (a standby after a
            // failover), idle-in-transaction and transaction timeouts.
            "57014" | "25006" | "25P03" | "25P04" => Some(SqlError::Unavailable(message)),
            _ if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code.starts_with("58") =>
            {
                Some(SqlError::Unavailable(message))
            }
            _ => None,
        }
    }
}

/// A NULL parameter without a declared type (OID 0): PostgreSQL infers it
/// from where it is used, so one NULL fits a text or an integer column.
struct UntypedNull;

impl Type<Pg> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl Encode<'_, Pg> for UntypedNull {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}
