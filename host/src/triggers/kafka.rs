//! The Kafka trigger (`[[trigger.kafka]]`): runs a component on every record
//! of its topics, as one consumer group, with exactly-once effects.
//!
//! Per record: the shard comes from the record's `merchant-id` header; in a
//! write transaction on that shard the host checks `processed_events` for the
//! record's `event-id` (a duplicate is skipped), runs the component and
//! records the event id. The records of one fetched batch that go to one
//! shard share that transaction (one commit for them all). Only once every
//! record of the batch is committed is the consumer offset committed, so a
//! crash anywhere replays records and the processed-events rows absorb them.
//! A record that keeps failing is retried with backoff, then produced to the
//! dead-letter topic with the error in its headers, and consumption goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::bindings::event::exports::payfn::host::event_handler::Event;
use crate::bindings::kafka::Message;
use crate::bindings::sql::Value;
use crate::capabilities::kafka::{Broker, Record, Subscription};
use crate::capabilities::kv::Kv;
use crate::capabilities::sql::{Shard, ShardSet, ShardTx};
use crate::engine::{Bindings, Engine};
use crate::logging::invocation_span;
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
            if records.is_empty() {
                continue;
            }
            self.deliver_batch(&records).await;
            for record in &records {
                self.context.metrics.record_handled(&self.trigger.group, &record.topic, record.partition);
            }
            // Every effect is committed (or dead-lettered): move on. Retried
            // until it sticks; a replay after a crash here is a duplicate.
            // (Kafka: skipped if the partition was revoked meanwhile, and
            // asynchronous commit failures are only logged.)
            while let Err(e) = subscription.commit_batch(&records).await {
                tracing::warn!(group = %self.trigger.group, "offset commit failed: {e}");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }

    /// Handles a batch: the records of each shard, in their order, in one
    /// transaction of that shard (one commit for the lot instead of one per
    /// record: under load a shard's commit waits for its group, so record
    /// by record the consumer fell behind at a few dozen events a second).
    /// Records of different shards belong to different merchants, so one
    /// key's records keep their order. A failure is handled in
    /// [`flush_runs`](Self::flush_runs).
    async fn deliver_batch(&self, records: &[Record]) {
        let mut runs: Vec<(Arc<Shard>, Vec<&Record>)> = Vec::new();
        for record in records {
            if !self.trigger.wants(header(record, "event-type")) {
                continue;
            }
            let Ok((_, merchant)) = Self::route(record) else {
                // Poison: dead-lettered on its own, at its place in the order.
                self.flush_runs(&mut runs).await;
                self.deliver(record).await;
                continue;
            };
            let shard = self.context.shards.for_merchant(merchant);
            match runs.iter_mut().find(|(s, _)| Arc::ptr_eq(s, shard)) {
                Some((_, run)) => run.push(record),
                None => runs.push((shard.clone(), vec![record])),
            }
        }
        self.flush_runs(&mut runs).await;
    }

    async fn flush_runs(&self, runs: &mut Vec<(Arc<Shard>, Vec<&Record>)>) {
        for (shard, run) in runs.drain(..) {
            let mut rest: &[&Record] = &run;
            while !rest.is_empty() {
                let Err(failed) = self.handle_run(&shard, rest).await else { break };
                tracing::warn!(
                    component = %self.slot.spec.name, shard = %shard.name, records = rest.len(),
                    "batch rolled back ({}); going on without it", failed.error.message()
                );
                let Some(at) = failed.at else {
                    // Not one record's fault (begin or commit): each alone.
                    for record in rest {
                        self.deliver(record).await;
                    }
                    break;
                };
                // The records before the failing one were fine: again, together.
                if at > 0 {
                    if let Err(again) = self.handle_run(&shard, &rest[..at]).await {
                        tracing::warn!(shard = %shard.name, "batch failed again ({}); one by one", again.error.message());
                        for record in &rest[..at] {
                            self.deliver(record).await;
                        }
                    }
                }
                // The failing record: the batch's try was its first attempt.
                self.deliver_after(rest[at], Some(failed.error)).await;
                rest = &rest[at + 1..];
            }
        }
    }

    /// The records of `run` (all on `shard`) in one transaction.
    async fn handle_run(&self, shard: &Shard, run: &[&Record]) -> Result<(), RunFailure> {
        let whole = |error| RunFailure { at: None, error };
        let mut tx = shard
            .begin(true)
            .await
            .map_err(|e| whole(Failure::Retry(format!("shard {}: {e:?}", shard.name))))?;
        let mut duplicates = 0;
        for (at, record) in run.iter().enumerate() {
            let failed = |error| RunFailure { at: Some(at), error };
            let (event_id, merchant) = Self::route(record).map_err(failed)?;
            let (outcome, back) = self.apply(tx, record, event_id, merchant).await;
            tx = back.ok_or_else(|| failed(Failure::Retry("the shard transaction was lost".into())))?;
            match outcome {
                Ok(Handled::Processed) => {}
                Ok(Handled::Duplicate) => duplicates += 1,
                Err(e) => {
                    tx.rollback().await;
                    return Err(failed(e));
                }
            }
        }
        tx.commit().await.map_err(|e| whole(Failure::Retry(format!("commit: {e:?}"))))?;
        for _ in 0..duplicates {
            self.context.metrics.duplicate(&self.slot.spec.name);
        }
        Ok(())
    }

    /// The record's event id and merchant, from its headers.
    fn route(record: &Record) -> Result<(String, i64), Failure> {
        let text = |name| header(record, name).and_then(|v| std::str::from_utf8(v).ok());
        let event_id =
            text("event-id").ok_or_else(|| Failure::Poison("no event-id header".into()))?.to_string();
        let merchant: i64 = text("merchant-id")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| Failure::Poison("no valid merchant-id header".into()))?;
        Ok((event_id, merchant))
    }

    /// Handles `record` until it is processed, found duplicate or dead-lettered.
    async fn deliver(&self, record: &Record) {
        self.deliver_after(record, None).await;
    }

    /// Like [`deliver`](Self::deliver), where `failed` is the outcome of an
    /// attempt already made (in a batch): it counts as the first of the
    /// trigger's `max_attempts`.
    async fn deliver_after(&self, record: &Record, failed: Option<Failure>) {
        let attempts = self.trigger.max_attempts.max(1);
        let mut outcome = match failed {
            Some(failure) => Err(failure),
            None => self.handle(record).await,
        };
        let mut attempt = 1;
        let last_error = loop {
            match outcome {
                Ok(Handled::Processed | Handled::Duplicate) => return,
                Err(Failure::Poison(e)) => break e,
                Err(Failure::Retry(e)) => {
                    tracing::warn!(
                        component = %self.slot.spec.name, topic = %record.topic, offset = record.offset,
                        attempt, "event failed: {e}"
                    );
                    if attempt >= attempts {
                        break e;
                    }
                    tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt - 1)).await;
                }
            }
            attempt += 1;
            outcome = self.handle(record).await;
        };
        self.dead_letter(record, &last_error).await;
    }

    /// One record in a transaction of its own.
    async fn handle(&self, record: &Record) -> Result<Handled, Failure> {
        let (event_id, merchant) = Self::route(record)?;
        let shard = self.context.shards.for_merchant(merchant);
        let tx =
            shard.begin(true).await.map_err(|e| Failure::Retry(format!("shard {}: {e:?}", shard.name)))?;
        let (outcome, tx) = self.apply(tx, record, event_id, merchant).await;
        let Some(tx) = tx else { return Err(Failure::Retry("the shard transaction was lost".into())) };
        match outcome {
            Ok(handled) => {
                tx.commit().await.map_err(|e| Failure::Retry(format!("commit: {e:?}")))?;
                if let Handled::Duplicate = handled {
                    self.context.metrics.duplicate(&self.slot.spec.name);
                }
                Ok(handled)
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Applies `record` inside `tx` (on the merchant's shard): skips it if
    /// its event id is recorded, else runs the component and records the
    /// event id. Gives the transaction back, uncommitted, unless the
    /// invocation lost it.
    async fn apply(
        &self,
        mut tx: ShardTx,
        record: &Record,
        event_id: String,
        merchant: i64,
    ) -> (Result<Handled, Failure>, Option<ShardTx>) {
        let group = &self.trigger.group;
        let seen = tx
            .query(
                "SELECT 1 FROM processed_events WHERE consumer = ? AND event_id = ?",
                vec![Value::Text(group.clone()), Value::Text(event_id.clone())],
            )
            .await;
        match seen {
            Ok(seen) if !seen.rows.is_empty() => return (Ok(Handled::Duplicate), Some(tx)),
            Ok(_) => {}
            Err(e) => return (Err(Failure::Retry(format!("{e:?}"))), Some(tx)),
        }

        let shard = self.context.shards.for_merchant(merchant);
        let trace = header(record, "traceparent").map(String::from_utf8_lossy).unwrap_or_default();
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
        let span = invocation_span(&event_id, Some(merchant), &shard.name, name, component.short_digest());
        // The producer's trace: one trace from the payment request to here.
        crate::telemetry::continue_trace(&span, header(record, "traceparent"));
        let (result, tx) =
            self.context.engine.invoke_event(&component, bindings, event).instrument(span).await;
        let failure = result.as_ref().err().map(|e| e.kind());
        self.context.metrics.invoked(
            name,
            component.short_digest(),
            &component.stats,
            started.elapsed(),
            failure,
        );
        let Some(mut tx) = tx else {
            return (Err(Failure::Retry("the shard transaction was lost".into())), None);
        };
        if let Err(e) = result {
            return (Err(Failure::Retry(e.to_string())), Some(tx));
        }
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let recorded = tx
            .execute(
                "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES (?, ?, ?)",
                vec![Value::Text(group.clone()), Value::Text(event_id), Value::Text(now)],
            )
            .await;
        match recorded {
            Ok(_) => (Ok(Handled::Processed), Some(tx)),
            Err(e) => (Err(Failure::Retry(format!("recording the event: {e:?}"))), Some(tx)),
        }
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

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Retry(m) | Failure::Poison(m) => m,
        }
    }
}

/// Why a batch's transaction was rolled back: the record at `at` failed,
/// or (`None`) the transaction itself did.
struct RunFailure {
    at: Option<usize>,
    error: Failure,
}

/// The value of `record`'s header `name`, if it has one.
fn header<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
    record.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// Where `trigger` sends records of `topic` that cannot be handled.
pub fn dead_letter_topic(trigger: &KafkaTrigger, topic: &str) -> String {
    trigger.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}.dlq"))
}
