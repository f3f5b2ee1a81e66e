//! The key-value store with expiry (`[kv]`: in-process memory or Redis).
//!
//! The host keeps its own keys here (rate-limit windows, idempotency locks,
//! under [`host_key`]), and the `kv` capability ([`crate::capabilities::kv`])
//! serves components from it, each in a namespace of its own.

mod memory;
mod redis;
pub mod runtime_config;

use std::sync::Arc;
use std::time::Duration;

use crate::bindings::kv::Error as KvError;

use self::redis::RedisKv;
use memory::MemoryKv;
use runtime_config::KvConfig;

/// The shared store, cheap to clone.
#[derive(Clone)]
pub struct Kv(Arc<Backend>);

enum Backend {
    Memory(MemoryKv),
    // Boxed: the Redis state is much larger than the in-process map handle.
    Redis(Box<RedisKv>),
}

impl Kv {
    /// Builds the backend the runtime config names.
    pub async fn from_config(config: &KvConfig) -> anyhow::Result<Self> {
        Ok(match config {
            KvConfig::Memory => Kv(Arc::new(Backend::Memory(MemoryKv::start()))),
            KvConfig::Redis { url, url_env, ca_file, prefix, timeout_ms } => {
                let url = crate::secrets::url_or_env("[kv]", url.as_ref(), url_env.as_ref())?.ok_or_else(|| {
                    anyhow::anyhow!("runtime config: [kv] backend = \"redis\" needs exactly one of `url` and `url_env`")
                })?;
                let timeout = Duration::from_millis(*timeout_ms);
                let redis = RedisKv::connect(&url, ca_file.as_deref(), prefix, timeout).await?;
                Kv(Arc::new(Backend::Redis(Box::new(redis))))
            }
        })
    }

    pub fn describe(&self) -> String {
        match &*self.0 {
            Backend::Memory(_) => "in-process memory".to_string(),
            Backend::Redis(r) => format!("redis {}", r.url()),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match &*self.0 {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(r) => r.get(key).await,
        }
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        match &*self.0 {
            Backend::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Backend::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Adds `delta`; a new key starts at 0 and, with `ttl`, expires after it.
    pub async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        match &*self.0 {
            Backend::Memory(m) => m.incr(key, delta, ttl),
            Backend::Redis(r) => r.incr(key, delta, ttl).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match &*self.0 {
            Backend::Memory(m) => Ok(m.delete(key)),
            Backend::Redis(r) => r.delete(key).await,
        }
    }

    /// The live keys starting with `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        match &*self.0 {
            Backend::Memory(m) => Ok(m.keys(prefix)),
            Backend::Redis(r) => r.keys(prefix).await,
        }
    }

    /// Sets `key` only if absent; true when this call set it (a lock).
    pub async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, KvError> {
        match &*self.0 {
            Backend::Memory(m) => Ok(m.set_nx(key, value, ttl)),
            Backend::Redis(r) => r.set_nx(key, value, ttl).await,
        }
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> bool {
        match &*self.0 {
            Backend::Memory(_) => true,
            Backend::Redis(r) => r.ping().await,
        }
    }
}

/// Prefix of the host's own keys; component keys always start with `c:`.
pub fn host_key(purpose: &str, parts: &[&str]) -> String {
    let mut key = format!("h:{purpose}");
    for part in parts {
        key.push(':');
        key.push_str(part);
    }
    key
}
