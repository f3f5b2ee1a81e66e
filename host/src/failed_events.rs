//! Events a Kafka trigger gave up on, listed and re-driven: the records of
//! its dead-letter topics (`<topic>.dlq`) and the rows of `failed_events`
//! (where a record goes when its dead-letter topic cannot take it;
//! triggers/kafka.rs). The admin API (`/admin/v1/events/...`), its console
//! and `payfn events` use this module.
//!
//! **Re-drive** produces each one back to the topic it came from, as it
//! was (key, value, headers), without the trigger's `dlq-*` headers and
//! with a `redriven-from` header naming where it was kept. Every consumer
//! group of that topic receives it again; each applies it at most once,
//! because its `processed_events` already holds the event id of what it
//! applied (a group that had handled it skips it as a duplicate). So a
//! re-drive never double-counts, and re-driving twice is harmless.
//!
//! Which are pending: the records of a dead-letter topic past the position
//! of the group [`REDRIVE_GROUP`] (re-driving *all* moves that position past
//! what it produced), and every row of `failed_events` (a row is deleted
//! once its record is acknowledged on its topic). Re-driving *by event id*
//! searches each dead-letter topic from its start and moves no position.
//!
//! A re-driven event reaches its topic after the events its payment had
//! meanwhile: consumers key on the event id and read each event's own data
//! (DESIGN.md, events), so the order does not change their effect.
//!
//! Invariant: nothing is dropped. A position moves only past records whose
//! re-drive was acknowledged, a row is deleted only after its record was;
//! the first refusal or outage stops the re-drive and is reported.
//!
//! Invariant: no row of a merchant being moved is deleted (`moving_merchants`,
//! the move's fence; docs/ARCHITECTURE.md "Merchant moves"). Its rows are
//! being copied to another shard, whose copy must match the source's counts;
//! such rows are left and reported as held, for a re-drive after the move.
//! A row fenced between its read and its delete has been produced once
//! already and is produced again by that later re-drive: consumers skip
//! the duplicate by event id.

use std::collections::BTreeSet;

use anyhow::Context;
use serde::Serialize;

use crate::bindings::kafka::{Error as ProduceError, Message};
use crate::bindings::sql::{Error as SqlError, Value};
use crate::broker::{Broker, Record};
use crate::manifest::KafkaTrigger;
use crate::shards::{Shard, ShardSet};
use crate::triggers::kafka::dead_letter_topic;

/// The consumer group whose position on a dead-letter topic marks what has
/// been re-driven.
pub const REDRIVE_GROUP: &str = "payfn-redrive";
/// Records read, or rows produced, per round trip.
const PAGE: usize = 500;
/// Headers the trigger adds when it dead-letters a record; a re-drive drops them.
const DEAD_LETTER_HEADERS: [&str; 3] = ["dlq-error", "dlq-source", "dlq-consumer"];

/// One event a trigger gave up on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailedEvent {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub merchant_id: Option<i64>,
    /// The consumer group that failed on it.
    pub consumer: Option<String>,
    /// Where it was consumed from: `topic/partition/offset`.
    pub source: Option<String>,
    /// Why the trigger gave up on it.
    pub error: Option<String>,
    /// Where it is kept now.
    pub kept_in: Kept,
}

/// Where a failed event is kept.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kept {
    /// A record of a dead-letter topic.
    DeadLetterTopic { topic: String, partition: i32, offset: i64 },
    /// A row of a shard's `failed_events` table (the dead-letter topic did
    /// not take it: `why`).
    FailedEvents { shard: String, id: i64, failed_at: String, why: String },
}

/// Which failed events to re-drive.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every pending one.
    All,
    /// Those with these event ids, wherever they are kept.
    EventIds(BTreeSet<String>),
}

impl Selection {
    fn wants(&self, event_id: Option<&str>) -> bool {
        match self {
            Selection::All => true,
            Selection::EventIds(ids) => event_id.is_some_and(|id| ids.contains(id)),
        }
    }
}

/// What a re-drive did.
#[derive(Debug, Default, Serialize)]
pub struct Redriven {
    /// Records produced back from dead-letter topics.
    pub from_dead_letter_topics: u64,
    /// Rows produced back from `failed_events` (and deleted).
    pub from_failed_events: u64,
    /// Named event ids found nowhere.
    pub not_found: Vec<String>,
    /// Records of a dead-letter topic without a `dlq-source` header (not
    /// dead-lettered by payfn), left where they are: `topic/partition/offset`.
    pub skipped: Vec<String>,
    /// Why the re-drive stopped before the end, if it did; what was
    /// re-driven before that stays re-driven.
    pub stopped: Option<String>,
    /// `failed_events` rows of merchants being moved, left where they are
    /// (`shard:failed_events#id`): re-drive them once the move has ended.
    pub held_for_moves: Vec<String>,
}

/// The failed events of an application: its Kafka triggers' dead-letter
/// topics, and its shards' `failed_events`.
pub struct FailedEvents<'a> {
    broker: &'a Broker,
    shards: &'a ShardSet,
    dead_letter_topics: Vec<String>,
}

impl<'a> FailedEvents<'a> {
    pub fn new(broker: &'a Broker, shards: &'a ShardSet, triggers: &[KafkaTrigger]) -> Self {
        let topics: BTreeSet<String> = triggers
            .iter()
            .flat_map(|t| t.topics.iter().map(move |topic| dead_letter_topic(t, topic)))
            .collect();
        Self { broker, shards, dead_letter_topics: topics.into_iter().collect() }
    }

    /// Up to `limit` pending failed events: dead-letter topic records in
    /// order, then `failed_events` rows, oldest first, shard by shard. The
    /// flag says whether more are pending.
    pub async fn list(&self, limit: usize) -> anyhow::Result<(Vec<FailedEvent>, bool)> {
        let mut out = Vec::new();
        for topic in &self.dead_letter_topics {
            for (partition, from, end) in self.pending(topic, false).await? {
                let want = (limit + 1).saturating_sub(out.len());
                if want == 0 {
                    break;
                }
                let (records, _) = self.broker.read(topic, partition, from, end, want).await?;
                out.extend(records.iter().map(from_record));
            }
        }
        for shard in self.shards.iter() {
            let want = (limit + 1).saturating_sub(out.len());
            if want == 0 {
                break;
            }
            let rows = stored_after(shard, &Selection::All, 0, want)
                .await
                .map_err(|e| anyhow::anyhow!(shard_error(shard, e)))?;
            out.extend(rows.into_iter().map(|row| row.event));
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    /// Re-drives the `selection`: dead-letter topics first, then
    /// `failed_events`, shard by shard; stops at the first refusal or outage.
    pub async fn redrive(&self, selection: &Selection) -> anyhow::Result<Redriven> {
        let mut done = Redriven::default();
        let mut found: BTreeSet<String> = BTreeSet::new();
        for topic in &self.dead_letter_topics {
            if let Err(stop) = self.redrive_topic(topic, selection, &mut done, &mut found).await {
                done.stopped = Some(stop);
                return Ok(done);
            }
        }
        for shard in self.shards.iter() {
            if let Err(stop) = self.redrive_table(shard, selection, &mut done, &mut found).await {
                done.stopped = Some(stop);
                return Ok(done);
            }
        }
        if let Selection::EventIds(ids) = selection {
            done.not_found = ids.difference(&found).cloned().collect();
        }
        Ok(done)
    }

    /// The stretches of `topic` to look at: `(partition, from, end)`, from
    /// [`REDRIVE_GROUP`]'s position, or (`from_start`) from the beginning.
    async fn pending(&self, topic: &str, from_start: bool) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let positions = self
            .broker
            .positions(REDRIVE_GROUP, &[topic.to_string()])
            .await
            .with_context(|| format!("reading the positions of `{topic}`"))?;
        Ok(positions
            .into_iter()
            .map(|p| {
                let from = if from_start { 0 } else { p.committed.unwrap_or(0) };
                (p.partition, from, p.end)
            })
            .filter(|(_, from, end)| from < end)
            .collect())
    }

    /// Re-drives what `selection` names of one dead-letter topic, page by
    /// page; for [`Selection::All`], moves [`REDRIVE_GROUP`] past each
    /// page once every record of it is acknowledged. `Err`: why it stopped.
    async fn redrive_topic(
        &self,
        topic: &str,
        selection: &Selection,
        done: &mut Redriven,
        found: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let all = matches!(selection, Selection::All);
        let stretches = self.pending(topic, !all).await.map_err(|e| format!("{e:#}"))?;
        for (partition, mut from, end) in stretches {
            while from < end {
                let (records, next) = self
                    .broker
                    .read(topic, partition, from, end, PAGE)
                    .await
                    .map_err(|e| format!("reading {topic}/{partition}: {e:#}"))?;
                let chosen: Vec<&Record> =
                    records.iter().filter(|r| selection.wants(header_text(r, "event-id"))).collect();
                let mut messages = Vec::with_capacity(chosen.len());
                for record in &chosen {
                    match back_to_source(record) {
                        Some(message) => messages.push(message),
                        // Not one payfn dead-lettered: nowhere to send it back.
                        None => done.skipped.push(format!("{topic}/{partition}/{}", record.offset)),
                    }
                }
                let produced = messages.len() as u64;
                produce_all(self.broker, messages).await?;
                done.from_dead_letter_topics += produced;
                found.extend(chosen.iter().filter_map(|r| header_text(r, "event-id").map(String::from)));
                if all {
                    self.broker
                        .commit_positions(REDRIVE_GROUP, vec![(topic.to_string(), partition, next)])
                        .await
                        .map_err(|e| format!("moving the re-drive position of {topic}/{partition}: {e:#}"))?;
                }
                from = next;
            }
        }
        Ok(())
    }

    /// Re-drives what `selection` names of `shard`'s `failed_events`, page
    /// by page, deleting each page's rows once their records are acknowledged.
    async fn redrive_table(
        &self,
        shard: &Shard,
        selection: &Selection,
        done: &mut Redriven,
        found: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let mut after = 0;
        loop {
            let rows =
                stored_after(shard, selection, after, PAGE).await.map_err(|e| shard_error(shard, e))?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = last.id;
            let (held, rows): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.moving);
            done.held_for_moves.extend(held.iter().map(|r| format!("{}:failed_events#{}", shard.name, r.id)));
            found.extend(held.into_iter().filter_map(|r| r.event.event_id));
            if rows.is_empty() {
                continue;
            }
            let messages = rows.iter().map(|r| r.message.clone()).collect();
            produce_all(self.broker, messages).await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let deleted = delete(shard, &ids).await.map_err(|e| shard_error(shard, e))?;
            if deleted < ids.len() as u64 {
                // Fenced since the read: produced now, and again after the move.
                tracing::info!(
                    shard = %shard.name, kept = ids.len() as u64 - deleted,
                    "failed events re-driven but kept: their merchant's move began meanwhile"
                );
            }
            done.from_failed_events += rows.len() as u64;
            found.extend(rows.into_iter().filter_map(|r| r.event.event_id));
        }
    }
}

/// Produces `messages`; `Err` names the first that was not acknowledged.
async fn produce_all(broker: &Broker, messages: Vec<Message>) -> Result<(), String> {
    if messages.is_empty() {
        return Ok(());
    }
    let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
    let results = broker.produce(messages).await;
    for (topic, result) in topics.iter().zip(&results) {
        match result {
            Ok(_) => {}
            Err(ProduceError::Unavailable(e)) => {
                return Err(format!("`{topic}` is unavailable ({e}); run the re-drive again once it is back"))
            }
            Err(refused) => return Err(format!("`{topic}` refused a re-driven event: {refused:?}")),
        }
    }
    if results.len() != topics.len() {
        return Err("the broker returned fewer results than messages".into());
    }
    Ok(())
}

/// A dead-lettered record as it was on its source topic, marked re-driven;
/// `None` without a `dlq-source` header.
fn back_to_source(record: &Record) -> Option<Message> {
    let source = header_text(record, "dlq-source")?;
    let topic = source_topic(source)?;
    let mut headers: Vec<(String, Vec<u8>)> =
        record.headers.iter().filter(|(k, _)| !DEAD_LETTER_HEADERS.contains(&k.as_str())).cloned().collect();
    headers.push((
        "redriven-from".into(),
        format!("{}/{}/{}", record.topic, record.partition, record.offset).into_bytes(),
    ));
    Some(Message { topic: topic.to_string(), key: record.key.clone(), value: record.value.clone(), headers })
}

/// The topic of a `topic/partition/offset` position.
fn source_topic(position: &str) -> Option<&str> {
    let mut parts = position.rsplitn(3, '/');
    let (_offset, _partition, topic) = (parts.next()?, parts.next()?, parts.next()?);
    (!topic.is_empty()).then_some(topic)
}

fn header_text<'r>(record: &'r Record, name: &str) -> Option<&'r str> {
    record.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn from_record(record: &Record) -> FailedEvent {
    let text = |name| header_text(record, name).map(String::from);
    FailedEvent {
        event_id: text("event-id"),
        event_type: text("event-type"),
        merchant_id: header_text(record, "merchant-id").and_then(|m| m.parse().ok()),
        consumer: text("dlq-consumer"),
        source: text("dlq-source"),
        error: text("dlq-error"),
        kept_in: Kept::DeadLetterTopic {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        },
    }
}

/// A `failed_events` row: what to list, and the message to re-drive.
struct StoredEvent {
    id: i64,
    event: FailedEvent,
    message: Message,
    /// Its merchant is being moved (fenced): the row must stay.
    moving: bool,
}

const STORED_COLUMNS: &str = "id, consumer, source_topic, source_partition, source_offset, event_id, \
     merchant_id, record_key, record_value, headers, error, dead_letter_error, failed_at, \
     CASE WHEN EXISTS (SELECT 1 FROM moving_merchants m WHERE m.merchant_id = failed_events.merchant_id) \
     THEN 1 ELSE 0 END";

/// Up to `limit` rows of `failed_events` after id `after` that `selection`
/// names, by id.
async fn stored_after(
    shard: &Shard,
    selection: &Selection,
    after: i64,
    limit: usize,
) -> Result<Vec<StoredEvent>, SqlError> {
    let mut sql = format!("SELECT {STORED_COLUMNS} FROM failed_events WHERE id > ?");
    let mut params = vec![Value::Int64(after)];
    if let Selection::EventIds(ids) = selection {
        sql.push_str(" AND event_id IN (");
        sql.push_str(&vec!["?"; ids.len()].join(", "));
        sql.push(')');
        params.extend(ids.iter().map(|id| Value::Text(id.clone())));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    params.push(Value::Int64(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut tx = shard.begin(false).await?;
    let rows = tx.query(&sql, params).await;
    tx.rollback().await;
    rows?.rows.into_iter().map(|row| stored_event(shard, row)).collect()
}

fn stored_event(shard: &Shard, row: Vec<Value>) -> Result<StoredEvent, SqlError> {
    let [id, consumer, topic, partition, offset, event_id, merchant, key, value, headers, error, why, at, moving] =
        <[Value; 14]>::try_from(row).map_err(|r| SqlError::Other(format!("unexpected row {r:?}")))?;
    let id = int(&id)?;
    let topic = text(&topic).unwrap_or_default();
    let headers = headers_from_json(&text(&headers).unwrap_or_default());
    let event_type =
        headers.iter().find(|(k, _)| k == "event-type").and_then(|(_, v)| String::from_utf8(v.clone()).ok());
    let source = format!("{topic}/{}/{}", int(&partition)?, int(&offset)?);
    let mut message = Message { topic, key: bytes(key), value: bytes(value).unwrap_or_default(), headers };
    message.headers.push(("redriven-from".into(), format!("failed_events/{}/{id}", shard.name).into_bytes()));
    Ok(StoredEvent {
        id,
        event: FailedEvent {
            event_id: text(&event_id),
            event_type,
            merchant_id: int(&merchant).ok(),
            consumer: text(&consumer),
            source: Some(source),
            error: text(&error),
            kept_in: Kept::FailedEvents {
                shard: shard.name.clone(),
                id,
                failed_at: text(&at).unwrap_or_default(),
                why: text(&why).unwrap_or_default(),
            },
        },
        message,
        moving: int(&moving)? != 0,
    })
}

/// Deletes the rows `ids` but those of a merchant being moved; returns
/// how many it deleted.
async fn delete(shard: &Shard, ids: &[i64]) -> Result<u64, SqlError> {
    let sql = format!(
        "DELETE FROM failed_events WHERE id IN ({}) AND NOT EXISTS \
         (SELECT 1 FROM moving_merchants m WHERE m.merchant_id = failed_events.merchant_id)",
        vec!["?"; ids.len()].join(", ")
    );
    let mut tx = shard.begin(true).await?;
    match tx.execute(&sql, ids.iter().map(|id| Value::Int64(*id)).collect()).await {
        Ok(deleted) => tx.commit().await.map(|()| deleted),
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}

/// Headers as `failed_events.headers` keeps them: a JSON array, in order,
/// of `{"name": …, "value": …}`, or `{"name": …, "base64": …}` for a value
/// that is not UTF-8, so every byte survives a re-drive.
pub fn headers_to_json(headers: &[(String, Vec<u8>)]) -> String {
    use base64::Engine as _;
    let list: Vec<serde_json::Value> = headers
        .iter()
        .map(|(name, value)| match std::str::from_utf8(value) {
            Ok(text) => serde_json::json!({ "name": name, "value": text }),
            Err(_) => serde_json::json!({
                "name": name,
                "base64": base64::engine::general_purpose::STANDARD.encode(value),
            }),
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Headers from `failed_events.headers` ([`headers_to_json`]).
fn headers_from_json(json: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    let list: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    list.iter()
        .filter_map(|h| {
            let name = h["name"].as_str()?.to_string();
            let value = match (h["value"].as_str(), h["base64"].as_str()) {
                (Some(text), _) => text.as_bytes().to_vec(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok()?,
                (None, None) => return None,
            };
            Some((name, value))
        })
        .collect()
}

fn shard_error(shard: &Shard, e: SqlError) -> String {
    format!("shard {}: {e:?}", shard.name)
}

fn int(value: &Value) -> Result<i64, SqlError> {
    match value {
        Value::Int64(v) => Ok(*v),
        Value::Text(t) => t.parse().map_err(|_| SqlError::Other(format!("not an integer: {t:?}"))),
        other => Err(SqlError::Other(format!("not an integer: {other:?}"))),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t.clone()),
        Value::Blob(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Blob(b) => Some(b),
        Value::Text(t) => Some(t.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_lettered_record_goes_back_to_its_source_without_the_dead_letter_headers() {
        let record = Record {
            topic: "payments.dlq".into(),
            partition: 1,
            offset: 7,
            key: Some(b"pay_1".to_vec()),
            value: b"{}".to_vec(),
            headers: vec![
                ("event-id".into(), b"evt_1".to_vec()),
                ("dlq-error".into(), b"boom".to_vec()),
                ("dlq-source".into(), b"pay.ments/v2/3/41".to_vec()),
                ("dlq-consumer".into(), b"settlement".to_vec()),
            ],
        };
        let message = back_to_source(&record).expect("has a source");
        assert_eq!(message.topic, "pay.ments/v2");
        assert_eq!(message.key.as_deref(), Some(&b"pay_1"[..]));
        assert_eq!(
            message.headers,
            vec![
                ("event-id".to_string(), b"evt_1".to_vec()),
                ("redriven-from".to_string(), b"payments.dlq/1/7".to_vec())
            ]
        );
        let mut foreign = record.clone();
        foreign.headers.retain(|(k, _)| k != "dlq-source");
        assert!(back_to_source(&foreign).is_none());
        assert_eq!(source_topic("/1/2"), None);
        assert_eq!(source_topic("1/2"), None);
    }

    #[test]
    fn stored_headers_survive_the_round_trip_through_json() {
        let headers = vec![("event-id".to_string(), b"evt_1".to_vec()), ("bin".to_string(), vec![0, 255])];
        let json = headers_to_json(&headers);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!([{"name": "event-id", "value": "evt_1"}, {"name": "bin", "base64": "AP8="}])
        );
        assert_eq!(headers_from_json(&json), headers);
        let odd = r#"[{"name":"event-id","value":"evt_1"},{"bad":1},{"name":"x","base64":"!"}]"#;
        assert_eq!(headers_from_json(odd), vec![("event-id".to_string(), b"evt_1".to_vec())]);
        assert!(headers_from_json("not json").is_empty());
    }
}
