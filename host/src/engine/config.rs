//! The `[engine]` section of the runtime config.

use std::time::Duration;

use serde::Deserialize;

/// Limits applied to every invocation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Wall-clock budget of one invocation; past it the guest is interrupted
    /// and the request answers 504 `function_timeout`.
    pub timeout_ms: u64,
    /// Linear-memory cap per instance, in MiB; growing past it fails, and a
    /// guest that cannot cope traps (500 `function_failed`).
    pub memory_limit_mb: u64,
    /// Instances the pool holds: the most invocations that run at once.
    pub max_instances: u32,
    /// Pre-reserve instance memory in a pool (the default, and the fast
    /// path: no mmap per invocation). `false` allocates per instance on
    /// demand, for hosts where reserving the pool's address space up front
    /// is not allowed; `max_instances` still bounds concurrency.
    pub pooling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { timeout_ms: 5_000, memory_limit_mb: 64, max_instances: 256, pooling: true }
    }
}

impl EngineConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}
