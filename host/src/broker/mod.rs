//! The event broker (`[kafka]`): what the `kafka` capability
//! ([`crate::capabilities::kafka`]) produces to, and the consumer side the
//! relay, the Kafka trigger and re-drives read through.
//!
//! Backends: the embedded event log (durable SQLite file under the state
//! directory; the default) and Kafka through rdkafka. The relay, the Kafka
//! trigger and the components use the same [`Broker`] and [`Subscription`]
//! whatever the backend.

mod breaker;
mod embedded;
mod group;
mod positions;
mod range;
mod rdkafka;
mod reports;
pub mod runtime_config;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::bindings::kafka::{Delivery, Error, Message};
use crate::metrics::Metrics;
pub use embedded::{EventLog, Record};
use group::KafkaSubscription;
pub use positions::PartitionLag;
use rdkafka::KafkaBroker;
use runtime_config::KafkaConfig;

/// How long an idle embedded subscription waits before polling again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Records an embedded subscription fetches from each partition per batch.
const FETCH_MAX: u32 = 100;
/// Records a Kafka subscription hands out at once: the first one it waits
/// for and whatever has already arrived behind it.
const KAFKA_BATCH_MAX: usize = 100;

/// The shared broker handle, cheap to clone; counts what it produces in
/// `payfn_kafka_produced_total{topic,outcome}`.
#[derive(Clone)]
pub struct Broker(Arc<Backend>, Metrics);

enum Backend {
    Embedded(Arc<EventLog>),
    // Boxed: the broker's state is large and the embedded variant is a pointer.
    Kafka(Box<KafkaBroker>),
}

impl Broker {
    /// Opens the backend the runtime config names.
    pub async fn from_config(
        config: &KafkaConfig,
        state_dir: &Path,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let backend = match config {
            KafkaConfig::Embedded { path, partitions } => {
                let path = match path {
                    Some(p) if p.is_absolute() => p.clone(),
                    Some(p) => state_dir.join(p),
                    None => state_dir.join("events.db"),
                };
                Backend::Embedded(Arc::new(EventLog::open(&path, *partitions).await?))
            }
            KafkaConfig::Kafka {
                brokers,
                settings,
                settings_env,
                partitions,
                assignment,
                replication_factor,
                min_insync_replicas,
            } => {
                let replication =
                    runtime_config::Replication::new(*replication_factor, *min_insync_replicas)?;
                let settings = runtime_config::resolve_settings(settings, settings_env)?;
                Backend::Kafka(Box::new(KafkaBroker::connect(
                    brokers,
                    &settings,
                    *partitions,
                    *assignment,
                    replication,
                )?))
            }
        };
        Ok(Broker(Arc::new(backend), metrics.clone()))
    }

    pub fn describe(&self) -> String {
        match &*self.0 {
            Backend::Embedded(log) => format!("embedded event log {}", log.path().display()),
            Backend::Kafka(kafka) => format!("kafka {} ({})", kafka.brokers(), kafka.security_protocol()),
        }
    }

    /// Makes sure `topics` exist (Kafka: created with the configured
    /// partitions; the embedded log needs nothing).
    pub async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        match &*self.0 {
            Backend::Embedded(_) => Ok(()),
            Backend::Kafka(kafka) => kafka.ensure_topics(topics).await,
        }
    }

    /// Produces messages; one result per message, in order.
    pub async fn produce(&self, messages: Vec<Message>) -> Vec<Result<Delivery, Error>> {
        let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
        let results = match &*self.0 {
            Backend::Embedded(log) => log.produce(messages).await,
            Backend::Kafka(kafka) => kafka.produce(messages).await,
        };
        self.count(topics.iter().map(String::as_str), &results);
        results
    }

    /// Counts produce results by topic and outcome; also those that never
    /// reached the backend (a topic not granted).
    pub(crate) fn count<'a>(
        &self,
        topics: impl Iterator<Item = &'a str>,
        results: &[Result<Delivery, Error>],
    ) {
        for (topic, result) in topics.zip(results) {
            self.1.produced(topic, produce_outcome(result));
        }
    }

    /// A consumer of `topics` as `group`, reading from the group's committed
    /// position. The partitions it owns show in `metrics`
    /// (`payfn_kafka_partition_owned`); on the embedded log, all of them.
    pub fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        metrics: &Metrics,
    ) -> anyhow::Result<Subscription> {
        Ok(match &*self.0 {
            Backend::Embedded(log) => {
                let partitions: Vec<(String, i32)> = (0..log.partitions() as i32)
                    .flat_map(|p| topics.iter().map(move |t| (t.clone(), p)))
                    .collect();
                for (topic, partition) in &partitions {
                    metrics.partition_owned(group, topic, *partition, true);
                }
                Subscription::Embedded { log: log.clone(), group: group.to_string(), partitions, next: 0 }
            }
            Backend::Kafka(kafka) => Subscription::Kafka(Box::new(kafka.subscribe(group, topics, metrics)?)),
        })
    }

    /// Up to `max` records of `topic`/`partition` at offsets `from..end`, in
    /// order, and the offset to read next (`end` once all are read). Reads
    /// without joining a group: a re-drive walks a dead-letter topic so.
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        end: i64,
        max: usize,
    ) -> anyhow::Result<(Vec<Record>, i64)> {
        match &*self.0 {
            Backend::Embedded(log) => {
                let limit = u32::try_from(max).unwrap_or(u32::MAX);
                let records = log.read(topic, partition, from, end, limit).await?;
                let next = match records.last() {
                    Some(last) if records.len() >= max => last.offset + 1,
                    _ => end.max(from),
                };
                Ok((records, next))
            }
            Backend::Kafka(kafka) => kafka.read(topic, partition, from, end, max).await,
        }
    }

    /// Sets `group`'s committed positions, `(topic, partition, next
    /// offset)`, without joining the group.
    pub async fn commit_positions(
        &self,
        group: &str,
        positions: Vec<(String, i32, i64)>,
    ) -> anyhow::Result<()> {
        match &*self.0 {
            Backend::Embedded(log) => {
                for (topic, partition, next) in &positions {
                    log.commit(group, topic, *partition, *next).await?;
                }
                Ok(())
            }
            Backend::Kafka(kafka) => kafka.commit_positions(group, positions).await,
        }
    }

    /// Whether the broker answers now, with a line on its state (the admin
    /// console). Unlike [`Broker::ping`] this asks a Kafka cluster.
    pub async fn health(&self) -> Result<String, String> {
        match &*self.0 {
            Backend::Embedded(log) if log.ping().await => Ok("the log file answers".to_string()),
            Backend::Embedded(_) => Err("the log file does not answer".to_string()),
            Backend::Kafka(kafka) => kafka.health().await,
        }
    }

    /// Where `group` stands on every partition of `topics`.
    pub async fn positions(&self, group: &str, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
        match &*self.0 {
            Backend::Embedded(log) => Ok(log.positions(group, topics).await?),
            Backend::Kafka(kafka) => kafka.positions(group, topics).await,
        }
    }

    /// When the first record each of `partitions` (from
    /// [`positions`](Self::positions)) has not committed past was written,
    /// in ms since the epoch: `None` where the group is caught up or the
    /// time is unknown. Embedded log: the record's `appended_at_ms`, one
    /// primary-key seek per lagging partition. Kafka: the record's
    /// timestamp, fetched once per position (`LagReader::first_unhandled_at`).
    pub async fn first_unhandled_at(&self, partitions: &[PartitionLag]) -> anyhow::Result<Vec<Option<i64>>> {
        match &*self.0 {
            Backend::Embedded(log) => {
                let wanted: Vec<(usize, (String, i32, i64))> = partitions
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.first_unhandled().map(|o| (i, (p.topic.clone(), p.partition, o))))
                    .collect();
                let mut out = vec![None; partitions.len()];
                if wanted.is_empty() {
                    return Ok(out);
                }
                let keys: Vec<(String, i32, i64)> = wanted.iter().map(|(_, k)| k.clone()).collect();
                for ((i, _), at) in wanted.iter().zip(log.appended_at_ms(&keys).await?) {
                    out[*i] = at;
                }
                Ok(out)
            }
            Backend::Kafka(kafka) => kafka.first_unhandled_at(partitions).await,
        }
    }

    /// Whether the broker answers (readiness). For Kafka: the breaker is closed.
    pub async fn ping(&self) -> bool {
        match &*self.0 {
            Backend::Embedded(log) => log.ping().await,
            Backend::Kafka(_) => true,
        }
    }
}

/// The `outcome` label of a produce result: `acknowledged`, or the kind of
/// failure (`unavailable` is backlog; the others are refusals).
fn produce_outcome(result: &Result<Delivery, Error>) -> &'static str {
    match result {
        Ok(_) => "acknowledged",
        Err(Error::Unavailable(_)) => "unavailable",
        Err(Error::Rejected(_)) => "rejected",
        Err(Error::TopicNotGranted(_)) => "topic_not_granted",
    }
}

/// A group consumer: records in per-partition order; the position moves only
/// by [`Subscription::commit`].
pub enum Subscription {
    Embedded { log: Arc<EventLog>, group: String, partitions: Vec<(String, i32)>, next: usize },
    // Boxed: the consumer's state is large and the embedded variant small.
    Kafka(Box<KafkaSubscription>),
}

impl Subscription {
    /// The next records to handle, in order; waits while there are none.
    pub async fn next_batch(&mut self) -> Result<Vec<Record>, String> {
        match self {
            Subscription::Embedded { log, group, partitions, next } => {
                // Every partition with records, up to FETCH_MAX of each, so
                // one batch (one transaction per shard, one position commit)
                // carries all that waits; the first partition asked turns
                // round so none is always last.
                let mut records = Vec::new();
                for i in 0..partitions.len() {
                    let (topic, partition) = &partitions[(*next + i) % partitions.len()];
                    records.extend(
                        log.fetch(group, topic, *partition, FETCH_MAX).await.map_err(|e| e.to_string())?,
                    );
                }
                *next = (*next + 1) % partitions.len();
                if records.is_empty() {
                    tokio::time::sleep(IDLE_POLL).await;
                }
                Ok(records)
            }
            Subscription::Kafka(kafka) => kafka.next_batch(KAFKA_BATCH_MAX).await,
        }
    }

    /// Moves the group's position past every record of `records` (a batch
    /// from [`next_batch`](Self::next_batch), all handled): per partition,
    /// to the offset after its last record. On Kafka, only where this member
    /// still owns the partition in the epoch the records arrived in
    /// (group.rs).
    pub async fn commit_batch(&self, records: &[Record]) -> Result<(), String> {
        match self {
            Subscription::Embedded { log, group, .. } => {
                let mut last: Vec<&Record> = Vec::new();
                for record in records {
                    match last.iter_mut().find(|r| r.topic == record.topic && r.partition == record.partition)
                    {
                        Some(seen) if seen.offset < record.offset => *seen = record,
                        Some(_) => {}
                        None => last.push(record),
                    }
                }
                for record in last {
                    log.commit(group, &record.topic, record.partition, record.offset + 1)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Subscription::Kafka(kafka) => kafka.commit_batch(records),
        }
    }
}
