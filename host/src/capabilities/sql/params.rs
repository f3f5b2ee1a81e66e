//! Binding WIT values as statement parameters, the same way on every
//! dialect; only how NULL is sent differs (PostgreSQL wants it untyped).

use sqlx::{Arguments, Database, Encode, Type};

use crate::bindings::sql::{Error as SqlError, Value};

/// `params` bound in order; `null` adds one NULL the dialect's way.
pub fn bind<'q, DB>(
    params: Vec<Value>,
    null: fn(&mut DB::Arguments<'q>) -> Result<(), sqlx::error::BoxDynError>,
) -> Result<DB::Arguments<'q>, SqlError>
where
    DB: Database,
    DB::Arguments<'q>: Default,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Vec<u8>: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
{
    let mut args = DB::Arguments::<'q>::default();
    for value in params {
        let added = match value {
            Value::Null => null(&mut args),
            Value::Int64(v) => args.add(v),
            Value::Float64(v) => args.add(v),
            Value::Text(v) => args.add(v),
            Value::Blob(v) => args.add(v),
            Value::Boolean(v) => args.add(v),
        };
        added.map_err(|e| SqlError::InvalidStatement(format!("cannot bind parameter: {e}")))?;
    }
    Ok(args)
}
