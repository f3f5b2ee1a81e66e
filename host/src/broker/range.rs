//! Reading a stretch of one partition, and setting a group's positions,
//! without joining any group: what a re-drive of a dead-letter topic needs
//! (`crate::failed_events`). The group consumers in rdkafka.rs read
//! whatever their group owns, from its position, for as long as they run;
//! this reads offsets `from..end` once and stops.
//!
//! Blocking (librdkafka's calls are): run off the async workers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::rdkafka::record_of;
use super::Record;

/// How long a read may go without a record arriving before it fails.
const STALL: Duration = Duration::from_secs(15);
/// One poll's wait; between polls the consumer's position is checked, so a
/// stretch that ends in a gap (a compacted record, a transaction marker)
/// still ends.
const POLL: Duration = Duration::from_millis(500);
/// How long a commit may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads stretches of partitions with one consumer, created at the first
/// read and kept (the console lists failed events every few seconds).
#[derive(Default)]
pub struct Reader {
    consumer: Mutex<Option<BaseConsumer>>,
}

impl Reader {
    /// Up to `max` records of `topic`/`partition` at offsets `from..end`,
    /// in order, and the offset to read next (`end` once the stretch is
    /// read). An offset below the log's start (retention) reads from its
    /// start. One read at a time.
    pub fn read(
        &self,
        config: &ClientConfig,
        topic: &str,
        partition: i32,
        from: i64,
        end: i64,
        max: usize,
    ) -> anyhow::Result<(Vec<Record>, i64)> {
        if from >= end || max == 0 {
            return Ok((Vec::new(), from.max(end)));
        }
        let mut slot = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        let consumer = match &mut *slot {
            Some(consumer) => &*consumer,
            empty @ None => &*empty.insert(reader(config)?),
        };
        let read = read(consumer, topic, partition, from, end, max);
        // The next read assigns what it needs; a failed unassign only
        // costs a new consumer.
        if consumer.unassign().is_err() {
            *slot = None;
        }
        read
    }
}

fn read(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    max: usize,
) -> anyhow::Result<(Vec<Record>, i64)> {
    let mut records = Vec::new();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(from)).context("assigning the partition")?;
    consumer.assign(&list).with_context(|| format!("assigning {topic}/{partition}"))?;
    let mut next = from;
    let mut last_progress = Instant::now();
    while next < end && records.len() < max {
        match consumer.poll(POLL) {
            Some(Ok(message)) if message.topic() != topic || message.partition() != partition => {
                // Left over from an earlier read's assignment.
            }
            Some(Ok(message)) => {
                let record = record_of(&message);
                last_progress = Instant::now();
                next = record.offset + 1;
                if record.offset < end {
                    records.push(record);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(topic, partition, error = %e, "reading a partition stretch");
            }
            None => {
                // Nothing came: past the last record already (a gap before `end`)?
                let position = consumer.position().ok().and_then(|list| {
                    list.find_partition(topic, partition).and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                });
                if let Some(position) = position.filter(|p| *p >= end) {
                    next = position;
                }
            }
        }
        if next < end && last_progress.elapsed() > STALL {
            anyhow::bail!(
                "reading {topic}/{partition}: nothing arrived for {STALL:?} at offset {next} (the stretch ends at {end})"
            );
        }
    }
    Ok((records, next.min(end).max(from)))
}

/// Sets `group`'s committed position on each `(topic, partition, next
/// offset)`, synchronously, without joining the group.
pub fn commit(config: &ClientConfig, group: &str, positions: &[(String, i32, i64)]) -> anyhow::Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut config = config.clone();
    config.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().context("creating the Kafka position writer")?;
    let mut list = TopicPartitionList::new();
    for (topic, partition, next) in positions {
        list.add_partition_offset(topic, *partition, Offset::Offset(*next)).context("listing positions")?;
    }
    // Coordinator lookup happens inside; a sync commit waits for it.
    let started = Instant::now();
    loop {
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() < COMMIT_TIMEOUT => {
                tracing::debug!(group, error = %e, "committing positions; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("committing the positions of group `{group}`")),
        }
    }
}

/// The range reader: assigns only, and the broker need not wait for more
/// (the records asked for are there).
fn reader(config: &ClientConfig) -> anyhow::Result<BaseConsumer> {
    let mut config = assign_only(config, "payfn-range-reader");
    config.set("fetch.wait.max.ms", "10");
    config.create().context("creating the Kafka range reader")
}

/// `config` for a consumer that only `assign`s partitions at given offsets:
/// it never joins a group and never commits or stores an offset. An offset
/// below the log's start reads from its start.
pub fn assign_only(config: &ClientConfig, group_id: &str) -> ClientConfig {
    let mut config = config.clone();
    // librdkafka wants a group id for assign(); with absolute offsets, no
    // commits and no subscribe it is never sent to the broker.
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config
}
