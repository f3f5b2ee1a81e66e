//! How a change made through one host reaches every other: each host reads
//! the control generation every `[control] sync_interval_ms` and, when it
//! moved, applies every active record newer than what it serves. It also
//! checks in, so `payfn versions` can say which hosts serve which change.
//! The merchant directory syncs in the same round; while a merchant is
//! being moved the rounds come every [`MOVING_INTERVAL`], so a cut-over
//! is acknowledged and ended within a few of them.

use std::sync::Arc;
use std::time::Duration;

use super::store::{now_ms, HostRecord, HostStats};
use super::Versions;
use crate::directory::Directory;

/// The sync interval while a merchant this host knows of is being moved.
pub const MOVING_INTERVAL: Duration = Duration::from_millis(25);

impl Versions {
    /// Starts the sync task (versions and the merchant `directory`); it
    /// runs until the process ends.
    pub fn start_sync(self: &Arc<Self>, interval: Duration, directory: Arc<Directory>) {
        let _ = self.directory.set(directory);
        let versions = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match versions.sync_once().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("control store reachable again");
                    }
                    Ok(()) => {}
                    // Serving goes on with what is loaded; only changes wait.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("control store sync failed (serving the loaded versions): {e:#}");
                    }
                    Err(e) => tracing::debug!("control store sync still failing: {e:#}"),
                }
                let moving = versions.directory.get().is_some_and(|d| d.moving());
                tokio::time::sleep(if moving { interval.min(MOVING_INTERVAL) } else { interval }).await;
            }
        });
    }

    /// One round: apply what changed, then check in.
    pub async fn sync_once(&self) -> anyhow::Result<()> {
        let generation = self.store.generation().await?;
        self.saw_store_generation(generation);
        let served = {
            let mut applied = self.applied.lock().await;
            if generation > *applied {
                for record in self.store.active().await? {
                    if let Err(e) = self.apply(&record).await {
                        // Keep serving the old version; try again next round.
                        tracing::error!(component = %record.component, "cannot apply generation {}: {e:#}", record.generation);
                        return Err(e);
                    }
                }
                *applied = generation;
            }
            *applied
        };
        if let Some(directory) = self.directory.get() {
            directory.sync().await?;
        }
        self.synced(served);
        self.check_in(served).await
    }

    /// Records in the control store that this host serves `generation`,
    /// with its per-version figures. The generation acknowledged is no
    /// newer than the directory's last sync: a move's cut-over waits for
    /// every host to acknowledge its freeze.
    pub(super) async fn check_in(&self, generation: i64) -> anyhow::Result<()> {
        let generation = match self.directory.get() {
            Some(directory) => generation.min(directory.synced_generation()),
            None => generation,
        };
        self.store
            .check_in(&HostRecord {
                host_id: self.host.id.clone(),
                address: self.host.address.clone(),
                started_at: self.host.started_at,
                seen_at: now_ms(),
                generation,
                stats: self.local_stats(),
            })
            .await
    }

    /// This host's counts of every version that has served here.
    fn local_stats(&self) -> HostStats {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = HostStats::new();
        for ((component, digest), version) in stats.iter() {
            let counts = version.counts();
            if counts.invocations > 0 {
                out.entry(component.clone()).or_default().insert(digest.clone(), counts);
            }
        }
        out
    }
}
