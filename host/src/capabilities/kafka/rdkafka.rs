//! Kafka through rdkafka (librdkafka): an idempotent producer (acks=all)
//! behind a circuit breaker, and group consumers with manual commits.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::breaker::Breaker;
use super::Record;
use crate::bindings::kafka::{Delivery, Error, Message};

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
    producer: RwLock<FutureProducer>,
    producer_config: ClientConfig,
    breaker: Breaker,
    partitions: u32,
}

impl KafkaBroker {
    pub fn connect(
        brokers: &str,
        settings: &BTreeMap<String, String>,
        partitions: u32,
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
        let producer: FutureProducer = config.create().context("creating the Kafka producer")?;
        let producer_config = config.clone();
        Ok(Self {
            brokers: brokers.to_string(),
            delivery_wait: Duration::from_millis(message_timeout + 500),
            settings: settings.clone(),
            producer: RwLock::new(producer),
            producer_config,
            breaker: Breaker::default(),
            partitions,
        })
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Creates `topics` with the configured partition count; existing ones are kept.
    pub async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.brokers, &self.settings)
            .create()
            .context("creating the Kafka admin client")?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.partitions as i32, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await.context("creating topics")? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("creating topic `{topic}`: {code}"),
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
            match self.producer_config.create::<FutureProducer>() {
                Ok(fresh) => *self.producer.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                Err(e) => tracing::error!(error = %e, "could not recreate the Kafka producer"),
            }
        }
        results
    }

    /// A consumer of every partition of `topics`, reading from `group`'s
    /// committed offsets; offsets move only by [`KafkaSubscription::commit`].
    ///
    /// Partitions are assigned by the host, not by group membership: with
    /// tansu 0.6 a member killed without leaving stalls the group's
    /// rebalance for good (seen here), which would stop settlement. The group
    /// id still keys the committed offsets. Several hosts therefore each read
    /// every partition; processed-events keeps the effects exactly-once.
    pub fn subscribe(&self, group: &str, topics: &[String]) -> anyhow::Result<KafkaSubscription> {
        let mut config = client_config(&self.brokers, &self.settings);
        config.set("group.id", group).set("enable.auto.commit", "false").set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = config.create().context("creating the Kafka consumer")?;
        let mut list = TopicPartitionList::new();
        for topic in topics {
            let metadata =
                tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))
                    .with_context(|| format!("reading the partitions of `{topic}`"))?;
            let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
            anyhow::ensure!(partitions > 0, "topic `{topic}` has no partitions");
            for partition in 0..partitions as i32 {
                list.add_partition_offset(topic, partition, Offset::Stored).context("assigning")?;
            }
        }
        consumer.assign(&list).context("assigning partitions")?;
        Ok(KafkaSubscription { consumer })
    }
}

fn client_config(brokers: &str, settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        config.set(k, v);
    }
    config
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

/// One group consumer.
pub struct KafkaSubscription {
    consumer: StreamConsumer,
}

impl KafkaSubscription {
    pub async fn next(&self) -> Result<Record, String> {
        let message = self.consumer.recv().await.map_err(|e| e.to_string())?;
        let headers = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        Ok(Record {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        })
    }

    /// Commits the group's position past `record`. Asynchronous: a lost
    /// commit replays the record, and processed-events absorbs the replay.
    pub fn commit(&self, record: &Record) -> Result<(), String> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&record.topic, record.partition, Offset::Offset(record.offset + 1))
            .map_err(|e| e.to_string())?;
        self.consumer.commit(&list, CommitMode::Async).map_err(|e| e.to_string())
    }
}
