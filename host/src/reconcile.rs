//! Reconciliation (DESIGN.md rule 7; docs/ARCHITECTURE.md,
//! "Reconciliation"): per shard, every settlement row (merchant, UTC day,
//! currency) is recomputed from the shard's own captures and refunds and
//! compared with the `settlements` table.
//!
//! Each capture and refund stores the instant settlement files it under
//! (`payments.captured_at`, `refunds.created_at`: its event's `occurredAt`)
//! and its event's id (`capture_event_id`, `event_id`; migration 0007), so
//! the recompute is exact, and it counts only the captures and refunds
//! whose event the settlement consumer has recorded in `processed_events`:
//! settlement follows the events with a lag, and an event in flight is not
//! drift. What it finds, per day:
//!
//! - a **mismatch**: a settlement row whose totals (captured, refunded and
//!   their counts) differ from the processed captures and refunds of its
//!   merchant, day and currency. Replaying events cannot repair this (each
//!   event counts once, by `processed_events`): it is a bug or a change
//!   made outside the steps, reported and never overwritten;
//! - an **unsettled** capture or refund: its event is older than the grace
//!   period and the consumer has not recorded it (lost in transit, stuck in
//!   the outbox, dead-lettered). `payfn reconcile --repair` re-publishes its
//!   outbox row ([`republish`]) and the consumer applies it once.
//!
//! The comparison of one day is one statement, so it reads one snapshot on
//! every dialect (MariaDB sessions run at READ COMMITTED, where each
//! statement has a snapshot of its own): a consumer transaction that
//! commits meanwhile is seen whole (its settlement update and its
//! processed-event row) or not at all.
//!
//! Days older than the processed-events retention (`[retention]
//! processed_events`) have lost those ids: they are compared on totals only
//! (every capture and refund of the day against the settlement rows), and
//! nothing is reported unsettled for them. Captures and refunds written
//! before migration 0007 whose outbox row was already purged have no event
//! id; they count as settled.
//!
//! One task per shard ([`start`]) checks the last `days` days every
//! `interval`, sets `payfn_settlement_drift_rows{shard,kind}` and
//! `payfn_settlement_drift_amount{shard,kind}` and logs each difference;
//! the CLI (`payfn reconcile`) prints them and repairs what replay can.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::bindings::sql::{Error as SqlError, Value};
use crate::metrics::Metrics;
use crate::runtime_config::RuntimeConfig;
use crate::shards::{Shard, ShardTx};

const DAY: Duration = Duration::from_secs(86_400);
/// Most unsettled captures and refunds one check lists (and a repair
/// re-publishes) per shard and day; the counts and amounts cover them all.
pub const LIST_LIMIT: usize = 1_000;
/// Most differences of one kind a round of the task logs per shard.
const LOG_LIMIT: usize = 50;

/// The `[reconcile]` section of the runtime config, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawReconcile")]
pub struct ReconcileConfig {
    /// `false`: no task runs (`payfn reconcile` still works).
    pub enabled: bool,
    /// Time between the end of one round and the start of the next.
    pub interval: Duration,
    /// How old a capture's or refund's event must be before its absence
    /// from the consumer's processed events is drift, not lag.
    pub grace: Duration,
    /// Days each round checks: today (UTC) and the `days - 1` before it.
    pub days: u32,
    /// The settlement consumer: its Kafka trigger's group, the `consumer`
    /// of its `processed_events` rows.
    pub consumer: String,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        RawReconcile::default().try_into().expect("the default reconcile config is valid")
    }
}

/// The section as written: durations in humantime's syntax.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawReconcile {
    enabled: bool,
    interval: String,
    grace: String,
    days: i64,
    consumer: String,
}

impl Default for RawReconcile {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: "5m".into(),
            grace: "5m".into(),
            days: 3,
            consumer: "settlement".into(),
        }
    }
}

const INTERVAL_BOUNDS: (&str, &str) = ("100ms", "1d");
const GRACE_BOUNDS: (&str, &str) = ("1s", "7d");
const MAX_DAYS: i64 = 366;

impl TryFrom<RawReconcile> for ReconcileConfig {
    type Error = String;

    fn try_from(raw: RawReconcile) -> Result<Self, String> {
        let days = match u32::try_from(raw.days) {
            Ok(n) if (1..=MAX_DAYS).contains(&raw.days) => n,
            _ => {
                return Err(format!(
                    "invalid [reconcile] days = {}: it must be between 1 and {MAX_DAYS}",
                    raw.days
                ))
            }
        };
        if raw.consumer.trim().is_empty() {
            return Err("invalid [reconcile] consumer: name the settlement trigger's group".into());
        }
        Ok(Self {
            enabled: raw.enabled,
            interval: duration("interval", &raw.interval, INTERVAL_BOUNDS)?,
            grace: duration("grace", &raw.grace, GRACE_BOUNDS)?,
            days,
            consumer: raw.consumer,
        })
    }
}

/// `text` as a duration within `(min, max)`, or a message naming the key.
fn duration(key: &str, text: &str, bounds: (&str, &str)) -> Result<Duration, String> {
    crate::runtime_config::bounded_duration("reconcile", key, text, bounds)
}

/// How a day is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Settlement rows against the captures and refunds whose event the
    /// consumer recorded; unsettled ones reported apart.
    Exact,
    /// The day's processed-event ids may be purged: settlement rows against
    /// every capture and refund of the day.
    TotalsOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::TotalsOnly => "totals-only",
        }
    }
}

/// One UTC day to check (`YYYY-MM-DD`, as `settlements.day`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub day: String,
    pub mode: Mode,
}

/// Captured and refunded totals of one merchant, day and currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub gross_captured: i64,
    pub capture_count: i64,
    pub refunded: i64,
    pub refund_count: i64,
}

impl Totals {
    /// The fields, named as the `settlements` columns.
    pub fn fields(&self) -> [(&'static str, i64); 4] {
        [
            ("gross_captured", self.gross_captured),
            ("capture_count", self.capture_count),
            ("refunded", self.refunded),
            ("refund_count", self.refund_count),
        ]
    }
}

/// A settlement row that differs from the captures and refunds it counts
/// (or a row missing on either side: its totals are zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub merchant_id: i64,
    pub day: String,
    pub currency: String,
    pub mode: Mode,
    /// From the captures and refunds.
    pub expected: Totals,
    /// The `settlements` row.
    pub actual: Totals,
}

impl Mismatch {
    /// |Δ captured| + |Δ refunded|, in minor units of the row's currency.
    pub fn amount(&self) -> i64 {
        let (e, a) = (&self.expected, &self.actual);
        e.gross_captured
            .saturating_sub(a.gross_captured)
            .saturating_abs()
            .saturating_add(e.refunded.saturating_sub(a.refunded).saturating_abs())
    }
}

/// What an unsettled change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Capture,
    Refund,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Capture => "capture",
            ChangeKind::Refund => "refund",
        }
    }
}

/// Where the event of an unsettled change is in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Waiting for the relay (a backlog, a broker outage).
    Pending,
    /// The relay gave up on it.
    DeadLettered,
    /// Sent (or marked sent) and never recorded by the consumer: lost.
    Published,
    /// Purged by the outbox retention: cannot be re-published.
    Missing,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::DeadLettered => "dead-lettered",
            OutboxState::Published => "published",
            OutboxState::Missing => "missing",
        }
    }
}

/// A capture or refund whose event is older than the grace period and not
/// recorded by the settlement consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub kind: ChangeKind,
    /// The payment id of a capture, the refund id of a refund.
    pub id: String,
    pub payment_id: String,
    pub merchant_id: i64,
    pub currency: String,
    pub amount: i64,
    /// The event's `occurredAt`.
    pub occurred_at: String,
    pub event_id: String,
    pub outbox: OutboxState,
}

/// What one check of one shard found.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub shard: String,
    pub mismatches: Vec<Mismatch>,
    /// At most [`LIST_LIMIT`] per day, oldest first.
    pub unsettled: Vec<Unsettled>,
    /// All of them, listed or not.
    pub unsettled_count: i64,
    pub unsettled_amount: i64,
}

impl ShardReport {
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty() && self.unsettled_count == 0
    }

    /// The sum of the mismatches' amounts.
    pub fn mismatch_amount(&self) -> i64 {
        self.mismatches.iter().fold(0i64, |sum, m| sum.saturating_add(m.amount()))
    }
}

/// Checks shards: the settings the task and the CLI share.
#[derive(Debug, Clone)]
pub struct Checker {
    consumer: String,
    grace: Duration,
    /// How long the consumer's processed-event ids are kept (`None`: for ever).
    processed_retention: Option<Duration>,
}

impl Checker {
    pub fn new(config: &RuntimeConfig) -> Self {
        let retention = &config.retention;
        Self {
            consumer: config.reconcile.consumer.clone(),
            grace: config.reconcile.grace,
            processed_retention: retention.enabled.then_some(retention.processed_events),
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Today (UTC, as of `now`) and the `count - 1` days before it, oldest first.
    pub fn recent_days(&self, count: u32, now: SystemTime) -> Vec<Day> {
        let today = day_start(now);
        (0..count)
            .rev()
            .filter_map(|back| today.checked_sub(DAY * back))
            .map(|start| self.day_at(start, now))
            .collect()
    }

    /// One day given as `YYYY-MM-DD`.
    pub fn day(&self, date: &str, now: SystemTime) -> Result<Day, String> {
        let start = humantime::parse_rfc3339(&format!("{date}T00:00:00Z"))
            .ok()
            .filter(|start| day_text(*start) == date)
            .ok_or_else(|| format!("`{date}` is not a date: write it as YYYY-MM-DD (a UTC day)"))?;
        Ok(self.day_at(start, now))
    }

    /// Exact while every event of the day is younger than the processed-event
    /// retention, so none of their ids can have been purged.
    fn day_at(&self, start: SystemTime, now: SystemTime) -> Day {
        let exact = match (self.processed_retention, now.duration_since(start)) {
            (None, _) | (_, Err(_)) => true,
            (Some(retention), Ok(age)) => age <= retention,
        };
        Day { day: day_text(start), mode: if exact { Mode::Exact } else { Mode::TotalsOnly } }
    }

    /// Checks `days` on `shard`, in one read transaction.
    pub async fn check(&self, shard: &Shard, days: &[Day], now: SystemTime) -> Result<ShardReport, SqlError> {
        let mut report = ShardReport { shard: shard.name.clone(), ..ShardReport::default() };
        let mut tx = shard.begin(false).await?;
        let mut result = Ok(());
        for day in days {
            result = self.check_day(&mut tx, day, now, &mut report).await;
            if result.is_err() {
                break;
            }
        }
        tx.rollback().await;
        result.map(|()| report)
    }

    async fn check_day(
        &self,
        tx: &mut ShardTx,
        day: &Day,
        now: SystemTime,
        report: &mut ShardReport,
    ) -> Result<(), SqlError> {
        let start = Value::Text(day.day.clone());
        let end = Value::Text(next_day(&day.day));
        let consumer = Value::Text(self.consumer.clone());
        let params = match day.mode {
            Mode::Exact => vec![
                start.clone(),
                end.clone(),
                consumer.clone(),
                start.clone(),
                end.clone(),
                consumer.clone(),
                Value::Text(day.day.clone()),
            ],
            Mode::TotalsOnly => {
                vec![start.clone(), end.clone(), start.clone(), end.clone(), Value::Text(day.day.clone())]
            }
        };
        let rows = tx.query(&compare_sql(day.mode), params).await?;
        for row in &rows.rows {
            report.mismatches.push(mismatch(row, day.mode)?);
        }
        if day.mode == Mode::TotalsOnly {
            return Ok(());
        }
        // Unsettled: events of the day older than the grace period.
        let cutoff = day_text_millis(now.checked_sub(self.grace).unwrap_or(std::time::UNIX_EPOCH));
        let upper = match &end {
            Value::Text(end) if end.as_str() < cutoff.as_str() => end.clone(),
            _ => cutoff,
        };
        if upper.as_str() <= day.day.as_str() {
            return Ok(());
        }
        let upper = Value::Text(upper);
        let params = vec![start.clone(), upper.clone(), consumer.clone(), start, upper, consumer];
        let totals = tx
            .query(
                &format!("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM ({UNSETTLED}) AS u"),
                params.clone(),
            )
            .await?;
        let (count, amount) = match totals.rows.first().map(Vec::as_slice) {
            Some([count, amount]) => (int(count)?, int(amount)?),
            _ => return Err(SqlError::Other("no row of unsettled totals".into())),
        };
        report.unsettled_count += count;
        report.unsettled_amount = report.unsettled_amount.saturating_add(amount);
        if count > 0 {
            let listed =
                tx.query(&format!("{UNSETTLED} ORDER BY occurred_at, id LIMIT {LIST_LIMIT}"), params).await?;
            for row in &listed.rows {
                report.unsettled.push(unsettled(row)?);
            }
        }
        Ok(())
    }
}

/// The comparison of one day, as one statement (one snapshot): the
/// captures and refunds of the day (only those whose event the consumer
/// recorded, in [`Mode::Exact`]) and the day's settlement rows, summed per
/// merchant and currency; the groups where the two sides differ.
/// Parameters: day start, next day start, [consumer,] day start, next day
/// start, [consumer,] day. Reads index ranges of `payments_by_captured_at`,
/// `refunds_by_created_at` and `settlements_by_day` (migration 0007).
fn compare_sql(mode: Mode) -> String {
    let (captures, refunds) = match mode {
        // A change written before migration 0007 whose outbox row was
        // already purged has no event id: counted as settled.
        Mode::Exact => (
            " AND (p.capture_event_id IS NULL OR EXISTS (SELECT 1 FROM processed_events e \
             WHERE e.consumer = ? AND e.event_id = p.capture_event_id))",
            " AND (r.event_id IS NULL OR EXISTS (SELECT 1 FROM processed_events e \
             WHERE e.consumer = ? AND e.event_id = r.event_id))",
        ),
        Mode::TotalsOnly => ("", ""),
    };
    format!(
        "SELECT merchant_id, day, currency, SUM(eg), SUM(ec), SUM(er), SUM(ern), SUM(ag), SUM(ac), SUM(ar), SUM(arn) \
         FROM (\
           SELECT p.merchant_id AS merchant_id, SUBSTR(p.captured_at, 1, 10) AS day, p.currency AS currency, \
                  p.captured_amount AS eg, 1 AS ec, 0 AS er, 0 AS ern, 0 AS ag, 0 AS ac, 0 AS ar, 0 AS arn \
           FROM payments p WHERE p.captured_at >= ? AND p.captured_at < ?{captures} \
           UNION ALL \
           SELECT r.merchant_id, SUBSTR(r.created_at, 1, 10), p.currency, 0, 0, r.amount, 1, 0, 0, 0, 0 \
           FROM refunds r JOIN payments p ON p.id = r.payment_id \
           WHERE r.created_at >= ? AND r.created_at < ?{refunds} \
           UNION ALL \
           SELECT merchant_id, day, currency, 0, 0, 0, 0, gross_captured, capture_count, refunded, refund_count \
           FROM settlements WHERE day = ?\
         ) AS t \
         GROUP BY merchant_id, day, currency \
         HAVING SUM(eg) <> SUM(ag) OR SUM(ec) <> SUM(ac) OR SUM(er) <> SUM(ar) OR SUM(ern) <> SUM(arn) \
         ORDER BY merchant_id, currency"
    )
}

/// Captures and refunds of a time range whose event the consumer has not
/// recorded, with their outbox row's state. Parameters: from, to, consumer,
/// from, to, consumer.
const UNSETTLED: &str = "\
    SELECT 'capture' AS kind, p.id AS id, p.id AS payment_id, p.merchant_id AS merchant_id, \
           p.currency AS currency, p.captured_amount AS amount, p.captured_at AS occurred_at, \
           p.capture_event_id AS event_id, o.published AS published, o.dead_lettered AS dead_lettered \
    FROM payments p LEFT JOIN outbox o ON o.event_id = p.capture_event_id \
    WHERE p.captured_at >= ? AND p.captured_at < ? AND p.capture_event_id IS NOT NULL \
      AND NOT EXISTS (SELECT 1 FROM processed_events e WHERE e.consumer = ? AND e.event_id = p.capture_event_id) \
    UNION ALL \
    SELECT 'refund', r.id, r.payment_id, r.merchant_id, p.currency, r.amount, r.created_at, r.event_id, \
           o.published, o.dead_lettered \
    FROM refunds r JOIN payments p ON p.id = r.payment_id LEFT JOIN outbox o ON o.event_id = r.event_id \
    WHERE r.created_at >= ? AND r.created_at < ? AND r.event_id IS NOT NULL \
      AND NOT EXISTS (SELECT 1 FROM processed_events e WHERE e.consumer = ? AND e.event_id = r.event_id)";

fn mismatch(row: &[Value], mode: Mode) -> Result<Mismatch, SqlError> {
    let [merchant, day, currency, numbers @ ..] = row else {
        return Err(SqlError::Other(format!("unexpected comparison row {row:?}")));
    };
    let n = |i: usize| numbers.get(i).map_or(Err(SqlError::Other("short comparison row".into())), int);
    Ok(Mismatch {
        merchant_id: int(merchant)?,
        day: text(day)?,
        currency: text(currency)?,
        mode,
        expected: Totals {
            gross_captured: n(0)?,
            capture_count: n(1)?,
            refunded: n(2)?,
            refund_count: n(3)?,
        },
        actual: Totals { gross_captured: n(4)?, capture_count: n(5)?, refunded: n(6)?, refund_count: n(7)? },
    })
}

fn unsettled(row: &[Value]) -> Result<Unsettled, SqlError> {
    let [kind, id, payment_id, merchant, currency, amount, occurred_at, event_id, published, dead] = row
    else {
        return Err(SqlError::Other(format!("unexpected unsettled row {row:?}")));
    };
    let outbox = match (published, dead) {
        (Value::Null, _) => OutboxState::Missing,
        (_, dead) if int(dead)? != 0 => OutboxState::DeadLettered,
        (published, _) if int(published)? != 0 => OutboxState::Published,
        _ => OutboxState::Pending,
    };
    Ok(Unsettled {
        kind: if text(kind)? == "refund" { ChangeKind::Refund } else { ChangeKind::Capture },
        id: text(id)?,
        payment_id: text(payment_id)?,
        merchant_id: int(merchant)?,
        currency: text(currency)?,
        amount: int(amount)?,
        occurred_at: text(occurred_at)?,
        event_id: text(event_id)?,
        outbox,
    })
}

fn int(value: &Value) -> Result<i64, SqlError> {
    match value {
        Value::Int64(v) => Ok(*v),
        Value::Boolean(b) => Ok(i64::from(*b)),
        Value::Text(t) => t.parse().map_err(|_| SqlError::Other(format!("not an integer: {t:?}"))),
        other => Err(SqlError::Other(format!("not an integer: {other:?}"))),
    }
}

fn text(value: &Value) -> Result<String, SqlError> {
    match value {
        Value::Text(t) => Ok(t.clone()),
        // MariaDB flags text in a binary collation as binary.
        Value::Blob(b) => String::from_utf8(b.clone()).map_err(|_| SqlError::Other("not text".into())),
        other => Err(SqlError::Other(format!("not text: {other:?}"))),
    }
}

/// Midnight (UTC) of the day of `at`.
fn day_start(at: SystemTime) -> SystemTime {
    let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    std::time::UNIX_EPOCH + Duration::from_secs(secs - secs % DAY.as_secs())
}

/// `YYYY-MM-DD` of `at` (UTC).
fn day_text(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_string()
}

/// `at` as the shards store instants: RFC 3339 UTC with milliseconds.
fn day_text_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The day after `day` (`YYYY-MM-DD`).
fn next_day(day: &str) -> String {
    match humantime::parse_rfc3339(&format!("{day}T00:00:00Z")) {
        Ok(start) => day_text(start + DAY),
        // Not a day: an upper bound no instant reaches.
        Err(_) => format!("{day}~"),
    }
}

/// Re-publishes the outbox rows of `event_ids` (unsettled captures and
/// refunds) through the relay's own path: unpublished, not dead-lettered,
/// with a fresh retry budget. The settlement consumer applies each at most
/// once (processed events), so a row re-published twice, or one whose
/// first delivery arrives late after all, changes nothing more. Returns the
/// rows changed; ids without an outbox row (purged) change nothing.
pub async fn republish(shard: &Shard, event_ids: &[String]) -> Result<u64, SqlError> {
    if event_ids.is_empty() {
        return Ok(0);
    }
    let mut tx = shard.begin(true).await?;
    let mut changed = 0;
    for chunk in event_ids.chunks(500) {
        let sql = format!(
            "UPDATE outbox SET published = 0, published_at = NULL, dead_lettered = 0, retry_count = 0, \
             next_attempt_at_ms = 0, last_error = NULL WHERE event_id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let params = chunk.iter().map(|id| Value::Text(id.clone())).collect();
        match tx.execute(&sql, params).await {
            Ok(n) => changed += n,
            Err(e) => {
                tx.rollback().await;
                return Err(e);
            }
        }
    }
    tx.commit().await?;
    Ok(changed)
}

/// The metric `kind` label of settlement rows that differ from what they count.
pub const KIND_MISMATCH: &str = "mismatch";
/// The metric `kind` label of captures and refunds unsettled past the grace.
pub const KIND_UNSETTLED: &str = "unsettled";

/// Sets the drift gauges of `report`'s shard.
fn export(metrics: &Metrics, report: &ShardReport) {
    let rows = i64::try_from(report.mismatches.len()).unwrap_or(i64::MAX);
    metrics.settlement_drift(&report.shard, KIND_MISMATCH, rows, report.mismatch_amount());
    metrics.settlement_drift(&report.shard, KIND_UNSETTLED, report.unsettled_count, report.unsettled_amount);
}

/// Logs each difference of `report` (at most [`LOG_LIMIT`] of each kind).
fn log(report: &ShardReport) {
    let shard = &report.shard;
    for m in report.mismatches.iter().take(LOG_LIMIT) {
        let (e, a) = (&m.expected, &m.actual);
        tracing::warn!(
            shard = %shard,
            merchant = m.merchant_id,
            day = %m.day,
            currency = %m.currency,
            check = %m.mode.as_str(),
            expected_gross_captured = e.gross_captured,
            actual_gross_captured = a.gross_captured,
            expected_refunded = e.refunded,
            actual_refunded = a.refunded,
            expected_captures = e.capture_count,
            actual_captures = a.capture_count,
            expected_refunds = e.refund_count,
            actual_refunds = a.refund_count,
            "settlement drift: the settlement row differs from the captures and refunds it counts \
             (replaying events cannot repair this)"
        );
    }
    for u in report.unsettled.iter().take(LOG_LIMIT) {
        tracing::warn!(
            shard = %shard,
            merchant = u.merchant_id,
            day = %u.occurred_at.get(..10).unwrap_or_default(),
            currency = %u.currency,
            kind = %u.kind.as_str(),
            id = %u.id,
            payment = %u.payment_id,
            event_id = %u.event_id,
            expected = u.amount,
            actual = 0,
            outbox = %u.outbox.as_str(),
            "settlement drift: unsettled past the grace period (`payfn reconcile --repair` re-publishes its event)"
        );
    }
    let hidden = report.mismatches.len().saturating_sub(LOG_LIMIT)
        + usize::try_from(report.unsettled_count)
            .unwrap_or(0)
            .saturating_sub(report.unsettled.len().min(LOG_LIMIT));
    if hidden > 0 {
        tracing::warn!(shard = %shard, more = hidden, "settlement drift: more differences not logged");
    }
}

/// Starts one reconciliation task per shard (unless disabled) and says so
/// in the start-up summary; the tasks run until the process ends.
pub fn start(config: &RuntimeConfig, shards: impl Iterator<Item = Arc<Shard>>, metrics: &Metrics) {
    let settings = &config.reconcile;
    let human = |d: Duration| humantime::format_duration(d).to_string();
    if !settings.enabled {
        crate::logging::banner(format_args!("  reconcile       off: settlement is not checked"));
        return;
    }
    crate::logging::banner(format_args!(
        "  reconcile       settlements of the last {} days against captures and refunds, every {} per shard (grace {})",
        settings.days,
        human(settings.interval),
        human(settings.grace),
    ));
    let checker = Arc::new(Checker::new(config));
    for shard in shards {
        // Every series from the start: 0 until a round finds drift.
        for kind in [KIND_MISMATCH, KIND_UNSETTLED] {
            metrics.settlement_drift(&shard.name, kind, 0, 0);
        }
        tokio::spawn(run(checker.clone(), settings.clone(), shard, metrics.clone()));
    }
}

/// The task of one shard.
async fn run(checker: Arc<Checker>, config: ReconcileConfig, shard: Arc<Shard>, metrics: Metrics) {
    // Hosts started together do not all check at the same moment.
    let interval_ms = u64::try_from(config.interval.as_millis()).unwrap_or(u64::MAX);
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..=interval_ms))).await;
    let (mut failing, mut drifting) = (false, false);
    loop {
        let now = SystemTime::now();
        let days = checker.recent_days(config.days, now);
        match checker.check(&shard, &days, now).await {
            Ok(report) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(shard = %shard.name, "reconcile: checking again");
                }
                export(&metrics, &report);
                if report.is_clean() {
                    if std::mem::take(&mut drifting) {
                        tracing::info!(shard = %shard.name, "reconcile: no settlement drift any more");
                    }
                } else {
                    drifting = true;
                    log(&report);
                }
            }
            // An outage is logged when it starts, not every round.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(shard = %shard.name, error = ?e, "reconcile: check failed; retrying every round");
            }
            Err(e) => tracing::debug!(shard = %shard.name, error = ?e, "reconcile: check failed again"),
        }
        tokio::time::sleep(config.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(section: &str) -> Result<ReconcileConfig, String> {
        toml::from_str::<RuntimeConfig>(&format!("[reconcile]\n{section}"))
            .map(|c| c.reconcile)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_check_three_days_every_five_minutes() {
        let config = RuntimeConfig::default().reconcile;
        assert_eq!(config, parse("").unwrap());
        assert!(config.enabled);
        assert_eq!(config.interval, Duration::from_secs(300));
        assert_eq!(config.grace, Duration::from_secs(300));
        assert_eq!(config.days, 3);
        assert_eq!(config.consumer, "settlement");
        let config =
            parse("enabled = false\ninterval = \"1s\"\ngrace = \"2s\"\ndays = 7\nconsumer = \"s2\"").unwrap();
        assert_eq!(
            config,
            ReconcileConfig {
                enabled: false,
                interval: Duration::from_secs(1),
                grace: Duration::from_secs(2),
                days: 7,
                consumer: "s2".into()
            }
        );
    }

    #[test]
    fn absurd_values_are_refused_with_the_key_named() {
        for (section, expected) in [
            ("days = 0", "invalid [reconcile] days = 0: it must be between 1 and 366"),
            ("days = 1000", "invalid [reconcile] days = 1000"),
            ("interval = \"0s\"", "invalid [reconcile] interval = \"0s\": it must be between 100ms and 1d"),
            ("grace = \"0s\"", "invalid [reconcile] grace = \"0s\": it must be between 1s and 7d"),
            ("grace = \"5\"", "invalid [reconcile] grace = \"5\": time unit needed"),
            ("consumer = \"\"", "invalid [reconcile] consumer"),
        ] {
            let err = parse(section).unwrap_err();
            assert!(err.contains(expected), "{section}: {err}");
        }
        assert!(parse("every = \"1s\"").unwrap_err().contains("every"));
    }

    fn checker(retention: Option<Duration>) -> Checker {
        Checker {
            consumer: "settlement".into(),
            grace: Duration::from_secs(60),
            processed_retention: retention,
        }
    }

    #[test]
    fn days_are_exact_within_the_processed_events_retention() {
        let now = humantime::parse_rfc3339("2026-03-10T12:00:00Z").unwrap();
        let week = Some(DAY * 7);
        let days = checker(week).recent_days(3, now);
        let names: Vec<_> = days.iter().map(|d| (d.day.as_str(), d.mode)).collect();
        assert_eq!(
            names,
            [("2026-03-08", Mode::Exact), ("2026-03-09", Mode::Exact), ("2026-03-10", Mode::Exact)]
        );
        // 2026-03-03 started 7.5 days ago: some of its ids may be gone.
        assert_eq!(checker(week).day("2026-03-04", now).unwrap().mode, Mode::Exact);
        assert_eq!(checker(week).day("2026-03-03", now).unwrap().mode, Mode::TotalsOnly);
        assert_eq!(checker(None).day("2001-01-01", now).unwrap().mode, Mode::Exact);
        assert_eq!(checker(week).day("2030-01-01", now).unwrap().mode, Mode::Exact);
        for bad in ["2026-3-1", "2026-02-30", "yesterday", "2026-03-10T00:00:00Z"] {
            assert!(checker(week).day(bad, now).is_err(), "{bad}");
        }
        assert_eq!(next_day("2026-02-28"), "2026-03-01");
        assert_eq!(next_day("2024-12-31"), "2025-01-01");
    }

    /// A migrated SQLite shard with settled, tampered, unsettled and
    /// in-flight changes: the check tells each apart, reads index ranges,
    /// and a repair re-publishes the unsettled ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_tells_mismatches_from_unsettled_and_in_flight_changes() {
        use crate::bindings::sql::Dialect;
        let (_dir, shard) = crate::shards::test_shard().await;
        assert_eq!(shard.dialect(), Dialect::Sqlite);
        let now = humantime::parse_rfc3339("2026-03-10T12:00:00Z").unwrap();
        let mut statements = Vec::new();
        // (payment, merchant, captured, captured_at, event, processed?, outbox published?)
        let captures = [
            ("p1", 1, 1000, "2026-03-10T01:00:00.000Z", "e1", true, 1),
            ("p2", 1, 500, "2026-03-10T02:00:00.000Z", "e2", true, 1),
            // Lost: published, never processed, older than the grace.
            ("p3", 1, 700, "2026-03-10T03:00:00.000Z", "e3", false, 1),
            // In flight: not processed, within the grace (now − 60 s).
            ("p4", 1, 900, "2026-03-10T11:59:30.000Z", "e4", false, 0),
            // Merchant 2: its settlement row is tampered with below.
            ("p5", 2, 2000, "2026-03-09T23:59:59.999Z", "e5", true, 1),
        ];
        for (id, merchant, amount, at, event, processed, published) in captures {
            statements.push(format!(
                "INSERT INTO payments (id, merchant_id, status, amount, captured_amount, currency, created_at, \
                 updated_at, captured_at, capture_event_id) \
                 VALUES ('{id}', {merchant}, 'CAPTURED', {amount}, {amount}, 'KRW', '{at}', '{at}', '{at}', '{event}')"
            ));
            statements.push(format!(
                "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, published) \
                 VALUES ('{event}', '{id}', {merchant}, 'payment.captured', '{{}}', '{at}', {published})"
            ));
            if processed {
                statements.push(format!(
                    "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ('settlement', '{event}', '{at}')"
                ));
            }
        }
        // A refund of p1, processed, and one of p2, dead-lettered.
        for (id, payment, amount, at, event, processed) in [
            ("r1", "p1", 100, "2026-03-10T05:00:00.000Z", "e6", true),
            ("r2", "p2", 50, "2026-03-10T06:00:00.000Z", "e7", false),
        ] {
            statements.push(format!(
                "INSERT INTO refunds (id, payment_id, merchant_id, amount, created_at, event_id) \
                 VALUES ('{id}', '{payment}', 1, {amount}, '{at}', '{event}')"
            ));
            statements.push(format!(
                "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, \
                 dead_lettered) VALUES ('{event}', '{payment}', 1, 'payment.refunded', '{{}}', '{at}', 1)"
            ));
            if processed {
                statements.push(format!(
                    "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ('settlement', '{event}', '{at}')"
                ));
            }
        }
        // Settlements: merchant 1 on the 10th counts p1, p2 and r1 exactly;
        // merchant 2 on the 9th claims 2100 for a 2000 capture.
        statements.push(
            "INSERT INTO settlements (merchant_id, day, currency, gross_captured, refunded, capture_count, \
             refund_count, updated_at) VALUES (1, '2026-03-10', 'KRW', 1500, 100, 2, 1, 'x'), \
             (2, '2026-03-09', 'KRW', 2100, 0, 1, 0, 'x')"
                .to_string(),
        );
        let mut tx = shard.begin(true).await.unwrap();
        for sql in statements {
            tx.execute(&sql, Vec::new()).await.unwrap();
        }
        tx.commit().await.unwrap();

        let checker = checker(Some(DAY * 7));
        let days = checker.recent_days(2, now);
        let report = checker.check(&shard, &days, now).await.unwrap();
        assert_eq!(
            report.mismatches,
            [Mismatch {
                merchant_id: 2,
                day: "2026-03-09".into(),
                currency: "KRW".into(),
                mode: Mode::Exact,
                expected: Totals { gross_captured: 2000, capture_count: 1, refunded: 0, refund_count: 0 },
                actual: Totals { gross_captured: 2100, capture_count: 1, refunded: 0, refund_count: 0 },
            }]
        );
        assert_eq!(report.mismatch_amount(), 100);
        let unsettled: Vec<_> = report
            .unsettled
            .iter()
            .map(|u| (u.kind, u.id.as_str(), u.amount, u.event_id.as_str(), u.outbox))
            .collect();
        assert_eq!(
            unsettled,
            [
                (ChangeKind::Capture, "p3", 700, "e3", OutboxState::Published),
                (ChangeKind::Refund, "r2", 50, "e7", OutboxState::DeadLettered),
            ]
        );
        assert_eq!((report.unsettled_count, report.unsettled_amount), (2, 750));
        assert!(!report.is_clean());

        // Totals only (the ids may be purged): every capture and refund counts.
        let old = Checker { processed_retention: Some(Duration::from_secs(1)), ..checker.clone() };
        let report = old.check(&shard, &[old.day("2026-03-10", now).unwrap()], now).await.unwrap();
        assert_eq!(report.mismatches.len(), 1, "{report:?}");
        assert_eq!(report.mismatches[0].mode, Mode::TotalsOnly);
        assert_eq!(
            report.mismatches[0].expected,
            Totals { gross_captured: 3100, capture_count: 4, refunded: 150, refund_count: 2 }
        );
        assert_eq!(report.unsettled_count, 0);

        // The repair re-publishes the unsettled rows' outbox rows only.
        let ids: Vec<String> = ["e3", "e7", "gone"].map(String::from).to_vec();
        assert_eq!(republish(&shard, &ids).await.unwrap(), 2);
        let mut read = shard.begin(false).await.unwrap();
        let rows = read
            .query(
                "SELECT event_id FROM outbox WHERE published = 0 AND dead_lettered = 0 ORDER BY event_id",
                Vec::new(),
            )
            .await
            .unwrap();
        let pending: Vec<_> = rows.rows.iter().map(|r| text(&r[0]).unwrap()).collect();
        assert_eq!(pending, ["e3", "e4", "e7"]);

        // Every statement is index searches, never a scan of a table.
        let plans = [
            (compare_sql(Mode::Exact), 7),
            (compare_sql(Mode::TotalsOnly), 5),
            (format!("{UNSETTLED} ORDER BY occurred_at, id LIMIT 10"), 6),
        ];
        for (sql, params) in plans {
            let plan = read
                .query(&format!("EXPLAIN QUERY PLAN {sql}"), vec![Value::Text("2026-03-10".into()); params])
                .await
                .unwrap();
            let plan = format!("{:?}", plan.rows);
            for index in ["payments_by_captured_at", "refunds_by_created_at"] {
                assert!(plan.contains(index), "{sql}\ndoes not search {index}: {plan}");
            }
            if sql.contains("settlements") {
                assert!(
                    plan.contains("settlements_by_day"),
                    "{sql}\ndoes not search settlements_by_day: {plan}"
                );
            }
            // The only scan is of the union's own rows (`t`), never a table.
            assert_eq!(
                plan.matches("SCAN ").count(),
                plan.matches("SCAN t\"").count(),
                "{sql}\nscans: {plan}"
            );
        }
        read.rollback().await;
    }
}
