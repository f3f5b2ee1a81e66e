//! Where each consumer group stands: per partition, the log's end and the
//! group's committed position, and the difference (the lag). Read by the
//! admin console and at each metrics scrape; never on the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How long one broker request for positions may take.
const TIMEOUT: Duration = Duration::from_secs(3);

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
}

/// Reads group positions from Kafka with one plain (never subscribed)
/// consumer per group, kept between reads: it only asks the coordinator for
/// the committed offsets, so it never joins the group or moves a partition.
pub struct LagReader {
    config: ClientConfig,
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl LagReader {
    pub fn new(config: ClientConfig) -> Self {
        Self { config, clients: Mutex::new(HashMap::new()) }
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
