//! Typed access to the invocation's shard transaction.
//!
//! Every statement runs inside the one transaction the host opened for this
//! invocation; returning an error response (5xx) or trapping rolls it back.

use crate::bindings::payfn::host::sql::{self as host, Error as SqlError};
pub use crate::bindings::payfn::host::sql::{Dialect, Value};
use crate::error::ApiError;

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int64(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Maps a capability error to the response the caller should see. A
/// constraint violation reaching this point means a rule was checked too
/// late; it still rolls back, so money stays consistent.
pub fn to_api_error(e: SqlError) -> ApiError {
    match e {
        SqlError::Unavailable(m) | SqlError::Conflict(m) => ApiError::shard_unavailable(m),
        SqlError::ConstraintViolation(m) => ApiError::internal(format!("constraint violated: {m}")),
        SqlError::InvalidStatement(m) | SqlError::Other(m) => ApiError::internal(m),
    }
}

/// Rows returned by [`query`], read by column name.
#[derive(Debug)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row { columns: &self.columns, values })
    }

    /// The first row, if any.
    pub fn first(&self) -> Option<Row<'_>> {
        self.iter().next()
    }
}

/// One row of a [`Rows`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl Row<'_> {
    fn value(&self, column: &str) -> Result<&Value, ApiError> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| ApiError::internal(format!("query returned no column `{column}`")))
    }

    pub fn i64(&self, column: &str) -> Result<i64, ApiError> {
        match self.value(column)? {
            Value::Int64(v) => Ok(*v),
            Value::Boolean(b) => Ok(i64::from(*b)),
            other => Err(type_error(column, "integer", other)),
        }
    }

    pub fn text(&self, column: &str) -> Result<String, ApiError> {
        match self.value(column)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(type_error(column, "text", other)),
        }
    }

    /// A blob column. Also accepts text: MariaDB reports a UTF-8 value of a
    /// binary-flagged column as text (docs/ARCHITECTURE.md, SQL capability).
    pub fn bytes(&self, column: &str) -> Result<Vec<u8>, ApiError> {
        match self.value(column)? {
            Value::Blob(v) => Ok(v.clone()),
            Value::Text(v) => Ok(v.clone().into_bytes()),
            other => Err(type_error(column, "blob", other)),
        }
    }

    pub fn opt_text(&self, column: &str) -> Result<Option<String>, ApiError> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(type_error(column, "text or null", other)),
        }
    }
}

fn type_error(column: &str, wanted: &str, got: &Value) -> ApiError {
    ApiError::internal(format!("column `{column}`: expected {wanted}, got {got:?}"))
}

/// Runs a statement returning rows; placeholders are `?`.
pub fn query(statement: &str, params: &[Value]) -> Result<Rows, ApiError> {
    let set = host::query(statement, params).map_err(to_api_error)?;
    Ok(Rows { columns: set.columns, rows: set.rows })
}

/// Runs a statement and returns the number of rows it changed.
pub fn execute(statement: &str, params: &[Value]) -> Result<u64, ApiError> {
    host::execute(statement, params).map_err(to_api_error)
}

/// Writes sent to the shard together, in order: one host call for all of
/// them and, on a database server, one network round trip instead of one
/// per statement. A step reads first, then collects its writes here and
/// runs them once.
///
/// Each write states how many rows it must change. Anything else is a bug
/// (an INSERT changes the rows it lists, or fails), so [`Batch::run`]
/// asserts it: the trap rolls the invocation back. So is a batch with
/// writes that is dropped without being run or [discarded](Batch::discard):
/// its writes would be lost without a word, so the drop traps too.
#[derive(Debug, Default)]
pub struct Batch {
    statements: Vec<host::Statement>,
    expected: Vec<u64>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write that must change exactly `rows` rows.
    pub fn push(&mut self, statement: impl Into<String>, params: Vec<Value>, rows: u64) {
        self.statements.push(host::Statement { sql: statement.into(), params });
        self.expected.push(rows);
    }

    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Runs the writes. On an error the ones before it stay in the
    /// transaction; the error maps to a 5xx (or the caller returns one), so
    /// the host rolls them back.
    pub fn run(mut self) -> Result<(), ApiError> {
        let statements = std::mem::take(&mut self.statements);
        if statements.is_empty() {
            return Ok(());
        }
        let changed = host::execute_batch(&statements).map_err(to_api_error)?;
        assert_eq!(
            changed.len(),
            self.expected.len(),
            "a batch answered {} of its statements",
            changed.len()
        );
        for ((statement, expected), changed) in statements.iter().zip(&self.expected).zip(&changed) {
            assert_eq!(changed, expected, "`{}` changed {changed} rows, not {expected}", statement.sql);
        }
        Ok(())
    }

    /// Drops the writes on purpose (the step gives up before writing).
    pub fn discard(mut self) {
        self.statements.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let unrun = self.statements.len();
        if unrun > 0 && !std::thread::panicking() {
            panic!("a batch of {unrun} writes was dropped without run() or discard(): they would be lost");
        }
    }
}

/// The shard's dialect.
pub fn dialect() -> Dialect {
    host::shard_dialect()
}

/// `SELECT ... FOR UPDATE` where the dialect has row locks. SQLite needs none:
/// its write transaction already excludes every other writer.
pub fn for_update_suffix() -> &'static str {
    match dialect() {
        Dialect::Sqlite => "",
        Dialect::Mysql | Dialect::Postgres => " FOR UPDATE",
    }
}

/// `FOR UPDATE SKIP LOCKED` where the dialect has it: several workers (hosts)
/// claim disjoint rows. On SQLite the write transaction is already exclusive.
pub fn skip_locked_suffix() -> &'static str {
    match dialect() {
        Dialect::Sqlite => "",
        Dialect::Mysql | Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
    }
}
