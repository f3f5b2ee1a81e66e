//! The production backend: Redis, shared by every host, so rate limits and
//! idempotency locks hold across instances.
//!
//! Every call is bounded by a timeout: Redis down means an `unavailable`
//! error quickly, never a hung request. Keys carry the configured prefix
//! (one per application) before the component or host namespace.

use std::time::Duration;

use redis::aio::ConnectionManager;
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
    url: String,
    prefix: String,
    timeout: Duration,
    connection: ConnectionManager,
    incr: Script,
}

impl RedisKv {
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let connection = tokio::time::timeout(timeout * 5, ConnectionManager::new(client))
            .await
            .map_err(|_| anyhow::anyhow!("Redis at {url} did not answer"))??;
        Ok(Self {
            url: url.to_string(),
            prefix: prefix.to_string(),
            timeout,
            connection,
            incr: Script::new(INCR_WITH_TTL),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, call).await {
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
        let mut c = self.connection.clone();
        self.run(c.get(self.key(key))).await
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut c = self.connection.clone();
        let key = self.key(key);
        match ttl {
            Some(ttl) => self.run(c.pset_ex(key, value, ttl.as_millis().max(1) as u64)).await,
            None => self.run(c.set(key, value)).await,
        }
    }

    pub async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let mut c = self.connection.clone();
        let ttl = ttl.map(|t| t.as_millis().max(1).to_string()).unwrap_or_default();
        let mut invocation = self.incr.key(self.key(key));
        invocation.arg(delta).arg(ttl);
        self.run(invocation.invoke_async(&mut c)).await
    }

    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut c = self.connection.clone();
        let removed: i64 = self.run(c.del(self.key(key))).await?;
        Ok(removed > 0)
    }

    pub async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, KvError> {
        let mut c = self.connection.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX").arg("PX").arg(ttl.as_millis().max(1) as u64);
        let reply: Option<String> = self.run(cmd.query_async(&mut c)).await?;
        Ok(reply.is_some())
    }

    pub async fn ping(&self) -> bool {
        let mut c = self.connection.clone();
        let pong: Result<String, _> = self.run(redis::cmd("PING").query_async(&mut c)).await;
        pong.is_ok()
    }
}
