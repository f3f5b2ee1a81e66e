//! The embedded backend: an in-process map with expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::bindings::kv::Error as KvError;

/// How often expired keys are swept out (reads never see them anyway).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

#[derive(Clone, Default)]
pub struct MemoryKv {
    map: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryKv {
    /// A new store with its sweeper task.
    pub fn start() -> Self {
        let kv = Self::default();
        let weak = Arc::downgrade(&kv.map);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(map) = weak.upgrade() else { return };
                let now = Instant::now();
                lock(&map).retain(|_, e| e.live(now));
            }
        });
        kv
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        lock(&self.map).get(key).filter(|e| e.live(now)).map(|e| e.value.clone())
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        let expires = ttl.map(|t| Instant::now() + t);
        lock(&self.map).insert(key.to_string(), Entry { value, expires });
    }

    pub fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.map);
        if map.get(key).is_some_and(|e| e.live(now)) {
            return false;
        }
        map.insert(key.to_string(), Entry { value, expires: Some(now + ttl) });
        true
    }

    pub fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let (current, expires) = match map.get(key).filter(|e| e.live(now)) {
            Some(e) => {
                let text = std::str::from_utf8(&e.value).ok();
                let n = text
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Invalid(format!("value of `{key}` is not an integer")))?;
                (n, e.expires)
            }
            None => (0, ttl.map(|t| now + t)),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Invalid(format!("incr of `{key}` overflows")))?;
        map.insert(key.to_string(), Entry { value: next.to_string().into_bytes(), expires });
        Ok(next)
    }

    /// The live keys starting with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let now = Instant::now();
        let mut keys: Vec<String> = lock(&self.map)
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        lock(&self.map).remove(key).is_some_and(|e| e.live(now))
    }
}

/// The map stays consistent even if a holder panicked: every critical
/// section is a single map operation.
fn lock(map: &Mutex<HashMap<String, Entry>>) -> MutexGuard<'_, HashMap<String, Entry>> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expiry_incr_and_locks() {
        let kv = MemoryKv::start();
        // A TTL the reads below always land inside, then expiry polled for.
        let set_at = std::time::Instant::now();
        kv.set("a", b"1".to_vec(), Some(Duration::from_millis(1000)));
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        assert_eq!(kv.incr("a", 2, None).unwrap(), 3);
        while kv.get("a").is_some() {
            assert!(set_at.elapsed() < Duration::from_secs(10), "incr dropped the expiry");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(set_at.elapsed() >= Duration::from_millis(1000), "expired early: {:?}", set_at.elapsed());
        assert_eq!(kv.incr("n", 5, None).unwrap(), 5);
        kv.set("s", b"x".to_vec(), None);
        assert!(matches!(kv.incr("s", 1, None), Err(KvError::Invalid(_))));
        assert!(kv.set_nx("l", vec![], Duration::from_secs(1)));
        assert!(!kv.set_nx("l", vec![], Duration::from_secs(1)));
        assert!(kv.delete("l"));
        assert!(kv.set_nx("l", vec![], Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn keys_are_listed_by_prefix_and_without_expired_ones() {
        let kv = MemoryKv::start();
        kv.set("s:default:b", vec![], None);
        kv.set("s:default:a", vec![], None);
        kv.set("s:default:gone", vec![], Some(Duration::from_millis(1)));
        kv.set("s:defaults:x", vec![], None);
        kv.set("c:x:a", vec![], None);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(kv.keys("s:default:"), ["s:default:a", "s:default:b"]);
    }
}
