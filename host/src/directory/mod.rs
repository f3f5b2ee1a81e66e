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
//!
//! A move (`crate::moves`) changes an entry: `moving` while its rows are
//! copied, `frozen` for the cut-over, then `serving` on the new shard. Each
//! host learns of it at its control-store sync ([`Directory::sync`]) and
//! syncs fast while an entry is not `serving`. Every invocation holds its
//! merchant's gate ([`Routed`]); freezing takes the gate exclusively, so a
//! host acknowledges a freeze (checks in with its generation) only once no
//! invocation of the merchant is running there. Invariant: after every
//! live host acknowledged the freeze, nothing writes the merchant's rows
//! through a host until the entry names its new shard.

pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::{watch, OwnedRwLockReadGuard, RwLock as Gate};

use crate::bindings::sql::Value;
use crate::shards::{Shard, ShardSet};
pub use store::State;
use store::{DirectoryStore, EntryRow, How};

/// How long an invocation of a frozen merchant waits for its cut-over to
/// end before it is refused (HTTP: 503 with `Retry-After`).
pub const FROZEN_WAIT: Duration = Duration::from_millis(2_000);

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
    /// The merchant is being moved and its cut-over outlasted [`FROZEN_WAIT`].
    #[error("merchant {0} is being moved to another shard; retry shortly")]
    Moving(i64),
}

/// One merchant's entry as this host knows it.
struct Entry {
    /// Its shard (index in the shard set) and state; requests waiting out
    /// a cut-over watch it.
    route: watch::Sender<(usize, State)>,
    /// Held shared by every invocation of the merchant, exclusively by a
    /// freeze (to wait for those in flight).
    gate: Arc<Gate<()>>,
}

impl Entry {
    fn new(index: usize, state: State) -> Arc<Self> {
        Arc::new(Self { route: watch::Sender::new((index, state)), gate: Arc::new(Gate::new(())) })
    }
}

/// Where an invocation of a merchant runs. Holding it keeps the merchant's
/// cut-over from starting on this host: drop it when the invocation ends.
pub struct Routed {
    pub shard: Arc<Shard>,
    _gate: OwnedRwLockReadGuard<()>,
}

/// The directory, as this host knows it, and the way to add to it.
pub struct Directory {
    shards: Arc<ShardSet>,
    store: DirectoryStore,
    entries: RwLock<HashMap<i64, Arc<Entry>>>,
    /// Merchants whose entry is not `serving` (while there are any, hosts
    /// sync fast).
    unsettled: Mutex<HashSet<i64>>,
    /// The control generation of the last sync: every move's change up to
    /// it is applied here (what this host acknowledges at check-in).
    synced: AtomicI64,
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
            unsettled: Mutex::new(HashSet::new()),
            synced: AtomicI64::new(0),
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

    /// The shard set this host routes over.
    pub fn shards(&self) -> &Arc<ShardSet> {
        &self.shards
    }

    /// The directory's rows in the control store.
    pub fn store(&self) -> &DirectoryStore {
        &self.store
    }

    /// Replaces the in-memory copy with the control store's entries.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let generation = self.store.generation().await?;
        let mut entries = HashMap::new();
        let mut unsettled = HashSet::new();
        for row in self.store.entries().await? {
            // Checked at start; a shard removed since is routed nowhere.
            if let Some(index) = self.shards.index_of(&row.shard) {
                entries.insert(row.merchant, Entry::new(index, row.state));
                if row.state != State::Serving {
                    unsettled.insert(row.merchant);
                }
            }
        }
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
        *self.unsettled.lock().unwrap_or_else(|p| p.into_inner()) = unsettled;
        self.synced.fetch_max(generation, Ordering::SeqCst);
        Ok(())
    }

    /// Applies the entries moves changed since the last sync, and returns
    /// the control generation this host now acknowledges. A merchant that
    /// froze is acknowledged only once its invocations in flight here end.
    pub async fn sync(&self) -> anyhow::Result<i64> {
        let generation = self.store.generation().await?;
        let since = self.synced.load(Ordering::SeqCst);
        if generation > since {
            for row in self.store.changed_since(since).await? {
                self.apply(row).await;
            }
            self.synced.fetch_max(generation, Ordering::SeqCst);
        }
        Ok(self.synced.load(Ordering::SeqCst))
    }

    /// The control generation of the last sync.
    pub fn synced_generation(&self) -> i64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// Whether a merchant this host knows of is being moved (then the host
    /// syncs fast: the cut-over waits for every host).
    pub fn moving(&self) -> bool {
        !self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    async fn apply(&self, row: EntryRow) {
        let Some(index) = self.shards.index_of(&row.shard) else {
            tracing::error!(merchant = row.merchant, shard = %row.shard, "the merchant directory moved a merchant to a shard this host's runtime config lacks; its requests fail until the config has it");
            self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(&row.merchant);
            return;
        };
        {
            let mut unsettled = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
            if row.state == State::Serving {
                unsettled.remove(&row.merchant);
            } else {
                unsettled.insert(row.merchant);
            }
        }
        let entry = {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            match entries.get(&row.merchant) {
                Some(entry) => entry.clone(),
                None => {
                    entries.insert(row.merchant, Entry::new(index, row.state));
                    return;
                }
            }
        };
        let before = *entry.route.borrow();
        entry.route.send_replace((index, row.state));
        if row.state == State::Frozen && before.1 != State::Frozen {
            // Waits for the invocations that routed before the freeze.
            let started = Instant::now();
            drop(entry.gate.write().await);
            tracing::info!(
                merchant = row.merchant,
                waited_ms = started.elapsed().as_millis() as u64,
                "merchant frozen for its move's cut-over"
            );
        } else if before != (index, row.state) {
            tracing::info!(merchant = row.merchant, shard = %row.shard, state = row.state.as_str(), "merchant directory entry changed");
        }
    }

    /// The shard of `merchant`, placing it first if it is new (a request:
    /// the only way a merchant comes into being).
    pub async fn place(&self, merchant: i64) -> Result<Routed, RouteError> {
        let entry = match self.cached(merchant) {
            Some(entry) => entry,
            None => self.place_entry(merchant).await?,
        };
        self.enter(merchant, entry).await
    }

    async fn place_entry(&self, merchant: i64) -> Result<Arc<Entry>, RouteError> {
        if let Some(entry) = self.read(merchant).await? {
            return Ok(entry);
        }
        // Its rows may predate the directory on a shard not adopted yet.
        let legacy = self.shards.legacy(merchant);
        if self.is_unadopted(legacy) {
            self.adopt_pending(false).await.map_err(RouteError::Unavailable)?;
            if let Some(entry) = self.read(merchant).await? {
                return Ok(entry);
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
        // A new entry is `serving`; one another host placed may have been
        // moved already: read back.
        self.read(merchant).await?.ok_or(RouteError::Unplaced(merchant))
    }

    /// The shard of `merchant`, if the directory has it (a consumed event:
    /// its merchant was placed when its payment was written).
    pub async fn resolve(&self, merchant: i64) -> Result<Routed, RouteError> {
        let entry = match self.cached(merchant) {
            Some(entry) => entry,
            None => self.read(merchant).await?.ok_or(RouteError::Unplaced(merchant))?,
        };
        self.enter(merchant, entry).await
    }

    /// Takes `entry`'s gate, waiting out a cut-over for up to [`FROZEN_WAIT`].
    async fn enter(&self, merchant: i64, entry: Arc<Entry>) -> Result<Routed, RouteError> {
        let deadline = tokio::time::Instant::now() + FROZEN_WAIT;
        let mut changes = entry.route.subscribe();
        loop {
            // The state is read under the gate: a freeze sets it, then
            // waits for every holder, so a holder that read `serving` is
            // waited for and a later one reads `frozen`.
            let gate = entry.gate.clone().read_owned().await;
            let (index, state) = *changes.borrow_and_update();
            if state != State::Frozen {
                return Ok(Routed { shard: self.shards.get(index).clone(), _gate: gate });
            }
            drop(gate);
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(RouteError::Moving(merchant)),
            }
        }
    }

    fn cached(&self, merchant: i64) -> Option<Arc<Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&merchant).cloned()
    }

    /// The control store's entry for `merchant`, remembered.
    async fn read(&self, merchant: i64) -> Result<Option<Arc<Entry>>, RouteError> {
        let Some(row) = self.store.entry(merchant).await.map_err(RouteError::Unavailable)? else {
            return Ok(None);
        };
        let index = self
            .shards
            .index_of(&row.shard)
            .ok_or_else(|| RouteError::UnknownShard(merchant, row.shard.clone()))?;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        // A sync may have put it there meanwhile; that one is newer.
        let entry = entries.entry(merchant).or_insert_with(|| Entry::new(index, row.state)).clone();
        if row.state != State::Serving {
            self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).insert(merchant);
        }
        Ok(Some(entry))
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
