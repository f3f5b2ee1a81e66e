//! `kv`: a key-value store with expiry, namespaced per component.
//!
//! The store is the host's ([`crate::kv`]): it keeps its own keys there too
//! (rate-limit windows, idempotency locks) under a prefix no component can
//! produce, since every component key starts with `c:`.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;

use super::{Capability, ComponentConfig, Field, HostResources, Lent};
use crate::bindings::kv::{Error, Host};
use crate::kv::Kv;

/// The capability: the host's store.
pub struct KeyValue {
    store: Kv,
}

impl Capability for KeyValue {
    const NAME: &'static str = "kv";
    const INTERFACES: &'static [&'static str] = &["payfn:host/kv"];
    /// The component's namespace.
    type Component = Arc<str>;
    type State = KvState;

    async fn init(host: &HostResources) -> anyhow::Result<Self> {
        Ok(Self { store: host.kv.clone() })
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut KvState,
    ) -> wasmtime::Result<()> {
        crate::bindings::kv::add_to_linker::<_, Field<KvState>>(linker, get)
    }

    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Arc<str>> {
        Ok(format!("c:{}:", component.name).into())
    }

    fn instance(&self, namespace: &Arc<str>, _lent: &mut Lent) -> KvState {
        KvState { store: self.store.clone(), namespace: namespace.clone() }
    }
}

/// Per-invocation state: the store and the component's namespace.
pub struct KvState {
    store: Kv,
    namespace: Arc<str>,
}

impl KvState {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }
}

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
