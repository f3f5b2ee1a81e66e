//! Time and identifiers.

use std::time::SystemTime;

/// Now, as RFC 3339 UTC with milliseconds: sorts as text, parses everywhere.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A new globally unique id with `prefix`: UUIDv7, so ids sort by creation
/// time and index well on every shard.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
