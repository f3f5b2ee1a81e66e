//! The WIT host implementation of `payfn:host/kv`, and nothing else.

use std::time::Duration;

use crate::bindings::kv::{Error, Host};

use super::KvState;

impl Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.store.get(&self.key(&key)).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        self.store.set(&self.key(&key), value, ttl_ms.map(Duration::from_millis)).await
    }

    async fn incr(&mut self, key: String, delta: i64) -> Result<i64, Error> {
        self.store.incr(&self.key(&key), delta, None).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        self.store.delete(&self.key(&key)).await
    }
}
