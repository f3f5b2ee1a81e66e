//! Kafka through rdkafka (librdkafka): an idempotent producer (acks=all)
//! behind a circuit breaker, and group consumers with manual commits.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::breaker::Breaker;
use super::group::{GroupContext, KafkaSubscription};
use super::positions::{LagReader, PartitionLag};
use super::reports::Reports;
use super::runtime_config::{Assignment, Replication};
use super::Record;
use crate::bindings::kafka::{Delivery, Error, Message};
use crate::metrics::Metrics;

/// The group assignment strategy unless the settings name one: incremental
/// (a rebalance moves only the partitions that change owner, the others keep
/// being consumed), and with tansu 0.6 the only one under which a surviving
/// member takes over a dead follower's partitions (see [`KafkaBroker::subscribe`]).
const ASSIGNMENT_STRATEGY: &str = "cooperative-sticky";

/// How long librdkafka keeps trying to deliver one message, by default. It
/// must end well inside the invocation deadline: librdkafka then reports the
/// failure itself, so the relay records it and no late delivery is lost track of.
const MESSAGE_TIMEOUT_MS: u64 = 2000;

pub struct KafkaBroker {
    brokers: String,
    /// The host's wait for delivery reports: a little past the message timeout.
    delivery_wait: Duration,
    settings: BTreeMap<String, String>,
    /// Replaced after a fatal producer error (e.g. fenced): librdkafka
    /// requires a new instance then, and the relay retries what failed.
    producer: RwLock<FutureProducer<Reports>>,
    producer_config: ClientConfig,
    /// librdkafka's last report (producer and admin clients), for errors.
    reports: Reports,
    breaker: Breaker,
    partitions: u32,
    /// Replication of the topics payfn creates.
    replication: Replication,
    assignment: Assignment,
    positions: LagReader,
    range_reader: Arc<super::range::Reader>,
}

impl KafkaBroker {
    pub fn connect(
        brokers: &str,
        settings: &BTreeMap<String, String>,
        partitions: u32,
        assignment: Assignment,
        replication: Replication,
    ) -> anyhow::Result<Self> {
        let mut config = client_config(brokers, settings);
        // librdkafka defaults to enable.idempotence=false; on, it implies
        // acks=all and no reordering or duplicates on retry.
        let message_timeout: u64 = match settings.get("message.timeout.ms") {
            Some(v) => v.parse().context("kafka setting message.timeout.ms")?,
            None => MESSAGE_TIMEOUT_MS,
        };
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", message_timeout.to_string())
            // Reconnect promptly after an outage instead of backing off to 10 s.
            .set(
                "reconnect.backoff.max.ms",
                settings.get("reconnect.backoff.max.ms").map_or("1000", String::as_str),
            );
        let reports = Reports::default();
        let producer: FutureProducer<Reports> =
            config.create_with_context(reports.clone()).context("creating the Kafka producer")?;
        let producer_config = config.clone();
        Ok(Self {
            brokers: brokers.to_string(),
            delivery_wait: Duration::from_millis(message_timeout + 500),
            settings: settings.clone(),
            producer: RwLock::new(producer),
            producer_config,
            reports,
            breaker: Breaker::default(),
            partitions,
            replication,
            assignment,
            positions: LagReader::new(consumer_config(brokers, settings)),
            range_reader: Arc::default(),
        })
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// `security.protocol` as configured (librdkafka's default: PLAINTEXT),
    /// for the start-up summary: whether the link is encrypted.
    pub fn security_protocol(&self) -> &str {
        self.settings.get("security.protocol").map_or("PLAINTEXT", String::as_str)
    }

    /// Whether the cluster answers a metadata request now, and how many
    /// brokers it lists; plus the producer breaker's state.
    pub async fn health(&self) -> Result<String, String> {
        let producer = self.producer.read().unwrap_or_else(|p| p.into_inner()).clone();
        let breaker = self.breaker.describe();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, Duration::from_secs(3)).map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| e.to_string())?;
        match metadata {
            Ok(brokers) => Ok(format!("{brokers} broker(s) answer; producer breaker {breaker}")),
            Err(e) => Err(format!(
                "metadata request failed: {}; producer breaker {breaker}",
                self.reports.explain(e)
            )),
        }
    }

    /// Every partition of `topics` for `group`: end, committed, lag.
    pub async fn positions(&self, group: &str, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
        self.positions.read(group, topics).await
    }

    /// When the first record each of `partitions` has not committed past
    /// was written (ms since the epoch); see [`LagReader::first_unhandled_at`].
    pub async fn first_unhandled_at(&self, partitions: &[PartitionLag]) -> anyhow::Result<Vec<Option<i64>>> {
        self.positions.first_unhandled_at(partitions).await
    }

    /// Creates the missing ones of `topics` with the configured partition
    /// count, replication factor and `min.insync.replicas`, both lowered to
    /// the cluster's broker count if it has fewer brokers (with a warning).
    /// Existing topics are left as they are; their replication factor is logged.
    pub async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let admin: AdminClient<Reports> = client_config(&self.brokers, &self.settings)
            .create_with_context(self.reports.clone())
            .context("creating the Kafka admin client")?;
        let (brokers, existing) = tokio::task::block_in_place(|| cluster(&admin, &self.reports))?;
        let missing: Vec<&String> = topics.iter().filter(|t| !existing.contains_key(*t)).collect();
        for topic in topics {
            if let Some(factor) = existing.get(topic) {
                tracing::info!(topic, replication_factor = factor, "Kafka topic exists; left as it is");
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let used = self.replication.on_cluster(brokers);
        if used.lowered {
            let configured = self.replication.factor();
            let configured_min_insync =
                self.replication.min_insync().map_or_else(|| "default".to_string(), |m| m.to_string());
            tracing::warn!(
                brokers,
                configured_replication_factor = configured,
                replication_factor = used.factor,
                configured_min_insync_replicas = %configured_min_insync,
                min_insync_replicas = used.min_insync,
                "the Kafka cluster has {brokers} broker(s), fewer than [kafka] replication_factor: topics \
                 are created with replication factor {} instead of the configured {configured}, \
                 min.insync.replicas {} ({configured_min_insync} configured)",
                used.factor,
                used.min_insync,
            );
        }
        let min_insync = used.min_insync.to_string();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(t, self.partitions as i32, TopicReplication::Fixed(used.factor.into()))
                    .set("min.insync.replicas", &min_insync)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await.context("creating topics")? {
            match result {
                Ok(topic) => tracing::info!(
                    topic,
                    partitions = self.partitions,
                    replication_factor = used.factor,
                    min_insync_replicas = used.min_insync,
                    "Kafka topic created"
                ),
                // Another host created it meanwhile.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!(
                    "creating topic `{topic}` (replication factor {}, min.insync.replicas {}): {code}",
                    used.factor,
                    used.min_insync
                ),
            }
        }
        Ok(())
    }

    pub async fn produce(&self, messages: Vec<Message>) -> Vec<Result<Delivery, Error>> {
        if let Err(wait) = self.breaker.allow() {
            let e = Error::Unavailable(format!("broker circuit open; next attempt in {wait:?}"));
            return messages.iter().map(|_| Err(e.clone())).collect();
        }
        let producer = self.producer.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut pending = Vec::with_capacity(messages.len());
        for m in &messages {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (key, value) in &m.headers {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            let mut record = FutureRecord::to(&m.topic).payload(&m.value).headers(headers);
            if let Some(key) = &m.key {
                record = record.key(key);
            }
            pending.push(producer.send_result(record).map_err(|(e, _)| e));
        }
        let mut results = Vec::with_capacity(pending.len());
        let mut transport_failure = false;
        let mut producer_broken = false;
        for sent in pending {
            let result = match sent {
                Err(e) => Err(e),
                Ok(future) => match tokio::time::timeout(self.delivery_wait, future).await {
                    Ok(Ok(Ok(delivery))) => {
                        Ok(Delivery { partition: delivery.partition, offset: delivery.offset })
                    }
                    Ok(Ok(Err((e, _)))) => Err(e),
                    Ok(Err(_)) | Err(_) => Err(KafkaError::Canceled),
                },
            };
            results.push(result.map_err(|e| {
                producer_broken |= matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            | RDKafkaErrorCode::UnknownProducerId
                            | RDKafkaErrorCode::OutOfOrderSequenceNumber
                            | RDKafkaErrorCode::Fatal
                    )
                );
                let error = classify(&e);
                transport_failure |= matches!(error, Error::Unavailable(_));
                error
            }));
        }
        if transport_failure {
            self.breaker.failure();
        } else {
            self.breaker.success();
        }
        // A fenced or fatally failed idempotent producer never recovers; a new
        // instance gets a new producer id. (Seen with tansu 0.6 after an outage.)
        if producer_broken || producer.client().fatal_error().is_some() {
            tracing::warn!("the Kafka producer was fenced or failed fatally; replacing it");
            match self.producer_config.create_with_context::<_, FutureProducer<Reports>>(self.reports.clone())
            {
                Ok(fresh) => *self.producer.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                Err(e) => tracing::error!(error = %e, "could not recreate the Kafka producer"),
            }
        }
        results
    }

    /// Up to `max` records of `topic`/`partition` at offsets `from..end`
    /// and the offset to read next (`range::Reader`).
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        end: i64,
        max: usize,
    ) -> anyhow::Result<(Vec<Record>, i64)> {
        let (config, reader) = (consumer_config(&self.brokers, &self.settings), self.range_reader.clone());
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || reader.read(&config, &topic, partition, from, end, max))
            .await
            .context("reading a partition")?
    }

    /// Sets `group`'s positions without joining it (`range::commit`).
    pub async fn commit_positions(
        &self,
        group: &str,
        positions: Vec<(String, i32, i64)>,
    ) -> anyhow::Result<()> {
        let config = consumer_config(&self.brokers, &self.settings);
        let group = group.to_string();
        tokio::task::spawn_blocking(move || super::range::commit(&config, &group, &positions))
            .await
            .context("committing positions")?
    }

    /// A consumer of `topics` as `group`, reading from the group's committed
    /// offsets; offsets move only by [`KafkaSubscription::commit_batch`]. Which
    /// partitions it reads depends on the configured [`Assignment`]:
    ///
    /// - `group`: it joins the consumer group (`subscribe`); the coordinator
    ///   splits the partitions among the group's members and, once a member
    ///   misses `session.timeout.ms`, gives its partitions to the others.
    ///   [`GroupContext`] tracks what this member owns.
    /// - `all-partitions`: it assigns itself every partition, and the group id
    ///   only keys the committed offsets; several hosts each read everything.
    ///
    /// **tansu 0.6** (docs/ARCHITECTURE.md has the source lines): when the
    /// member that dies is the group's *leader*, the survivors never get its
    /// partitions back (the group keeps the dead leader), and with an eager
    /// strategy (`range`, `roundrobin`) not even a dead follower's. Hence
    /// `cooperative-sticky` by default and `all-partitions` for tansu.
    pub fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        metrics: &Metrics,
    ) -> anyhow::Result<KafkaSubscription> {
        let mut config = consumer_config(&self.brokers, &self.settings);
        config.set("group.id", group).set("enable.auto.commit", "false").set("auto.offset.reset", "earliest");
        let context = GroupContext::new(group, metrics, &self.reports);
        match self.assignment {
            Assignment::Group => {
                if !self.settings.contains_key("partition.assignment.strategy") {
                    config.set("partition.assignment.strategy", ASSIGNMENT_STRATEGY);
                }
                let consumer: StreamConsumer<GroupContext> =
                    config.create_with_context(context).context("creating the Kafka consumer")?;
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics).context("subscribing")?;
                Ok(KafkaSubscription::new(consumer))
            }
            Assignment::AllPartitions => {
                let consumer: StreamConsumer<GroupContext> =
                    config.create_with_context(context).context("creating the Kafka consumer")?;
                let mut list = TopicPartitionList::new();
                for topic in topics {
                    let metadata = tokio::task::block_in_place(|| {
                        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
                    })
                    .with_context(|| format!("reading the partitions of `{topic}`"))?;
                    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
                    anyhow::ensure!(partitions > 0, "topic `{topic}` has no partitions");
                    for partition in 0..partitions as i32 {
                        list.add_partition_offset(topic, partition, Offset::Stored).context("assigning")?;
                    }
                }
                consumer.assign(&list).context("assigning partitions")?;
                let context = consumer.context();
                let owned_now =
                    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                let all = context.set_owned(owned_now);
                tracing::info!(group, assigned = %all, "kafka partitions assigned (all-partitions)");
                Ok(KafkaSubscription::new(consumer))
            }
        }
    }
}

/// Group-consumer settings that only the consumers get: librdkafka warns
/// about each one set on a producer or admin client.
const CONSUMER_ONLY: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.instance.id",
    "group.protocol",
];

/// A producer or admin client's config: `settings` but [`CONSUMER_ONLY`].
fn client_config(brokers: &str, settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        if !CONSUMER_ONLY.contains(&k.as_str()) {
            config.set(k, v);
        }
    }
    config
}

/// A consumer's config: every one of `settings`.
fn consumer_config(brokers: &str, settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        config.set(k, v);
    }
    config
}

/// The cluster's broker count and its topics with their replication factor
/// (replicas of their first partition), from one metadata request. Blocking.
fn cluster(
    admin: &AdminClient<Reports>,
    reports: &Reports,
) -> anyhow::Result<(usize, BTreeMap<String, usize>)> {
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).map_err(|e| {
        anyhow::anyhow!("reading the Kafka cluster's metadata (brokers and topics): {}", reports.explain(e))
    })?;
    let topics = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().first().map_or(0, |p| p.replicas().len())))
        .collect();
    Ok((metadata.brokers().len(), topics))
}

/// Transport trouble (the breaker counts it) versus a refused message.
fn classify(e: &KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord,
        ) => Error::Rejected(e.to_string()),
        _ => Error::Unavailable(e.to_string()),
    }
}

/// A consumed message as a [`Record`] (headers without a value get an empty one).
pub(super) fn record_of(message: &impl rdkafka::message::Message) -> Record {
    let headers = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
        .unwrap_or_default();
    Record {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}
