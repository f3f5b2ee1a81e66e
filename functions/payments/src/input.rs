//! Request bodies: JSON objects with known fields only.

use payfn_sdk::ApiError;
use serde_json::{Map, Value};

/// The body as a JSON object; an empty body counts as `{}`.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_json("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid_json(format!("the body is not valid JSON: {e}"))),
    }
}

/// Fails with `unknown_field` when `map` has a key outside `allowed`: a
/// misspelt `amout` must not silently mean "the full amount".
pub fn only_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid_field("unknown_field", k, format!("unknown field `{k}`"))),
        None => Ok(()),
    }
}

/// An optional string field of at most `max` characters.
pub fn opt_string(map: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::invalid_field(
            "invalid_field",
            field,
            format!("`{field}` is longer than {max} characters"),
        )),
        Some(_) => {
            Err(ApiError::invalid_field("invalid_field", field, format!("`{field}` must be a string")))
        }
    }
}

/// An optional positive amount field (absent or null means "all of it").
pub fn opt_amount(map: &Map<String, Value>, field: &str) -> Result<Option<i64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => crate::money::parse_amount(v, field).map(Some),
    }
}
