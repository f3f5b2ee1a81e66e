//! The `[kv]` section of the runtime config.

use serde::Deserialize;

/// Which store backs `kv`, rate limits and idempotency locks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KvConfig {
    /// In-process, per host; the embedded default.
    #[default]
    Memory,
}
