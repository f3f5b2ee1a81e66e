//! The merchant directory's rows in the control store (the database every
//! host of a deployment shares; `crate::versions::store`).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use sqlx::{AnyPool, Row};

use crate::capabilities::sql::placeholders;
use crate::versions::store::{now_ms, ControlDialect, ControlStore};

/// How often placing a merchant is tried before its request gets 503.
const PLACE_TRIES: u64 = 3;

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

    /// Every entry: merchant -> shard name.
    pub async fn entries(&self) -> anyhow::Result<HashMap<i64, String>> {
        let rows = sqlx::query("SELECT merchant_id, shard FROM merchant_directory")
            .fetch_all(&self.pool)
            .await
            .context("reading the merchant directory")?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    /// The shard `merchant` is on, if it has an entry.
    pub async fn entry(&self, merchant: i64) -> anyhow::Result<Option<String>> {
        let row = sqlx::query(&self.sql("SELECT shard FROM merchant_directory WHERE merchant_id = ?"))
            .bind(merchant)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading merchant {merchant}'s directory entry"))?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
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
                (_, Some(shard)) => return Ok(shard),
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
