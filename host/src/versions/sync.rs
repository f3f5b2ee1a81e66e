//! How a change made through one host reaches every other: each host reads
//! the control generation every `[control] sync_interval_ms` and, when it
//! moved, applies every active record newer than what it serves. It also
//! checks in, so `payfn versions` can say which hosts serve which change.

use std::sync::Arc;
use std::time::Duration;

use super::store::{now_ms, HostRecord, HostStats};
use super::Versions;

impl Versions {
    /// Starts the sync task; it runs until the process ends.
    pub fn start_sync(self: &Arc<Self>, interval: Duration) {
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
                tokio::time::sleep(interval).await;
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
        self.synced(served);
        self.check_in(served).await
    }

    /// Records in the control store that this host serves `generation`,
    /// with its per-version figures.
    pub(super) async fn check_in(&self, generation: i64) -> anyhow::Result<()> {
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
