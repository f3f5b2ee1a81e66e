//! The production backend: Redis, shared by every host, so rate limits and
//! idempotency locks hold across instances.
//!
//! Every call is bounded by a timeout: Redis down means an `unavailable`
//! error quickly, never a hung request. Keys carry the configured prefix
//! (one per application) before the component or host namespace.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use crate::bindings::kv::Error as KvError;

/// INCRBY that sets the expiry only on a key that has none, atomically on
/// the server (a new rate-limit window gets its TTL exactly once).
const INCR_WITH_TTL: &str = r"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
";

pub struct RedisKv {
    /// The URL without its password, for the summary and logs.
    url: String,
    prefix: String,
    timeout: Duration,
    client: redis::Client,
    /// Replaced as a whole when it stays broken (see [`RedisKv::observe`]).
    connection: Arc<RwLock<ConnectionManager>>,
    /// Milliseconds since `started` of the last call that reached Redis.
    last_ok_ms: AtomicU64,
    started: Instant,
    replacing: Arc<AtomicBool>,
    incr: Script,
}

/// A connection manager that reconnects by itself, with a short first
/// attempt: the caller's timeout bounds every call anyway.
fn config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(2)
        .set_max_delay(1_000)
}

impl RedisKv {
    /// Connects to `url` (`rediss://`: over TLS, trusting `ca_file` if
    /// given, else the system's roots). Errors show the URL without its
    /// password.
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let shown = crate::secrets::redact_url(url);
        let client = match ca_file {
            None => redis::Client::open(url),
            Some(ca) => {
                let root_cert =
                    std::fs::read(ca).map_err(|e| anyhow::anyhow!("[kv] ca_file {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
                )
            }
        }
        .map_err(|e| anyhow::anyhow!("[kv] Redis URL {shown}: {e}"))?;
        let connection = tokio::time::timeout(
            timeout * 5,
            ConnectionManager::new_with_config(client.clone(), config(timeout)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis at {shown} did not answer"))?
        .map_err(|e| anyhow::anyhow!("Redis at {shown}: {e}"))?;
        Ok(Self {
            url: shown,
            prefix: prefix.to_string(),
            timeout,
            client,
            connection: Arc::new(RwLock::new(connection)),
            last_ok_ms: AtomicU64::new(0),
            started: Instant::now(),
            replacing: Arc::new(AtomicBool::new(false)),
            incr: Script::new(INCR_WITH_TTL),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tracks whether calls reach Redis. redis-rs's manager can stay broken
    /// after a failed reconnect (redis-rs issues 984, 1556), so after a
    /// second without a successful call a fresh manager is built in the
    /// background and swapped in once it connects.
    fn observe(&self, reached: bool) {
        let now = self.started.elapsed().as_millis() as u64;
        if reached {
            self.last_ok_ms.store(now, Ordering::Relaxed);
            return;
        }
        if now.saturating_sub(self.last_ok_ms.load(Ordering::Relaxed)) < 1_000
            || self.replacing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (client, slot, replacing, timeout) =
            (self.client.clone(), self.connection.clone(), self.replacing.clone(), self.timeout);
        tokio::spawn(async move {
            let fresh = tokio::time::timeout(
                timeout * 2,
                ConnectionManager::new_with_config(client, config(timeout)),
            );
            if let Ok(Ok(fresh)) = fresh.await {
                tracing::info!("Redis reachable again; connection replaced");
                *slot.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
            replacing.store(false, Ordering::Release);
        });
    }

    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, KvError> {
        let result = self.classify(tokio::time::timeout(self.timeout, call).await);
        self.observe(!matches!(result, Err(KvError::Unavailable(_))));
        result
    }

    fn classify<T>(
        &self,
        outcome: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, KvError> {
        match outcome {
            Err(_) => Err(KvError::Unavailable(format!("Redis did not answer within {:?}", self.timeout))),
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::TypeError || e.kind() == redis::ErrorKind::ResponseError =>
            {
                Err(KvError::Invalid(e.to_string()))
            }
            Ok(Err(e)) => Err(KvError::Unavailable(e.to_string())),
            Ok(Ok(value)) => Ok(value),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut c = self.conn();
        self.run(c.get(self.key(key))).await
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut c = self.conn();
        let key = self.key(key);
        match ttl {
            Some(ttl) => self.run(c.pset_ex(key, value, ttl.as_millis().max(1) as u64)).await,
            None => self.run(c.set(key, value)).await,
        }
    }

    pub async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let mut c = self.conn();
        let ttl = ttl.map(|t| t.as_millis().max(1).to_string()).unwrap_or_default();
        let mut invocation = self.incr.key(self.key(key));
        invocation.arg(delta).arg(ttl);
        self.run(invocation.invoke_async(&mut c)).await
    }

    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut c = self.conn();
        let removed: i64 = self.run(c.del(self.key(key))).await?;
        Ok(removed > 0)
    }

    /// The keys starting with `prefix` (without the configured prefix),
    /// sorted; SCAN in pages, so a large keyspace never blocks Redis.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut c = self.conn();
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, page): (u64, Vec<String>) = self.run(cmd.query_async(&mut c)).await?;
            keys.extend(page.into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup(); // SCAN may return a key twice.
        Ok(keys)
    }

    pub async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, KvError> {
        let mut c = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX").arg("PX").arg(ttl.as_millis().max(1) as u64);
        let reply: Option<String> = self.run(cmd.query_async(&mut c)).await?;
        Ok(reply.is_some())
    }

    pub async fn ping(&self) -> bool {
        let mut c = self.conn();
        let pong: Result<String, _> = self.run(redis::cmd("PING").query_async(&mut c)).await;
        pong.is_ok()
    }
}

/// `text` with Redis glob metacharacters escaped, so it matches literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_metacharacters_match_literally() {
        assert_eq!(super::glob_escape("s:a*b?[c]:"), "s:a\\*b\\?\\[c\\]:");
    }
}
