//! The Kafka trigger (`[[trigger.kafka]]`): runs a component on every record
//! of its topics, as one consumer group, with exactly-once effects.
//!
//! Per record: the shard comes from the record's `merchant-id` header; in a
//! write transaction on that shard the host checks `processed_events` for the
//! record's `event-id` (a duplicate is skipped), runs the component and
//! records the event id. The records of one fetched batch that go to one
//! shard (on a server shard: one lane of its merchants) share that
//! transaction (one commit for them all), and the component gets them as
//! one run (`handle-events`), so it can fold them into fewer writes. Only once every
//! record of the batch is committed is the consumer offset committed, so a
//! crash anywhere replays records and the processed-events rows absorb them.
//!
//! Failures come in three kinds ([`Failure`]). A *transient* one (the shard
//! unavailable or timed out, a lock wait, a deadlock, a serialization
//! failure; the component failing after one of its statements got such an
//! error) is retried with backoff for as long as it lasts: the partition
//! waits, its offset is not committed past the record, and consumer lag
//! shows it. Only a *component* failure (its error, trap or timeout) counts
//! toward the trigger's `max_attempts`, after which the record is produced
//! to the dead-letter topic with the error in its headers; a *poison*
//! record (no event id, no merchant) goes there at once. If the dead-letter
//! topic cannot take it either, the record is kept in the `failed_events`
//! table of a shard, and consumption goes on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bindings::event::exports::payfn::host::event_handler::Event;
use crate::bindings::kafka::{Error as ProduceError, Message};
use crate::bindings::sql::{Dialect, Error as SqlError, Value};
use crate::broker::{Broker, Record, Subscription};
use crate::directory::{Directory, RouteError, Routed};
use crate::engine::{Engine, Invocation, InvokeError, LoadedComponent, Outcome, Trace};
use crate::manifest::KafkaTrigger;
use crate::metrics::Metrics;
use crate::shards::{Shard, ShardSet, ShardTx};
use crate::versions::live::ComponentSlot;

/// Pause after a failed fetch or commit.
const BACKOFF: Duration = Duration::from_secs(1);
/// First retry delay of a failing record; doubles per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// The longest pause between two tries of a transient failure.
const TRANSIENT_MAX_DELAY: Duration = Duration::from_secs(30);
/// How long producing to the dead-letter topic is tried while the broker is
/// unavailable, before the record goes to `failed_events` instead.
const DEAD_LETTER_PATIENCE: Duration = Duration::from_secs(10);
/// Transactions a batch's records of one MariaDB or PostgreSQL shard are
/// spread over, by merchant (SQLite shards: one).
const SERVER_LANES: usize = 8;
/// The most records one invocation of the component handles: a component
/// that takes them one at a time (the SDK's `event_step!`) spends their
/// round trips within one invocation's deadline.
const EVENTS_PER_INVOCATION: usize = 256;
/// Event ids per processed-events statement (well under every dialect's
/// limit on placeholders).
const ID_CHUNK: usize = 500;
/// Where a record the dead-letter topic could not take is kept.
const STORE_FAILED: &str = "INSERT INTO failed_events (consumer, source_topic, source_partition, \
     source_offset, event_id, merchant_id, record_key, record_value, headers, error, dead_letter_topic, \
     dead_letter_error, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// What every consumer task needs.
#[derive(Clone)]
pub struct KafkaContext {
    pub engine: Engine,
    pub broker: Broker,
    pub shards: Arc<ShardSet>,
    /// Which shard each merchant is on.
    pub directory: Arc<Directory>,
    pub metrics: Metrics,
}

/// Starts the consumer task of `trigger`.
pub fn start(context: &KafkaContext, trigger: &KafkaTrigger, slot: Arc<ComponentSlot>) -> anyhow::Result<()> {
    let subscription = context.broker.subscribe(&trigger.group, &trigger.topics, &context.metrics)?;
    context.metrics.event_consumer_started(&slot.spec.name);
    let consumer =
        Consumer { context: context.clone(), trigger: trigger.clone(), slot, waiting: Default::default() };
    tokio::spawn(consumer.run(subscription));
    Ok(())
}

struct Consumer {
    context: KafkaContext,
    trigger: KafkaTrigger,
    slot: Arc<ComponentSlot>,
    /// The waits on transient failures in progress, by shard (the shards'
    /// shares of a batch run at once, so two shards can wait together).
    waiting: std::sync::Mutex<HashMap<String, Waiting>>,
}

/// A wait on a transient failure: when it began, the tries so far and the
/// pause before the next one (doubling up to [`TRANSIENT_MAX_DELAY`]).
struct Waiting {
    since: Instant,
    tries: u64,
    delay: Duration,
}

/// A component that ran to its end: whether one of its statements failed
/// (then its event is recorded at once, see [`Consumer::record`]).
struct Invoked {
    failed_statements: bool,
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
        // The runs' merchants, routed: held until the runs are flushed (a
        // move's cut-over waits for them), one hold per merchant (a second
        // behind a queued freeze would wait for the first).
        let mut held: HashMap<i64, Routed> = HashMap::new();
        for record in records {
            if !self.trigger.wants(header(record, "event-type")) {
                continue;
            }
            let Ok((_, merchant)) = Self::route(record) else {
                // Poison: dead-lettered on its own, at its place in the order.
                self.flush_runs(&mut runs).await;
                held.clear();
                self.deliver(record).await;
                continue;
            };
            let shard = match held.get(&merchant) {
                Some(routed) => routed.shard.clone(),
                None => match self.shard_of(merchant).await {
                    Ok(routed) => {
                        let shard = routed.shard.clone();
                        held.insert(merchant, routed);
                        shard
                    }
                    Err(_) => {
                        // Not in the directory, unreachable, or moving: on
                        // its own, where that is dead-lettered (or waited out).
                        self.flush_runs(&mut runs).await;
                        held.clear();
                        self.deliver(record).await;
                        continue;
                    }
                },
            };
            match runs.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &shard)) {
                Some((_, run)) => run.push(record),
                None => runs.push((shard, vec![record])),
            }
        }
        self.flush_runs(&mut runs).await;
    }

    /// Runs the shares of a batch at once, each in its own transaction:
    /// one per SQLite shard (it has one writer), and on a MariaDB or
    /// PostgreSQL shard one per lane of merchants ([`SERVER_LANES`], by
    /// merchant id), since there each record is a string of round trips
    /// and the shard's pool serves many transactions at once. A payment's
    /// records are its merchant's, so they stay in one share, in order;
    /// two lanes never write the same settlement row (it is a merchant's).
    async fn flush_runs(&self, runs: &mut Vec<(Arc<Shard>, Vec<&Record>)>) {
        let runs = std::mem::take(runs);
        let mut shares: Vec<(&Shard, Vec<&Record>)> = Vec::new();
        for (shard, run) in &runs {
            let lanes = match shard.dialect() {
                Dialect::Sqlite => 1,
                Dialect::Mysql | Dialect::Postgres => SERVER_LANES,
            };
            let mut lanes: Vec<Vec<&Record>> = vec![Vec::new(); lanes];
            let count = lanes.len() as i64;
            for record in run {
                let merchant = Self::route(record).map_or(0, |(_, merchant)| merchant);
                lanes[merchant.rem_euclid(count) as usize].push(record);
            }
            shares.extend(lanes.into_iter().filter(|lane| !lane.is_empty()).map(|lane| (&**shard, lane)));
        }
        futures_util::future::join_all(shares.iter().map(|(shard, run)| self.flush_run(shard, run))).await;
    }

    /// One shard's share of a batch, in one transaction; on a failure,
    /// the records before the failing one again together, the failing one
    /// alone, and the rest again.
    async fn flush_run(&self, shard: &Shard, run: &[&Record]) {
        let mut rest: &[&Record] = run;
        while !rest.is_empty() {
            // The shard's trouble, no record's, is waited out inside.
            let Err(failed) = self.run_waiting(shard, rest).await else { break };
            tracing::warn!(
                component = %self.slot.spec.name, shard = %shard.name, records = rest.len(),
                "batch rolled back ({}); going on without it", failed.error.message()
            );
            let Some(at) = failed.at else {
                // Not one record's fault (a COMMIT refused): each alone.
                for record in rest {
                    self.deliver(record).await;
                }
                break;
            };
            // The records before the failing one were fine: again, together.
            if at > 0 {
                self.handle_together(shard, &rest[..at]).await;
            }
            // The failing record: the batch's try was its first attempt.
            self.deliver_after(rest[at], Some(failed.error)).await;
            rest = &rest[at + 1..];
        }
    }

    /// `records`, which went through a batch without failing, again in one
    /// transaction, waiting out transient failures; one by one if it fails
    /// otherwise.
    async fn handle_together(&self, shard: &Shard, records: &[&Record]) {
        if let Err(again) = self.run_waiting(shard, records).await {
            tracing::warn!(shard = %shard.name, "batch failed again ({}); one by one", again.error.message());
            for record in records {
                self.deliver(record).await;
            }
        }
    }

    /// [`handle_run`](Self::handle_run), again after a backoff for as long as
    /// it fails transiently (the same records together; no attempt spent).
    async fn run_waiting(&self, shard: &Shard, records: &[&Record]) -> Result<(), RunFailure> {
        loop {
            match self.handle_run(shard, records).await {
                Err(RunFailure { error: Failure::Transient(e), .. }) => {
                    let what = format!("{} records on shard {}", records.len(), shard.name);
                    self.wait_transient(&shard.name, &what, &e).await;
                }
                outcome => {
                    self.transient_cleared(&shard.name);
                    return outcome;
                }
            }
        }
    }

    /// The records of `run` (all on `shard`) in one transaction. Which of
    /// them the group processed already is asked once for the run, and the
    /// processed ones are recorded with one statement after the last
    /// (record by record, each a round trip on a server shard, the
    /// bookkeeping cost as much as the work). The new records go to the
    /// component in runs of up to [`EVENTS_PER_INVOCATION`] that one
    /// version serves (a canary serves some merchants), so a component can
    /// fold them into fewer writes.
    async fn handle_run(&self, shard: &Shard, run: &[&Record]) -> Result<(), RunFailure> {
        let whole = |error| RunFailure { at: None, error };
        let mut ids = Vec::with_capacity(run.len());
        for (at, record) in run.iter().enumerate() {
            ids.push(Self::route(record).map_err(|error| RunFailure { at: Some(at), error })?);
        }
        let mut tx = shard.begin(true).await.map_err(|e| whole(Failure::begin(shard, e)))?;
        let event_ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let mut seen = match self.processed(&mut tx, &event_ids).await {
            Ok(seen) => seen,
            Err(e) => {
                tx.rollback().await;
                return Err(whole(e));
            }
        };
        // Processed before, or earlier in this run (a re-driven copy can
        // share a batch with the original): skipped.
        let fresh: Vec<usize> = (0..run.len()).filter(|&at| seen.insert(ids[at].0.clone())).collect();
        let duplicates = run.len() - fresh.len();
        let mut to_record = Vec::with_capacity(fresh.len());
        let mut rest = &fresh[..];
        while let Some(&first) = rest.first() {
            let component = self.slot.pick(ids[first].1.to_string().as_bytes());
            let len = rest
                .iter()
                .take(EVENTS_PER_INVOCATION)
                .take_while(|&&at| {
                    at == first || self.slot.pick(ids[at].1.to_string().as_bytes()).digest == component.digest
                })
                .count();
            let (part, after) = rest.split_at(len);
            rest = after;
            let records: Vec<(&Record, &str, i64)> =
                part.iter().map(|&at| (run[at], ids[at].0.as_str(), ids[at].1)).collect();
            let (outcome, back) = self.invoke(tx, shard, &component, &records).await;
            // The record at fault, as an index of `run`: the one the
            // component named, or the part's only record.
            let at = |named: Option<usize>| named.or((part.len() == 1).then_some(0)).map(|k| part[k]);
            let Some(back) = back else {
                return Err(RunFailure { at: at(None), error: Failure::lost() });
            };
            tx = back;
            let outcome = match outcome {
                // Its failed statement may have ended the transaction
                // (PostgreSQL): recorded now, so a failure is its own.
                Ok(Invoked { failed_statements: true }) => {
                    let part_ids: Vec<(String, i64)> = part.iter().map(|&at| ids[at].clone()).collect();
                    self.record(&mut tx, &part_ids, true).await.map_err(|e| (None, e))
                }
                Ok(Invoked { failed_statements: false }) => {
                    to_record.extend(part.iter().map(|&at| ids[at].clone()));
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err((named, error)) = outcome {
                tx.rollback().await;
                return Err(RunFailure { at: at(named), error });
            }
        }
        if let Err(e) = self.record(&mut tx, &to_record, false).await {
            tx.rollback().await;
            return Err(whole(e));
        }
        tx.commit().await.map_err(|e| whole(Failure::of_shard("commit", e)))?;
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
    /// trigger's `max_attempts` if it was the component's failure.
    /// Transient failures are waited out and spend no attempt.
    async fn deliver_after(&self, record: &Record, failed: Option<Failure>) {
        let attempts = self.trigger.max_attempts.max(1);
        let mut outcome = match failed {
            Some(failure) => Err(failure),
            None => self.handle(record).await,
        };
        // The wait on a transient failure is kept per shard.
        let shard = match Self::route(record) {
            Ok((_, merchant)) => {
                self.shard_of(merchant).await.map(|r| r.shard.name.clone()).unwrap_or_default()
            }
            Err(_) => String::new(),
        };
        let mut failures = 0;
        let last_error = loop {
            if !matches!(outcome, Err(Failure::Transient(_))) {
                self.transient_cleared(&shard);
            }
            match outcome {
                Ok(()) => return,
                Err(Failure::Poison(e)) => break e,
                Err(Failure::Component(e)) => {
                    failures += 1;
                    tracing::warn!(
                        component = %self.slot.spec.name, topic = %record.topic, offset = record.offset,
                        attempt = failures, max_attempts = attempts, "event failed: {e}"
                    );
                    if failures >= attempts {
                        break e;
                    }
                    let delay = RETRY_BASE.saturating_mul(1 << (failures - 1).min(16));
                    tokio::time::sleep(delay.min(TRANSIENT_MAX_DELAY)).await;
                }
                Err(Failure::Transient(e)) => self.wait_transient(&shard, &position(record), &e).await,
            }
            outcome = self.handle(record).await;
        };
        self.dead_letter(record, &last_error).await;
    }

    /// One record in a transaction of its own: a share of one.
    async fn handle(&self, record: &Record) -> Result<(), Failure> {
        let (_, merchant) = Self::route(record)?;
        let routed = self.shard_of(merchant).await?;
        self.handle_run(&routed.shard, &[record]).await.map_err(|failed| failed.error)
    }

    /// The shard the merchant directory has `merchant` on. A directory that
    /// cannot be read is waited out; a merchant it lacks can never be
    /// handled (its events were not written by a payment step).
    async fn shard_of(&self, merchant: i64) -> Result<Routed, Failure> {
        self.context.directory.resolve(merchant).await.map_err(|e| match e {
            RouteError::Unavailable(_) | RouteError::Moving(_) => Failure::Transient(e.to_string()),
            _ => Failure::Poison(e.to_string()),
        })
    }

    /// Pauses before the next try after a transient failure (`why`) of
    /// `what`, with backoff. The first pause of a wait logs a warning, the
    /// end of the wait ([`transient_cleared`](Self::transient_cleared)) a
    /// line saying how long it took; the tries between are counted in
    /// `payfn_kafka_transient_retries_total{group}`, not logged one by one.
    async fn wait_transient(&self, shard: &str, what: &str, why: &str) {
        let group = &self.trigger.group;
        let delay = {
            let mut waits = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let waiting = waits.entry(shard.to_string()).or_insert_with(|| {
                tracing::warn!(
                    group = %group, component = %self.slot.spec.name, shard,
                    "{what}: transient failure, retried with backoff until it clears; the partition waits \
                     (offsets are not committed past it): {why}"
                );
                Waiting { since: Instant::now(), tries: 0, delay: RETRY_BASE }
            });
            waiting.tries += 1;
            let delay = waiting.delay;
            waiting.delay = (delay * 2).min(TRANSIENT_MAX_DELAY);
            self.context.metrics.transient_waiting(group, true);
            delay
        };
        self.context.metrics.transient_retry(group);
        tracing::debug!(group = %group, ?delay, "{what}: transient failure: {why}");
        tokio::time::sleep(delay).await;
    }

    /// Ends the wait on a transient failure of `shard`, if one is on.
    fn transient_cleared(&self, shard: &str) {
        let mut waits = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = waits.remove(shard) {
            if waits.is_empty() {
                self.context.metrics.transient_waiting(&self.trigger.group, false);
            }
            tracing::info!(
                group = %self.trigger.group, component = %self.slot.spec.name, shard, tries = waiting.tries,
                waited = ?waiting.since.elapsed(), "transient failure cleared; consumption goes on"
            );
        }
    }

    /// The event ids of `ids` the group has processed, per `processed_events`.
    async fn processed(&self, tx: &mut ShardTx, ids: &[&str]) -> Result<HashSet<String>, Failure> {
        let mut seen = HashSet::new();
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!(
                "SELECT event_id FROM processed_events WHERE consumer = ? AND event_id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut params = vec![Value::Text(self.trigger.group.clone())];
            params.extend(chunk.iter().map(|id| Value::Text(id.to_string())));
            let rows = tx
                .query(&sql, params)
                .await
                .map_err(|e| Failure::of_shard("checking processed events", e))?;
            seen.extend(rows.rows.into_iter().filter_map(|row| match row.into_iter().next() {
                Some(Value::Text(id)) => Some(id),
                _ => None,
            }));
        }
        Ok(seen)
    }

    /// Records `ids` as processed by the group, in `tx`. A key taken
    /// meanwhile by another consumer of the group (a rebalance, or
    /// `all-partitions`) is transient: the next try finds it processed.
    /// Unless `component_failed_statements`: then the component went on
    /// after its statement failed and the shard had ended the transaction
    /// (PostgreSQL does on any failure), which is its own fault.
    async fn record(
        &self,
        tx: &mut ShardTx,
        ids: &[(String, i64)],
        component_failed_statements: bool,
    ) -> Result<(), Failure> {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!(
                "INSERT INTO processed_events (consumer, event_id, processed_at, merchant_id) VALUES {}",
                vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let params = chunk
                .iter()
                .flat_map(|(id, merchant)| {
                    [
                        Value::Text(self.trigger.group.clone()),
                        Value::Text(id.clone()),
                        Value::Text(now.clone()),
                        Value::Int64(*merchant),
                    ]
                })
                .collect();
            match tx.execute(&sql, params).await {
                Ok(_) => {}
                Err(e @ SqlError::ConstraintViolation(_)) if !component_failed_statements => {
                    return Err(Failure::Transient(format!("recording processed events: {e:?}")))
                }
                Err(e) => return Err(Failure::of_shard("recording processed events", e)),
            }
        }
        Ok(())
    }

    /// Runs `component` on `records` (with their event ids and merchants)
    /// inside `tx`, a transaction of `shard`. Gives the transaction back,
    /// uncommitted, unless the invocation lost it; the caller records the
    /// events as processed. A failure comes with the index in `records` of
    /// the event the component refused, if it named one.
    async fn invoke(
        &self,
        tx: ShardTx,
        shard: &Shard,
        component: &LoadedComponent,
        records: &[(&Record, &str, i64)],
    ) -> (Result<Invoked, (Option<usize>, Failure)>, Option<ShardTx>) {
        let failed_before = tx.failed_statements();
        let (first, first_id, merchant) = records[0];
        // The span names a merchant when the run is one merchant's.
        let merchant = records.iter().all(|(_, _, m)| *m == merchant).then_some(merchant);
        let trace = header(first, "traceparent").map(String::from_utf8_lossy).unwrap_or_default();
        // One event: its id and trace tag the logs. A run: its first id and
        // size (a component names each event's own where it logs it).
        let request_id = match records.len() {
            1 => format!("{first_id} traceparent={trace}"),
            n => format!("{first_id}+{}", n - 1),
        };
        let events = records
            .iter()
            .map(|(record, _, _)| Event {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record.headers.clone(),
            })
            .collect();
        let invocation = Invocation {
            component,
            request_id,
            merchant,
            shard: Some(shard),
            tx: Some(tx),
            // The first producer's trace: one trace from the payment request
            // to here (for a run, the trace of its first event).
            trace: Trace::Continue(header(first, "traceparent")),
        };
        // Settled by the caller: the run's transaction also takes the
        // processed-event records, and maybe further invocations.
        let Outcome { result, tx, .. } = self.context.engine.invoke_events(invocation, events).await;
        let Some(tx) = tx else {
            return (Err((None, Failure::lost())), None);
        };
        if let Err(e) = result {
            let named = match &e {
                InvokeError::RefusedEvent(at, _) => Some(*at),
                _ => None,
            };
            let failure = match (tx.transient_failure(), &e) {
                // It could not do its work because of the shard (and may have
                // turned the shard's error into its own, or trapped on it).
                (Some(shard), _) => Failure::Transient(format!("{e} (the shard failed it: {shard})")),
                // No instance free: the host's capacity, not the component.
                (None, InvokeError::Unavailable(_)) => Failure::Transient(e.to_string()),
                (None, _) => Failure::Component(e.to_string()),
            };
            return (Err((named, failure)), Some(tx));
        }
        let failed_statements = tx.failed_statements() > failed_before;
        (Ok(Invoked { failed_statements }), Some(tx))
    }

    /// Produces `record` to the dead-letter topic with `error` in its
    /// headers. While the broker is unavailable that is tried for
    /// [`DEAD_LETTER_PATIENCE`]; if it stays unavailable or refuses the
    /// message (too large, say), the record goes to `failed_events` instead
    /// ([`store_failed`](Self::store_failed)). Either way it is kept, and
    /// consumption goes on.
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
        let give_up_at = Instant::now() + DEAD_LETTER_PATIENCE;
        let mut delay = RETRY_BASE;
        let not_produced = loop {
            let unavailable = match self.context.broker.produce(vec![message.clone()]).await.pop() {
                Some(Ok(_)) => {
                    self.context.metrics.dead_lettered(&self.slot.spec.name);
                    tracing::error!(
                        component = %self.slot.spec.name, source_topic = %record.topic, offset = record.offset,
                        dead_letter_topic = %topic, "event dead-lettered: {error}"
                    );
                    return;
                }
                Some(Err(ProduceError::Unavailable(e))) => e,
                // A refusal: the same message is refused again.
                Some(Err(refused)) => break format!("{refused:?}"),
                None => break "the broker returned no result".to_string(),
            };
            if Instant::now() + delay > give_up_at {
                break format!("unavailable for {DEAD_LETTER_PATIENCE:?}: {unavailable}");
            }
            tracing::warn!(topic = %topic, "dead-letter produce failed ({unavailable}); retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        };
        self.store_failed(record, error, &topic, &not_produced).await;
    }

    /// Keeps `record`, which failed with `error` and which its dead-letter
    /// topic did not take (`why`), in the `failed_events` table of its
    /// merchant's shard, or of the first shard if it has no valid
    /// `merchant-id`. Tried until it is stored: its offset is committed only
    /// after that, so nothing is lost (the partition waits meanwhile).
    async fn store_failed(&self, record: &Record, error: &str, dead_letter_topic: &str, why: &str) {
        let text = |name| header(record, name).and_then(|v| std::str::from_utf8(v).ok());
        let merchant: Option<i64> = text("merchant-id").and_then(|m| m.parse().ok());
        let placed = match merchant {
            // A moving merchant's row waits for its new shard.
            Some(merchant) => loop {
                match self.context.directory.resolve(merchant).await {
                    Err(RouteError::Moving(_)) => continue,
                    routed => break routed.ok(),
                }
            },
            None => None,
        };
        let shard = match &placed {
            Some(routed) => &routed.shard,
            None => self.context.shards.iter().next().expect("a shard set has a shard"),
        };
        let event_id = text("event-id").filter(|id| id.len() <= 255).map(sanitize);
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let row = vec![
            Value::Text(self.trigger.group.clone()),
            Value::Text(sanitize(&record.topic)),
            Value::Int64(record.partition.into()),
            Value::Int64(record.offset),
            event_id.map_or(Value::Null, Value::Text),
            merchant.map_or(Value::Null, Value::Int64),
            record.key.clone().map_or(Value::Null, Value::Blob),
            Value::Blob(record.value.clone()),
            Value::Text(crate::failed_events::headers_to_json(&record.headers)),
            Value::Text(sanitize(error)),
            Value::Text(sanitize(dead_letter_topic)),
            Value::Text(sanitize(why)),
            Value::Text(now),
        ];
        while let Err(e) = self.insert_failed(shard, record, row.clone()).await {
            let what = format!("storing the failed event {} on shard {}", position(record), shard.name);
            self.wait_transient(&shard.name, &what, &format!("{e:?}")).await;
        }
        self.transient_cleared(&shard.name);
        self.context.metrics.failed_stored(&self.slot.spec.name);
        tracing::error!(
            component = %self.slot.spec.name, source_topic = %record.topic, partition = record.partition,
            offset = record.offset, shard = %shard.name, dead_letter_topic = %dead_letter_topic,
            "event could not be dead-lettered ({why}); kept in failed_events: {error}"
        );
    }

    /// Inserts `row` into `failed_events` on `shard`, unless the record is
    /// there already (a host that stored it died before committing the offset).
    async fn insert_failed(&self, shard: &Shard, record: &Record, row: Vec<Value>) -> Result<(), SqlError> {
        let mut tx = shard.begin(true).await?;
        let stored = tx
            .query(
                "SELECT 1 FROM failed_events WHERE consumer = ? AND source_topic = ? \
                 AND source_partition = ? AND source_offset = ?",
                row[..4].to_vec(),
            )
            .await;
        let inserted = match stored {
            Ok(found) if !found.rows.is_empty() => Ok(0),
            Ok(_) => tx.execute(STORE_FAILED, row).await,
            Err(e) => Err(e),
        };
        match inserted {
            Ok(_) => tx.commit().await,
            Err(e) => {
                tx.rollback().await;
                tracing::debug!(offset = record.offset, "storing a failed event: {e:?}");
                Err(e)
            }
        }
    }
}

/// Why handling a record failed.
enum Failure {
    /// The shard could not do the work now (unavailable, timed out, a lock
    /// wait, a deadlock, a serialization failure), or the component failed
    /// after one of its statements got such an error: retried with backoff
    /// until it passes, never dead-lettered.
    Transient(String),
    /// The component failed on its own (an error it returned, a trap, its
    /// deadline): counts toward `max_attempts`, then the dead-letter topic.
    Component(String),
    /// Can never succeed (no event id, no merchant): dead-lettered at once.
    Poison(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Component(m) | Failure::Poison(m) => m,
        }
    }

    /// A transaction that could not be opened: the shard's trouble.
    fn begin(shard: &Shard, e: SqlError) -> Self {
        Failure::Transient(format!("shard {}: {e:?}", shard.name))
    }

    /// The invocation did not hand the transaction back.
    fn lost() -> Self {
        Failure::Transient("the shard transaction was lost".into())
    }

    /// The host's own statement or COMMIT failed, `doing` what: transient
    /// if the shard failed it; otherwise the statement was refused because
    /// of what the component wrote (a failed statement of its own ended the
    /// transaction on PostgreSQL, or a deferred constraint refused the
    /// COMMIT), which counts as the component's failure.
    fn of_shard(doing: &str, e: SqlError) -> Self {
        if ShardTx::is_transient(&e) {
            Failure::Transient(format!("{doing}: {e:?}"))
        } else {
            Failure::Component(format!("{doing}: {e:?}"))
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

/// `record`'s place, for log lines.
fn position(record: &Record) -> String {
    format!("record {}/{}/{}", record.topic, record.partition, record.offset)
}

/// `text` with its NUL characters replaced (PostgreSQL's text cannot hold
/// them, and a failed event must be storable whatever it carries).
fn sanitize(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
