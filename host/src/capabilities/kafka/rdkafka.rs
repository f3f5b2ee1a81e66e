//! Kafka through rdkafka (librdkafka): an idempotent producer (acks=all)
//! behind a circuit breaker, and group consumers with manual commits.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::breaker::Breaker;
use super::Record;
use crate::bindings::kafka::{Delivery, Error, Message};

pub struct KafkaBroker {
    brokers: String,
    settings: BTreeMap<String, String>,
    producer: FutureProducer,
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
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", settings.get("message.timeout.ms").map_or("5000", String::as_str));
        let producer: FutureProducer = config.create().context("creating the Kafka producer")?;
        Ok(Self {
            brokers: brokers.to_string(),
            settings: settings.clone(),
            producer,
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
            pending.push(self.producer.send_result(record).map_err(|(e, _)| e));
        }
        let mut results = Vec::with_capacity(pending.len());
        let mut transport_failure = false;
        for sent in pending {
            let result = match sent {
                Err(e) => Err(e),
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => {
                        Ok(Delivery { partition: delivery.partition, offset: delivery.offset })
                    }
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
            };
            results.push(result.map_err(|e| {
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
        results
    }

    /// A group consumer on `topics`; offsets are committed only by [`KafkaSubscription::commit`].
    pub fn subscribe(&self, group: &str, topics: &[String]) -> anyhow::Result<KafkaSubscription> {
        let mut config = client_config(&self.brokers, &self.settings);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000");
        let consumer: StreamConsumer = config.create().context("creating the Kafka consumer")?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("subscribing")?;
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
