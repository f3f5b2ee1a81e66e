//! Loading a component: compile (or take from the cache), check its imports
//! against its grants, link, pre-instantiate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::bindings::event::EventStepPre;
use crate::bindings::timer::TimerStepPre;

use super::{compile, Engine, InvocationState};
use crate::capabilities::{Capabilities, ComponentConfig, Granted};
use crate::metrics::VersionStats;

/// What the manifest says about one component.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub name: String,
    pub source: PathBuf,
    /// Capability names granted in `spin.toml`.
    pub grants: Vec<String>,
    /// Environment variables the guest sees.
    pub environment: Vec<(String, String)>,
    /// The keys of `[component.NAME]` that capabilities read
    /// (`kafka_topics`, ...), as written.
    pub capability_keys: BTreeMap<String, toml::Value>,
    /// Which trigger runs it, hence which export it must have.
    pub kind: TriggerKind,
}

/// The kind of trigger that runs a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// `wasi:http/incoming-handler@0.2` (WASIp2) or `wasi:http/handler@0.3`
    /// (WASIp3: spin-sdk 7's `#[http_service]`)
    Http,
    /// `payfn:host/timer-handler`
    Timer,
    /// `payfn:host/event-handler`
    Event,
}

/// The pre-instantiated export the trigger calls.
pub enum Entry {
    Http(ProxyPre<InvocationState>),
    HttpP3(ServicePre<InvocationState>),
    Timer(TimerStepPre<InvocationState>),
    Event(EventStepPre<InvocationState>),
}

/// A component version ready to serve: compiled, checked, pre-instantiated.
pub struct LoadedComponent {
    pub spec: ComponentSpec,
    /// SHA-256 of the binary: the version's identity.
    pub digest: String,
    /// Whether the compile cache served the native code.
    pub from_cache: bool,
    /// This version's invocation figures on this host (shared by every load
    /// of the same digest, so they survive a rollback and a re-deploy).
    pub stats: Arc<VersionStats>,
    pub(super) entry: Entry,
    /// Each granted capability's configuration of this version.
    pub(super) granted: Granted,
    /// Counts this version in [`loaded_versions`] for as long as it lives.
    _alive: AliveToken,
}

/// Loaded component versions alive in this process: serving, on standby, or
/// replaced but still finishing invocations. A replaced version leaves this
/// count when its last invocation ends.
static LOADED: AtomicI64 = AtomicI64::new(0);

/// How many component versions this process holds loaded.
pub fn loaded_versions() -> i64 {
    LOADED.load(Ordering::Relaxed)
}

/// One count in [`LOADED`]: taken when a version is built, given back when
/// it drops, so the two can never drift apart.
struct AliveToken;

impl AliveToken {
    fn new() -> Self {
        LOADED.fetch_add(1, Ordering::Relaxed);
        AliveToken
    }
}

impl Drop for AliveToken {
    fn drop(&mut self) {
        let before = LOADED.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "loaded-version count went below zero");
    }
}

impl LoadedComponent {
    /// Whether an invocation holds a shard transaction while it runs (the
    /// component is granted a capability that works in one: `sql`).
    pub fn holds_transaction(&self) -> bool {
        self.granted.holds_transaction()
    }

    /// The first 12 hex digits of the digest, for humans.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }
}

impl Engine {
    /// Loads `bytes` as a version of `spec`'s component. Refuses, naming the
    /// import or export at fault, a binary that is not a component, imports
    /// a capability the manifest does not grant (it is never half-linked),
    /// or lacks the export its trigger calls. CPU-heavy on a cache miss:
    /// call it off the request path.
    pub fn load_bytes(&self, spec: &ComponentSpec, bytes: &[u8]) -> anyhow::Result<LoadedComponent> {
        let name = &spec.name;
        for grant in &spec.grants {
            if !Capabilities::NAMES.contains(&grant.as_str()) {
                bail!("component `{name}`: unknown capability `{grant}` in `capabilities`");
            }
        }
        check_header(bytes).with_context(|| format!("component `{name}`"))?;
        let digest = compile::digest(bytes);
        let (component, from_cache) =
            self.compile(bytes, &digest).with_context(|| format!("component `{name}`"))?;

        for (import, _) in component.component_type().imports(&self.inner) {
            match Capabilities::for_import(import) {
                Some((grant, true)) if !spec.grants.iter().any(|g| g == grant) => bail!(
                    "component `{name}` imports `{import}`, but spin.toml does not grant `{grant}`; \
                     add it to `capabilities` in [component.{name}]"
                ),
                None if import.starts_with("payfn:") => {
                    bail!("component `{name}` imports `{import}`, which this host does not provide")
                }
                None if import.starts_with("spin:") || import.starts_with("fermyon:") => bail!(
                    "component `{name}` imports `{import}`, a Spin interface payfn does not serve \
                     (served: {}, and wasi:http)",
                    Capabilities::interfaces()
                        .iter()
                        .filter(|i| i.starts_with("spin:"))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => {}
            }
        }

        // WASIp2 and WASIp3 side by side: their interfaces differ in
        // version, so one linker serves a component of either.
        let mut linker = Linker::new(&self.inner);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        let component_config = ComponentConfig { name, keys: &spec.capability_keys };
        let granted = self.capabilities.grant(&spec.grants, &component_config, &mut linker)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("component `{name}` imports something this host does not provide"))?;
        let entry = match spec.kind {
            TriggerKind::Http => match ServicePre::new(pre.clone()) {
                Ok(p3) => Entry::HttpP3(p3),
                Err(_) => Entry::Http(ProxyPre::new(pre).map_err(anyhow::Error::from).with_context(|| {
                    format!(
                        "component `{name}` is on an HTTP route but exports neither \
                         wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3"
                    )
                })?),
            },
            TriggerKind::Timer => Entry::Timer(TimerStepPre::new(pre).map_err(anyhow::Error::from).with_context(|| {
                format!("component `{name}` is on a timer trigger but does not export payfn:host/timer-handler")
            })?),
            TriggerKind::Event => Entry::Event(EventStepPre::new(pre).map_err(anyhow::Error::from).with_context(|| {
                format!("component `{name}` is on a Kafka trigger but does not export payfn:host/event-handler")
            })?),
        };
        Ok(LoadedComponent {
            spec: spec.clone(),
            digest,
            from_cache,
            stats: Arc::default(),
            entry,
            granted,
            _alive: AliveToken::new(),
        })
    }
}

/// Refuses what is not a WebAssembly component before the compiler sees it,
/// with a message that says what it is instead.
fn check_header(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes.get(..8) {
        Some(header) if header.starts_with(MAGIC) && header[4..] == [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        Some(header) if header.starts_with(MAGIC) && header[6..] == [0x00, 0x00] => bail!(
            "this is a core WebAssembly module, not a component; build it for wasm32-wasip2 \
             (cargo build --target wasm32-wasip2)"
        ),
        _ => bail!("not a WebAssembly component ({} bytes without the `\\0asm` header)", bytes.len()),
    }
}
