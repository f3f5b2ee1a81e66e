//! Where each consumer group stands: per partition, the log's end and the
//! group's committed position, and the difference (the lag). Read by the
//! admin console and at each metrics scrape; never on the request path.
//! Plus, for the metrics, when the first record a group has not committed
//! past was written (its lag in time): [`LagReader::first_unhandled_at`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How long one broker request for positions may take.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long one read of first-unhandled records may wait for them; what
/// has not arrived by then is reported as unknown.
const PEEK_TIMEOUT: Duration = Duration::from_secs(1);
/// Record timestamps remembered (they never change); the memory is dropped
/// when it grows past this.
const STAMPS_MAX: usize = 4096;

/// One partition as a consumer group sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The offset the next record written will get.
    pub end: i64,
    /// The next offset the group will read; `None` before its first commit
    /// (it then starts from the earliest record).
    pub committed: Option<i64>,
    /// Records written and not yet handled by the group.
    pub lag: i64,
}

impl PartitionLag {
    /// `committed`, or the earliest retained offset when there is none.
    pub fn new(
        group: &str,
        topic: &str,
        partition: i32,
        earliest: i64,
        end: i64,
        committed: Option<i64>,
    ) -> Self {
        let from = committed.unwrap_or(earliest);
        Self {
            group: group.to_string(),
            topic: topic.to_string(),
            partition,
            end,
            committed,
            lag: (end - from).max(0),
        }
    }

    /// The offset of the first record the group has not committed past,
    /// when there is one (lag above 0).
    pub fn first_unhandled(&self) -> Option<i64> {
        (self.lag > 0).then_some(self.end - self.lag)
    }
}

/// Reads group positions from Kafka with one plain (never subscribed)
/// consumer per group, kept between reads: it only asks the coordinator for
/// the committed offsets, so it never joins the group or moves a partition.
pub struct LagReader {
    config: ClientConfig,
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    peek: Arc<Mutex<Peek>>,
}

/// Reads single records for their timestamps: a consumer that only ever
/// `assign`s partitions at given offsets (never joins a group, never
/// commits), and the timestamps already read, by (topic, partition, offset).
#[derive(Default)]
struct Peek {
    consumer: Option<BaseConsumer>,
    stamps: HashMap<(String, i32, i64), Option<i64>>,
}

impl LagReader {
    pub fn new(config: ClientConfig) -> Self {
        Self { config, clients: Mutex::new(HashMap::new()), peek: Arc::default() }
    }

    /// When the first record `partitions` (from [`read`](Self::read)) have
    /// not committed past was written: its timestamp (CreateTime unless the
    /// topic says LogAppendTime), in ms since the epoch; `None` for a
    /// partition with no lag, or whose record did not arrive within
    /// [`PEEK_TIMEOUT`].
    ///
    /// Cost: a record's timestamp never changes, so it is fetched once per
    /// position: while a group stands still (caught up, or stuck) nothing is
    /// asked of the broker; while it moves, each scrape fetches from every
    /// lagging partition whose position moved, in one assign: fetches of
    /// 1,000 bytes at most, which a broker rounds up to the one record batch
    /// holding the position, so about one batch per such partition (see
    /// `peek_consumer`), within [`PEEK_TIMEOUT`].
    pub async fn first_unhandled_at(&self, partitions: &[PartitionLag]) -> anyhow::Result<Vec<Option<i64>>> {
        let wanted: Vec<Option<(String, i32, i64)>> = partitions
            .iter()
            .map(|p| p.first_unhandled().map(|offset| (p.topic.clone(), p.partition, offset)))
            .collect();
        if wanted.iter().all(Option::is_none) {
            return Ok(vec![None; partitions.len()]);
        }
        let (peek, config) = (self.peek.clone(), self.config.clone());
        tokio::task::spawn_blocking(move || {
            let mut peek = peek.lock().unwrap_or_else(|p| p.into_inner());
            peek.read(&config, &wanted)
        })
        .await
        .context("reading record timestamps")?
    }

    /// Every partition of `topics` for `group`.
    pub async fn read(&self, group: &str, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
        let client = self.client(group)?;
        let (group, topics) = (group.to_string(), topics.to_vec());
        // librdkafka's calls block: off the async workers.
        tokio::task::spawn_blocking(move || read_blocking(&client, &group, &topics))
            .await
            .context("reading consumer positions")?
    }

    fn client(&self, group: &str) -> anyhow::Result<Arc<BaseConsumer>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(group) {
            return Ok(client.clone());
        }
        let mut config = self.config.clone();
        config.set("group.id", group).set("enable.auto.commit", "false");
        let client: Arc<BaseConsumer> =
            Arc::new(config.create().context("creating the Kafka position reader")?);
        clients.insert(group.to_string(), client.clone());
        Ok(client)
    }
}

fn read_blocking(client: &BaseConsumer, group: &str, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), TIMEOUT)
            .with_context(|| format!("reading the partitions of `{topic}`"))?;
        let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
        for partition in 0..partitions as i32 {
            list.add_partition(topic, partition);
        }
    }
    let committed: BTreeMap<(String, i32), Option<i64>> = client
        .committed_offsets(list.clone(), TIMEOUT)
        .context("reading committed offsets")?
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            ((e.topic().to_string(), e.partition()), offset)
        })
        .collect();
    let mut out = Vec::new();
    for element in list.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = client
            .fetch_watermarks(topic, partition, TIMEOUT)
            .with_context(|| format!("reading the end of {topic}/{partition}"))?;
        let committed = committed.get(&(topic.to_string(), partition)).copied().flatten();
        out.push(PartitionLag::new(group, topic, partition, low, high, committed));
    }
    Ok(out)
}

impl Peek {
    /// The timestamp of the first record at or after each wanted offset.
    /// Blocking: at most [`PEEK_TIMEOUT`] waiting for records.
    fn read(
        &mut self,
        config: &ClientConfig,
        wanted: &[Option<(String, i32, i64)>],
    ) -> anyhow::Result<Vec<Option<i64>>> {
        let mut out = vec![None; wanted.len()];
        // Indexes of `wanted` still to fetch.
        let mut missing: Vec<usize> = Vec::new();
        for (i, w) in wanted.iter().enumerate() {
            if let Some(key) = w {
                match self.stamps.get(key) {
                    Some(stamp) => out[i] = *stamp,
                    None => missing.push(i),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let consumer = match &mut self.consumer {
            Some(consumer) => &*consumer,
            slot @ None => &*slot.insert(peek_consumer(config)?),
        };
        let mut list = TopicPartitionList::new();
        for &i in &missing {
            if let Some((topic, partition, offset)) = &wanted[i] {
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .context("assigning a partition to read a timestamp")?;
            }
        }
        consumer.assign(&list).context("assigning partitions to read timestamps")?;
        let started = Instant::now();
        let deadline = started + PEEK_TIMEOUT;
        let mut paused = TopicPartitionList::new();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let message = match consumer.poll(left) {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reading a record timestamp");
                    continue;
                }
                Some(Ok(message)) => message,
            };
            let found = missing.iter().position(|&i| {
                wanted[i].as_ref().is_some_and(|(topic, partition, offset)| {
                    topic == message.topic()
                        && *partition == message.partition()
                        && message.offset() >= *offset
                })
            });
            if let Some(at) = found {
                // Found: no more fetches for this partition.
                let mut done = TopicPartitionList::new();
                done.add_partition(message.topic(), message.partition());
                if consumer.pause(&done).is_ok() {
                    paused.add_partition(message.topic(), message.partition());
                }
                let i = missing.swap_remove(at);
                let stamp = message.timestamp().to_millis();
                out[i] = stamp;
                if self.stamps.len() >= STAMPS_MAX {
                    self.stamps.clear();
                }
                if let Some(key) = wanted[i].clone() {
                    self.stamps.insert(key, stamp);
                }
            }
        }
        // A pause outlives the assignment: undone for the next read.
        if paused.count() > 0 {
            consumer.resume(&paused).context("resuming partitions read for timestamps")?;
        }
        consumer.unassign().context("releasing the partitions read for timestamps")?;
        tracing::debug!(
            fetched = list.count() - missing.len(),
            missing = missing.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read record timestamps"
        );
        Ok(out)
    }
}

/// The consumer [`Peek`] reads with.
fn peek_consumer(config: &ClientConfig) -> anyhow::Result<BaseConsumer> {
    // A position below the log's start (retention) reads the earliest
    // record, as the group's own consumer would.
    let mut config = super::range::assign_only(config, "payfn-lag-peek");
    config
        // Only the first record of a position is needed: ask for as little
        // as librdkafka allows (fetch.max.bytes >= message.max.bytes >=
        // 1000; this client never produces) and prefetch nothing more. A
        // broker still returns the first record batch of the first partition
        // whole (KIP-74), so a fetch brings about one batch, and the
        // partitions it had no room for come in the next fetches. (tansu
        // 0.6 ignores the per-partition limit and fills the request's
        // limit from the first partition: with librdkafka's default, 50
        // MiB, it sent a lagging partition's whole backlog, up to its 5 MiB
        // cap, on every scrape.)
        .set("message.max.bytes", "1000")
        .set("fetch.max.bytes", "1000")
        .set("max.partition.fetch.bytes", "1000")
        .set("queued.min.messages", "1")
        // The rest of a fetched batch waits in the queue until polled past,
        // and a non-empty queue holds back the other partitions' fetches
        // for this long (1 s by default: every scrape would wait it out).
        .set("fetch.queue.backoff.ms", "1")
        // The records are there (the partition lags): no reason to let the
        // broker wait for more. (tansu 0.6 waits this long on every fetch,
        // data or not, and a read takes a fetch per partition.)
        .set("fetch.wait.max.ms", "1");
    config.create().context("creating the Kafka record-timestamp reader")
}
