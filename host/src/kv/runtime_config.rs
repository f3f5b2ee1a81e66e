//! The `[kv]` section of the runtime config.

use std::path::PathBuf;

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
        /// `redis://host:port/db`, or `rediss://` for TLS; a password goes
        /// in the URL (`rediss://:secret@host:6380/0`), so prefer `url_env`.
        url: Option<String>,
        /// The name of an environment variable holding the URL instead.
        /// Exactly one of `url` / `url_env`.
        url_env: Option<String>,
        /// `rediss://` only: a PEM file of the CA to trust instead of the
        /// system's roots (a private CA).
        ca_file: Option<PathBuf>,
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
