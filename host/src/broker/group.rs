//! A Kafka group consumer that commits only what this member handled since
//! it last became the owner of a partition (issue 17, part 5).
//!
//! librdkafka runs rebalance callbacks inside `recv`, and a batch is
//! gathered by several `recv` calls, so a partition can be revoked, and
//! even assigned back, while records fetched before are in the batch. Two
//! rules keep a commit from moving a position past records nobody handled:
//!
//! 1. **Ownership epochs.** Each time this member is assigned a partition
//!    it gets a new epoch; every record is tagged with the epoch it arrived
//!    in. A batch's offsets are committed for a partition only if all its
//!    records of that partition arrived in the epoch that still owns it.
//!    Otherwise the commit is left out: the partition's owner (maybe this
//!    member again) reads from the last committed offset, and the replayed
//!    records are absorbed by `processed_events`.
//! 2. **No skipped offsets.** The first record of an epoch must not lie
//!    past the group's committed offset, nor a later one past the offset
//!    after the last: records between would be skipped by this member and
//!    its next commit would move past them. tansu 0.6 does exactly that: a
//!    fetch from an offset inside a record batch is answered from the next
//!    batch (`tansu-storage` `dynostore.rs`, `offsets.split_off(&offset)`
//!    keeps only batches whose *base* offset is at or after the one asked
//!    for), so whenever a partition changes hands at an offset inside a
//!    batch, the rest of that batch is never delivered. The member then
//!    seeks back ([`Reading::step`]) until a batch at or before the offset
//!    comes, and drops the records before it; it is counted in
//!    `payfn_kafka_fetch_gaps_total{group}` and logged with both offsets.
//!
//! Commits are asynchronous: a lost commit replays records, never skips one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::rdkafka::record_of;
use super::reports::Reports;
use super::Record;
use crate::metrics::Metrics;

/// How long the committed offset of a newly owned partition may take to read.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a seek may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

type Partition = (String, i32);

/// The partitions this member owns, each with the epoch of its ownership.
#[derive(Default)]
pub struct Owned {
    epochs: Mutex<BTreeMap<Partition, u64>>,
    next_epoch: AtomicU64,
}

impl Owned {
    fn epoch(&self, partition: &Partition) -> Option<u64> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner()).get(partition).copied()
    }
}

/// What one group consumer owns, kept up to date by the rebalance callbacks,
/// and where commit results land. librdkafka's reports go to the client's
/// shared [`Reports`], as the producer's do.
pub struct GroupContext {
    group: String,
    owned: Arc<Owned>,
    metrics: Metrics,
    reports: Reports,
}

impl GroupContext {
    pub fn new(group: &str, metrics: &Metrics, reports: &Reports) -> Self {
        Self {
            group: group.to_string(),
            owned: Arc::default(),
            metrics: metrics.clone(),
            reports: reports.clone(),
        }
    }

    /// Replaces what this member owns with `now`: partitions kept keep their
    /// epoch, new ones get a new epoch. Gauges included.
    pub fn set_owned(&self, now: BTreeSet<Partition>) -> String {
        let mut epochs = self.owned.epochs.lock().unwrap_or_else(|p| p.into_inner());
        let before: BTreeSet<Partition> = epochs.keys().cloned().collect();
        for (topic, partition) in before.difference(&now) {
            self.metrics.partition_owned(&self.group, topic, *partition, false);
        }
        for (topic, partition) in now.difference(&before) {
            self.metrics.partition_owned(&self.group, topic, *partition, true);
        }
        epochs.retain(|p, _| now.contains(p));
        for partition in now {
            epochs
                .entry(partition)
                .or_insert_with(|| self.owned.next_epoch.fetch_add(1, Ordering::Relaxed) + 1);
        }
        describe_set(epochs.keys())
    }

    fn owned_now(&self) -> BTreeSet<Partition> {
        self.owned.epochs.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.reports.error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        self.reports.log(level, facility, line);
    }
}

impl ConsumerContext for GroupContext {
    /// Forgets revoked partitions before librdkafka unassigns them: from here
    /// on their offsets are the new owner's to commit.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let mut now = self.owned_now();
                for e in list.elements() {
                    now.remove(&(e.topic().to_string(), e.partition()));
                }
                let owned = self.set_owned(now);
                tracing::info!(group = %self.group, revoked = %describe(list), %owned, "kafka partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(group = %self.group, "kafka rebalance failed: {e}"),
        }
    }

    /// Takes librdkafka's assignment, once applied, as what this member owns
    /// (eager and cooperative strategies alike).
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let now = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect(),
            Err(e) => {
                tracing::warn!(group = %self.group, "reading the kafka assignment: {e}");
                return;
            }
        };
        let owned = self.set_owned(now);
        if let Rebalance::Assign(list) = rebalance {
            tracing::info!(group = %self.group, assigned = %describe(list), %owned, "kafka partitions assigned");
        }
    }

    /// An asynchronous commit that failed (e.g. the partition moved to another
    /// member meanwhile) only means the record may be replayed, and the
    /// processed-events row absorbs the replay: logged, never fatal.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(group = %self.group, offsets = %describe(offsets), "kafka offset commit failed: {e}");
        }
    }
}

/// Where this member stands on a partition it reads: the epoch it reads it
/// in, the offset it must take next, and the rewind in progress, if any.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    epoch: u64,
    next: i64,
    rewind: Option<Rewind>,
}

/// A rewind after an offset past `next` was delivered: the last seek went
/// `back` records before `next`; `reached` once a record at or before
/// `next` arrived (from there on the log is read in order).
#[derive(Debug, Clone, PartialEq)]
struct Rewind {
    back: i64,
    reached: bool,
}

/// What to do with a delivered record.
#[derive(Debug, PartialEq)]
enum Step {
    /// Hand it on.
    Take,
    /// Before the position (already handled): skip it.
    Drop,
    /// Seek to this offset; the delivered record is not handed on.
    SeekTo(i64),
}

/// How far before the expected offset the second seek of a rewind goes;
/// each later one goes twice as far.
const REWIND_FIRST: i64 = 64;

impl Reading {
    /// The step for a delivered `offset` (module docs, rule 2). A broker that
    /// answers a fetch from inside a record batch with the *next* batch
    /// (tansu 0.6, docs/ARCHITECTURE.md) skips the rest of that batch: the
    /// first seek asks for `next` again, later ones from further back until a
    /// batch at or before `next` comes, whose records before `next` are
    /// dropped. If even the log's start (offset 0) brings nothing at or
    /// before `next`, the log has no records there (retention, a
    /// transaction marker) and `offset` is taken.
    fn step(&mut self, offset: i64) -> Step {
        match &mut self.rewind {
            None if offset <= self.next => {
                // In order, or a replay of handled records: harmless.
                self.next = offset + 1;
                Step::Take
            }
            None => {
                self.rewind = Some(Rewind { back: 0, reached: false });
                Step::SeekTo(self.next)
            }
            Some(rewind) if offset < self.next => {
                rewind.reached = true;
                Step::Drop
            }
            Some(rewind) if offset > self.next && !rewind.reached && self.next - rewind.back > 0 => {
                rewind.back = (rewind.back * 2).max(REWIND_FIRST);
                Step::SeekTo((self.next - rewind.back).max(0))
            }
            Some(_) => {
                // `next` itself, or past it where the log has nothing between.
                self.rewind = None;
                self.next = offset + 1;
                Step::Take
            }
        }
    }
}

/// One group consumer.
pub struct KafkaSubscription {
    consumer: StreamConsumer<GroupContext>,
    group: String,
    metrics: Metrics,
    reading: Mutex<HashMap<Partition, Reading>>,
    /// The epoch the records of each partition of the batch being handled
    /// arrived in; `None` where they span two epochs.
    batch: Mutex<HashMap<Partition, Option<u64>>>,
}

impl KafkaSubscription {
    pub fn new(consumer: StreamConsumer<GroupContext>) -> Self {
        let (group, metrics) = (consumer.context().group.clone(), consumer.context().metrics.clone());
        Self { consumer, group, metrics, reading: Mutex::default(), batch: Mutex::default() }
    }

    pub fn context(&self) -> &GroupContext {
        self.consumer.context()
    }

    /// The next records: the first one waited for, then whatever has already
    /// arrived behind it, up to `max`. Remembers each partition's epoch for
    /// [`commit_batch`](Self::commit_batch).
    pub async fn next_batch(&self, max: usize) -> Result<Vec<Record>, String> {
        let mut epochs: HashMap<Partition, Option<u64>> = HashMap::new();
        let mut records = Vec::new();
        let mut next = Some(self.next_checked().await?);
        while let Some((record, epoch)) = next.take() {
            let key = (record.topic.clone(), record.partition);
            epochs.entry(key).and_modify(|e| *e = e.filter(|seen| *seen == epoch)).or_insert(Some(epoch));
            records.push(record);
            if records.len() < max {
                // Polled once: only what is already here, never a wait.
                if let Ok(arrived) = tokio::time::timeout(Duration::ZERO, self.next_checked()).await {
                    next = Some(arrived?);
                }
            }
        }
        *self.batch.lock().unwrap_or_else(|p| p.into_inner()) = epochs;
        Ok(records)
    }

    /// The next record this member owns, checked against where its reading
    /// of the partition must be (module docs, rule 2), with its epoch.
    async fn next_checked(&self) -> Result<(Record, u64), String> {
        loop {
            let record = record_of(&self.consumer.recv().await.map_err(|e| e.to_string())?);
            let key = (record.topic.clone(), record.partition);
            // Fetched before a revoke: the partition's owner reads it.
            let Some(epoch) = self.context().owned.epoch(&key) else { continue };
            let known = {
                let reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
                reading.get(&key).filter(|r| r.epoch == epoch).cloned()
            };
            let mut reading = match known {
                Some(reading) => reading,
                // The first record since this member took the partition:
                // it must not lie past the group's committed offset.
                None => {
                    let next = self.committed(&key).await.unwrap_or(record.offset);
                    Reading { epoch, next, rewind: None }
                }
            };
            let (next, rewinding) = (reading.next, reading.rewind.is_some());
            let step = reading.step(record.offset);
            self.reading.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), reading);
            match step {
                Step::Take => {
                    if rewinding && record.offset > next {
                        tracing::warn!(
                            group = %self.group, topic = %key.0, partition = key.1,
                            "the log has no records {next}..{} (retention or transaction markers); going on",
                            record.offset
                        );
                    }
                    return Ok((record, epoch));
                }
                Step::Drop => continue,
                Step::SeekTo(offset) => {
                    if !rewinding {
                        self.metrics.fetch_gap(&self.group);
                        tracing::error!(
                            group = %self.group, topic = %key.0, partition = key.1, received = record.offset,
                            expected = next, epoch,
                            "kafka delivered an offset past the one this member must read next; seeking back \
                             so nothing is skipped (records {next}..{} were not delivered)", record.offset
                        );
                    }
                    self.seek(&key, offset).await?;
                }
            }
        }
    }

    /// The group's committed offset of `partition`, if it has one and it
    /// can be read now (if not, the start is not checked: logged).
    async fn committed(&self, partition: &Partition) -> Option<i64> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        let read = crate::shards::blocking(|| self.consumer.committed_offsets(list, COMMITTED_TIMEOUT));
        match read {
            Ok(list) => list.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }),
            Err(e) => {
                tracing::warn!(group = %self.group, topic = %partition.0, partition = partition.1,
                    "reading the committed offset of a newly owned partition: {e}; its start is not checked");
                None
            }
        }
    }

    async fn seek(&self, partition: &Partition, offset: i64) -> Result<(), String> {
        crate::shards::blocking(|| {
            self.consumer.seek(&partition.0, partition.1, Offset::Offset(offset), SEEK_TIMEOUT)
        })
        .map_err(|e| format!("seeking {}/{} back to {offset}: {e}", partition.0, partition.1))
    }

    /// Commits the group's position past `records` (the batch from
    /// [`next_batch`](Self::next_batch), all handled): per partition, the
    /// offset after its last record, if every record of it arrived in the
    /// epoch that still owns the partition (module docs, rule 1).
    pub fn commit_batch(&self, records: &[Record]) -> Result<(), String> {
        // Read, not taken: a commit that fails is tried again with the same batch.
        let epochs = self.batch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut last: BTreeMap<Partition, i64> = BTreeMap::new();
        for record in records {
            let entry = last.entry((record.topic.clone(), record.partition)).or_insert(record.offset);
            *entry = (*entry).max(record.offset);
        }
        let mut list = TopicPartitionList::new();
        for (key, offset) in last {
            let received_in = epochs.get(&key).copied().flatten();
            let owned_in = self.context().owned.epoch(&key);
            if received_in.is_none() || received_in != owned_in {
                tracing::info!(
                    group = %self.group, topic = %key.0, partition = key.1, offset, ?received_in, ?owned_in,
                    "partition revoked (or reassigned) since its records arrived; its offset is left to its owner"
                );
                continue;
            }
            list.add_partition_offset(&key.0, key.1, Offset::Offset(offset + 1))
                .map_err(|e| e.to_string())?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&list, CommitMode::Async).map_err(|e| e.to_string())
    }
}

/// `topic/partition` pairs, comma separated.
pub fn describe(list: &TopicPartitionList) -> String {
    list.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

fn describe_set<'a>(set: impl Iterator<Item = &'a Partition>) -> String {
    set.map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    #[test]
    fn a_consumers_reports_land_with_the_clients() {
        let reports = Reports::default();
        let context = GroupContext::new("settlement", &Metrics::default(), &reports);
        context.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://broker:9093/bootstrap: SASL authentication error",
        );
        assert_eq!(
            reports.cause().as_deref(),
            Some("Global error: Authentication (Local: Authentication failure): sasl_ssl://broker:9093/bootstrap: SASL authentication error")
        );
    }

    fn reading(next: i64) -> Reading {
        Reading { epoch: 1, next, rewind: None }
    }

    /// Feeds `offsets` and returns the steps.
    fn steps(reading: &mut Reading, offsets: impl IntoIterator<Item = i64>) -> Vec<Step> {
        offsets.into_iter().map(|o| reading.step(o)).collect()
    }

    #[test]
    fn records_in_order_and_replays_are_taken() {
        let mut r = reading(10);
        assert_eq!(steps(&mut r, [10, 11, 12]), vec![Step::Take, Step::Take, Step::Take]);
        assert_eq!(r.next, 13);
        // After a lost commit, the broker may deliver handled records again.
        assert_eq!(steps(&mut r, [5, 6]), vec![Step::Take, Step::Take]);
    }

    #[test]
    fn a_fetch_answered_from_the_next_batch_rewinds_until_the_batch_holding_the_position() {
        // The position (100) is inside a batch starting at 90; the broker
        // answers every fetch from 91..=100 with the batch at 104.
        let mut r = reading(100);
        assert_eq!(r.step(104), Step::SeekTo(100));
        assert_eq!(r.step(104), Step::SeekTo(100 - REWIND_FIRST));
        // From 36 the broker starts at the batch at 40: at or before 100.
        let dropped: Vec<Step> = (40..100).map(|o| r.step(o)).collect();
        assert!(dropped.iter().all(|s| *s == Step::Drop), "{dropped:?}");
        assert_eq!(steps(&mut r, [100, 101]), vec![Step::Take, Step::Take]);
        assert_eq!(r, Reading { epoch: 1, next: 102, rewind: None });
    }

    #[test]
    fn each_further_rewind_goes_twice_as_far_and_stops_at_the_log_start() {
        let mut r = reading(300);
        assert_eq!(
            steps(&mut r, [400, 400, 400, 400]),
            vec![Step::SeekTo(300), Step::SeekTo(236), Step::SeekTo(172), Step::SeekTo(44)]
        );
        assert_eq!(r.step(400), Step::SeekTo(0));
        // Even from the start nothing at or before 300 comes (retention
        // deleted it): the log has nothing there, 400 is taken.
        assert_eq!(r.step(400), Step::Take);
        assert_eq!(r.next, 401);
    }

    #[test]
    fn a_real_gap_after_the_position_is_taken_once_the_rewind_reached_it() {
        // The log has no 10..=12 (a transaction marker, say).
        let mut r = reading(10);
        assert_eq!(steps(&mut r, [13, 13]), vec![Step::SeekTo(10), Step::SeekTo(0)]);
        assert_eq!(steps(&mut r, [0, 9]), vec![Step::Drop, Step::Drop]);
        assert_eq!(r.step(13), Step::Take);
        assert_eq!(r.rewind, None);
    }
}
