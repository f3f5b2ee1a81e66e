//! What the admin console shows besides versions: each shard's health,
//! connections, table sizes and outbox; the kv store and the event backend;
//! where each consumer group stands; settlement totals per day. Read on
//! request (the console polls), from the shards and brokers themselves, so
//! every host answers the same whichever one is asked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::handlers::error;
use super::Admin;
use crate::bindings::sql::{Error as SqlError, Value};
use crate::broker::PartitionLag;
use crate::shards::{PoolUse, Shard};
use crate::triggers::http::{outbox_status, App, OutboxStatus};

/// Rows counted per table at most: a count is a scan, and past this the
/// console says "at least" instead of scanning further.
pub const ROW_COUNT_CAP: i64 = 1_000_000;
/// Days of settlement totals shown, today (UTC) included.
pub const SETTLEMENT_DAYS: u64 = 14;
/// The tables whose sizes the console shows.
const TABLES: [&str; 4] = ["payments", "refunds", "ledger_entries", "outbox"];

/// The whole status answer.
#[derive(Debug, Serialize)]
pub struct Status {
    pub shards: Vec<ShardStatus>,
    pub kv: Health,
    pub events: Health,
    pub consumers: Vec<ConsumerStatus>,
    pub settlement: Vec<SettlementDay>,
    /// Failures reading the settlement tables, per shard: the totals then
    /// leave that shard out, and say so.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settlement_errors: Vec<String>,
}

/// A backend's health.
#[derive(Debug, Serialize)]
pub struct Health {
    pub backend: String,
    pub up: bool,
    pub detail: String,
}

/// One shard.
#[derive(Debug, Serialize)]
pub struct ShardStatus {
    pub name: String,
    pub backend: String,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pool: PoolUse,
    /// Rows per table, each at most [`ROW_COUNT_CAP`].
    pub rows: BTreeMap<&'static str, i64>,
    pub outbox: Option<OutboxStatus>,
}

/// One Kafka trigger's consumer group.
#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    pub group: String,
    pub component: String,
    pub topics: Vec<String>,
    /// Records written and not yet handled, over every partition.
    pub lag: i64,
    pub partitions: Vec<PartitionLag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One day's settlement totals in one currency, over every shard.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SettlementDay {
    pub day: String,
    pub currency: String,
    pub merchants: i64,
    pub captures: i64,
    pub refunds: i64,
    pub gross_captured: i64,
    pub refunded: i64,
    pub fee: i64,
    pub net: i64,
}

/// `GET /admin/v1/status`.
pub async fn handler(State(admin): State<Arc<Admin>>) -> Response {
    match read(&admin.app).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "status_failed", e),
    }
}

/// Reads everything; the parts run concurrently, so one slow backend costs
/// its own time only.
pub async fn read(app: &App) -> Result<Status, String> {
    let shards = futures_util::future::join_all(app.shards.iter().map(|s| shard(s)));
    let kv = async {
        let up = app.kv.ping().await;
        Health {
            backend: app.kv.describe(),
            up,
            detail: if up { "answers".into() } else { "does not answer".into() },
        }
    };
    let events = async {
        let (up, detail) = match app.broker.health().await {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        Health { backend: app.broker.describe(), up, detail }
    };
    let consumers = futures_util::future::join_all(app.kafka_triggers.iter().map(|t| async move {
        let (partitions, error) = match app.broker.positions(&t.group, &t.topics).await {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        ConsumerStatus {
            group: t.group.clone(),
            component: t.component.clone(),
            topics: t.topics.clone(),
            lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            error,
        }
    }));
    let settlement = settlement(app);
    let (shards, kv, events, consumers, (settlement, settlement_errors)) =
        tokio::join!(shards, kv, events, consumers, settlement);
    let settlement = settlement?;
    Ok(Status { shards, kv, events, consumers, settlement, settlement_errors })
}

async fn shard(shard: &Shard) -> ShardStatus {
    let up = shard.ping().await;
    let mut status = ShardStatus {
        name: shard.name.clone(),
        backend: shard.describe(),
        up,
        error: shard.not_ready(),
        pool: shard.pool_use(),
        rows: BTreeMap::new(),
        outbox: None,
    };
    if up {
        match sizes(shard).await {
            Ok((rows, outbox)) => {
                status.rows = rows;
                status.outbox = Some(outbox);
            }
            Err(e) => status.error = Some(format!("{e:?}")),
        }
    }
    status
}

/// Table sizes and the outbox, in one read transaction.
async fn sizes(shard: &Shard) -> Result<(BTreeMap<&'static str, i64>, OutboxStatus), SqlError> {
    let counts: Vec<String> = TABLES
        .iter()
        .map(|t| format!("(SELECT COUNT(*) FROM (SELECT 1 FROM {t} LIMIT {ROW_COUNT_CAP}) AS capped)"))
        .collect();
    let mut tx = shard.begin(false).await?;
    let result = async {
        let sizes = tx.query(&format!("SELECT {}", counts.join(", ")), Vec::new()).await?;
        let outbox = outbox_status(&mut tx).await?;
        Ok::<_, SqlError>((sizes, outbox))
    }
    .await;
    tx.rollback().await;
    let (sizes, outbox) = result?;
    let row = sizes.rows.first().ok_or_else(|| SqlError::Other("no row of counts".into()))?;
    let rows = TABLES.iter().zip(row).map(|(t, v)| (*t, int(v).unwrap_or(-1))).collect();
    Ok((rows, outbox))
}

/// Totals of the last [`SETTLEMENT_DAYS`] days, newest first, summed over
/// every shard that answered; the others are named in the second list.
async fn settlement(app: &App) -> (Result<Vec<SettlementDay>, String>, Vec<String>) {
    let since = first_day(SystemTime::now());
    let reads = futures_util::future::join_all(app.shards.iter().map(|s| {
        let since = since.clone();
        async move { (s.name.clone(), settlement_rows(s, since).await) }
    }))
    .await;
    let mut totals: BTreeMap<(String, String), SettlementDay> = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, read) in reads {
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                errors.push(format!("{name}: {e:?}"));
                continue;
            }
        };
        for row in rows {
            let sum =
                totals.entry((row.day.clone(), row.currency.clone())).or_insert_with(|| SettlementDay {
                    day: row.day.clone(),
                    currency: row.currency.clone(),
                    ..SettlementDay::default()
                });
            if let Err(e) = add(sum, &row) {
                return (Err(e), errors);
            }
        }
    }
    // Newest day first; currencies in order within a day.
    let mut days: Vec<SettlementDay> = totals.into_values().collect();
    days.sort_by(|a, b| b.day.cmp(&a.day).then_with(|| a.currency.cmp(&b.currency)));
    (Ok(days), errors)
}

/// Adds one shard's totals; money never wraps.
fn add(sum: &mut SettlementDay, row: &SettlementDay) -> Result<(), String> {
    let overflow = || format!("settlement totals of {} {} overflow", row.day, row.currency);
    for (total, part) in [
        (&mut sum.merchants, row.merchants),
        (&mut sum.captures, row.captures),
        (&mut sum.refunds, row.refunds),
        (&mut sum.gross_captured, row.gross_captured),
        (&mut sum.refunded, row.refunded),
        (&mut sum.fee, row.fee),
        (&mut sum.net, row.net),
    ] {
        *total = total.checked_add(part).ok_or_else(overflow)?;
    }
    Ok(())
}

async fn settlement_rows(shard: &Shard, since: String) -> Result<Vec<SettlementDay>, SqlError> {
    let mut tx = shard.begin(false).await?;
    let rows = tx
        .query(
            "SELECT day, currency, COUNT(*), SUM(capture_count), SUM(refund_count), \
                    SUM(gross_captured), SUM(refunded), SUM(fee), SUM(net) \
             FROM settlements WHERE day >= ? GROUP BY day, currency",
            vec![Value::Text(since)],
        )
        .await;
    tx.rollback().await;
    rows?
        .rows
        .iter()
        .map(|row| match row.as_slice() {
            [Value::Text(day), Value::Text(currency), numbers @ ..] => {
                let n = |i: usize| {
                    numbers.get(i).and_then(int).ok_or_else(|| {
                        SqlError::Other(format!("settlement sum {i} is not an integer: {row:?}"))
                    })
                };
                Ok(SettlementDay {
                    day: day.clone(),
                    currency: currency.clone(),
                    merchants: n(0)?,
                    captures: n(1)?,
                    refunds: n(2)?,
                    gross_captured: n(3)?,
                    refunded: n(4)?,
                    fee: n(5)?,
                    net: n(6)?,
                })
            }
            other => Err(SqlError::Other(format!("unexpected settlement row {other:?}"))),
        })
        .collect()
}

/// The first day (UTC, `YYYY-MM-DD`) of the window ending today.
fn first_day(now: SystemTime) -> String {
    let start = now - Duration::from_secs(86_400 * (SETTLEMENT_DAYS - 1));
    humantime::format_rfc3339_seconds(start).to_string()[..10].to_string()
}

/// An integer from any dialect's count or sum.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int64(v) => Some(*v),
        Value::Text(t) => t.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_starts_thirteen_days_before_today() {
        let now = humantime::parse_rfc3339("2026-12-02T08:00:00Z").unwrap();
        assert_eq!(first_day(now), "2026-11-19");
    }

    #[test]
    fn totals_refuse_to_wrap() {
        let mut sum = SettlementDay { net: i64::MAX, ..SettlementDay::default() };
        let row =
            SettlementDay { net: 1, day: "2026-12-02".into(), currency: "EUR".into(), ..Default::default() };
        assert!(add(&mut sum, &row).unwrap_err().contains("overflow"));
        let mut sum = SettlementDay::default();
        add(&mut sum, &SettlementDay { fee: 7, net: -3, ..Default::default() }).unwrap();
        add(&mut sum, &SettlementDay { fee: 5, net: 10, ..Default::default() }).unwrap();
        assert_eq!((sum.fee, sum.net), (12, 7));
    }
}
