//! `execute-batch` on a database server: the batch travels as one
//! multi-statement text query, each parameter written into its statement as
//! a literal, so the whole batch costs one network round trip instead of
//! one per statement.
//!
//! Why literals: sqlx sends a prepared statement and waits for its answer
//! before the next, and neither it nor MariaDB's protocol pipelines several
//! prepared executions; a multi-statement text query is the one request
//! that carries several statements. Parameters therefore become text, and
//! the literal forms are chosen so that no value can end its own literal
//! or change how the statement around it parses:
//!
//! - text and bytes are hex on MariaDB (`_utf8mb4 X'…'`, `X'…'`): nothing
//!   but hex digits between the quotes, whatever the value or `sql_mode`;
//! - on PostgreSQL text is quoted with its quotes doubled, and the session
//!   runs with `standard_conforming_strings = on`, so a backslash is just a
//!   character (postgres.rs); bytes are `'\x…'::bytea`;
//! - numbers are typed or parenthesised, so a sign never meets the operator
//!   before it (`a - -1` would start a `--` comment).
//!
//! Types follow the bound path: on PostgreSQL every literal but NULL
//! carries the type sqlx would have declared for the parameter (`int8`,
//! `float8`, `text`, `bytea`, `boolean`), so a batch accepts exactly what
//! `execute` does.

use super::placeholders;
use super::server::Driver;
use crate::bindings::sql::{Error as SqlError, Statement};

/// The batch as one query text, statements separated by `;`.
pub fn render<D: Driver>(statements: &[Statement]) -> Result<String, SqlError> {
    let of = statements.len();
    let size: usize = statements.iter().map(|s| s.sql.len() + 24 * s.params.len() + 2).sum();
    let mut out = String::with_capacity(size);
    for (index, statement) in statements.iter().enumerate() {
        let split = placeholders::split(&statement.sql, D::SYNTAX);
        let refuse = |why: String| in_batch(SqlError::InvalidStatement(why), index, of);
        if split.several_statements {
            return Err(refuse("it holds more than one statement; give each its own entry".into()));
        }
        if split.placeholders() != statement.params.len() {
            return Err(refuse(format!(
                "it has {} placeholders but {} parameters",
                split.placeholders(),
                statement.params.len()
            )));
        }
        if index > 0 {
            out.push_str(";\n");
        }
        let mut params = statement.params.iter();
        for (n, piece) in split.pieces.iter().enumerate() {
            if n > 0 {
                let value = params.next().expect("as many parameters as placeholders, checked above");
                D::literal(value, &mut out).map_err(|e| in_batch(e, index, of))?;
            }
            out.push_str(piece);
        }
    }
    Ok(out)
}

/// `e` with its message prefixed by the position of the statement that
/// failed: "statement 2 of 3: …".
pub fn in_batch(e: SqlError, index: usize, of: usize) -> SqlError {
    let at = |m: String| format!("statement {} of {of}: {m}", index + 1);
    match e {
        SqlError::ConstraintViolation(m) => SqlError::ConstraintViolation(at(m)),
        SqlError::Unavailable(m) => SqlError::Unavailable(at(m)),
        SqlError::InvalidStatement(m) => SqlError::InvalidStatement(at(m)),
        SqlError::Conflict(m) => SqlError::Conflict(at(m)),
        SqlError::Other(m) => SqlError::Other(at(m)),
    }
}

/// `bytes` as hex digits between `open` and `close`, appended to `out`:
/// the dialects' forms of a literal that nothing in it can end.
pub fn push_hex_literal(out: &mut String, open: &str, bytes: &[u8], close: &str) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(open.len() + 2 * bytes.len() + close.len());
    out.push_str(open);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out.push_str(close);
}

#[cfg(test)]
mod tests {
    use super::super::mysql::Mysql;
    use super::super::postgres::Postgres;
    use super::*;
    use crate::bindings::sql::Value;

    fn stmt(sql: &str, params: Vec<Value>) -> Statement {
        Statement { sql: sql.into(), params }
    }

    #[test]
    fn mariadb_values_cannot_leave_their_literals() {
        let batch = [
            stmt(
                "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                vec![
                    Value::Text("it's -- ?; DROP TABLE t; \\'".into()),
                    Value::Blob(vec![0, 39, 92, 255]),
                    Value::Int64(-5),
                    Value::Null,
                    Value::Boolean(true),
                ],
            ),
            stmt("UPDATE t SET a = a - ? WHERE b = '?'", vec![Value::Float64(-0.1)]),
        ];
        assert_eq!(
            render::<Mysql>(&batch).unwrap(),
            "INSERT INTO t VALUES (_utf8mb4 X'69742773202d2d203f3b2044524f50205441424c4520743b205c27', \
             X'00275cff', (-5), NULL, TRUE);\nUPDATE t SET a = a - (-1e-1) WHERE b = '?'"
        );
    }

    #[test]
    fn postgres_values_are_typed_like_bound_parameters() {
        let batch = [stmt(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                Value::Text("it's \\ ?".into()),
                Value::Blob(vec![0, 255]),
                Value::Int64(-5),
                Value::Float64(f64::NAN),
                Value::Null,
                Value::Boolean(false),
            ],
        )];
        assert_eq!(
            render::<Postgres>(&batch).unwrap(),
            "INSERT INTO t VALUES ('it''s \\ ?'::text, '\\x00ff'::bytea, '-5'::int8, 'NaN'::float8, NULL, FALSE)"
        );
    }

    #[test]
    fn a_statement_that_does_not_fit_is_named() {
        let two = [stmt("SELECT 1", vec![]), stmt("DELETE FROM t; DELETE FROM u", vec![])];
        let Err(SqlError::InvalidStatement(why)) = render::<Mysql>(&two) else { panic!("accepted") };
        assert!(why.starts_with("statement 2 of 2: it holds more than one statement"), "{why}");
        let short = [stmt("UPDATE t SET a = ? WHERE b = ?", vec![Value::Int64(1)])];
        let Err(SqlError::InvalidStatement(why)) = render::<Postgres>(&short) else { panic!("accepted") };
        assert_eq!(why, "statement 1 of 1: it has 2 placeholders but 1 parameters");
        let infinite = [stmt("SELECT ?", vec![Value::Float64(f64::INFINITY)])];
        assert!(matches!(render::<Mysql>(&infinite), Err(SqlError::InvalidStatement(_))));
    }
}
