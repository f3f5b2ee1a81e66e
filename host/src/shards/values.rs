//! WIT values in and out of sqlx, the same way on every dialect: binding
//! parameters (only how NULL is sent differs; PostgreSQL wants it untyped)
//! and walking a row (only the mapping of a column type to a value differs).

use rust_decimal::prelude::ToPrimitive;
use sqlx::{Arguments, Column, ColumnIndex, Database, Encode, Row, Type, TypeInfo, ValueRef};

use super::errors;

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

/// One row as WIT values. NULLs are handled here; `cell` reads column `i`
/// given its type name, or returns `None` for a type the capability does
/// not carry.
pub fn decode_row<R: Row>(
    row: &R,
    map: fn(sqlx::Error) -> SqlError,
    cell: impl Fn(usize, &str) -> Result<Option<Value>, SqlError>,
) -> Result<Vec<Value>, SqlError>
where
    usize: ColumnIndex<R>,
{
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i).map_err(map)?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            let type_name = raw.type_info().name().to_string();
            cell(i, &type_name)?.ok_or_else(|| errors::unsupported(row.columns()[i].name(), &type_name))
        })
        .collect()
}

/// A DECIMAL as an integer when it is whole and fits, else as text (exact).
pub fn decimal(v: rust_decimal::Decimal) -> Value {
    if v.fract().is_zero() {
        if let Some(i) = v.to_i64() {
            return Value::Int64(i);
        }
    }
    Value::Text(v.normalize().to_string())
}
