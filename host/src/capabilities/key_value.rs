//! `key_value`: Spin's key-value stores, served as
//! `spin:key-value/key-value@3.0.0` on payfn's kv backends.
//!
//! - A component opens only the labels its `key_value_stores` lists (Spin's
//!   permission model); any other label is `access-denied`.
//! - `default` is the host's own store (`[kv]`: memory or Redis). Other
//!   labels are declared in the runtime config, as in Spin, with the keys of
//!   `[kv]`: `[key_value_store.cache] backend = "redis"` and a `url`.
//!   A label listed by a component but declared nowhere refuses the
//!   version at load, named.
//! - Each label is one keyspace shared by the application's components that
//!   list it, as in Spin. In the host's store it sits under `s:<label>:`,
//!   apart from the host's keys (`h:`) and payfn's per-component `kv`
//!   (`c:`), so neither can read or clobber the other's keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::bail;
use wasmtime::component::{Accessor, FutureReader, Linker, Resource, ResourceTable, StreamReader};

use super::{Capability, ComponentConfig, Field, HostResources, Lent};
use crate::bindings::spin_apis::key_value::{Error, Host, HostStore, HostStoreWithStore};
use crate::kv::runtime_config::KvConfig;
use crate::kv::Kv;

/// The label every Spin app may use without declaring it in the runtime config.
pub const DEFAULT_LABEL: &str = "default";

/// How many stores one invocation may hold open at once.
const MAX_OPEN: usize = 64;

/// The capability: a backend per label.
pub struct KeyValueStores {
    labels: BTreeMap<String, Kv>,
}

impl Capability for KeyValueStores {
    const NAME: &'static str = "key_value";
    const INTERFACES: &'static [&'static str] = &["spin:key-value/key-value"];
    const MANIFEST_KEYS: &'static [&'static str] = &["key_value_stores"];
    const IMPLICIT: bool = true;
    const RUNTIME_SECTIONS: &'static [&'static str] = &["key_value_store"];
    /// The labels the component may open, with their backends.
    type Component = Arc<BTreeMap<String, Kv>>;
    type State = KeyValueState;

    async fn init(host: &HostResources) -> anyhow::Result<Self> {
        let declared: BTreeMap<String, KvConfig> =
            host.runtime_section("key_value_store")?.unwrap_or_default();
        let mut labels = BTreeMap::from([(DEFAULT_LABEL.to_string(), host.kv.clone())]);
        for (label, config) in declared {
            let kv = Kv::from_config(&config)
                .await
                .map_err(|e| anyhow::anyhow!("runtime config `[key_value_store.{label}]`: {e:#}"))?;
            labels.insert(label, kv);
        }
        Ok(Self { labels })
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut KeyValueState,
    ) -> wasmtime::Result<()> {
        crate::bindings::spin_apis::key_value::add_to_linker::<_, Field<KeyValueState>>(linker, get)
    }

    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Self::Component> {
        let listed: Vec<String> = component.key("key_value_stores")?.unwrap_or_default();
        let mut allowed = BTreeMap::new();
        for label in listed {
            let Some(kv) = self.labels.get(&label) else {
                bail!(
                    "`component.{}.key_value_stores`: no store `{label}`; declare it in the runtime config \
                     as `[key_value_store.{label}]` (only `{DEFAULT_LABEL}` needs no declaration)",
                    component.name
                );
            };
            allowed.insert(label, kv.clone());
        }
        Ok(Arc::new(allowed))
    }

    fn instance(&self, allowed: &Self::Component, _lent: &mut Lent) -> KeyValueState {
        KeyValueState { allowed: allowed.clone(), open: ResourceTable::new(), opened: 0 }
    }
}

/// One open store: its backend and its keyspace.
pub struct OpenStore {
    kv: Kv,
    prefix: String,
}

/// Per-invocation state: the labels the component may open, and its open stores.
pub struct KeyValueState {
    allowed: Arc<BTreeMap<String, Kv>>,
    open: ResourceTable,
    /// Stores in `open`, bounded by [`MAX_OPEN`].
    opened: usize,
}

impl KeyValueState {
    fn store(&self, store: &Resource<OpenStore>) -> Result<&OpenStore, Error> {
        self.open.get(store).map_err(|e| Error::Other(e.to_string()))
    }
}

/// payfn's kv errors in Spin's words.
fn other(error: crate::bindings::kv::Error) -> Error {
    use crate::bindings::kv::Error as KvError;
    match error {
        KvError::Unavailable(m) | KvError::Invalid(m) => Error::Other(m),
    }
}

impl Host for KeyValueState {}

impl HostStore for KeyValueState {}

/// The store's backend and keyspace, read out of the state so the call can
/// wait on the backend without holding the store.
fn open_store<T: Send>(
    accessor: &Accessor<T, Field<KeyValueState>>,
    store: &Resource<OpenStore>,
) -> Result<(Kv, String), Error> {
    accessor.with(|mut access| {
        let state = access.get();
        let open = state.store(store)?;
        Ok((open.kv.clone(), open.prefix.clone()))
    })
}

/// Spin's functions are WIT `async func`s, served through the store's
/// accessor: state is read, then the backend awaited outside the store.
impl<T: Send> HostStoreWithStore<T> for Field<KeyValueState> {
    async fn open(accessor: &Accessor<T, Self>, label: String) -> Result<Resource<OpenStore>, Error> {
        accessor.with(|mut access| {
            let state = access.get();
            let Some(kv) = state.allowed.get(&label) else {
                return Err(Error::AccessDenied);
            };
            if state.opened >= MAX_OPEN {
                return Err(Error::StoreTableFull);
            }
            let store = OpenStore { kv: kv.clone(), prefix: format!("s:{label}:") };
            let handle = state.open.push(store).map_err(|_| Error::StoreTableFull)?;
            state.opened += 1;
            Ok(handle)
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let (kv, prefix) = open_store(accessor, &store)?;
        kv.get(&format!("{prefix}{key}")).await.map_err(other)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let (kv, prefix) = open_store(accessor, &store)?;
        kv.set(&format!("{prefix}{key}"), value, None).await.map_err(other)
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> Result<(), Error> {
        let (kv, prefix) = open_store(accessor, &store)?;
        kv.delete(&format!("{prefix}{key}")).await.map(|_| ()).map_err(other)
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> Result<bool, Error> {
        let (kv, prefix) = open_store(accessor, &store)?;
        kv.get(&format!("{prefix}{key}")).await.map(|v| v.is_some()).map_err(other)
    }

    async fn drop(accessor: &Accessor<T, Self>, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        accessor.with(|mut access| {
            let state = access.get();
            state.open.delete(store)?;
            state.opened -= 1;
            Ok(())
        })
    }

    /// Every key of the store, as one stream; the backend is read in full
    /// first (Redis in SCAN pages), then streamed, and the future carries a
    /// backend failure.
    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let (keys, outcome) = match open_store(accessor, &store) {
            Err(e) => (Vec::new(), Err(e)),
            Ok((kv, prefix)) => match kv.keys(&prefix).await {
                Ok(keys) => (keys.into_iter().map(|k| k[prefix.len()..].to_string()).collect(), Ok(())),
                Err(e) => (Vec::new(), Err(other(e))),
            },
        };
        accessor.with(|mut access| {
            let keys = StreamReader::new(&mut access, keys)?;
            let outcome = FutureReader::new(&mut access, async move { wasmtime::error::Ok(outcome) })?;
            Ok((keys, outcome))
        })
    }
}
