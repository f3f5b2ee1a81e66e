//! The embedded event log: what replaces Kafka when no broker is configured.
//!
//! Durable (SQLite, WAL, `synchronous = FULL`), partitioned by key hash,
//! with consumer-group offsets committed explicitly: at-least-once delivery
//! with the same semantics the Kafka trigger relies on.
//!
//! Statements run inline through rusqlite, as the shards' do (sql/sqlite.rs
//! says why): the outbox relay appends while it holds its shard's writer,
//! so every microsecond an append takes stalls that shard's steps. One
//! connection appends and commits positions (SQLite has one writer
//! anyway), another reads; what may wait on the disk runs under
//! `block_in_place`, and WAL checkpoints run off the writer
//! (sql/checkpoint.rs).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Mutex;

use super::positions::PartitionLag;
use crate::bindings::kafka::{Delivery, Error, Message};
use crate::shards::{blocking, durable_connection, migrate_and_open_writer, Checkpointer};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../infra/migrations/event-log");

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The largest message the log accepts (key, value and headers): Kafka's
/// default `message.max.bytes`, so what the embedded setup takes a default
/// Kafka cluster takes too.
pub const MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The size of `message` if it is over [`MAX_MESSAGE_BYTES`].
fn oversized(message: &Message) -> Option<usize> {
    let size = message.key.as_ref().map_or(0, Vec::len)
        + message.value.len()
        + message.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    (size > MAX_MESSAGE_BYTES).then_some(size)
}

pub struct EventLog {
    path: PathBuf,
    /// Appends and group positions: each call one durable transaction.
    writer: Mutex<Connection>,
    /// Fetches and pings; sees committed records only.
    reader: Mutex<Connection>,
    partitions: u32,
    _checkpointer: Checkpointer,
}

impl EventLog {
    pub async fn open(path: &Path, partitions: u32) -> anyhow::Result<Self> {
        let writer = migrate_and_open_writer(path, &MIGRATOR).await?;
        let reader = durable_connection(path, true)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            partitions: partitions.max(1),
            _checkpointer: Checkpointer::start(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `key`: stable across restarts (FNV-1a), so one key's
    /// records stay in order. Keyless records go to partition 0.
    fn partition_for(&self, key: Option<&[u8]>) -> i32 {
        let Some(key) = key else { return 0 };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % u64::from(self.partitions)) as i32
    }

    /// Appends all messages in one transaction: all acknowledged or none.
    pub async fn produce(&self, messages: Vec<Message>) -> Vec<Result<Delivery, Error>> {
        // A message over the limit is refused, as a Kafka broker refuses one
        // over `message.max.bytes`; the rest are appended.
        let refused: Vec<Option<usize>> = messages.iter().map(oversized).collect();
        let accepted: Vec<Message> =
            messages.into_iter().zip(&refused).filter(|(_, r)| r.is_none()).map(|(m, _)| m).collect();
        let count = accepted.len();
        let mut appended = match self.append(accepted).await {
            Ok(deliveries) => deliveries.into_iter().map(Ok).collect(),
            Err(e) => {
                (0..count).map(|_| Err(Error::Unavailable(format!("event log: {e}")))).collect::<Vec<_>>()
            }
        }
        .into_iter();
        refused
            .into_iter()
            .map(|size| match size {
                Some(size) => Err(Error::Rejected(format!(
                    "message of {size} bytes is larger than the event log's limit of {MAX_MESSAGE_BYTES}"
                ))),
                None => appended.next().expect("one result per appended message"),
            })
            .collect()
    }

    async fn append(&self, messages: Vec<Message>) -> rusqlite::Result<Vec<Delivery>> {
        let mut conn = self.writer.lock().await;
        // May wait for another process's write lock, and fsyncs at COMMIT.
        blocking(|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let deliveries = self.insert_records(&tx, messages)?;
            tx.commit()?;
            Ok(deliveries)
        })
    }

    /// Writes `messages` at the ends of their partitions inside `tx`, which
    /// holds the write lock.
    fn insert_records(
        &self,
        tx: &rusqlite::Transaction,
        messages: Vec<Message>,
    ) -> rusqlite::Result<Vec<Delivery>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut end = tx.prepare_cached(
            r#"SELECT COALESCE(MAX("offset") + 1, 0) FROM records WHERE topic = ? AND partition = ?"#,
        )?;
        let mut insert = tx.prepare_cached(
            r#"INSERT INTO records (topic, partition, "offset", key, value, headers, appended_at_ms)
               VALUES (?, ?, ?, ?, ?, ?, ?)"#,
        )?;
        let mut deliveries = Vec::with_capacity(messages.len());
        // Each partition's end is read once per batch (the write lock is
        // held, so nobody else appends meanwhile) and counted on from there.
        let mut ends: Vec<(String, i32, i64)> = Vec::new();
        for message in messages {
            let partition = self.partition_for(message.key.as_deref());
            let offset = match ends.iter_mut().find(|(t, p, _)| *t == message.topic && *p == partition) {
                Some((_, _, next)) => {
                    *next += 1;
                    *next
                }
                None => {
                    let next: i64 = end.query_row(params![message.topic, partition], |r| r.get(0))?;
                    ends.push((message.topic.clone(), partition, next));
                    next
                }
            };
            let headers = encode_headers(&message.headers);
            insert.execute(params![
                message.topic,
                partition,
                offset,
                message.key,
                message.value,
                headers,
                now
            ])?;
            deliveries.push(Delivery { partition, offset });
        }
        Ok(deliveries)
    }

    /// Up to `max` records of one partition from the group's committed position.
    pub async fn fetch(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        max: u32,
    ) -> rusqlite::Result<Vec<Record>> {
        let conn = self.reader.lock().await;
        let mut stmt = conn.prepare_cached(
            r#"SELECT "offset", key, value, headers FROM records
               WHERE topic = ?1 AND partition = ?2 AND "offset" >= COALESCE(
                 (SELECT next_offset FROM group_offsets WHERE group_id = ?3 AND topic = ?1 AND partition = ?2), 0)
               ORDER BY "offset" LIMIT ?4"#,
        )?;
        let rows = stmt.query_map(params![topic, partition, group, i64::from(max)], |row| {
            record_of(topic, partition, row)
        })?;
        rows.collect()
    }

    /// Up to `max` records of one partition at offsets `from..end`, in
    /// order (a re-drive reads a dead-letter topic this way).
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        end: i64,
        max: u32,
    ) -> rusqlite::Result<Vec<Record>> {
        let conn = self.reader.lock().await;
        let mut stmt = conn.prepare_cached(
            r#"SELECT "offset", key, value, headers FROM records
               WHERE topic = ?1 AND partition = ?2 AND "offset" >= ?3 AND "offset" < ?4
               ORDER BY "offset" LIMIT ?5"#,
        )?;
        let rows = stmt.query_map(params![topic, partition, from, end, i64::from(max)], |row| {
            record_of(topic, partition, row)
        })?;
        rows.collect()
    }

    /// Commits the group's position: the next offset it will read.
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> rusqlite::Result<()> {
        let conn = self.writer.lock().await;
        blocking(|| {
            conn.prepare_cached(
                "INSERT INTO group_offsets (group_id, topic, partition, next_offset) VALUES (?, ?, ?, ?)
                 ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?
            .execute(params![group, topic, partition, next_offset])
        })?;
        Ok(())
    }

    /// Every partition of `topics` for `group`: the log's end and the
    /// group's position (records are never deleted, so the earliest is 0).
    pub async fn positions(&self, group: &str, topics: &[String]) -> rusqlite::Result<Vec<PartitionLag>> {
        let conn = self.reader.lock().await;
        let mut end = conn.prepare_cached(
            r#"SELECT COALESCE(MAX("offset") + 1, 0) FROM records WHERE topic = ?1 AND partition = ?2"#,
        )?;
        let mut position = conn.prepare_cached(
            "SELECT next_offset FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
        )?;
        let mut out = Vec::new();
        for topic in topics {
            for partition in 0..self.partitions as i32 {
                let last: i64 = end.query_row(params![topic, partition], |r| r.get(0))?;
                let committed: Option<i64> =
                    position.query_row(params![group, topic, partition], |r| r.get(0)).optional()?;
                out.push(PartitionLag::new(group, topic, partition, 0, last, committed));
            }
        }
        Ok(out)
    }

    /// When the first record at or after `offset` of each `(topic,
    /// partition, offset)` was appended, in ms since the epoch (`None`: no
    /// record there). One primary-key seek per entry, on the reader.
    pub async fn appended_at_ms(&self, at: &[(String, i32, i64)]) -> rusqlite::Result<Vec<Option<i64>>> {
        let conn = self.reader.lock().await;
        let mut stmt = conn.prepare_cached(
            r#"SELECT appended_at_ms FROM records WHERE topic = ?1 AND partition = ?2 AND "offset" >= ?3
               ORDER BY "offset" LIMIT 1"#,
        )?;
        at.iter()
            .map(|(topic, partition, offset)| {
                stmt.query_row(params![topic, partition, offset], |r| r.get(0)).optional()
            })
            .collect()
    }

    pub async fn ping(&self) -> bool {
        let conn = self.reader.lock().await;
        conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).is_ok()
    }
}

/// A record of `topic`/`partition` from a row of `"offset", key, value, headers`.
fn record_of(topic: &str, partition: i32, row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        topic: topic.to_string(),
        partition,
        offset: row.get(0)?,
        key: row.get(1)?,
        value: row.get(2)?,
        headers: decode_headers(&row.get::<_, Vec<u8>>(3)?),
    })
}

/// Headers as `[u32 name length][name][u32 value length][value]...`.
fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for part in [name.as_bytes(), value.as_slice()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The inverse of [`encode_headers`]; a truncated tail is dropped.
fn decode_headers(mut bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let take = |bytes: &mut &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let part = bytes.get(4..4 + len)?.to_vec();
        *bytes = &bytes[4 + len..];
        Some(part)
    };
    let mut headers = Vec::new();
    while let (Some(name), Some(value)) = (take(&mut bytes), take(&mut bytes)) {
        headers.push((String::from_utf8_lossy(&name).into_owned(), value));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: &str, value: &str) -> Message {
        Message {
            topic: "t".into(),
            key: Some(key.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            headers: vec![("event-id".into(), b"e1".to_vec())],
        }
    }

    #[tokio::test]
    async fn appends_in_order_per_key_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let log = EventLog::open(&path, 4).await.unwrap();
        let results = log.produce(vec![message("p1", "a"), message("p1", "b"), message("p2", "c")]).await;
        let deliveries: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(deliveries[0].partition, deliveries[1].partition, "one key, one partition");
        assert_eq!(deliveries[1].offset, deliveries[0].offset + 1);
        drop(log);

        let log = EventLog::open(&path, 4).await.unwrap();
        let p = deliveries[0].partition;
        let records = log.fetch("g", "t", p, 10).await.unwrap();
        let values: Vec<_> =
            records.iter().filter(|r| r.key.as_deref() == Some(b"p1")).map(|r| r.value.clone()).collect();
        assert_eq!(values, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(records[0].headers, vec![("event-id".to_string(), b"e1".to_vec())]);

        // Committed positions hold per group.
        log.commit("g", "t", p, records[0].offset + 1).await.unwrap();
        assert_eq!(log.fetch("g", "t", p, 10).await.unwrap().len(), records.len() - 1);
        assert_eq!(log.fetch("other", "t", p, 10).await.unwrap().len(), records.len());
    }
}
