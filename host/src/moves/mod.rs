//! Online merchant moves: one merchant's rows from one shard to another
//! while every host keeps serving (docs/ARCHITECTURE.md "Merchant moves").
//!
//! A move is a state machine recorded in the control store
//! ([`store::MoveStore`]), driven by one host at a time (its owner; a move
//! whose owner stops checking in is taken over, so a SIGKILL at any step
//! is finished by the next host up, or the same host restarted):
//!
//! 1. `copying`: the merchant's entry is `moving`. Fences go on both shards
//!    (`moving_merchants`: retention and expiry leave its rows alone, the
//!    target's relay holds its events). Rounds copy the rows changed since
//!    a watermark ([`copy`]) while the merchant is served on its source.
//!    The last round reads its rows and the source's figures (row counts
//!    and sums per table) in one snapshot: the copy is verified whole
//!    against it before the merchant is paused.
//! 2. `frozen`: the entry is `frozen`. Every live host acknowledges it once
//!    its invocations of the merchant have ended (`crate::directory`); then
//!    the source's relay lease is taken and its fence holds events, and the
//!    changes since the verified round are copied and verified: read back
//!    by key, and every table's row count on both sides. The entry then
//!    names the target, `serving`: the pause ends.
//! 3. `cleanup`: the target's fence goes (its relay publishes what the
//!    source had not), then the source's rows and fence.
//!
//! A failure before the switch rolls back (`rolling_back`): the entry
//! names the source again and the target's copy is deleted. Source rows
//! are deleted only after the copy was verified and the entry switched.

pub mod copy;
pub mod pace;
pub mod pages;
pub mod plan;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::bindings::sql::Dialect;
use crate::directory::{Directory, State};
use crate::shards::Shard;
use crate::versions::store::now_ms;
use copy::{Measure, Written};
use pace::MovesConfig;
use store::{MoveRecord, MoveStore, StartError, Step};

/// A move whose owner has not been seen for this long is taken over.
const OWNER_STALE: Duration = Duration::from_secs(10);
/// How often the owner says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Hosts checked in within this window must acknowledge a freeze.
const HOST_LIVE: Duration = Duration::from_secs(10);
/// How long a freeze waits for every host's acknowledgement before the
/// move rolls back.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// A copying round this small ends the copying.
const SMALL_ROUND: u64 = 500;
/// Copying rounds at most, before freezing anyway.
const MAX_ROUNDS: u32 = 6;
/// Tries of a failing step before a move rolls back.
const STEP_TRIES: u32 = 5;
/// Clock skew allowed between the hosts writing timestamps.
const SKEW: Duration = Duration::from_secs(1);
/// For tests: stop driving moves when one reaches this step (the test
/// then kills the host there). `copying` stops after the first round.
const STALL_ENV: &str = "PAYFN_MOVE_STALL_AT";

/// Starts, drives and resumes moves on this host.
pub struct Mover {
    directory: Arc<Directory>,
    store: MoveStore,
    owner: String,
    /// Rows changed this long before a round began are copied again by the
    /// next: the longest transaction (the invocation timeout) plus skew.
    margin: Duration,
    /// How fast the bulk copy and deletes go.
    pace: MovesConfig,
    /// Per move, the rows its verified round wrote (the freeze writes only
    /// those that changed since; a move resumed elsewhere writes all).
    verified: std::sync::Mutex<HashMap<i64, Written>>,
}

impl Mover {
    pub fn new(
        directory: Arc<Directory>,
        owner: String,
        invocation_timeout: Duration,
        pace: MovesConfig,
    ) -> Arc<Self> {
        let store = MoveStore::new(directory.store());
        Arc::new(Self {
            directory,
            store,
            owner,
            margin: invocation_timeout + SKEW,
            pace,
            verified: Default::default(),
        })
    }

    pub fn store(&self) -> &MoveStore {
        &self.store
    }

    /// Starts moving `merchant` to the shard `to` and drives it in the
    /// background; returns the move as recorded.
    pub async fn start(self: &Arc<Self>, merchant: i64, to: &str) -> Result<MoveRecord, StartError> {
        let shards = self.directory.shards();
        let target = shards
            .iter()
            .find(|s| s.name == to)
            .ok_or_else(|| StartError::Store(anyhow::anyhow!("no shard named `{to}` in [[shards]]")))?;
        copy::check_ready(target).await?;
        let record = self.store.start(merchant, to, &self.owner).await?;
        if let Err(e) = self.same_dialect(&record) {
            let record = self
                .store
                .advance(
                    &record,
                    Step::RollingBack,
                    Some((&record.from, State::Serving)),
                    None,
                    Some(&e.to_string()),
                )
                .await?;
            self.spawn(record.clone());
            return Err(StartError::Store(e));
        }
        tracing::info!(move_id = record.id, merchant, from = %record.from, to, "move started");
        self.spawn(record.clone());
        Ok(record)
    }

    fn same_dialect(&self, record: &MoveRecord) -> anyhow::Result<()> {
        let (from, to) = (self.shard(&record.from)?, self.shard(&record.to)?);
        if from.dialect() != to.dialect() {
            bail!(
                "shards `{}` ({:?}) and `{}` ({:?}) differ in dialect: moves are within one dialect",
                record.from,
                from.dialect(),
                record.to,
                to.dialect()
            );
        }
        Ok(())
    }

    /// Takes over the moves whose owner is gone, now and every few seconds
    /// (a host killed in the middle of one leaves it to the others).
    pub fn start_resuming(self: &Arc<Self>) {
        let mover = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = mover.resume_orphans().await {
                    tracing::warn!("cannot look for moves to resume: {e:#}");
                }
                tokio::time::sleep(OWNER_STALE / 2).await;
            }
        });
    }

    async fn resume_orphans(self: &Arc<Self>) -> anyhow::Result<()> {
        let stale_before = now_ms() - OWNER_STALE.as_millis() as i64;
        for record in self.store.unfinished().await? {
            if record.owner == self.owner || record.owner_seen_at >= stale_before {
                continue;
            }
            if let Some(record) = self.store.take_over(record.id, &self.owner, stale_before).await? {
                tracing::warn!(
                    move_id = record.id,
                    merchant = record.merchant,
                    step = record.step.as_str(),
                    "resuming a move whose host stopped"
                );
                self.spawn(record);
            }
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, record: MoveRecord) {
        let mover = self.clone();
        tokio::spawn(async move {
            // Rows copied so far, as the copying rounds count them page by
            // page; the heartbeat shows them (the operator's progress: a
            // large merchant's first round takes minutes).
            let copied = Arc::new(AtomicI64::new(record.rows_copied));
            let heartbeat = {
                let (store, record, copied) = (mover.store.clone(), record.clone(), copied.clone());
                tokio::spawn(async move {
                    let mut shown = record.rows_copied;
                    loop {
                        tokio::time::sleep(HEARTBEAT).await;
                        if store.take_over(record.id, &record.owner, 0).await.ok().flatten().is_none() {
                            break;
                        }
                        let now = copied.load(Ordering::Relaxed);
                        if now != shown {
                            if let Err(e) = store.rows_so_far(&record, now).await {
                                tracing::warn!(
                                    move_id = record.id,
                                    "cannot record the copy's progress: {e:#}"
                                );
                            }
                            shown = now;
                        }
                    }
                })
            };
            if let Err(e) = mover.drive(record.clone(), &copied).await {
                tracing::error!(move_id = record.id, merchant = record.merchant, "move stopped: {e:#}");
            }
            heartbeat.abort();
        });
    }

    fn shard(&self, name: &str) -> anyhow::Result<&Arc<Shard>> {
        self.directory
            .shards()
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("shard `{name}` is not in this host's [[shards]]"))
    }

    /// Runs `record` to its end, step by step.
    async fn drive(&self, mut record: MoveRecord, copied: &AtomicI64) -> anyhow::Result<()> {
        let mut tries = 0;
        while !record.step.is_final() {
            stall_if_asked(record.step, "").await;
            let outcome = match record.step {
                Step::Copying => self.copying(&record, copied).await,
                Step::Frozen => self.frozen(&record).await,
                Step::Cleanup => self.cleanup(&record).await,
                Step::RollingBack => self.roll_back(&record).await,
                Step::Done | Step::RolledBack => unreachable!("final steps end the loop"),
            };
            match outcome {
                Ok(next) => {
                    tries = 0;
                    record = next;
                    tracing::info!(
                        move_id = record.id,
                        merchant = record.merchant,
                        step = record.step.as_str(),
                        rows = record.rows_copied,
                        pause_ms = record.pause_ms,
                        "move step"
                    );
                }
                Err(e) => {
                    tries += 1;
                    tracing::warn!(
                        move_id = record.id,
                        merchant = record.merchant,
                        step = record.step.as_str(),
                        attempt = tries,
                        "move step failed: {e:#}"
                    );
                    if e.to_string().contains("taken over") {
                        return Err(e);
                    }
                    let undo = matches!(record.step, Step::Copying | Step::Frozen) && tries >= STEP_TRIES;
                    if undo || e.downcast_ref::<Abort>().is_some() {
                        let detail = truncate(&format!("{e:#}"));
                        record = self
                            .store
                            .advance(
                                &record,
                                Step::RollingBack,
                                Some((&record.from, State::Serving)),
                                None,
                                Some(&detail),
                            )
                            .await?;
                        tries = 0;
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(500) * tries.min(10)).await;
                }
            }
        }
        Ok(())
    }

    /// Copies in rounds until a round is small, then freezes.
    async fn copying(&self, record: &MoveRecord, copied_so_far: &AtomicI64) -> anyhow::Result<MoveRecord> {
        let (source, target) = (self.shard(&record.from)?, self.shard(&record.to)?);
        let mut fresh = false;
        if record.rows_copied == 0 && record.watermark_ms == 0 {
            // Anything of the merchant on the target is a leftover of an
            // earlier, abandoned attempt: the directory has it on the source.
            let leftover = copy::delete_merchant(target, record.merchant, Some(&self.pace)).await?;
            if leftover > 0 {
                tracing::warn!(
                    move_id = record.id,
                    merchant = record.merchant,
                    rows = leftover,
                    "deleted the merchant's leftover rows on the target"
                );
            }
            fresh = true;
        }
        copy::set_fence(target, record.merchant, record.id, "target", true).await?;
        copy::set_fence(source, record.merchant, record.id, "source", false).await?;
        let fenced_at = now_ms();
        let mut watermark = record.watermark_ms;
        let mut rows = record.rows_copied;
        for round in 1.. {
            let began = now_ms();
            copied_so_far.store(rows, Ordering::Relaxed);
            let on_page = |page: u64| {
                copied_so_far.fetch_add(page as i64, Ordering::Relaxed);
            };
            let copied =
                pages::copy_round(source, target, record.merchant, watermark, fresh, &self.pace, &on_page)
                    .await?;
            fresh = false;
            rows += copied.rows as i64;
            watermark = began - self.margin.as_millis() as i64;
            self.store.progress(record, rows, watermark).await?;
            tracing::info!(
                move_id = record.id,
                merchant = record.merchant,
                round,
                rows = copied.rows,
                pages = copied.pages,
                ms = now_ms() - began,
                total = rows,
                "move: copied a round"
            );
            stall_if_asked(Step::Copying, "after a round").await;
            // Expiry and retention transactions begun before the fence
            // have ended once an invocation timeout has passed.
            let settled = now_ms() - fenced_at >= self.margin.as_millis() as i64;
            if settled && (copied.rows <= SMALL_ROUND || round >= MAX_ROUNDS) {
                break;
            }
            if !settled && copied.rows <= SMALL_ROUND {
                // Caught up: one more round once the fences have settled.
                let left = self.margin.as_millis() as i64 - (now_ms() - fenced_at);
                tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
            }
        }
        // The target took the merchant at once: its statistics and (on
        // PostgreSQL) visibility map brought up to date before the counts
        // of the cut-over. Not needed for correctness: a failure is logged.
        let started = now_ms();
        let tables: Vec<&str> = copy::TABLES.iter().map(|t| t.name).collect();
        match target.after_bulk_write(&tables).await {
            Ok(()) => tracing::info!(
                move_id = record.id,
                merchant = record.merchant,
                ms = now_ms() - started,
                "move: the target's tables maintained"
            ),
            Err(e) => tracing::warn!(
                move_id = record.id,
                merchant = record.merchant,
                "move: cannot maintain the target's tables: {e:?}"
            ),
        }
        // The verified round: the whole copy checked against one snapshot
        // of the source while the merchant is still served, so the freeze
        // checks only what changed after it.
        let mut fresh = false;
        loop {
            let began = now_ms();
            let verified = copy::copy_verified(source, target, record.merchant, watermark, fresh).await?;
            let differences = verified.differences;
            rows += verified.copied.rows as i64;
            if differences.is_empty() {
                watermark = began - self.margin.as_millis() as i64;
                self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(record.id, verified.written);
                break;
            }
            if fresh {
                return Err(differs(&differences));
            }
            start_over(target, record, &differences, Some(&self.pace)).await?;
            (watermark, fresh) = (0, true);
        }
        let mut record = record.clone();
        record.rows_copied = rows;
        record.watermark_ms = watermark;
        self.store.progress(&record, rows, watermark).await?;
        self.store.advance(&record, Step::Frozen, Some((&record.from, State::Frozen)), None, None).await
    }

    /// Waits for every host's acknowledgement, copies the last changes,
    /// verifies, and switches the entry to the target.
    async fn frozen(&self, record: &MoveRecord) -> anyhow::Result<MoveRecord> {
        let (source, target) = (self.shard(&record.from)?, self.shard(&record.to)?);
        // Taken whatever this attempt comes to (a retry writes every row).
        let written = self.verified.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.id);
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        loop {
            let behind = self
                .store
                .hosts_behind(record.step_generation, now_ms() - HOST_LIVE.as_millis() as i64)
                .await?;
            if behind.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Abort(format!(
                    "hosts did not acknowledge the freeze within {ACK_TIMEOUT:?}: {}",
                    behind.join(", ")
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let acknowledged = now_ms();
        // The source's last changes, with its relay stopped: the lease
        // waits for a relay firing in progress, and the fence keeps the
        // next ones off the merchant's rows.
        let mut tx =
            source.begin_durable().await.map_err(copy::sql_error("opening the source's cut-over"))?;
        let read = async {
            let lease = match source.dialect() {
                Dialect::Sqlite => "SELECT id FROM outbox_relay_lease WHERE id = 1",
                Dialect::Mysql | Dialect::Postgres => {
                    "SELECT id FROM outbox_relay_lease WHERE id = 1 FOR UPDATE"
                }
            };
            tx.query(lease, Vec::new()).await.map_err(copy::sql_error("taking the relay lease"))?;
            copy::fence(&mut tx, source.dialect(), record.merchant, record.id, "source", true).await?;
            copy::read_changed(&mut tx, record.merchant, record.watermark_ms).await
        }
        .await;
        let read = match read {
            Ok(read) => {
                tx.commit().await.map_err(copy::sql_error("committing the source's fence"))?;
                read
            }
            Err(e) => {
                tx.rollback().await;
                return Err(e);
            }
        };
        let read_at = now_ms();
        let read = match written {
            Some(written) => written.unwritten(read),
            None => read,
        };
        let copied = copy::write_rows(target, record.merchant, read.clone(), false).await?;
        stall_if_asked(Step::Frozen, "after the last copy").await;
        // The copy was verified whole against a snapshot (the verified
        // round); since that snapshot, the source changed only in rows the
        // last read holds (their times are past the watermark) and the
        // target only in their keys (the mover writes by key). So: those
        // rows read back as they were read, and every table's count.
        let written_at = now_ms();
        let (back, counts) = tokio::join!(
            copy::verify_written(target, record.merchant, &read),
            self.verify(source, target, record.merchant, Measure::Count)
        );
        let mut differences = back?;
        differences.extend(counts?);
        let verified_at = now_ms();
        let recopied = !differences.is_empty();
        if recopied {
            // Rows deleted on the source since the verified round (a
            // failed event re-driven) or an older copy: the target's rows
            // again, all of them.
            start_over(target, record, &differences, None).await?;
            copy::copy_changed(source, target, record.merchant, 0, true).await?;
            differences = self.verify(source, target, record.merchant, Measure::Sums).await?;
        }
        if !differences.is_empty() {
            return Err(differs(&differences));
        }
        let mut record = record.clone();
        record.rows_copied += copied.rows as i64;
        let pause = now_ms() - record.step_at;
        let detail = format!(
            "verified{}; pause {pause} ms: acknowledged after {} ms, last changes read in {} ms, \
             {} rows changed since the verified round written in {} ms and verified in {} ms",
            if recopied { " after copying every row again" } else { "" },
            acknowledged - record.step_at,
            read_at - acknowledged,
            copied.rows,
            written_at - read_at,
            verified_at - written_at
        );
        self.store.progress(&record, record.rows_copied, record.watermark_ms).await?;
        self.store
            .advance(&record, Step::Cleanup, Some((&record.to, State::Serving)), Some(pause), Some(&detail))
            .await
    }

    async fn verify(
        &self,
        source: &Arc<Shard>,
        target: &Arc<Shard>,
        merchant: i64,
        measure: Measure,
    ) -> anyhow::Result<Vec<String>> {
        let (s, t) =
            tokio::join!(copy::figures(source, merchant, measure), copy::figures(target, merchant, measure));
        Ok(copy::differences(&s?, &t?))
    }

    /// Lets the target publish, then deletes the source's rows.
    async fn cleanup(&self, record: &MoveRecord) -> anyhow::Result<MoveRecord> {
        let (source, target) = (self.shard(&record.from)?, self.shard(&record.to)?);
        copy::remove_fence(target, record.merchant).await?;
        let deleted = copy::delete_merchant(source, record.merchant, Some(&self.pace)).await?;
        copy::remove_fence(source, record.merchant).await?;
        tracing::info!(
            move_id = record.id,
            merchant = record.merchant,
            rows = deleted,
            "move: the source's rows deleted"
        );
        self.store.advance(record, Step::Done, None, None, None).await
    }

    /// Deletes the target's copy and lifts both fences; the entry names
    /// the source again already.
    async fn roll_back(&self, record: &MoveRecord) -> anyhow::Result<MoveRecord> {
        let (source, target) = (self.shard(&record.from)?, self.shard(&record.to)?);
        copy::delete_merchant(target, record.merchant, Some(&self.pace)).await?;
        copy::remove_fence(target, record.merchant).await?;
        copy::remove_fence(source, record.merchant).await?;
        self.store.advance(record, Step::RolledBack, None, None, None).await
    }
}

/// Deletes the target's copy after `differences` were found, for a copy
/// of every row (paced unless the merchant is frozen).
async fn start_over(
    target: &Shard,
    record: &MoveRecord,
    differences: &[String],
    pace: Option<&MovesConfig>,
) -> anyhow::Result<()> {
    tracing::warn!(
        move_id = record.id,
        merchant = record.merchant,
        "copy differs ({}); copying every row again",
        differences.join("; ")
    );
    copy::delete_merchant(target, record.merchant, pace).await.map(drop)
}

/// A copy that still differs after a copy of every row: the move rolls back.
fn differs(differences: &[String]) -> anyhow::Error {
    Abort(format!("the copy differs from the source: {}", differences.join("; "))).into()
}

/// A failure that rolls the move back at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Abort(String);

fn truncate(text: &str) -> String {
    text.chars().take(1_900).collect()
}

/// The test hook: parks this move's driver at `step` when asked to
/// ([`STALL_ENV`]), so a test can kill the host there.
async fn stall_if_asked(step: Step, point: &str) {
    let Ok(wanted) = std::env::var(STALL_ENV) else { return };
    let here =
        if point.is_empty() { step.as_str().to_string() } else { format!("{} {point}", step.as_str()) };
    if wanted == here {
        tracing::warn!("{STALL_ENV}={wanted}: the move's driver stops here");
        std::future::pending::<()>().await;
    }
}
