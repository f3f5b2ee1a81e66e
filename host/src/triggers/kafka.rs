//! The Kafka trigger (`[[trigger.kafka]]`): runs a component on every record
//! of its topics, as one consumer group, with exactly-once effects.
//!
//! Per record: the shard comes from the record's `merchant-id` header; in one
//! write transaction on that shard the host checks `processed_events` for the
//! record's `event-id` (a duplicate is skipped), runs the component, records
//! the event id and commits. Only then is the consumer offset committed, so a
//! crash anywhere replays the record and the processed-events row absorbs it.
//! A record that keeps failing is retried with backoff, then produced to the
//! dead-letter topic with the error in its headers, and consumption goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bindings::event::exports::payfn::host::event_handler::Event;
use crate::bindings::kafka::Message;
use crate::bindings::sql::Value;
use crate::capabilities::kafka::{Broker, Record, Subscription};
use crate::capabilities::kv::Kv;
use crate::capabilities::sql::ShardSet;
use crate::engine::{Bindings, Engine};
use crate::manifest::KafkaTrigger;
use crate::metrics::Metrics;
use crate::versions::live::ComponentSlot;

/// Pause after a failed fetch or commit.
const BACKOFF: Duration = Duration::from_secs(1);
/// First retry delay of a failing record; doubles per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);

/// What every consumer task needs.
#[derive(Clone)]
pub struct KafkaContext {
    pub engine: Engine,
    pub kv: Kv,
    pub broker: Broker,
    pub shards: Arc<ShardSet>,
    pub metrics: Metrics,
}

/// Starts the consumer task of `trigger`.
pub fn start(context: &KafkaContext, trigger: &KafkaTrigger, slot: Arc<ComponentSlot>) -> anyhow::Result<()> {
    let subscription = context.broker.subscribe(&trigger.group, &trigger.topics, &context.metrics)?;
    let consumer = Consumer { context: context.clone(), trigger: trigger.clone(), slot };
    tokio::spawn(consumer.run(subscription));
    Ok(())
}

struct Consumer {
    context: KafkaContext,
    trigger: KafkaTrigger,
    slot: Arc<ComponentSlot>,
}

/// What became of one record.
enum Handled {
    Processed,
    Duplicate,
}

impl Consumer {
    async fn run(self, mut subscription: Subscription) {
        loop {
            let records = match subscription.next_batch().await {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(group = %self.trigger.group, "consume failed: {e}");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            };
            for record in records {
                self.deliver(&record).await;
                self.context.metrics.record_handled(&self.trigger.group, &record.topic, record.partition);
                // The effect is committed (or dead-lettered): move on. Retried
                // until it sticks; a replay after a crash here is a duplicate.
                // (Kafka: skipped if the partition was revoked meanwhile, and
                // asynchronous commit failures are only logged.)
                while let Err(e) = subscription.commit(&record).await {
                    tracing::warn!(topic = %record.topic, partition = record.partition, "offset commit failed: {e}");
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }

    /// Handles `record` until it is processed, found duplicate or dead-lettered.
    async fn deliver(&self, record: &Record) {
        let attempts = self.trigger.max_attempts.max(1);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            match self.handle(record).await {
                Ok(Handled::Processed | Handled::Duplicate) => return,
                Err(Failure::Poison(e)) => {
                    last_error = e;
                    break;
                }
                Err(Failure::Retry(e)) => {
                    tracing::warn!(
                        component = %self.slot.spec.name, topic = %record.topic, offset = record.offset,
                        attempt, "event failed: {e}"
                    );
                    last_error = e;
                    if attempt < attempts {
                        tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt - 1)).await;
                    }
                }
            }
        }
        self.dead_letter(record, &last_error).await;
    }

    async fn handle(&self, record: &Record) -> Result<Handled, Failure> {
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        };
        let event_id = header("event-id").ok_or_else(|| Failure::Poison("no event-id header".into()))?;
        let merchant: i64 = header("merchant-id")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| Failure::Poison("no valid merchant-id header".into()))?;
        let shard = self.context.shards.for_merchant(merchant);
        let group = &self.trigger.group;

        let mut tx =
            shard.begin(true).await.map_err(|e| Failure::Retry(format!("shard {}: {e:?}", shard.name)))?;
        let seen = tx
            .query(
                "SELECT 1 FROM processed_events WHERE consumer = ? AND event_id = ?",
                vec![Value::Text(group.clone()), Value::Text(event_id.clone())],
            )
            .await
            .map_err(|e| Failure::Retry(format!("{e:?}")))?;
        if !seen.rows.is_empty() {
            tx.rollback().await;
            self.context.metrics.duplicate(&self.slot.spec.name);
            return Ok(Handled::Duplicate);
        }

        let trace = header("traceparent").unwrap_or_default();
        let bindings = Bindings {
            request_id: format!("{event_id} traceparent={trace}"),
            sql: shard.bind(Some(tx)),
            kv: self.context.kv.clone(),
            broker: Some(self.context.broker.clone()),
        };
        let event = Event {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record.headers.clone(),
        };
        let name = &self.slot.spec.name;
        // Each record picks the version serving now (canary split by merchant).
        let component = self.slot.pick(merchant.to_string().as_bytes());
        let started = Instant::now();
        let (result, tx) = self.context.engine.invoke_event(&component, bindings, event).await;
        let failure = result.as_ref().err().map(|e| e.kind());
        self.context.metrics.invoked(
            name,
            component.short_digest(),
            &component.stats,
            started.elapsed(),
            failure,
        );
        let Some(mut tx) = tx else { return Err(Failure::Retry("the shard transaction was lost".into())) };
        if let Err(e) = result {
            tx.rollback().await;
            return Err(Failure::Retry(e.to_string()));
        }
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let recorded = tx
            .execute(
                "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES (?, ?, ?)",
                vec![Value::Text(group.clone()), Value::Text(event_id), Value::Text(now)],
            )
            .await;
        if let Err(e) = recorded {
            tx.rollback().await;
            return Err(Failure::Retry(format!("recording the event: {e:?}")));
        }
        tx.commit().await.map_err(|e| Failure::Retry(format!("commit: {e:?}")))?;
        Ok(Handled::Processed)
    }

    async fn dead_letter(&self, record: &Record, error: &str) {
        let topic = dead_letter_topic(&self.trigger, &record.topic);
        let mut headers = record.headers.clone();
        headers.push(("dlq-error".into(), error.as_bytes().to_vec()));
        headers.push((
            "dlq-source".into(),
            format!("{}/{}/{}", record.topic, record.partition, record.offset).into_bytes(),
        ));
        headers.push(("dlq-consumer".into(), self.trigger.group.as_bytes().to_vec()));
        let message =
            Message { topic: topic.clone(), key: record.key.clone(), value: record.value.clone(), headers };
        self.context.metrics.dead_lettered(&self.slot.spec.name);
        loop {
            match self.context.broker.produce(vec![message.clone()]).await.pop() {
                Some(Ok(_)) => break,
                other => {
                    tracing::warn!(topic = %topic, "dead-letter produce failed ({other:?}); retrying");
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
        tracing::error!(
            component = %self.slot.spec.name, source_topic = %record.topic, offset = record.offset,
            dead_letter_topic = %topic, "event dead-lettered: {error}"
        );
    }
}

/// Why handling a record failed.
enum Failure {
    /// Might succeed later (shard down, component error): retried.
    Retry(String),
    /// Can never succeed (no event id, no merchant): dead-lettered at once.
    Poison(String),
}

/// Where `trigger` sends records of `topic` that cannot be handled.
pub fn dead_letter_topic(trigger: &KafkaTrigger, topic: &str) -> String {
    trigger.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}.dlq"))
}
