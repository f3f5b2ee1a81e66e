//! The moves' rows in the control store (`merchant_moves`), and the
//! directory changes a move makes. Every step that changes the merchant's
//! entry bumps the control generation in the same transaction, so a host
//! that checked in with that generation has seen the change.

use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::directory::store::DirectoryStore;
use crate::directory::State;
use crate::shards::placeholders;
// `lock` bumps the control generation, taking its row lock, which
// serialises every change (versions and moves alike).
use crate::versions::store::{lock, now_ms, ControlDialect};

/// Where a move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The rows go across while the merchant is served on its source.
    Copying,
    /// The cut-over: hosts hold the merchant's invocations; the last
    /// changes are copied and the copy verified.
    Frozen,
    /// The merchant is served on its target; the source's rows go.
    Cleanup,
    Done,
    /// Undoing: the merchant is served on its source; the target's copy goes.
    RollingBack,
    RolledBack,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Copying => "copying",
            Step::Frozen => "frozen",
            Step::Cleanup => "cleanup",
            Step::Done => "done",
            Step::RollingBack => "rolling_back",
            Step::RolledBack => "rolled_back",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "copying" => Step::Copying,
            "frozen" => Step::Frozen,
            "cleanup" => Step::Cleanup,
            "done" => Step::Done,
            "rolling_back" => Step::RollingBack,
            "rolled_back" => Step::RolledBack,
            other => anyhow::bail!("unknown move step `{other}`"),
        })
    }

    /// Whether the move is over.
    pub fn is_final(self) -> bool {
        matches!(self, Step::Done | Step::RolledBack)
    }
}

/// One move, as the control store has it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveRecord {
    pub id: i64,
    pub merchant: i64,
    pub from: String,
    pub to: String,
    pub step: Step,
    pub owner: String,
    pub owner_seen_at: i64,
    pub started_at: i64,
    pub step_at: i64,
    pub finished_at: Option<i64>,
    pub rows_copied: i64,
    pub pause_ms: Option<i64>,
    pub step_generation: i64,
    pub watermark_ms: i64,
    pub detail: Option<String>,
}

const COLUMNS: &str =
    "id, merchant_id, from_shard, to_shard, step, owner, owner_seen_at, started_at, step_at, \
                       finished_at, rows_copied, pause_ms, step_generation, watermark_ms, detail";

fn record(row: &AnyRow) -> anyhow::Result<MoveRecord> {
    let step: String = row.try_get(4)?;
    Ok(MoveRecord {
        id: row.try_get(0)?,
        merchant: row.try_get(1)?,
        from: row.try_get(2)?,
        to: row.try_get(3)?,
        step: Step::parse(&step)?,
        owner: row.try_get(5)?,
        owner_seen_at: row.try_get(6)?,
        started_at: row.try_get(7)?,
        step_at: row.try_get(8)?,
        finished_at: row.try_get(9)?,
        rows_copied: row.try_get(10)?,
        pause_ms: row.try_get(11)?,
        step_generation: row.try_get(12)?,
        watermark_ms: row.try_get(13)?,
        detail: row.try_get(14)?,
    })
}

/// Why a move cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("merchant {0} has no entry in the merchant directory (it has never been served)")]
    Unknown(i64),
    #[error("merchant {0} is on shard `{1}` already")]
    AlreadyThere(i64, String),
    #[error("merchant {0} is being moved already (move {1})")]
    Busy(i64, i64),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// The `merchant_moves` table and the directory entries moves change.
#[derive(Clone)]
pub struct MoveStore {
    pool: AnyPool,
    dialect: ControlDialect,
}

impl MoveStore {
    pub fn new(directory: &DirectoryStore) -> Self {
        let (pool, dialect) = directory.pool();
        Self { pool: pool.clone(), dialect }
    }

    fn sql<'a>(&self, statement: &'a str) -> std::borrow::Cow<'a, str> {
        if self.dialect == ControlDialect::Postgres {
            placeholders::numbered(statement)
        } else {
            statement.into()
        }
    }

    /// Records a new move of `merchant` to `to` and marks its entry
    /// `moving`, unless it is moving already or is there.
    pub async fn start(&self, merchant: i64, to: &str, owner: &str) -> Result<MoveRecord, StartError> {
        let mut tx = self.pool.begin().await.context("starting a move")?;
        let generation = lock(&mut tx, 1).await?;
        let entry = sqlx::query(&self.sql("SELECT shard FROM merchant_directory WHERE merchant_id = ?"))
            .bind(merchant)
            .fetch_optional(&mut *tx)
            .await
            .context("reading the merchant's entry")?;
        let from: String = match entry {
            Some(row) => row.try_get(0).context("reading the merchant's entry")?,
            None => return Err(StartError::Unknown(merchant)),
        };
        let busy = sqlx::query(&self.sql(
            "SELECT id FROM merchant_moves WHERE merchant_id = ? AND step NOT IN ('done', 'rolled_back')",
        ))
        .bind(merchant)
        .fetch_optional(&mut *tx)
        .await
        .context("reading the merchant's moves")?;
        if let Some(row) = busy {
            return Err(StartError::Busy(merchant, row.try_get(0).context("reading a move")?));
        }
        if from == to {
            return Err(StartError::AlreadyThere(merchant, from));
        }
        let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 FROM merchant_moves")
            .fetch_one(&mut *tx)
            .await
            .context("numbering the move")?
            .try_get(0)
            .context("numbering the move")?;
        let now = now_ms();
        sqlx::query(&self.sql(
            "INSERT INTO merchant_moves (id, merchant_id, from_shard, to_shard, step, owner, owner_seen_at, \
             started_at, step_at, rows_copied, step_generation, watermark_ms) \
             VALUES (?, ?, ?, ?, 'copying', ?, ?, ?, ?, 0, ?, 0)",
        ))
        .bind(id)
        .bind(merchant)
        .bind(from.clone())
        .bind(to.to_string())
        .bind(owner.to_string())
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(generation)
        .execute(&mut *tx)
        .await
        .context("recording the move")?;
        set_entry(&mut tx, self.dialect, merchant, &from, State::Moving, generation).await?;
        tx.commit().await.context("recording the move")?;
        self.get(id).await?.ok_or_else(|| StartError::Store(anyhow::anyhow!("move {id} vanished")))
    }

    /// Moves `record` to `step`, and the merchant's entry to `entry` if
    /// given (bumping the generation). Returns the record as stored. Fails
    /// if another host took the move over.
    pub async fn advance(
        &self,
        record: &MoveRecord,
        step: Step,
        entry: Option<(&str, State)>,
        pause_ms: Option<i64>,
        detail: Option<&str>,
    ) -> anyhow::Result<MoveRecord> {
        let mut tx = self.pool.begin().await.context("recording a move's step")?;
        let generation = match entry {
            Some((shard, state)) => {
                let generation = lock(&mut tx, 1).await?;
                set_entry(&mut tx, self.dialect, record.merchant, shard, state, generation).await?;
                generation
            }
            None => record.step_generation,
        };
        let now = now_ms();
        let finished = step.is_final().then_some(now);
        let updated = sqlx::query(&self.sql(
            "UPDATE merchant_moves SET step = ?, step_at = ?, owner_seen_at = ?, finished_at = ?, \
             pause_ms = COALESCE(?, pause_ms), step_generation = ?, detail = COALESCE(?, detail) \
             WHERE id = ? AND owner = ?",
        ))
        .bind(step.as_str())
        .bind(now)
        .bind(now)
        .bind(finished)
        .bind(pause_ms)
        .bind(generation)
        .bind(detail.map(str::to_string))
        .bind(record.id)
        .bind(record.owner.clone())
        .execute(&mut *tx)
        .await
        .context("recording a move's step")?;
        if updated.rows_affected() != 1 {
            anyhow::bail!("move {} was taken over by another host", record.id);
        }
        tx.commit().await.context("recording a move's step")?;
        self.get(record.id).await?.context("the move vanished")
    }

    /// Records progress (and that the owner is alive): rows copied so far
    /// and the watermark of the next round.
    pub async fn progress(
        &self,
        record: &MoveRecord,
        rows_copied: i64,
        watermark_ms: i64,
    ) -> anyhow::Result<()> {
        let updated = sqlx::query(&self.sql(
            "UPDATE merchant_moves SET rows_copied = ?, watermark_ms = ?, owner_seen_at = ? WHERE id = ? AND owner = ?",
        ))
        .bind(rows_copied)
        .bind(watermark_ms)
        .bind(now_ms())
        .bind(record.id)
        .bind(record.owner.clone())
        .execute(&self.pool)
        .await
        .context("recording a move's progress")?;
        if updated.rows_affected() != 1 {
            anyhow::bail!("move {} was taken over by another host", record.id);
        }
        Ok(())
    }

    /// Records how many rows a copying round has copied so far (the
    /// operator's progress; never lowers the count, should a round's end
    /// have recorded more meanwhile).
    pub async fn rows_so_far(&self, record: &MoveRecord, rows_copied: i64) -> anyhow::Result<()> {
        sqlx::query(&self.sql(
            "UPDATE merchant_moves SET rows_copied = CASE WHEN rows_copied < ? THEN ? ELSE rows_copied END \
             WHERE id = ? AND owner = ?",
        ))
        .bind(rows_copied)
        .bind(rows_copied)
        .bind(record.id)
        .bind(record.owner.clone())
        .execute(&self.pool)
        .await
        .context("recording a move's progress")?;
        Ok(())
    }

    /// Takes a move over for `owner` if its owner has not been seen since
    /// `stale_before` (it crashed, or is cut off). Returns it if taken.
    pub async fn take_over(
        &self,
        id: i64,
        owner: &str,
        stale_before: i64,
    ) -> anyhow::Result<Option<MoveRecord>> {
        let updated = sqlx::query(&self.sql(
            "UPDATE merchant_moves SET owner = ?, owner_seen_at = ? \
             WHERE id = ? AND step NOT IN ('done', 'rolled_back') AND (owner = ? OR owner_seen_at < ?)",
        ))
        .bind(owner.to_string())
        .bind(now_ms())
        .bind(id)
        .bind(owner.to_string())
        .bind(stale_before)
        .execute(&self.pool)
        .await
        .context("taking a move over")?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        self.get(id).await
    }

    pub async fn get(&self, id: i64) -> anyhow::Result<Option<MoveRecord>> {
        let row = sqlx::query(&self.sql(&format!("SELECT {COLUMNS} FROM merchant_moves WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a move")?;
        row.as_ref().map(record).transpose()
    }

    /// The moves not over yet.
    pub async fn unfinished(&self) -> anyhow::Result<Vec<MoveRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM merchant_moves WHERE step NOT IN ('done', 'rolled_back') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .context("reading the moves in progress")?;
        rows.iter().map(record).collect()
    }

    /// The latest `limit` moves, newest first.
    pub async fn recent(&self, limit: i64) -> anyhow::Result<Vec<MoveRecord>> {
        let rows =
            sqlx::query(&self.sql(&format!("SELECT {COLUMNS} FROM merchant_moves ORDER BY id DESC LIMIT ?")))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .context("reading the moves")?;
        rows.iter().map(record).collect()
    }

    /// The hosts seen since `live_since` (unix ms) that have not checked in
    /// with `generation` yet: what a cut-over waits for.
    pub async fn hosts_behind(&self, generation: i64, live_since: i64) -> anyhow::Result<Vec<String>> {
        let rows =
            sqlx::query(&self.sql(
                "SELECT host_id FROM control_hosts WHERE seen_at >= ? AND generation < ? ORDER BY host_id",
            ))
            .bind(live_since)
            .bind(generation)
            .fetch_all(&self.pool)
            .await
            .context("reading the hosts' check-ins")?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }
}

async fn set_entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dialect: ControlDialect,
    merchant: i64,
    shard: &str,
    state: State,
    generation: i64,
) -> anyhow::Result<()> {
    let statement =
        "UPDATE merchant_directory SET shard = ?, state = ?, changed_generation = ? WHERE merchant_id = ?";
    let statement = if dialect == ControlDialect::Postgres {
        placeholders::numbered(statement)
    } else {
        statement.into()
    };
    sqlx::query(&statement)
        .bind(shard.to_string())
        .bind(state.as_str())
        .bind(generation)
        .bind(merchant)
        .execute(&mut **tx)
        .await
        .context("changing the merchant's directory entry")?;
    Ok(())
}
