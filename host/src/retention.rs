//! Retention (DESIGN.md rule 7): published outbox rows, processed-event ids
//! and idempotency records are purged once older than their retention.
//! Unpublished and dead-lettered outbox rows are never purged, whatever
//! their age: they are events nobody downstream has seen yet.
//!
//! One task per shard wakes every `interval` and deletes, per table, at
//! most `batch_size` rows per statement, each statement in a transaction of
//! its own, oldest rows first, through an index range scan that stops at
//! the batch (migration 0005). Between two batches it pauses at least
//! `pause` and at least as long as the last batch took, so even while it
//! catches up on a backlog it holds a shard's writer (SQLite's single
//! writer, a server's row locks) at most about half of the time, and it
//! slows down by itself when the shard is busy (its batches then wait
//! longer for the writer). The tables take turns, one batch each, so a
//! backlog in one does not hold up the others. A round ends when every
//! table came back with less than a batch: rows newer than the round's
//! cutoff wait for the next round, so a round always ends.
//!
//! Per dialect (see [`statement`], whose comments give the plans seen):
//! SQLite deletes by `rowid` from a limited sub-select (its DELETE has no
//! LIMIT in the bundled build); MariaDB/MySQL joins a limited derived
//! table on the primary key; PostgreSQL deletes by `ctid` what a limited
//! sub-select `FOR UPDATE SKIP LOCKED` found, so several hosts purging one
//! shard split the rows instead of queueing on each other's locks.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::bindings::sql::{Dialect, Error as SqlError, Value};
use crate::metrics::Metrics;
use crate::shards::Shard;

/// How long the HTTP trigger replays an idempotency record
/// (`RETENTION` in `triggers/http/idempotency.rs`, 24 h as Stripe): records
/// are purged after the same time by default. A shorter `idempotency`
/// retention shortens the replay window to itself (a warning says so at
/// start); a longer one keeps records the lookup already ignores.
pub const IDEMPOTENCY_REPLAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The `[retention]` section of the runtime config, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRetention")]
pub struct RetentionConfig {
    /// `false`: nothing is purged (tables grow without bound).
    pub enabled: bool,
    /// Idempotency records, by `created_at_ms`.
    pub idempotency: Duration,
    /// Published outbox rows, by `published_at`.
    pub outbox: Duration,
    /// Processed-event ids, by `processed_at`. A redelivered event whose id
    /// was purged runs again: keep this longer than any redelivery (the
    /// broker's topic retention is the bound; Kafka's default is 7 days).
    pub processed_events: Duration,
    /// Time between the end of one round and the start of the next.
    pub interval: Duration,
    /// Least pause between two batches.
    pub pause: Duration,
    /// Most rows one statement (one transaction) deletes.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RawRetention::default().try_into().expect("the default retention is valid")
    }
}

/// The section as written: durations in humantime's syntax (`"90s"`,
/// `"24h"`, `"7d"`), checked by [`RetentionConfig::try_from`].
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRetention {
    enabled: bool,
    idempotency: String,
    outbox: String,
    processed_events: String,
    interval: String,
    pause: String,
    // Signed, so that a negative value gets this module's message.
    batch_size: i64,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            enabled: true,
            idempotency: "24h".into(),
            outbox: "7d".into(),
            processed_events: "7d".into(),
            interval: "60s".into(),
            pause: "10ms".into(),
            batch_size: 500,
        }
    }
}

/// Bounds on each value: below or above them a value is a mistake (`"0s"`,
/// `"7"` read as seconds, `"70000d"`), refused at start.
const RETENTION_BOUNDS: (&str, &str) = ("1s", "3650d");
const INTERVAL_BOUNDS: (&str, &str) = ("10ms", "1d");
const PAUSE_BOUNDS: (&str, &str) = ("1ms", "1m");
/// Above this a batch is a long transaction: on SQLite every write of the
/// shard waits for it.
const MAX_BATCH: i64 = 10_000;

impl TryFrom<RawRetention> for RetentionConfig {
    type Error = String;

    fn try_from(raw: RawRetention) -> Result<Self, String> {
        let batch_size = match u32::try_from(raw.batch_size) {
            Ok(n) if (1..=MAX_BATCH).contains(&raw.batch_size) => n,
            _ => {
                return Err(format!(
                    "invalid [retention] batch_size = {}: it must be between 1 and {MAX_BATCH}",
                    raw.batch_size
                ))
            }
        };
        Ok(Self {
            enabled: raw.enabled,
            idempotency: duration("idempotency", &raw.idempotency, RETENTION_BOUNDS)?,
            outbox: duration("outbox", &raw.outbox, RETENTION_BOUNDS)?,
            processed_events: duration("processed_events", &raw.processed_events, RETENTION_BOUNDS)?,
            interval: duration("interval", &raw.interval, INTERVAL_BOUNDS)?,
            pause: duration("pause", &raw.pause, PAUSE_BOUNDS)?,
            batch_size,
        })
    }
}

/// `text` as a duration within `(min, max)`, or a message naming the key.
fn duration(key: &str, text: &str, bounds: (&str, &str)) -> Result<Duration, String> {
    crate::runtime_config::bounded_duration("retention", key, text, bounds)
}

/// A table the purge keeps short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Outbox,
    ProcessedEvents,
    IdempotencyKeys,
}

impl Table {
    const ALL: [Table; 3] = [Table::Outbox, Table::ProcessedEvents, Table::IdempotencyKeys];

    /// The table's name, also the metric's `table` label.
    fn name(self) -> &'static str {
        match self {
            Table::Outbox => "outbox",
            Table::ProcessedEvents => "processed_events",
            Table::IdempotencyKeys => "idempotency_keys",
        }
    }

    /// What makes a row purgeable, the cutoff as the one parameter.
    /// Outbox: published and not dead-lettered, both spelled out, so that
    /// no future way of setting one flag without the other can let an
    /// unseen event go.
    fn filter(self) -> &'static str {
        match self {
            Table::Outbox => "published = 1 AND dead_lettered = 0 AND published_at < ?",
            Table::ProcessedEvents => "processed_at < ?",
            Table::IdempotencyKeys => "created_at_ms < ?",
        }
    }

    /// The indexed time column (migration 0005), oldest first.
    fn order(self) -> &'static str {
        match self {
            Table::Outbox => "published_at",
            Table::ProcessedEvents => "processed_at",
            Table::IdempotencyKeys => "created_at_ms",
        }
    }

    /// The primary key.
    fn key(self) -> &'static str {
        match self {
            Table::Outbox => "id",
            Table::ProcessedEvents => "consumer, event_id",
            Table::IdempotencyKeys => "merchant_id, idempotency_key",
        }
    }

    fn retention(self, config: &RetentionConfig) -> Duration {
        match self {
            Table::Outbox => config.outbox,
            Table::ProcessedEvents => config.processed_events,
            Table::IdempotencyKeys => config.idempotency,
        }
    }

    /// Rows older than this, as the column stores time: RFC 3339 UTC text
    /// with milliseconds (written by `humantime::format_rfc3339_millis` in
    /// the relay and the Kafka trigger; it sorts as text) or epoch
    /// milliseconds (the idempotency records). `None` before 1970.
    fn cutoff(self, now: SystemTime, retention: Duration) -> Option<Value> {
        let cutoff = now.checked_sub(retention)?;
        Some(match self {
            Table::Outbox | Table::ProcessedEvents => {
                Value::Text(humantime::format_rfc3339_millis(cutoff).to_string())
            }
            Table::IdempotencyKeys => {
                Value::Int64(i64::try_from(cutoff.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?)
            }
        })
    }
}

/// The statement deleting at most `limit` of `table`'s purgeable rows,
/// oldest first, in `dialect`. Every form reads the time index from its
/// start and stops after `limit` rows.
fn statement(dialect: Dialect, table: Table, limit: u32) -> String {
    let (name, order, key) = (table.name(), table.order(), table.key());
    // A merchant being moved keeps its rows until the move is over: the
    // move copies and verifies them (moves/copy.rs).
    let filter = format!(
        "{} AND NOT EXISTS (SELECT 1 FROM moving_merchants m WHERE m.merchant_id = {name}.merchant_id)",
        table.filter()
    );
    match dialect {
        Dialect::Sqlite => format!(
            "DELETE FROM {name} WHERE rowid IN \
             (SELECT rowid FROM {name} WHERE {filter} ORDER BY {order} LIMIT {limit})"
        ),
        // Not `DELETE ... ORDER BY ... LIMIT`: for the outbox MariaDB 10.11
        // plans that on the relay's `outbox_pending` (same two leading
        // columns) and sorts every old row, each batch. A derived table
        // with a LIMIT (an `IN` sub-select may not have one) is planned as
        // a SELECT: a covering range of the time index that stops after
        // `limit` rows (InnoDB's secondary index holds the key after its
        // columns, so the order by time then key is the index's own, and
        // total: a statement-based replica deletes the same rows). Then
        // one primary-key lookup per row.
        Dialect::Mysql => format!(
            "DELETE t FROM {name} t JOIN \
             (SELECT {key} FROM {name} WHERE {filter} ORDER BY {order}, {key} LIMIT {limit}) d USING ({key})"
        ),
        // By ctid, not by key: `(a, b) IN (SELECT ...)` is planned as a
        // hash semi-join over a scan of the whole table; `ctid = ANY
        // (ARRAY(...))` is a TID scan of exactly the rows the sub-select
        // found. They are locked by its FOR UPDATE within this statement,
        // so no other transaction can move them (change their ctid)
        // before the DELETE reads them.
        Dialect::Postgres => format!(
            "DELETE FROM {name} WHERE ctid = ANY (ARRAY \
             (SELECT ctid FROM {name} WHERE {filter} ORDER BY {order} LIMIT {limit} FOR UPDATE SKIP LOCKED))"
        ),
    }
}

/// Starts one purge task per shard (unless disabled) and says so in the
/// start-up summary; the tasks run until the process ends.
pub fn start(config: &RetentionConfig, shards: impl Iterator<Item = Arc<Shard>>, metrics: &Metrics) {
    let human = |d: Duration| humantime::format_duration(d).to_string();
    if !config.enabled {
        crate::logging::banner(format_args!("  retention       off: nothing is purged"));
        return;
    }
    crate::logging::banner(format_args!(
        "  retention       outbox (published) {}, processed events {}, idempotency {}; every {} per shard, {} rows a batch",
        human(config.outbox),
        human(config.processed_events),
        human(config.idempotency),
        human(config.interval),
        config.batch_size,
    ));
    if config.idempotency < IDEMPOTENCY_REPLAY_WINDOW {
        tracing::warn!(
            "[retention] idempotency = {} is shorter than the {} an Idempotency-Key replays for: \
             a request retried after {} runs again",
            human(config.idempotency),
            human(IDEMPOTENCY_REPLAY_WINDOW),
            human(config.idempotency),
        );
    }
    for shard in shards {
        // Every series from the start, so a rate() over it has no gap.
        for table in Table::ALL {
            metrics.retention_purged(&shard.name, table.name(), 0);
        }
        let purger = Purger::new(config.clone(), shard, metrics.clone());
        tokio::spawn(purger.run());
    }
}

/// The purge of one shard.
struct Purger {
    config: RetentionConfig,
    shard: Arc<Shard>,
    metrics: Metrics,
    /// Per table, its statement in the shard's dialect.
    statements: Vec<(Table, String)>,
}

impl Purger {
    fn new(config: RetentionConfig, shard: Arc<Shard>, metrics: Metrics) -> Self {
        let dialect = shard.dialect();
        let statements = Table::ALL.iter().map(|&t| (t, statement(dialect, t, config.batch_size))).collect();
        Self { config, shard, metrics, statements }
    }

    async fn run(self) {
        // Hosts started together do not all purge at the same moment.
        let interval_ms = u64::try_from(self.config.interval.as_millis()).unwrap_or(u64::MAX);
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..=interval_ms))).await;
        let mut failing = false;
        loop {
            match self.round(SystemTime::now()).await {
                Ok(purged) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(shard = %self.shard.name, "retention: purging again");
                    }
                    if purged > 0 {
                        tracing::debug!(shard = %self.shard.name, purged, "retention: purged");
                    }
                }
                // An outage is logged when it starts, not every round.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(shard = %self.shard.name, error = ?e, "retention: purge failed; retrying every round");
                }
                Err(e) => {
                    tracing::debug!(shard = %self.shard.name, error = ?e, "retention: purge failed again")
                }
            }
            tokio::time::sleep(self.config.interval).await;
        }
    }

    /// One round: batches of every table in turn until each is through to
    /// `now`'s cutoffs. Returns the rows purged.
    async fn round(&self, now: SystemTime) -> Result<u64, SqlError> {
        let mut pending: Vec<&(Table, String)> = self.statements.iter().collect();
        let mut last_batch: Option<Duration> = None;
        let mut purged = 0;
        while !pending.is_empty() {
            let mut again = Vec::with_capacity(pending.len());
            for entry in pending {
                let (table, sql) = entry;
                let Some(cutoff) = table.cutoff(now, table.retention(&self.config)) else {
                    continue;
                };
                if let Some(took) = last_batch {
                    tokio::time::sleep(took.max(self.config.pause)).await;
                }
                let started = Instant::now();
                let deleted = self.batch(sql, cutoff).await?;
                last_batch = Some(started.elapsed());
                self.metrics.retention_purged(&self.shard.name, table.name(), deleted);
                purged += deleted;
                if deleted >= u64::from(self.config.batch_size) {
                    again.push(entry);
                }
            }
            pending = again;
        }
        Ok(purged)
    }

    /// One batch in a transaction of its own; the rows it deleted once
    /// committed.
    async fn batch(&self, sql: &str, cutoff: Value) -> Result<u64, SqlError> {
        let mut tx = self.shard.begin(true).await?;
        match tx.execute(sql, vec![cutoff]).await {
            Ok(deleted) => {
                tx.commit().await?;
                Ok(deleted)
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime_config::RuntimeConfig;

    fn parse(section: &str) -> Result<RetentionConfig, String> {
        toml::from_str::<RuntimeConfig>(&format!("[retention]\n{section}"))
            .map(|c| c.retention)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_day_of_idempotency_and_a_week_of_events() {
        let config = RuntimeConfig::default().retention;
        assert_eq!(config, parse("").unwrap());
        assert!(config.enabled);
        assert_eq!(config.idempotency, IDEMPOTENCY_REPLAY_WINDOW);
        assert_eq!(config.idempotency, Duration::from_secs(24 * 3600));
        assert_eq!(config.outbox, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.processed_events, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.interval, Duration::from_secs(60));
        assert_eq!(config.pause, Duration::from_millis(10));
        assert_eq!(config.batch_size, 500);
    }

    #[test]
    fn durations_are_humantime_and_every_key_is_read() {
        let config = parse(
            "enabled = false\nidempotency = \"2s\"\noutbox = \"36h\"\nprocessed_events = \"30d\"\n\
             interval = \"200ms\"\npause = \"5ms\"\nbatch_size = 100",
        )
        .unwrap();
        assert_eq!(
            config,
            RetentionConfig {
                enabled: false,
                idempotency: Duration::from_secs(2),
                outbox: Duration::from_secs(36 * 3600),
                processed_events: Duration::from_secs(30 * 24 * 3600),
                interval: Duration::from_millis(200),
                pause: Duration::from_millis(5),
                batch_size: 100,
            }
        );
    }

    #[test]
    fn zero_and_absurd_values_are_refused_with_the_key_named() {
        for (section, expected) in [
            ("batch_size = 0", "invalid [retention] batch_size = 0: it must be between 1 and 10000"),
            ("batch_size = -5", "invalid [retention] batch_size = -5"),
            ("batch_size = 1000000", "invalid [retention] batch_size = 1000000"),
            ("outbox = \"0s\"", "invalid [retention] outbox = \"0s\": it must be between 1s and 3650d"),
            ("idempotency = \"0ms\"", "invalid [retention] idempotency = \"0ms\""),
            ("processed_events = \"100years\"", "invalid [retention] processed_events = \"100years\""),
            ("interval = \"0s\"", "invalid [retention] interval = \"0s\": it must be between 10ms and 1d"),
            ("interval = \"30d\"", "invalid [retention] interval = \"30d\""),
            ("pause = \"0s\"", "invalid [retention] pause = \"0s\""),
            ("outbox = \"7\"", "invalid [retention] outbox = \"7\": time unit needed"),
            ("outbox = \"a week\"", "invalid [retention] outbox = \"a week\""),
        ] {
            let err = parse(section).unwrap_err();
            assert!(err.contains(expected), "{section}: {err}");
        }
        let err = parse("outbox_days = 7").unwrap_err();
        assert!(err.contains("outbox_days"), "{err}");
        let err = parse("outbox = 7").unwrap_err();
        assert!(err.contains("outbox"), "{err}");
    }

    #[test]
    fn statements_are_bounded_per_dialect() {
        let fenced = |t: &str| {
            format!("NOT EXISTS (SELECT 1 FROM moving_merchants m WHERE m.merchant_id = {t}.merchant_id)")
        };
        assert_eq!(
            statement(Dialect::Sqlite, Table::Outbox, 500),
            format!(
                "DELETE FROM outbox WHERE rowid IN (SELECT rowid FROM outbox WHERE published = 1 AND \
                 dead_lettered = 0 AND published_at < ? AND {} ORDER BY published_at LIMIT 500)",
                fenced("outbox")
            )
        );
        assert_eq!(
            statement(Dialect::Mysql, Table::ProcessedEvents, 7),
            format!(
                "DELETE t FROM processed_events t JOIN (SELECT consumer, event_id FROM processed_events \
                 WHERE processed_at < ? AND {} ORDER BY processed_at, consumer, event_id LIMIT 7) d \
                 USING (consumer, event_id)",
                fenced("processed_events")
            )
        );
        assert_eq!(
            statement(Dialect::Postgres, Table::IdempotencyKeys, 500),
            format!(
                "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY (SELECT ctid FROM idempotency_keys \
                 WHERE created_at_ms < ? AND {} ORDER BY created_at_ms LIMIT 500 FOR UPDATE SKIP LOCKED))",
                fenced("idempotency_keys")
            )
        );
    }

    #[test]
    fn cutoffs_use_each_column_format() {
        let now = humantime::parse_rfc3339("2026-03-10T12:00:00.250Z").unwrap();
        let day = Duration::from_secs(86_400);
        let text = Table::Outbox.cutoff(now, day).unwrap();
        assert_eq!(format!("{text:?}"), format!("{:?}", Value::Text("2026-03-09T12:00:00.250Z".into())));
        let ms = Table::IdempotencyKeys.cutoff(now, day).unwrap();
        let expected = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 - 86_400_000;
        assert_eq!(format!("{ms:?}"), format!("{:?}", Value::Int64(expected)));
    }

    /// A SQLite shard, migrated, with rows of every kind on both sides of
    /// the cutoff: a round purges exactly the old purgeable ones, and
    /// every statement is an index search, never a scan of the table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_purges_old_rows_and_spares_unpublished_and_dead_lettered_ones() {
        let (_dir, shard) = crate::shards::test_shard().await;
        let (old, new) = ("2020-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z");
        let mut tx = shard.begin(true).await.unwrap();
        // (published, dead_lettered, published_at): 7 old published rows,
        // one new, one old unpublished, one old dead-lettered.
        let rows = [(1, 0, Some(old)); 7].into_iter().chain([
            (1, 0, Some(new)),
            (0, 0, Some(old)),
            (0, 1, None),
            (1, 1, Some(old)),
        ]);
        for (i, (published, dead, at)) in rows.enumerate() {
            tx.execute(
                "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, \
                 published, dead_lettered, published_at) VALUES (?, 'p', 1, 't', '{}', ?, ?, ?, ?)",
                vec![
                    Value::Text(format!("e{i}")),
                    Value::Text(old.into()),
                    Value::Int64(published),
                    Value::Int64(dead),
                    at.map_or(Value::Null, |t| Value::Text(t.into())),
                ],
            )
            .await
            .unwrap();
        }
        for (i, at) in [old, old, old, new].into_iter().enumerate() {
            tx.execute(
                "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ('g', ?, ?)",
                vec![Value::Text(format!("e{i}")), Value::Text(at.into())],
            )
            .await
            .unwrap();
        }
        for (i, ms) in [1_000, 2_000, 32_503_680_000_000].into_iter().enumerate() {
            tx.execute(
                "INSERT INTO idempotency_keys (merchant_id, idempotency_key, fingerprint, status, body, created_at_ms) \
                 VALUES (1, ?, 'f', 200, x'00', ?)",
                vec![Value::Text(format!("k{i}")), Value::Int64(ms)],
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();

        let day = Duration::from_secs(86_400);
        let config = RetentionConfig {
            idempotency: day,
            outbox: day,
            processed_events: day,
            // Batches of 2: the round goes on until each table is through.
            batch_size: 2,
            pause: Duration::from_millis(1),
            ..RetentionConfig::default()
        };
        let metrics = Metrics::new();
        let purger = Purger::new(config, shard.clone(), metrics.clone());
        assert_eq!(purger.round(SystemTime::now()).await.unwrap(), 7 + 3 + 2);
        assert_eq!(purger.round(SystemTime::now()).await.unwrap(), 0, "nothing left to purge");

        let mut read = shard.begin(false).await.unwrap();
        let left = read
            .query("SELECT published, dead_lettered, published_at FROM outbox ORDER BY id", Vec::new())
            .await
            .unwrap();
        let expected =
            [(1, 0, Some(new)), (0, 0, Some(old)), (0, 1, None), (1, 1, Some(old))].map(|(p, d, at)| {
                vec![Value::Int64(p), Value::Int64(d), at.map_or(Value::Null, |t| Value::Text(t.into()))]
            });
        assert_eq!(format!("{:?}", left.rows), format!("{expected:?}"));
        for (sql, count) in
            [("SELECT COUNT(*) FROM processed_events", 1), ("SELECT COUNT(*) FROM idempotency_keys", 1)]
        {
            let rows = read.query(sql, Vec::new()).await.unwrap();
            assert_eq!(format!("{:?}", rows.rows), format!("{:?}", [[Value::Int64(count)]]), "{sql}");
        }
        for table in Table::ALL {
            let plan = read
                .query(
                    &format!("EXPLAIN QUERY PLAN {}", statement(Dialect::Sqlite, table, 500)),
                    vec![Value::Null],
                )
                .await
                .unwrap();
            let plan = format!("{:?}", plan.rows);
            let index = match table {
                Table::Outbox => "outbox_published_at",
                Table::ProcessedEvents => "processed_events_by_time",
                Table::IdempotencyKeys => "idempotency_keys_by_time",
            };
            assert!(plan.contains(&format!("INDEX {index} (")), "{table:?} does not search {index}: {plan}");
            assert!(!plan.contains("SCAN "), "{table:?} scans: {plan}");
        }
        read.rollback().await;

        let text = metrics.encode();
        for (table, n) in [("outbox", 7), ("processed_events", 3), ("idempotency_keys", 2)] {
            let line = format!("payfn_retention_purged_total{{shard=\"s\",table=\"{table}\"}} {n}");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}
