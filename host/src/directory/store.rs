//! The merchant directory's rows in the control store (the database every
//! host of a deployment shares; `crate::versions::store`).

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use sqlx::{AnyPool, Row};

use crate::shards::placeholders;
use crate::versions::store::{now_ms, ControlDialect, ControlStore};

/// How often placing a merchant is tried before its request gets 503.
const PLACE_TRIES: u64 = 3;

/// Whether a merchant is being moved (docs/ARCHITECTURE.md "Merchant moves").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Served on its shard.
    Serving,
    /// Its rows are being copied to another shard; still served here, and
    /// hosts sync fast so the cut-over is short.
    Moving,
    /// The cut-over: its invocations wait (or get 503) until it is served
    /// on its new shard.
    Frozen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Serving => "serving",
            State::Moving => "moving",
            State::Frozen => "frozen",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "serving" => State::Serving,
            "moving" => State::Moving,
            "frozen" => State::Frozen,
            other => anyhow::bail!("unknown merchant directory state `{other}`"),
        })
    }
}

/// One merchant's entry.
#[derive(Debug, Clone)]
pub struct EntryRow {
    pub merchant: i64,
    pub shard: String,
    pub state: State,
}

fn entry_row(row: &sqlx::any::AnyRow) -> anyhow::Result<EntryRow> {
    let state: String = row.try_get(2)?;
    Ok(EntryRow { merchant: row.try_get(0)?, shard: row.try_get(1)?, state: State::parse(&state)? })
}

/// How a merchant got its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Placed by the rule for new merchants, at its first request.
    Placed,
    /// Found on a shard that held it before the directory existed.
    Adopted,
    /// `[routing] pins` of the runtime config.
    Pinned,
}

impl How {
    fn as_str(self) -> &'static str {
        match self {
            How::Placed => "placed",
            How::Adopted => "adopted",
            How::Pinned => "pinned",
        }
    }
}

/// The directory's tables, on the control store's pool.
#[derive(Clone)]
pub struct DirectoryStore {
    pool: AnyPool,
    dialect: ControlDialect,
}

impl DirectoryStore {
    pub fn new(control: &ControlStore) -> Self {
        let (pool, dialect) = control.pool();
        Self { pool, dialect }
    }

    fn sql<'a>(&self, statement: &'a str) -> std::borrow::Cow<'a, str> {
        if self.dialect == ControlDialect::Postgres {
            placeholders::numbered(statement)
        } else {
            statement.into()
        }
    }

    /// The pool and its dialect (the moves' table shares it).
    pub fn pool(&self) -> (&AnyPool, ControlDialect) {
        (&self.pool, self.dialect)
    }

    /// The control generation now: read before [`changed_since`](Self::changed_since),
    /// every entry change up to it is then seen (a move changes an entry
    /// and bumps the generation in one transaction).
    pub async fn generation(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT generation FROM control_generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the control generation")?;
        Ok(row.try_get(0)?)
    }

    /// Every entry.
    pub async fn entries(&self) -> anyhow::Result<Vec<EntryRow>> {
        let rows = sqlx::query("SELECT merchant_id, shard, state FROM merchant_directory")
            .fetch_all(&self.pool)
            .await
            .context("reading the merchant directory")?;
        rows.iter().map(entry_row).collect()
    }

    /// The entries a move changed after `generation`.
    pub async fn changed_since(&self, generation: i64) -> anyhow::Result<Vec<EntryRow>> {
        let rows = sqlx::query(
            &self
                .sql("SELECT merchant_id, shard, state FROM merchant_directory WHERE changed_generation > ?"),
        )
        .bind(generation)
        .fetch_all(&self.pool)
        .await
        .context("reading the merchant directory's changes")?;
        rows.iter().map(entry_row).collect()
    }

    /// `merchant`'s entry, if it has one.
    pub async fn entry(&self, merchant: i64) -> anyhow::Result<Option<EntryRow>> {
        let row = sqlx::query(
            &self.sql("SELECT merchant_id, shard, state FROM merchant_directory WHERE merchant_id = ?"),
        )
        .bind(merchant)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("reading merchant {merchant}'s directory entry"))?;
        row.as_ref().map(entry_row).transpose()
    }

    /// Records `merchant` on `shard` unless it has an entry already (another
    /// host may have placed it a moment before); returns the entry's shard,
    /// which all hosts then agree on.
    pub async fn place(&self, merchant: i64, shard: &str, how: How) -> anyhow::Result<String> {
        // An insert that yields to an existing row, without the gap locks
        // of an `INSERT ... SELECT` (MariaDB deadlocked two placements).
        let insert = match self.dialect {
            ControlDialect::Mysql => {
                "INSERT IGNORE INTO merchant_directory (merchant_id, shard, how, placed_at) VALUES (?, ?, ?, ?)"
            }
            ControlDialect::Sqlite | ControlDialect::Postgres => {
                "INSERT INTO merchant_directory (merchant_id, shard, how, placed_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (merchant_id) DO NOTHING"
            }
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let inserted = sqlx::query(&self.sql(insert))
                .bind(merchant)
                .bind(shard.to_string())
                .bind(how.as_str())
                .bind(now_ms())
                .execute(&self.pool)
                .await;
            match (inserted, self.entry(merchant).await?) {
                (_, Some(entry)) => return Ok(entry.shard),
                // A deadlock or a lost connection: again, a few times.
                (Err(e), None) if tries >= PLACE_TRIES => {
                    return Err(e).with_context(|| format!("placing merchant {merchant} on shard {shard}"))
                }
                (Err(e), None) => tracing::debug!(merchant, "placing again: {e}"),
                (Ok(_), None) => {
                    anyhow::bail!("merchant {merchant}'s directory entry vanished after it was written")
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
        }
    }

    /// The shards whose merchants were adopted.
    pub async fn adopted(&self) -> anyhow::Result<HashSet<String>> {
        let rows = sqlx::query("SELECT shard FROM directory_shards")
            .fetch_all(&self.pool)
            .await
            .context("reading the adopted shards")?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Records `merchants`, found on `shard`, as its own unless the
    /// directory has them already, and marks `shard` adopted, in one
    /// transaction. Returns the merchants it has on another shard (their
    /// rows are split across shards: the caller refuses to go on).
    pub async fn adopt(&self, shard: &str, merchants: &[i64]) -> anyhow::Result<Vec<(i64, String)>> {
        let mut tx = self.pool.begin().await.context("adopting a shard's merchants")?;
        let mut elsewhere = Vec::new();
        for &merchant in merchants {
            let existing =
                sqlx::query(&self.sql("SELECT shard FROM merchant_directory WHERE merchant_id = ?"))
                    .bind(merchant)
                    .fetch_optional(&mut *tx)
                    .await?;
            match existing.map(|row| row.try_get::<String, _>(0)).transpose()? {
                Some(other) if other != shard => elsewhere.push((merchant, other)),
                Some(_) => {}
                None => {
                    sqlx::query(&self.sql(
                        "INSERT INTO merchant_directory (merchant_id, shard, how, placed_at) VALUES (?, ?, ?, ?)",
                    ))
                    .bind(merchant)
                    .bind(shard.to_string())
                    .bind(How::Adopted.as_str())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        if !elsewhere.is_empty() {
            tx.rollback().await?;
            return Ok(elsewhere);
        }
        sqlx::query(
            &self.sql("INSERT INTO directory_shards (shard, adopted_at, merchants) VALUES (?, ?, ?)"),
        )
        .bind(shard.to_string())
        .bind(now_ms())
        .bind(merchants.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.with_context(|| format!("adopting shard {shard}'s merchants"))?;
        Ok(Vec::new())
    }

    /// How many merchants the directory has on each shard.
    pub async fn merchants_per_shard(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT shard, COUNT(*) FROM merchant_directory GROUP BY shard")
            .fetch_all(&self.pool)
            .await
            .context("counting merchants per shard")?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }
}
