//! Sorting sqlx errors into the WIT `error` a component can act on, the
//! same way for every dialect.

use sqlx::error::{DatabaseError, ErrorKind};

use crate::bindings::sql::Error as SqlError;

/// Maps `e`; `dialect` first gets a say on database errors, by their
/// vendor codes (deadlocks, lock timeouts, lost connections).
pub fn map(e: sqlx::Error, dialect: fn(&(dyn DatabaseError + 'static)) -> Option<SqlError>) -> SqlError {
    match &e {
        sqlx::Error::Database(db) => {
            if let Some(mapped) = dialect(db.as_ref()) {
                return mapped;
            }
            let message = db.message().to_string();
            match db.kind() {
                ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation => SqlError::ConstraintViolation(message),
                // SQLSTATE class 23: integrity constraint violation (covers
                // codes sqlx does not sort, such as MariaDB's CHECK failures).
                _ if db.code().is_some_and(|c| c.starts_with("23")) => SqlError::ConstraintViolation(message),
                _ => SqlError::InvalidStatement(message),
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => SqlError::Unavailable(e.to_string()),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. } => SqlError::InvalidStatement(e.to_string()),
        _ => SqlError::Other(e.to_string()),
    }
}

/// Whether `e` is the shard's failure rather than the statement's: the
/// shard is unreachable or out of time (`unavailable`: lost connections,
/// pool timeouts, statement timeouts, a shutdown) or another transaction
/// was in the way (`conflict`: lock wait timeouts, deadlocks,
/// serialization failures). The same work may succeed later; the dialects'
/// `classify` functions sort vendor codes into these two.
pub fn is_transient(e: &SqlError) -> bool {
    matches!(e, SqlError::Unavailable(_) | SqlError::Conflict(_))
}

/// A value the host cannot hand to a component.
pub fn unsupported(column: &str, type_name: &str) -> SqlError {
    SqlError::InvalidStatement(format!(
        "column `{column}` has type {type_name}, which the sql capability does not carry; \
         cast it to an integer, a number or text in the query"
    ))
}
