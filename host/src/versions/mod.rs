//! Component versions: the store of every deployed binary, what serves each
//! component, and the swap from one version to the next under live traffic
//! (DESIGN.md decision 8).
//!
//! - [`store`]: the control store shared by every host (content-addressed
//!   binaries, version records, active pointers, audit trail).
//! - [`live`]: the in-memory pointer per component that invocations load.
//! - [`deploy`]: upload, activate, roll back, canary, list (the admin API's
//!   operations).
//! - [`sync`]: how a change made through one host reaches the others.
//! - [`watch`]: `payfn up --watch`, rebuild and swap on file changes.
//!
//! A new version is compiled and pre-instantiated off the request path
//! (a blocking-pool thread), checked against its component's trigger export
//! and manifest grants and instantiated once, and only then recorded and
//! swapped in. Invocations already running finish on the version they
//! started on.

pub mod config;
mod deploy;
pub mod live;
pub mod store;
mod sync;
pub mod watch;

pub use deploy::DeployError;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::engine::{ComponentSpec, Engine, LoadedComponent};
use crate::manifest::Manifest;
use crate::metrics::VersionStats;
use live::{Canary, ComponentSlot, Registry, Serving};
use store::{ActiveRecord, Change, ControlStore, Origin};

/// The label of a version registered from `spin.toml`'s `source`.
pub const MANIFEST_LABEL: &str = "spin.toml";

/// This host as the control store knows it.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub id: String,
    pub address: String,
    pub started_at: i64,
}

/// The versions service of one host.
pub struct Versions {
    engine: Engine,
    store: ControlStore,
    registry: Registry,
    host: HostIdentity,
    /// Per-version figures, by (component, digest), kept across reloads.
    stats: Mutex<HashMap<(String, String), Arc<VersionStats>>>,
    /// Loaded versions that do not serve but may soon: the rollback target
    /// (kept warm so a rollback is only a swap) and versions just uploaded.
    standby: Mutex<HashMap<(String, String), Arc<LoadedComponent>>>,
    /// Serialises applying changes on this host; holds the generation of the
    /// last change applied.
    applied: tokio::sync::Mutex<i64>,
    /// What the sync rounds saw, for the metrics.
    seen: SyncSeen,
    /// The merchant directory, synced in the same rounds (set by
    /// [`start_sync`](Self::start_sync)); a check-in acknowledges its
    /// generation too.
    directory: std::sync::OnceLock<Arc<crate::directory::Directory>>,
}

/// The latest generation read from the control store, the one this host
/// serves, and when a sync round last succeeded; plain atomics so a scrape
/// never waits on a sync round.
#[derive(Default)]
struct SyncSeen {
    store_generation: AtomicI64,
    served_generation: AtomicI64,
    last_ok_ms: AtomicI64,
}

/// How current this host is with the control store.
#[derive(Debug, Clone, Copy)]
pub struct SyncStatus {
    /// Changes recorded in the store that this host does not serve yet.
    pub generations_behind: i64,
    /// Since the last successful sync round (or the start).
    pub seconds_since_sync: f64,
}

/// One line of the startup summary.
pub struct BootLine {
    pub component: String,
    pub text: String,
}

impl Versions {
    /// Loads what serves every component: the version the control store
    /// names if an operator chose it, else the manifest's `source` (recorded
    /// in the store as a version of its own).
    pub async fn start(
        engine: Engine,
        store: ControlStore,
        manifest: &Manifest,
        host: HostIdentity,
    ) -> anyhow::Result<(Arc<Self>, Vec<BootLine>)> {
        let mut versions = Versions {
            engine,
            store,
            registry: Registry::default(),
            host,
            stats: Mutex::default(),
            standby: Mutex::default(),
            applied: tokio::sync::Mutex::new(0),
            seen: SyncSeen::default(),
            directory: std::sync::OnceLock::new(),
        };
        let generation = versions.store.generation().await?;
        let active: HashMap<String, ActiveRecord> =
            versions.store.active().await?.into_iter().map(|a| (a.component.clone(), a)).collect();
        let mut lines = Vec::new();
        for name in manifest.components.keys() {
            let spec = manifest.component_spec(name).context("component vanished from the manifest")?;
            let (serving, line) = match active.get(name) {
                // A host with no local build (a new machine joining) serves
                // what the control store says.
                Some(record) if record.origin == Origin::Manifest && !spec.source.exists() => {
                    let serving = versions.serving_for(&spec, record).await.with_context(|| {
                        format!(
                            "component `{name}`: loading version {} from the control store",
                            &record.digest[..12]
                        )
                    })?;
                    let text = format!(
                        "{} (from the control store: {} is missing)",
                        serving.primary.short_digest(),
                        spec.source.display()
                    );
                    (serving, text)
                }
                Some(record) if record.origin == Origin::Admin => {
                    let serving = versions.serving_for(&spec, record).await.with_context(|| {
                        format!("component `{name}`: loading the deployed version {}", &record.digest[..12])
                    })?;
                    let mut text = format!(
                        "{} (deployed {}, {})",
                        serving.primary.short_digest(),
                        humantime::format_rfc3339_seconds(system_time(record.changed_at)),
                        record.changed_by
                    );
                    if let Some(canary) = &serving.canary {
                        text.push_str(&format!(
                            "; canary {} at {}%",
                            canary.version.short_digest(),
                            canary.percent
                        ));
                    }
                    (serving, text)
                }
                _ => {
                    let bytes = std::fs::read(&spec.source).with_context(|| {
                        format!(
                            "component `{name}`: cannot read {} (build it with `payfn build`)",
                            spec.source.display()
                        )
                    })?;
                    let started = std::time::Instant::now();
                    let loaded = versions.engine.load_bytes(&spec, &bytes)?;
                    let text = format!(
                        "{} ({}, {:.0?})",
                        loaded.short_digest(),
                        if loaded.from_cache { "cached" } else { "compiled" },
                        started.elapsed()
                    );
                    let loaded = versions.finish_load(loaded).await?;
                    let record = match active.get(name) {
                        Some(record) if record.digest == loaded.digest => record.clone(),
                        _ => {
                            versions
                                .store
                                .put_version(name, &loaded.digest, MANIFEST_LABEL, "payfn up", &bytes)
                                .await?;
                            let change =
                                Change::Activate { digest: loaded.digest.clone(), origin: Origin::Manifest };
                            versions
                                .store
                                .change(name, change, "payfn up")
                                .await
                                .map_err(anyhow::Error::from)?
                        }
                    };
                    (Serving { primary: loaded, canary: None, generation: record.generation }, text)
                }
            };
            lines.push(BootLine { component: name.clone(), text: line });
            versions.registry.insert(ComponentSlot::new(spec, serving));
        }
        *versions.applied.get_mut() = generation;
        versions.saw_store_generation(generation);
        versions.synced(generation);
        Ok((Arc::new(versions), lines))
    }

    /// Records the latest generation read from the control store (before
    /// applying it: a change this host fails to apply shows as "behind").
    fn saw_store_generation(&self, generation: i64) {
        self.seen.store_generation.fetch_max(generation, Ordering::Relaxed);
    }

    /// Records a successful round with the control store, after which this
    /// host serves `generation`.
    fn synced(&self, generation: i64) {
        self.seen.served_generation.fetch_max(generation, Ordering::Relaxed);
        self.seen.last_ok_ms.store(store::now_ms(), Ordering::Relaxed);
    }

    /// How current this host is with the control store.
    pub fn sync_status(&self) -> SyncStatus {
        let store = self.seen.store_generation.load(Ordering::Relaxed);
        let served = self.seen.served_generation.load(Ordering::Relaxed);
        let age_ms = store::now_ms() - self.seen.last_ok_ms.load(Ordering::Relaxed);
        SyncStatus {
            generations_behind: (store - served).max(0),
            seconds_since_sync: age_ms.max(0) as f64 / 1e3,
        }
    }

    /// The component slots invocations pick their version from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The per-version figures of `digest` of `component`.
    fn stats_for(&self, component: &str, digest: &str) -> Arc<VersionStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry((component.to_string(), digest.to_string())).or_default().clone()
    }

    /// Attaches its stats to a freshly loaded version and instantiates it
    /// once; refuses a version that fails to start.
    async fn finish_load(&self, mut loaded: LoadedComponent) -> anyhow::Result<Arc<LoadedComponent>> {
        loaded.stats = self.stats_for(&loaded.spec.name, &loaded.digest);
        self.engine
            .check_instantiates(&loaded)
            .await
            .map_err(|e| anyhow::anyhow!("component `{}` fails when instantiated: {e}", loaded.spec.name))?;
        Ok(Arc::new(loaded))
    }

    /// Version `digest` of `spec`'s component, ready to serve: already
    /// serving, on standby, or loaded from the control store (compiled off
    /// the request path; the compile cache usually has it).
    async fn prepared(&self, spec: &ComponentSpec, digest: &str) -> anyhow::Result<Arc<LoadedComponent>> {
        if let Some(slot) = self.registry.get(&spec.name) {
            let serving = slot.serving();
            let canary = serving.canary.as_ref().map(|c| &c.version);
            if let Some(found) = std::iter::once(&serving.primary).chain(canary).find(|v| v.digest == digest)
            {
                return Ok(found.clone());
            }
        }
        let key = (spec.name.clone(), digest.to_string());
        if let Some(found) = self.standby.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let bytes = self
            .store
            .blob(digest)
            .await?
            .with_context(|| format!("the control store has no binary {digest}"))?;
        let engine = self.engine.clone();
        let spec = spec.clone();
        let loaded = tokio::task::spawn_blocking(move || engine.load_bytes(&spec, &bytes))
            .await
            .context("the compile task failed")??;
        self.finish_load(loaded).await
    }

    /// Builds what `record` says serves `spec`'s component.
    async fn serving_for(&self, spec: &ComponentSpec, record: &ActiveRecord) -> anyhow::Result<Serving> {
        let primary = self.prepared(spec, &record.digest).await?;
        let canary = match &record.canary_digest {
            Some(digest) => {
                Some(Canary { version: self.prepared(spec, digest).await?, percent: record.canary_percent })
            }
            None => None,
        };
        Ok(Serving { primary, canary, generation: record.generation })
    }

    /// Makes `record` serve on this host unless something newer already
    /// does. The caller holds `applied`.
    async fn apply(&self, record: &ActiveRecord) -> anyhow::Result<bool> {
        let Some(slot) = self.registry.get(&record.component) else {
            // A component another application version has; not ours.
            return Ok(false);
        };
        let current = slot.serving();
        if current.generation >= record.generation {
            return Ok(false);
        }
        let same = current.primary.digest == record.digest
            && current.canary.as_ref().map(|c| (c.version.digest.as_str(), c.percent))
                == record.canary_digest.as_deref().map(|d| (d, record.canary_percent));
        let next = if same {
            Serving {
                primary: current.primary.clone(),
                canary: current
                    .canary
                    .as_ref()
                    .map(|c| Canary { version: c.version.clone(), percent: c.percent }),
                generation: record.generation,
            }
        } else {
            self.serving_for(&slot.spec, record).await?
        };
        let replaced = current.primary.clone();
        slot.swap(next);
        if !same {
            tracing::info!(
                component = %record.component,
                from = %replaced.short_digest(),
                to = %&record.digest[..12],
                canary = ?record.canary_digest.as_deref().map(|d| (&d[..12], record.canary_percent)),
                generation = record.generation,
                "version swapped"
            );
        }
        self.keep_warm(slot, record, replaced);
        Ok(!same)
    }

    /// Keeps the rollback target loaded; drops standby versions nothing
    /// points at any more (their memory goes when their last invocation ends).
    fn keep_warm(&self, slot: &ComponentSlot, record: &ActiveRecord, replaced: Arc<LoadedComponent>) {
        let mut standby = self.standby.lock().unwrap_or_else(|p| p.into_inner());
        standby.retain(|(component, digest), _| {
            component != &slot.spec.name || record.previous_digest.as_deref() == Some(digest.as_str())
        });
        if record.previous_digest.as_deref() == Some(replaced.digest.as_str()) {
            standby.insert((slot.spec.name.clone(), replaced.digest.clone()), replaced);
        }
    }
}

fn system_time(unix_ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0))
}

/// Unix milliseconds `ago_ms` ago.
fn now_ms_since(ago_ms: i64) -> i64 {
    store::now_ms() - ago_ms
}
