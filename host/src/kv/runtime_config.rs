//! The `[kv]` section of the runtime config.

use serde::Deserialize;

/// Which store backs `kv`, rate limits and idempotency locks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KvConfig {
    /// In-process, per host; the embedded default.
    #[default]
    Memory,
    /// Redis, shared by every host.
    Redis {
        /// `redis://host:port/db`
        url: String,
        /// Prepended to every key: one namespace per application.
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Bound on every call; past it the call fails as unavailable.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_prefix() -> String {
    "payfn:".to_string()
}

fn default_timeout_ms() -> u64 {
    500
}
