//! Prometheus metrics: per component invocations, errors and latency,
//! rate-limit rejections, and which Kafka partitions this host consumes.

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
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    component: String,
    /// `trap`, `timeout`, `unavailable` or `status_5xx`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    group: String,
    topic: String,
    partition: String,
}

type HistogramFamily = Family<ComponentLabel, Histogram, fn() -> Histogram>;

/// The host's metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    invocations: Family<ComponentLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    rate_limited: Family<ComponentLabel, Counter>,
    dead_lettered: Family<ComponentLabel, Counter>,
    duplicates: Family<ComponentLabel, Counter>,
    outbox_pending: Family<ShardLabel, Gauge>,
    outbox_dead: Family<ShardLabel, Gauge>,
    partition_owned: Family<PartitionLabels, Gauge>,
    partition_records: Family<PartitionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("payfn");
        let invocations = Family::<ComponentLabel, Counter>::default();
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
        Self {
            registry: Arc::new(Mutex::new(registry)),
            invocations,
            errors,
            duration,
            rate_limited,
            dead_lettered,
            duplicates,
            outbox_pending,
            outbox_dead,
            partition_owned,
            partition_records,
        }
    }

    /// Records one invocation of `component`; `failure` is the error kind
    /// (`trap`, `timeout`, `status_5xx`...) when it failed.
    pub fn invoked(&self, component: &str, elapsed: Duration, failure: Option<&str>) {
        let label = ComponentLabel { component: component.to_string() };
        self.invocations.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
        if let Some(kind) = failure {
            let labels = ErrorLabels { component: component.to_string(), kind: kind.to_string() };
            self.errors.get_or_create(&labels).inc();
        }
    }

    pub fn rate_limited(&self, component: &str) {
        self.rate_limited.get_or_create(&ComponentLabel { component: component.to_string() }).inc();
    }

    pub fn dead_lettered(&self, component: &str) {
        self.dead_lettered.get_or_create(&ComponentLabel { component: component.to_string() }).inc();
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

    /// Marks `topic`/`partition` as owned (or no longer) by `group`'s consumer on this host.
    pub fn partition_owned(&self, group: &str, topic: &str, partition: i32, owned: bool) {
        let labels = partition_labels(group, topic, partition);
        self.partition_owned.get_or_create(&labels).set(i64::from(owned));
    }

    /// Counts one record of `topic`/`partition` handled by `group`'s consumer.
    pub fn record_handled(&self, group: &str, topic: &str, partition: i32) {
        self.partition_records.get_or_create(&partition_labels(group, topic, partition)).inc();
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
