//! Prometheus metrics: per component and version invocations, errors and
//! latency, rate-limit rejections, and which Kafka partitions this host
//! consumes. Plus [`VersionStats`], the same figures per version kept for
//! the admin API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    component: String,
    /// The first 12 hex digits of the version's SHA-256.
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    component: String,
    version: String,
    /// `trap`, `timeout`, `unavailable` or `status_5xx`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    group: String,
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProduceLabels {
    topic: String,
    /// `acknowledged`, `unavailable`, `rejected` or `topic_not_granted`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionLabels {
    shard: String,
    /// `outbox`, `processed_events` or `idempotency_keys`.
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    shard: String,
    /// `mismatch` (settlement rows that differ from what they count) or
    /// `unsettled` (captures and refunds not settled past the grace).
    kind: String,
}

type HistogramFamily = Family<VersionLabels, Histogram, fn() -> Histogram>;

/// The host's metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    invocations: Family<VersionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    rate_limited: Family<ComponentLabel, Counter>,
    dead_lettered: Family<ComponentLabel, Counter>,
    failed_stored: Family<ComponentLabel, Counter>,
    transient_retries: Family<GroupLabel, Counter>,
    transient_waiting: Family<GroupLabel, Gauge>,
    fetch_gaps: Family<GroupLabel, Counter>,
    duplicates: Family<ComponentLabel, Counter>,
    outbox_pending: Family<ShardLabel, Gauge>,
    outbox_dead: Family<ShardLabel, Gauge>,
    outbox_oldest_age: Family<ShardLabel, Gauge<f64, AtomicU64>>,
    group_commits: Family<ShardLabel, Counter>,
    group_commit_members: Family<ShardLabel, Counter>,
    partition_owned: Family<PartitionLabels, Gauge>,
    partition_records: Family<PartitionLabels, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    consumer_lag_seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    produced: Family<ProduceLabels, Counter>,
    loaded_versions: Gauge,
    control_behind: Gauge,
    control_sync_age: Gauge<f64, AtomicU64>,
    retention_purged: Family<RetentionLabels, Counter>,
    settlement_drift_rows: Family<DriftLabels, Gauge>,
    settlement_drift_amount: Family<DriftLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("payfn");
        let invocations = Family::<VersionLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 0.1 ms .. ~3.3 s
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        let rate_limited = Family::<ComponentLabel, Counter>::default();
        let dead_lettered = Family::<ComponentLabel, Counter>::default();
        let duplicates = Family::<ComponentLabel, Counter>::default();
        registry.register(
            "events_duplicate",
            "Consumed events skipped because their effect was already committed",
            duplicates.clone(),
        );
        let outbox_pending = Family::<ShardLabel, Gauge>::default();
        let outbox_dead = Family::<ShardLabel, Gauge>::default();
        registry.register(
            "outbox_pending",
            "Outbox rows not yet published, per shard",
            outbox_pending.clone(),
        );
        registry.register(
            "outbox_dead_lettered",
            "Outbox rows the relay gave up on after its retry budget, per shard",
            outbox_dead.clone(),
        );
        let outbox_oldest_age = Family::<ShardLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row not yet published nor dead-lettered, per shard (0: none pending), read at scrape time",
            outbox_oldest_age.clone(),
        );
        let group_commits = Family::<ShardLabel, Counter>::default();
        registry.register(
            "shard_group_commits",
            "COMMITs of a SQLite shard's write groups since the host started (one fsync each), per shard",
            group_commits.clone(),
        );
        let group_commit_members = Family::<ShardLabel, Counter>::default();
        registry.register(
            "shard_group_commit_members",
            "Write invocations those COMMITs acknowledged, per shard: divided by shard_group_commits, the mean group size",
            group_commit_members.clone(),
        );
        registry.register("invocations", "Component invocations", invocations.clone());
        registry.register("invocation_errors", "Invocations that failed, by kind", errors.clone());
        registry.register(
            "invocation_duration_seconds",
            "Invocation latency, instantiation included",
            duration.clone(),
        );
        registry.register("rate_limited", "Requests refused by the rate limiter", rate_limited.clone());
        registry.register(
            "events_dead_lettered",
            "Consumed events sent to the dead-letter topic, by consuming component",
            dead_lettered.clone(),
        );
        let failed_stored = Family::<ComponentLabel, Counter>::default();
        registry.register(
            "events_failed_stored",
            "Consumed events the dead-letter topic did not take (unavailable or refused), kept in a shard's failed_events table instead, by consuming component",
            failed_stored.clone(),
        );
        let transient_retries = Family::<GroupLabel, Counter>::default();
        registry.register(
            "kafka_transient_retries",
            "Tries again of a Kafka trigger's records after a transient failure (shard unavailable, lock conflict): the partition waits, no attempt is spent",
            transient_retries.clone(),
        );
        let transient_waiting = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "kafka_transient_waiting",
            "1 while a Kafka trigger's consumer waits out a transient failure (its partitions do not advance), else 0",
            transient_waiting.clone(),
        );
        let fetch_gaps = Family::<GroupLabel, Counter>::default();
        registry.register(
            "kafka_fetch_gaps",
            "Times a Kafka group consumer was delivered an offset past the one it had to read next (its committed offset when it took the partition over, or the next one): it seeks back, so nothing is skipped",
            fetch_gaps.clone(),
        );
        let partition_owned = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "kafka_partition_owned",
            "1 while this host's consumer group member owns the partition, else 0",
            partition_owned.clone(),
        );
        let partition_records = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "kafka_records_handled",
            "Records this host's Kafka trigger handled (processed, duplicate or dead-lettered), per partition",
            partition_records.clone(),
        );
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "kafka_consumer_lag",
            "Records of the partition not yet handled by the consumer group (log end minus committed position), read at scrape time",
            consumer_lag.clone(),
        );
        let consumer_lag_seconds = Family::<PartitionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "kafka_consumer_lag_seconds",
            "Age of the first record of the partition the consumer group has not committed past (0: caught up), read at scrape time",
            consumer_lag_seconds.clone(),
        );
        let produced = Family::<ProduceLabels, Counter>::default();
        registry.register(
            "kafka_produced",
            "Messages produced to the event broker, by topic and outcome (unavailable: backlog, retried without spending a retry budget; rejected, topic_not_granted: refusals)",
            produced.clone(),
        );
        let loaded_versions = Gauge::default();
        registry.register(
            "loaded_versions",
            "Component versions held in memory: serving, on standby for a rollback, or replaced and still finishing invocations",
            loaded_versions.clone(),
        );
        let control_behind = Gauge::default();
        registry.register(
            "control_generations_behind",
            "Changes in the control store this host does not serve yet (0: it serves the latest deploy)",
            control_behind.clone(),
        );
        let control_sync_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "control_sync_age_seconds",
            "Seconds since this host last read the control store successfully (a deploy reaches it only then)",
            control_sync_age.clone(),
        );
        let retention_purged = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "retention_purged",
            "Rows deleted by the retention purge (published outbox rows, processed event ids, idempotency records), per shard and table",
            retention_purged.clone(),
        );
        let settlement_drift_rows = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "settlement_drift_rows",
            "Settlement drift found by the last reconciliation of the shard: kind=mismatch, settlement rows whose totals differ from the processed captures and refunds they count; kind=unsettled, captures and refunds whose event is past the grace period and not settled",
            settlement_drift_rows.clone(),
        );
        let settlement_drift_amount = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "settlement_drift_amount",
            "The amount of that drift, in minor units (summed over currencies): kind=mismatch, the sum of |captured difference| + |refunded difference|; kind=unsettled, the sum of the unsettled amounts",
            settlement_drift_amount.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            invocations,
            errors,
            duration,
            rate_limited,
            dead_lettered,
            failed_stored,
            transient_retries,
            transient_waiting,
            fetch_gaps,
            duplicates,
            outbox_pending,
            outbox_dead,
            outbox_oldest_age,
            group_commits,
            group_commit_members,
            partition_owned,
            partition_records,
            consumer_lag,
            consumer_lag_seconds,
            produced,
            loaded_versions,
            control_behind,
            control_sync_age,
            retention_purged,
            settlement_drift_rows,
            settlement_drift_amount,
        }
    }

    /// Sets the control-store sync gauges (read at scrape time).
    pub fn control_sync(&self, generations_behind: i64, seconds_since_sync: f64) {
        self.control_behind.set(generations_behind);
        self.control_sync_age.set(seconds_since_sync);
    }

    /// Sets the loaded-versions gauge (read at scrape time).
    pub fn loaded_versions(&self, count: i64) {
        self.loaded_versions.set(count);
    }

    /// Records one invocation of version `version` of `component`; `failure`
    /// is the error kind (`trap`, `timeout`, `status_5xx`...) when it failed.
    pub fn invoked(
        &self,
        component: &str,
        version: &str,
        stats: &VersionStats,
        elapsed: Duration,
        failure: Option<&str>,
    ) {
        stats.record(elapsed, failure.is_some());
        let labels = VersionLabels { component: component.to_string(), version: version.to_string() };
        self.invocations.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if let Some(kind) = failure {
            let labels = ErrorLabels {
                component: component.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
            };
            self.errors.get_or_create(&labels).inc();
        }
    }

    pub fn rate_limited(&self, component: &str) {
        self.rate_limited.get_or_create(&ComponentLabel { component: component.to_string() }).inc();
    }

    pub fn dead_lettered(&self, component: &str) {
        self.dead_lettered.get_or_create(&ComponentLabel { component: component.to_string() }).inc();
    }

    /// Counts one consumed event kept in `failed_events` (its dead-letter
    /// topic did not take it).
    pub fn failed_stored(&self, component: &str) {
        self.failed_stored.get_or_create(&ComponentLabel { component: component.to_string() }).inc();
    }

    /// Counts one try again of `group`'s records after a transient failure.
    pub fn transient_retry(&self, group: &str) {
        self.transient_retries.get_or_create(&GroupLabel { group: group.to_string() }).inc();
    }

    /// Whether `group`'s consumer is waiting out a transient failure.
    pub fn transient_waiting(&self, group: &str, waiting: bool) {
        self.transient_waiting.get_or_create(&GroupLabel { group: group.to_string() }).set(waiting.into());
    }

    /// Counts one offset past the expected one delivered to `group`'s consumer.
    pub fn fetch_gap(&self, group: &str) {
        self.fetch_gaps.get_or_create(&GroupLabel { group: group.to_string() }).inc();
    }

    pub fn duplicate(&self, component: &str) {
        self.duplicates.get_or_create(&ComponentLabel { component: component.to_string() }).inc();
    }

    /// Sets the outbox gauges of `shard`.
    pub fn outbox(&self, shard: &str, pending: i64, dead: i64) {
        let label = ShardLabel { shard: shard.to_string() };
        self.outbox_pending.get_or_create(&label).set(pending);
        self.outbox_dead.get_or_create(&label).set(dead);
    }

    /// Sets the age of `shard`'s oldest pending outbox row (0: none pending).
    pub fn outbox_oldest_age(&self, shard: &str, seconds: f64) {
        self.outbox_oldest_age.get_or_create(&ShardLabel { shard: shard.to_string() }).set(seconds);
    }

    /// Brings `shard`'s group-commit counters up to the writer's own counts
    /// (read at scrape time; they only grow).
    pub fn group_commits(&self, shard: &str, commits: u64, members: u64) {
        let label = ShardLabel { shard: shard.to_string() };
        for (family, now) in [(&self.group_commits, commits), (&self.group_commit_members, members)] {
            let counter = family.get_or_create(&label);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    /// Creates the per-component event counters at zero when a Kafka
    /// trigger starts, so that "none yet" reads as 0, not as a missing line.
    pub fn event_consumer_started(&self, component: &str) {
        let label = ComponentLabel { component: component.to_string() };
        let _ = self.duplicates.get_or_create(&label);
        let _ = self.dead_lettered.get_or_create(&label);
    }

    /// Marks `topic`/`partition` as owned (or no longer) by `group`'s consumer on this host.
    pub fn partition_owned(&self, group: &str, topic: &str, partition: i32, owned: bool) {
        let labels = partition_labels(group, topic, partition);
        self.partition_owned.get_or_create(&labels).set(i64::from(owned));
    }

    /// Counts one record of `topic`/`partition` handled by `group`'s consumer.
    /// Counts one produced message by its outcome.
    pub fn produced(&self, topic: &str, outcome: &str) {
        self.produced
            .get_or_create(&ProduceLabels { topic: topic.to_string(), outcome: outcome.to_string() })
            .inc();
    }

    pub fn record_handled(&self, group: &str, topic: &str, partition: i32) {
        self.partition_records.get_or_create(&partition_labels(group, topic, partition)).inc();
    }

    /// Sets the lag gauge of one partition of a consumer group.
    pub fn consumer_lag(&self, group: &str, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.get_or_create(&partition_labels(group, topic, partition)).set(lag);
    }

    /// Sets the age of the first record of one partition a consumer group
    /// has not committed past (0: caught up).
    pub fn consumer_lag_seconds(&self, group: &str, topic: &str, partition: i32, seconds: f64) {
        self.consumer_lag_seconds.get_or_create(&partition_labels(group, topic, partition)).set(seconds);
    }

    /// Counts `rows` of `table` on `shard` deleted by the retention purge.
    pub fn retention_purged(&self, shard: &str, table: &str, rows: u64) {
        let labels = RetentionLabels { shard: shard.to_string(), table: table.to_string() };
        self.retention_purged.get_or_create(&labels).inc_by(rows);
    }

    /// Sets the settlement drift gauges of `shard` and `kind` (reconcile.rs).
    pub fn settlement_drift(&self, shard: &str, kind: &str, rows: i64, amount: i64) {
        let labels = DriftLabels { shard: shard.to_string(), kind: kind.to_string() };
        self.settlement_drift_rows.get_or_create(&labels).set(rows);
        self.settlement_drift_amount.get_or_create(&labels).set(amount);
    }

    /// Adds a metric family a capability owns (`payfn_<name>`): capabilities
    /// register their own at start rather than being listed here.
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(name, help, metric);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

fn partition_labels(group: &str, topic: &str, partition: i32) -> PartitionLabels {
    PartitionLabels { group: group.to_string(), topic: topic.to_string(), partition: partition.to_string() }
}

/// Invocations, failures and latency of one component version on this host
/// since it started: lock-free counters the hot path bumps.
#[derive(Debug, Default)]
pub struct VersionStats {
    invocations: AtomicU64,
    errors: AtomicU64,
    total_micros: AtomicU64,
    /// Bucket i counts latencies below 2^(i+6) microseconds (64 µs .. 8.4 s),
    /// the last one everything slower.
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

const LATENCY_BUCKETS: usize = 19;

/// A snapshot of [`VersionStats`] (or of several hosts' counts summed).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StatsSnapshot {
    pub invocations: u64,
    pub errors: u64,
    pub mean_ms: f64,
    /// Upper bounds of the buckets holding the median and the 99th percentile.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The raw counts behind a [`StatsSnapshot`]: what each host publishes in
/// the control store, so that a listing can sum the figures of every host.
/// Counts add up; quantiles are computed only after the sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsCounts {
    pub invocations: u64,
    pub errors: u64,
    pub total_micros: u64,
    /// As in [`VersionStats`]: bucket i counts latencies below 2^(i+6) µs.
    pub buckets: Vec<u64>,
}

impl StatsCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &StatsCounts) {
        self.invocations = self.invocations.saturating_add(other.invocations);
        self.errors = self.errors.saturating_add(other.errors);
        self.total_micros = self.total_micros.saturating_add(other.total_micros);
        // Another host's list may be longer (a later build with more
        // buckets); never index past the longer one, never lose a count.
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Mean and bucketed quantiles of these counts.
    pub fn snapshot(&self) -> StatsSnapshot {
        let total: u64 = self.buckets.iter().sum();
        let quantile = |q: f64| {
            if total == 0 {
                return 0.0;
            }
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (i, count) in self.buckets.iter().enumerate() {
                seen = seen.saturating_add(*count);
                if seen >= rank {
                    return 2f64.powi(i as i32 + 6) / 1000.0;
                }
            }
            2f64.powi(self.buckets.len() as i32 + 5) / 1000.0
        };
        StatsSnapshot {
            invocations: self.invocations,
            errors: self.errors,
            mean_ms: if self.invocations == 0 {
                0.0
            } else {
                self.total_micros as f64 / self.invocations as f64 / 1000.0
            },
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        }
    }
}

impl VersionStats {
    fn record(&self, elapsed: Duration, failed: bool) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.invocations.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
        let index = (64 - (micros >> 6).leading_zeros()) as usize;
        self.buckets[index.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> StatsCounts {
        StatsCounts {
            invocations: self.invocations.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            total_micros: self.total_micros.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_stats_bucket_latencies() {
        let stats = VersionStats::default();
        for _ in 0..98 {
            stats.record(Duration::from_micros(900), false);
        }
        stats.record(Duration::from_millis(40), true);
        stats.record(Duration::from_millis(40), false);
        let s = stats.counts().snapshot();
        assert_eq!((s.invocations, s.errors), (100, 1));
        // 900 µs lies in the bucket below 1,024 µs; 40 ms below 65.5 ms.
        assert_eq!(s.p50_ms, 1.024);
        assert_eq!(s.p99_ms, 65.536);
        assert!((s.mean_ms - 1.682).abs() < 0.001, "{}", s.mean_ms);
    }

    #[test]
    fn counts_of_several_hosts_add_up_before_quantiles() {
        let (one, two) = (VersionStats::default(), VersionStats::default());
        for _ in 0..60 {
            one.record(Duration::from_micros(900), false);
        }
        for _ in 0..40 {
            two.record(Duration::from_millis(40), true);
        }
        let mut sum = one.counts();
        sum.add(&two.counts());
        let s = sum.snapshot();
        assert_eq!((s.invocations, s.errors), (100, 40));
        // The median of the sum lies in host one's bucket, the 99th
        // percentile in host two's: neither host's own figure.
        assert_eq!((s.p50_ms, s.p99_ms), (1.024, 65.536));
        // A shorter or longer bucket list from another build still adds.
        sum.add(&StatsCounts { invocations: 1, buckets: vec![1; LATENCY_BUCKETS + 2], ..Default::default() });
        assert_eq!(sum.buckets.len(), LATENCY_BUCKETS + 2);
        assert_eq!(sum.snapshot().invocations, 101);
    }
}
