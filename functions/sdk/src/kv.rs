//! The component's key-value namespace.

use crate::bindings::payfn::host::kv;
use crate::error::ApiError;

fn unavailable(e: kv::Error) -> ApiError {
    match e {
        kv::Error::Unavailable(m) => ApiError::new(503, "kv_unavailable", m),
        kv::Error::Invalid(m) => ApiError::internal(m),
    }
}

pub fn get(key: &str) -> Result<Option<Vec<u8>>, ApiError> {
    kv::get(key).map_err(unavailable)
}

pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), ApiError> {
    kv::set(key, value, ttl_ms).map_err(unavailable)
}

pub fn incr(key: &str, delta: i64) -> Result<i64, ApiError> {
    kv::incr(key, delta).map_err(unavailable)
}

pub fn delete(key: &str) -> Result<bool, ApiError> {
    kv::delete(key).map_err(unavailable)
}
