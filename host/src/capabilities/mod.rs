//! Capabilities: what a component may do beyond computing.
//!
//! Shaped like Spin's factors (DESIGN.md: one module per capability). Each
//! capability is one module implementing [`Capability`], which
//!
//! - starts once per host from the shared backends ([`Capability::init`]),
//! - links its WIT host implementation into a component's linker, only when
//!   the component is granted it ([`Capability::link`]),
//! - reads, once per component version at load, its manifest keys
//!   ([`Capability::configure`]; an error names the component and the key),
//! - builds its part of each invocation's store ([`Capability::instance`])
//!   and hands back what it borrowed when the invocation ends
//!   ([`Capability::give_back`]).
//!
//! [`registry!`] below is the one list of them. It generates
//! [`Capabilities`] (the started set), [`Granted`] (one component version's
//! configuration of each capability it is granted) and [`States`] (one
//! invocation's states), so neither the engine nor the triggers name a
//! capability: adding one is a module and a line in that list.
//!
//! The backends capabilities serve from (the shards, the kv store, the
//! broker) are the host's own ([`crate::shards`], [`crate::kv`],
//! [`crate::broker`]): the host uses them too, for routing, idempotency,
//! rate limits and the relay.

pub mod kafka;
pub mod key_value;
pub mod kv;
pub mod log;
pub mod outbound_http;
pub mod sql;
pub mod variables;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use anyhow::Context;
use serde::de::DeserializeOwned;
use wasmtime::component::{HasData, Linker};

use crate::bindings::sql::Dialect;
use crate::broker::Broker;
use crate::kv::Kv;
use crate::metrics::Metrics;
use crate::shards::ShardTx;

/// One capability (a Spin factor, in Spin's words).
pub trait Capability: Sized + Send + Sync + 'static {
    /// The grant in `spin.toml`: `capabilities = ["sql"]`.
    const NAME: &'static str;
    /// The WIT interfaces it serves, without version (`payfn:host/sql`).
    const INTERFACES: &'static [&'static str];
    /// The keys of `[component.NAME]` it reads, besides the grant.
    const MANIFEST_KEYS: &'static [&'static str] = &[];
    /// Whether an invocation of a component granted it runs inside a shard
    /// transaction (DESIGN.md rule 2): the trigger then opens one before the
    /// instance.
    const HOLDS_TRANSACTION: bool = false;
    /// Whether every component is linked to it, its permissions then coming
    /// from its own manifest keys rather than a grant: Spin's interfaces,
    /// since a Spin app names no grants (`variables`, `key_value_stores`
    /// and `allowed_outbound_hosts` are its permissions, empty by default).
    const IMPLICIT: bool = false;
    /// The manifest's application-level tables it reads (`[variables]`).
    const APP_KEYS: &'static [&'static str] = &[];
    /// The runtime config's sections it reads (`[key_value_store]`).
    const RUNTIME_SECTIONS: &'static [&'static str] = &[];

    /// What it keeps per component version, read once at load.
    type Component: Send + Sync + 'static;
    /// Its part of one invocation's store.
    type State: Send + 'static;

    /// Starts the capability for this host (it may connect a backend of its
    /// own, hence async).
    fn init(host: &HostResources) -> impl std::future::Future<Output = anyhow::Result<Self>> + Send;

    /// Links the host implementation; `get` reaches this capability's state
    /// in the store, and nothing else.
    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self::State,
    ) -> wasmtime::Result<()>;

    /// Reads what `component` says about this capability (it is granted it).
    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Self::Component>;

    /// One invocation's state; may take what the trigger lent.
    fn instance(&self, component: &Self::Component, lent: &mut Lent) -> Self::State;

    /// Gives back what [`instance`](Self::instance) took from `lent`.
    fn give_back(_state: Self::State, _lent: &mut Lent) {}
}

/// The host's shared backends and the application's configuration, handed
/// to every capability at start.
pub struct HostResources {
    /// The key-value store (`[kv]`).
    pub kv: Kv,
    /// The event broker (`[kafka]`); `None` for an engine run without one
    /// (benchmarks of the engine alone).
    pub broker: Option<Broker>,
    /// Where capabilities register their own metric families.
    pub metrics: Metrics,
    /// The manifest's application-level tables that belong to capabilities
    /// ([`Capability::APP_KEYS`]).
    pub app_keys: BTreeMap<String, toml::Value>,
    /// The runtime config's sections that belong to capabilities
    /// ([`Capability::RUNTIME_SECTIONS`]).
    pub runtime_sections: BTreeMap<String, toml::Value>,
}

impl HostResources {
    /// Backends only, no application configuration (engine benchmarks).
    pub fn bare(kv: Kv, broker: Option<Broker>, metrics: Metrics) -> Self {
        Self { kv, broker, metrics, app_keys: BTreeMap::new(), runtime_sections: BTreeMap::new() }
    }

    /// The manifest's `[key]`, if present; a value of the wrong shape is an
    /// error naming it.
    pub fn app_key<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        typed(self.app_keys.get(key)).with_context(|| format!("spin.toml `[{key}]`"))
    }

    /// The runtime config's `[section]`, if present; a value of the wrong
    /// shape is an error naming it.
    pub fn runtime_section<T: DeserializeOwned>(&self, section: &str) -> anyhow::Result<Option<T>> {
        typed(self.runtime_sections.get(section)).with_context(|| format!("runtime config `[{section}]`"))
    }
}

fn typed<T: DeserializeOwned>(value: Option<&toml::Value>) -> anyhow::Result<Option<T>> {
    value.map(|v| v.clone().try_into().map_err(anyhow::Error::from)).transpose()
}

/// One component as a capability reads it at load.
pub struct ComponentConfig<'a> {
    /// The component's name in the manifest.
    pub name: &'a str,
    /// The keys of `[component.NAME]` that belong to capabilities.
    pub keys: &'a BTreeMap<String, toml::Value>,
}

impl ComponentConfig<'_> {
    /// `[component.NAME] key`, if present; a value of the wrong shape is an
    /// error naming the component and the key.
    pub fn key<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        typed(self.keys.get(key)).with_context(|| format!("`component.{}.{key}`", self.name))
    }
}

/// What a trigger lends one invocation: its tags and the shard transaction
/// it runs in. Capabilities take from it when the store is built and give
/// back when the invocation ends.
pub struct Lent {
    /// Tags the invocation's logs (an HTTP request id, or a trigger's own).
    pub request_id: String,
    /// The shard the invocation is bound to, if any: its name and dialect.
    pub shard: Option<(String, Dialect)>,
    /// The shard transaction, until a capability takes it.
    pub tx: Option<ShardTx>,
}

/// The data of a store that holds the capabilities' states (the engine's
/// `InvocationState`): what a linked capability reaches its state through.
pub trait HoldsStates: Send + 'static {
    /// The capabilities' part of the store.
    fn states(&mut self) -> &mut States;
}

/// Binds a generated `add_to_linker` to one capability's state: the host
/// implementation sees only that.
pub struct Field<S>(PhantomData<S>);

impl<S: 'static> HasData for Field<S> {
    type Data<'a> = &'a mut S;
}

/// Why a state is reached only when present: a capability is linked only
/// for a component granted it, and its state is built for exactly those.
const GRANTED: &str = "a linked capability's state is built for every invocation of a component granted it";

/// Generates [`Capabilities`], [`Granted`] and [`States`] from the list of
/// capabilities, a field each.
macro_rules! registry {
    ($($field:ident: $cap:ty),* $(,)?) => {
        /// Every capability, started for this host.
        pub struct Capabilities {
            $($field: $cap,)*
        }

        /// One component version's configuration of each capability it is
        /// granted (`None`: not granted, not linked).
        pub struct Granted {
            $($field: Option<<$cap as Capability>::Component>,)*
        }

        /// One invocation's capability states: the capabilities' part of the store.
        pub struct States {
            $($field: Option<<$cap as Capability>::State>,)*
        }

        impl Capabilities {
            /// The grant names, in registration order.
            pub const NAMES: &'static [&'static str] = &[$(<$cap>::NAME,)*];

            /// Starts every capability.
            pub async fn start(host: &HostResources) -> anyhow::Result<Self> {
                Ok(Self {
                    $($field: <$cap>::init(host).await
                        .with_context(|| format!("starting capability `{}`", <$cap>::NAME))?,)*
                })
            }

            /// The capability serving a component import
            /// (`payfn:host/sql@0.1.0`), if any: its name, and whether a
            /// component needs it granted to import it.
            pub fn for_import(import: &str) -> Option<(&'static str, bool)> {
                let unversioned = import.split('@').next().unwrap_or(import);
                $(if <$cap>::INTERFACES.contains(&unversioned) {
                    return Some((<$cap>::NAME, !<$cap>::IMPLICIT));
                })*
                None
            }

            /// The capability that reads `[component.NAME] key`, if any.
            pub fn owner_of_key(key: &str) -> Option<&'static str> {
                $(if <$cap>::MANIFEST_KEYS.contains(&key) {
                    return Some(<$cap>::NAME);
                })*
                None
            }

            /// The capability that reads the manifest's `[key]`, if any.
            pub fn owner_of_app_key(key: &str) -> Option<&'static str> {
                $(if <$cap>::APP_KEYS.contains(&key) {
                    return Some(<$cap>::NAME);
                })*
                None
            }

            /// The capability that reads the runtime config's `[section]`, if any.
            pub fn owner_of_section(section: &str) -> Option<&'static str> {
                $(if <$cap>::RUNTIME_SECTIONS.contains(&section) {
                    return Some(<$cap>::NAME);
                })*
                None
            }

            /// Every interface served, with the version components import
            /// (for messages naming what the host serves).
            pub fn interfaces() -> Vec<&'static str> {
                let mut all = Vec::new();
                $(all.extend_from_slice(<$cap>::INTERFACES);)*
                all
            }

            /// Links every capability in `grants` into `linker` and reads its
            /// configuration of `component`.
            pub fn grant<T: HoldsStates>(
                &self,
                grants: &[String],
                component: &ComponentConfig<'_>,
                linker: &mut Linker<T>,
            ) -> anyhow::Result<Granted> {
                let granted = |name: &str| grants.iter().any(|g| g == name);
                Ok(Granted {
                    $($field: if <$cap>::IMPLICIT || granted(<$cap>::NAME) {
                        <$cap>::link(linker, |s: &mut T| s.states().$field.as_mut().expect(GRANTED))
                        .map_err(anyhow::Error::from)
                        .with_context(|| format!("linking capability `{}`", <$cap>::NAME))?;
                        Some(self.$field.configure(component)
                            .with_context(|| format!("component `{}`: capability `{}`", component.name, <$cap>::NAME))?)
                    } else {
                        None
                    },)*
                })
            }

            /// One invocation's states for a component version granted `granted`.
            pub fn instance(&self, granted: &Granted, lent: &mut Lent) -> States {
                States {
                    $($field: granted.$field.as_ref().map(|c| self.$field.instance(c, lent)),)*
                }
            }
        }

        impl Granted {
            /// Whether an invocation holds a shard transaction while it runs.
            pub fn holds_transaction(&self) -> bool {
                false $(|| (<$cap>::HOLDS_TRANSACTION && self.$field.is_some()))*
            }
        }

        impl States {
            /// Hands back to `lent` what the capabilities took from it.
            pub fn give_back(self, lent: &mut Lent) {
                $(if let Some(state) = self.$field {
                    <$cap>::give_back(state, lent);
                })*
            }
        }
    };
}

registry! {
    sql: sql::Sql,
    kv: kv::KeyValue,
    log: log::Log,
    kafka: kafka::Kafka,
    variables: variables::Variables,
    key_value: key_value::KeyValueStores,
    outbound_http: outbound_http::OutboundHttp,
}

impl States {
    /// The invocation's `wasi:http` hooks, through which its outbound
    /// requests go: the `outbound_http` capability's, present for every
    /// invocation since it is implicit.
    pub fn http_hooks(&mut self) -> &mut dyn wasmtime_wasi_http::WasiHttpHooks {
        self.outbound_http.as_mut().expect(GRANTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_their_grants_whatever_the_version() {
        assert_eq!(Capabilities::for_import("payfn:host/sql@0.1.0"), Some(("sql", true)));
        assert_eq!(Capabilities::for_import("payfn:host/kafka"), Some(("kafka", true)));
        assert_eq!(Capabilities::for_import("spin:variables/variables@3.0.0"), Some(("variables", false)));
        assert_eq!(Capabilities::for_import("wasi:http/types@0.2.6"), None);
        assert_eq!(
            Capabilities::NAMES,
            ["sql", "kv", "log", "kafka", "variables", "key_value", "outbound_http"]
        );
        assert_eq!(Capabilities::owner_of_app_key("variables"), Some("variables"));
        assert_eq!(Capabilities::owner_of_section("key_value_store"), Some("key_value"));
        assert_eq!(Capabilities::owner_of_key("kafka_topics"), Some("kafka"));
        assert_eq!(Capabilities::owner_of_key("source"), None);
    }

    #[test]
    fn a_key_of_the_wrong_shape_names_the_component_and_the_key() {
        let keys: BTreeMap<String, toml::Value> =
            toml::from_str("kafka_topics = \"payments\"").expect("a table");
        let component = ComponentConfig { name: "relay", keys: &keys };
        let err = format!("{:#}", component.key::<Vec<String>>("kafka_topics").unwrap_err());
        assert!(err.contains("component.relay.kafka_topics"), "{err}");
        assert_eq!(component.key::<Vec<String>>("absent").unwrap(), None);
    }
}
