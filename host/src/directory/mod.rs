//! The merchant directory: which shard holds each merchant.
//!
//! Every host routes by it. An entry is written once, in the control store
//! every host shares ([`store`]), when a merchant is first placed: by the
//! runtime config's pins, by adoption (a shard that held merchants before
//! the directory existed is scanned once), or at the merchant's first
//! request, by the placement rule for new merchants
//! ([`ShardSet::place_new`]: the shards with `accept_new`, by weight). So
//! adding a shard moves nobody: existing merchants keep their entries and
//! only new ones may land on it. A start whose runtime config drops or
//! renames a shard the directory still has merchants on is refused.
//!
//! The request path reads an in-memory copy; a merchant it lacks is read
//! from the control store (another host may have placed it) before being
//! placed. Invariant: once a merchant has an entry, every host routes it
//! there; a host never routes a merchant by the rule without recording it
//! first.

pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::bindings::sql::Value;
use crate::capabilities::sql::{Shard, ShardSet};
use store::{DirectoryStore, How};

/// How often a shard whose merchants are not adopted yet (it was
/// unreachable) is tried again, at most.
const ADOPT_RETRY: Duration = Duration::from_secs(1);

/// Why a merchant has no shard to go to.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The control store could not be read or written; retry.
    #[error("the merchant directory is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// A new merchant, and no shard takes new merchants.
    #[error("no shard takes new merchants (`accept_new` and `weight` in [[shards]])")]
    NoShardOpen,
    /// A merchant without an entry whose rows may be on a shard not adopted
    /// yet (unreachable since start): placing it elsewhere could split it.
    #[error("shard `{0}` is not adopted into the merchant directory yet (unreachable since start)")]
    NotAdopted(String),
    /// The entry names a shard this host's runtime config lacks.
    #[error("merchant {0} is on shard `{1}`, which this host's runtime config does not have")]
    UnknownShard(i64, String),
    /// Asked without placing (a consumed event), and the merchant has none.
    #[error("merchant {0} has no shard in the merchant directory")]
    Unplaced(i64),
}

/// The directory, as this host knows it, and the way to add to it.
pub struct Directory {
    shards: Arc<ShardSet>,
    store: DirectoryStore,
    /// merchant -> index in `shards`.
    entries: RwLock<HashMap<i64, usize>>,
    /// Shards not adopted yet, and when adopting them was last tried.
    unadopted: Mutex<(HashSet<usize>, Option<Instant>)>,
}

impl Directory {
    /// Loads the directory and brings it up to date with the runtime
    /// config: refuses a config that lacks a shard the directory has
    /// merchants on, records the pins, and adopts the merchants of every
    /// reachable shard not adopted yet.
    pub async fn open(shards: Arc<ShardSet>, store: DirectoryStore) -> anyhow::Result<Self> {
        let missing = store.merchants_per_shard().await?;
        let missing: Vec<String> = missing
            .into_iter()
            .filter(|(shard, _)| shards.index_of(shard).is_none())
            .map(|(shard, merchants)| format!("`{shard}` ({merchants} merchants)"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "runtime config: the merchant directory has merchants on {}, which [[shards]] no longer \
                 defines; keep the shard until its merchants are moved (`payfn shards move`)",
                missing.join(", ")
            );
        }
        for &(merchant, index) in shards.pins() {
            let pinned = &shards.get(index).name;
            let entry = store.place(merchant, pinned, How::Pinned).await?;
            if &entry != pinned {
                bail!(
                    "runtime config: routing.pins puts merchant {merchant} on `{pinned}`, but the merchant \
                     directory has it on `{entry}`; remove the pin, or move the merchant (`payfn shards move`)"
                );
            }
        }
        let adopted = store.adopted().await?;
        let unadopted: HashSet<usize> =
            (0..shards.len()).filter(|&i| !adopted.contains(&shards.get(i).name)).collect();
        let directory = Self {
            shards,
            store,
            entries: RwLock::new(HashMap::new()),
            unadopted: Mutex::new((unadopted, None)),
        };
        directory.adopt_pending(true).await?;
        directory.reload().await?;
        Ok(directory)
    }

    /// How many merchants this host knows the shard of.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the in-memory copy with the control store's entries.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let mut entries = HashMap::new();
        for (merchant, shard) in self.store.entries().await? {
            // Checked at start; a shard removed since is routed nowhere.
            if let Some(index) = self.shards.index_of(&shard) {
                entries.insert(merchant, index);
            }
        }
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
        Ok(())
    }

    /// The shard of `merchant`, placing it first if it is new (a request:
    /// the only way a merchant comes into being).
    pub async fn place(&self, merchant: i64) -> Result<Arc<Shard>, RouteError> {
        if let Some(shard) = self.cached(merchant) {
            return Ok(shard);
        }
        if let Some(shard) = self.read(merchant).await? {
            return Ok(shard);
        }
        // Its rows may predate the directory on a shard not adopted yet.
        let legacy = self.shards.legacy(merchant);
        if self.is_unadopted(legacy) {
            self.adopt_pending(false).await.map_err(RouteError::Unavailable)?;
            if let Some(shard) = self.read(merchant).await? {
                return Ok(shard);
            }
            if self.is_unadopted(legacy) {
                return Err(RouteError::NotAdopted(self.shards.get(legacy).name.clone()));
            }
        }
        let index = self.shards.place_new(merchant).ok_or(RouteError::NoShardOpen)?;
        let name = &self.shards.get(index).name;
        let entry = self.store.place(merchant, name, How::Placed).await.map_err(RouteError::Unavailable)?;
        if &entry == name {
            tracing::info!(merchant, shard = %name, "merchant placed");
        }
        self.remember(merchant, &entry)
    }

    /// The shard of `merchant`, if the directory has it (a consumed event:
    /// its merchant was placed when its payment was written).
    pub async fn resolve(&self, merchant: i64) -> Result<Arc<Shard>, RouteError> {
        if let Some(shard) = self.cached(merchant) {
            return Ok(shard);
        }
        self.read(merchant).await?.ok_or(RouteError::Unplaced(merchant))
    }

    fn cached(&self, merchant: i64) -> Option<Arc<Shard>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(&merchant).map(|&index| self.shards.get(index).clone())
    }

    /// The control store's entry for `merchant`, remembered.
    async fn read(&self, merchant: i64) -> Result<Option<Arc<Shard>>, RouteError> {
        match self.store.entry(merchant).await.map_err(RouteError::Unavailable)? {
            Some(shard) => self.remember(merchant, &shard).map(Some),
            None => Ok(None),
        }
    }

    fn remember(&self, merchant: i64, shard: &str) -> Result<Arc<Shard>, RouteError> {
        let index = self
            .shards
            .index_of(shard)
            .ok_or_else(|| RouteError::UnknownShard(merchant, shard.to_string()))?;
        self.entries.write().unwrap_or_else(|p| p.into_inner()).insert(merchant, index);
        Ok(self.shards.get(index).clone())
    }

    fn is_unadopted(&self, index: usize) -> bool {
        self.unadopted.lock().unwrap_or_else(|p| p.into_inner()).0.contains(&index)
    }

    /// Adopts every shard not adopted yet that answers (at most once per
    /// [`ADOPT_RETRY`] unless `now`). A merchant with rows on two shards
    /// fails it: which copy is right is the operator's call.
    async fn adopt_pending(&self, now: bool) -> anyhow::Result<()> {
        let pending: Vec<usize> = {
            let mut unadopted = self.unadopted.lock().unwrap_or_else(|p| p.into_inner());
            if unadopted.0.is_empty() || (!now && unadopted.1.is_some_and(|at| at.elapsed() < ADOPT_RETRY)) {
                return Ok(());
            }
            unadopted.1 = Some(Instant::now());
            unadopted.0.iter().copied().collect()
        };
        for index in pending {
            let shard = self.shards.get(index);
            let merchants = match merchants_on(shard).await {
                Ok(merchants) => merchants,
                Err(e) => {
                    tracing::warn!(
                        shard = %shard.name,
                        "cannot adopt the shard's merchants into the directory yet ({e}); new merchants whose \
                         rows could be there wait for it"
                    );
                    continue;
                }
            };
            let elsewhere = self.store.adopt(&shard.name, &merchants).await?;
            if let Some((merchant, other)) = elsewhere.first() {
                bail!(
                    "merchant {merchant} has rows on shard `{}`, but the merchant directory has it on `{other}` \
                     ({} such merchants): its rows are split across shards; move them together before \
                     starting",
                    shard.name,
                    elsewhere.len()
                );
            }
            tracing::info!(shard = %shard.name, merchants = merchants.len(), "shard adopted into the merchant directory");
            self.unadopted.lock().unwrap_or_else(|p| p.into_inner()).0.remove(&index);
        }
        Ok(())
    }
}

/// Every merchant with rows on `shard`.
async fn merchants_on(shard: &Shard) -> anyhow::Result<Vec<i64>> {
    let mut tx = shard.begin(false).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let rows = tx
        .query(
            "SELECT merchant_id FROM payments UNION SELECT merchant_id FROM idempotency_keys \
             UNION SELECT merchant_id FROM settlements UNION SELECT merchant_id FROM outbox",
            Vec::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"));
    tx.rollback().await;
    rows?
        .rows
        .into_iter()
        .map(|row| match row.into_iter().next() {
            Some(Value::Int64(id)) => Ok(id),
            other => bail!("a merchant id that is not an integer: {other:?}"),
        })
        .collect()
}
