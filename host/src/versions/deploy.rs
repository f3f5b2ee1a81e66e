//! The operations behind the admin API: upload, activate, roll back, canary,
//! list.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use super::store::{ActiveRecord, Change, ChangeError, DeploymentRecord, HostRecord, Origin, VersionRecord};
use super::{now_ms_since, Versions};
use crate::metrics::StatsSnapshot;

/// Changes shown when one component is listed.
const HISTORY: i64 = 20;

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such component (404).
    #[error("{0}")]
    NotFound(String),
    /// The version or the change is not acceptable; nothing changed (422).
    #[error("{0}")]
    Refused(String),
    /// The control store failed (503).
    #[error("control store: {0:#}")]
    Store(anyhow::Error),
}

impl From<ChangeError> for DeployError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Refused(why) => DeployError::Refused(why),
            ChangeError::Store(e) => DeployError::Store(e),
        }
    }
}

/// What a change did on this host.
#[derive(Debug, serde::Serialize)]
pub struct ChangeReport {
    pub active: ActiveRecord,
    /// Time to prepare (compile or load from cache, check, instantiate) the
    /// version(s) involved, before the swap.
    pub prepare_ms: f64,
}

/// One version as `payfn versions` shows it.
#[derive(Debug, serde::Serialize)]
pub struct VersionView {
    #[serde(flatten)]
    pub record: VersionRecord,
    /// `active`, `canary`, `previous`, or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Invocations on every live host, each since it started (the other
    /// hosts' counts are as of their last check-in).
    pub stats: StatsSnapshot,
    /// Invocations on the host that answered, since it started.
    pub stats_this_host: StatsSnapshot,
}

/// One component: what serves it and every version it had.
#[derive(Debug, serde::Serialize)]
pub struct ComponentView {
    pub component: String,
    pub active: Option<ActiveRecord>,
    /// The change this host serves (it may lag the store by one sync interval).
    pub host_generation: i64,
    pub versions: Vec<VersionView>,
    /// The latest changes, newest first (when one component is listed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<DeploymentRecord>,
}

/// The answer to a listing.
#[derive(Debug, serde::Serialize)]
pub struct Listing {
    pub generation: i64,
    pub components: Vec<ComponentView>,
    /// Hosts seen in the last minute and the change each serves.
    pub hosts: Vec<HostView>,
    /// How many hosts' figures `stats` sums: the live ones, this one
    /// included.
    pub stats_hosts: usize,
}

/// A host as a listing shows it.
#[derive(Debug, serde::Serialize)]
pub struct HostView {
    #[serde(flatten)]
    pub record: HostRecord,
    /// Checked in within [`LIVE_MS`] of the newest check-in: its figures are
    /// summed, and `payfn deploy` waits for it to serve a change.
    pub live: bool,
}

/// How recent a check-in must be, against the newest one, for a host to
/// count as live. Several sync intervals, so one slow round does not drop a
/// host; short enough that a dead host soon leaves. Measured against the
/// newest check-in rather than this host's clock, so one skewed clock does
/// not drop every other host.
pub const LIVE_MS: i64 = 10_000;

impl Versions {
    /// Validates `bytes` as a new version of `component` and records it. It
    /// serves nobody until activated; it is kept loaded for that.
    pub async fn upload(
        &self,
        component: &str,
        bytes: Vec<u8>,
        label: Option<String>,
        actor: &str,
    ) -> Result<(VersionRecord, f64), DeployError> {
        let slot = self.slot(component)?;
        let started = Instant::now();
        let engine = self.engine.clone();
        let spec = slot.spec.clone();
        // Compiling takes a core for a second or more: never on a runtime
        // worker that serves requests.
        let (loaded, bytes) = tokio::task::spawn_blocking(move || {
            let loaded = engine.load_bytes(&spec, &bytes);
            (loaded, bytes)
        })
        .await
        .map_err(|e| DeployError::Store(anyhow::anyhow!("the compile task failed: {e}")))?;
        let loaded = loaded.map_err(|e| DeployError::Refused(format!("{e:#}")))?;
        let loaded = self.finish_load(loaded).await.map_err(|e| DeployError::Refused(format!("{e:#}")))?;
        let prepare_ms = started.elapsed().as_secs_f64() * 1e3;
        let label = label.unwrap_or_else(|| loaded.short_digest().to_string());
        let record = self
            .store
            .put_version(component, &loaded.digest, &label, actor, &bytes)
            .await
            .map_err(DeployError::Store)?;
        self.standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((component.to_string(), loaded.digest.clone()), loaded);
        Ok((record, prepare_ms))
    }

    /// Makes the version `selector` (a digest, a digest prefix or a label)
    /// serve every invocation of `component`.
    pub async fn activate(
        &self,
        component: &str,
        selector: &str,
        origin: Origin,
        actor: &str,
    ) -> Result<ChangeReport, DeployError> {
        let digest = self.resolve(component, selector).await?;
        self.change(component, Change::Activate { digest, origin }, actor).await
    }

    /// Returns `component` to its previous version, or ends its canary.
    pub async fn rollback(&self, component: &str, actor: &str) -> Result<ChangeReport, DeployError> {
        self.change(component, Change::Rollback, actor).await
    }

    /// Sends `percent` of merchants to version `selector` of `component`.
    pub async fn canary(
        &self,
        component: &str,
        selector: &str,
        percent: u8,
        actor: &str,
    ) -> Result<ChangeReport, DeployError> {
        let digest = self.resolve(component, selector).await?;
        self.change(component, Change::Canary { digest, percent }, actor).await
    }

    /// Records `change` and applies it here at once; other hosts follow
    /// within one sync interval. The version is prepared on this host
    /// before anything is recorded, so a change is never published that
    /// this host could not serve.
    async fn change(
        &self,
        component: &str,
        change: Change,
        actor: &str,
    ) -> Result<ChangeReport, DeployError> {
        let slot = self.slot(component)?;
        let started = Instant::now();
        let target = match change.digest() {
            Some(digest) => Some(digest.to_string()),
            // A rollback's target is the previous version; ending a canary
            // needs nothing new.
            None => {
                let active = self.store.active().await.map_err(DeployError::Store)?;
                active
                    .into_iter()
                    .find(|a| a.component == component && a.canary_digest.is_none())
                    .and_then(|a| a.previous_digest)
            }
        };
        if let Some(digest) = &target {
            self.prepared(&slot.spec, digest).await.map_err(|e| DeployError::Refused(format!("{e:#}")))?;
        }
        let prepare_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut applied = self.applied.lock().await;
        let active = self.store.change(component, change, actor).await?;
        self.apply(&active)
            .await
            .with_context(|| format!("applying generation {} on this host", active.generation))
            .map_err(DeployError::Store)?;
        // `applied` means "every change up to here": it moves only if no
        // change made through another host lies in between (the sync round
        // applies those, then moves it).
        if *applied == active.generation - 1 {
            *applied = active.generation;
        }
        let served = *applied;
        drop(applied);
        self.saw_store_generation(active.generation);
        self.synced(served);
        if let Err(e) = self.check_in(served).await {
            tracing::warn!("check-in after a change failed (the next sync round retries): {e:#}");
        }
        Ok(ChangeReport { active, prepare_ms })
    }

    /// Every component (or one) with its versions, roles and figures.
    pub async fn list(&self, component: Option<&str>) -> Result<Listing, DeployError> {
        if let Some(name) = component {
            self.slot(name)?;
        }
        let generation = self.store.generation().await.map_err(DeployError::Store)?;
        let active = self.store.active().await.map_err(DeployError::Store)?;
        let hosts = self.store.hosts(now_ms_since(60_000)).await.map_err(DeployError::Store)?;
        let newest = hosts.iter().map(|h| h.seen_at).max().unwrap_or(0);
        let hosts: Vec<HostView> = hosts
            .into_iter()
            .map(|record| HostView { live: record.seen_at >= newest - LIVE_MS, record })
            .collect();
        // Other live hosts' figures from their last check-in; this host's live.
        let others: Vec<&HostRecord> =
            hosts.iter().filter(|h| h.live && h.record.host_id != self.host.id).map(|h| &h.record).collect();
        let mut versions = self.store.versions(component).await.map_err(DeployError::Store)?;
        let mut components = Vec::new();
        for slot in self.registry.iter().filter(|s| component.is_none_or(|c| c == s.spec.name)) {
            let name = &slot.spec.name;
            let record = active.iter().find(|a| &a.component == name).cloned();
            let mine: Vec<VersionRecord> = {
                let (mine, rest) = versions.drain(..).partition(|v| &v.component == name);
                versions = rest;
                mine
            };
            let views = mine
                .into_iter()
                .map(|v| {
                    let role = record.as_ref().and_then(|a| {
                        if a.digest == v.digest {
                            Some("active")
                        } else if a.canary_digest.as_deref() == Some(v.digest.as_str()) {
                            Some("canary")
                        } else if a.previous_digest.as_deref() == Some(v.digest.as_str()) {
                            Some("previous")
                        } else {
                            None
                        }
                    });
                    let local = self.stats_for(name, &v.digest).counts();
                    let mut all = local.clone();
                    for host in &others {
                        if let Some(counts) = host.stats.get(name).and_then(|c| c.get(&v.digest)) {
                            all.add(counts);
                        }
                    }
                    VersionView { record: v, role, stats: all.snapshot(), stats_this_host: local.snapshot() }
                })
                .collect();
            let history = match component {
                Some(_) => self.store.history(name, HISTORY).await.map_err(DeployError::Store)?,
                None => Vec::new(),
            };
            components.push(ComponentView {
                component: name.clone(),
                active: record,
                host_generation: slot.serving().generation,
                versions: views,
                history,
            });
        }
        let stats_hosts = others.len() + 1;
        Ok(Listing { generation, components, hosts, stats_hosts })
    }

    fn slot(&self, component: &str) -> Result<&Arc<super::live::ComponentSlot>, DeployError> {
        self.registry.get(component).ok_or_else(|| {
            let known: Vec<_> = self.registry.iter().map(|s| s.spec.name.as_str()).collect();
            DeployError::NotFound(format!(
                "no component `{component}` in spin.toml (components: {})",
                known.join(", ")
            ))
        })
    }

    /// The digest `selector` names among `component`'s versions: a full
    /// digest, a unique prefix of at least 6 hex digits, or a label.
    async fn resolve(&self, component: &str, selector: &str) -> Result<String, DeployError> {
        let versions = self.store.versions(Some(component)).await.map_err(DeployError::Store)?;
        let by_digest: Vec<_> = versions
            .iter()
            .filter(|v| selector.len() >= 6 && v.digest.starts_with(&selector.to_ascii_lowercase()))
            .collect();
        let by_label: Vec<_> = versions.iter().filter(|v| v.label == selector).collect();
        match (by_digest.as_slice(), by_label.as_slice()) {
            ([one], _) => Ok(one.digest.clone()),
            ([], [one]) => Ok(one.digest.clone()),
            ([], []) => Err(DeployError::Refused(format!(
                "`{component}` has no version `{selector}` (`payfn versions {component}` lists them)"
            ))),
            (_, many) if many.len() > 1 => Err(DeployError::Refused(format!(
                "`{selector}` labels {} versions of `{component}`; name one by digest",
                many.len()
            ))),
            _ => Err(DeployError::Refused(format!(
                "`{selector}` matches several versions of `{component}`; give more digits"
            ))),
        }
    }
}
