//! Liveness, readiness and the Prometheus endpoint.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::App;
use crate::bindings::sql::{Error as SqlError, Value};
use crate::shards::{Shard, ShardTx};

/// The process is up and serving.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Whether this host should get traffic, and what is wrong if anything.
///
/// 200 `ready`: every shard, the kv store and the event backend answer.
/// 200 `degraded`: some of them do not, but the host still serves the
/// merchants of the shards that do; a load balancer must keep it, because
/// every other host sees the same outage (`shard_errors` names the reason).
/// 503 `unavailable`: no shard answers, so the host can serve nobody.
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut shards = serde_json::Map::new();
    let mut shard_errors = serde_json::Map::new();
    let (mut up_count, mut all_up) = (0, true);
    for shard in app.shards.iter() {
        let up = shard.ping().await;
        up_count += usize::from(up);
        all_up &= up;
        shards.insert(shard.name.clone(), json!(if up { "up" } else { "down" }));
        if let Some(why) = shard.not_ready().filter(|_| !up) {
            shard_errors.insert(shard.name.clone(), json!(why));
        }
    }
    let kv = app.kv.ping().await;
    let events = app.broker.ping().await;
    let (code, status) = match (up_count, all_up && kv && events) {
        (0, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (_, true) => (StatusCode::OK, "ready"),
        (_, false) => (StatusCode::OK, "degraded"),
    };
    let mut body = json!({"status": status, "shards": shards, "kv": if kv { "up" } else { "down" }, "events": if events { "up" } else { "down" }});
    if !shard_errors.is_empty() {
        body["shard_errors"] = serde_json::Value::Object(shard_errors);
    }
    (code, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    // Outbox state is read at scrape time: it lives in the shards, and
    // several hosts share them.
    let now = std::time::SystemTime::now();
    for shard in app.shards.iter() {
        if let Some((commits, members)) = shard.group_commits() {
            app.metrics.group_commits(&shard.name, commits, members);
        }
        match outbox_counts(shard).await {
            Ok(outbox) => {
                app.metrics.outbox(&shard.name, outbox.pending, outbox.dead_lettered);
                match oldest_pending_age(&outbox, now) {
                    Ok(age) => app.metrics.outbox_oldest_age(&shard.name, age),
                    Err(e) => {
                        tracing::warn!(shard = %shard.name, error = %e, "cannot read the outbox's oldest row")
                    }
                }
            }
            Err(e) => tracing::warn!(shard = %shard.name, error = ?e, "cannot read outbox counts"),
        }
    }
    // So is consumer lag: the log's end and the group's commits live in the
    // broker; and its age, the time the first record not committed past was
    // written (Broker::first_unhandled_at says what that costs).
    let now_ms = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    for trigger in &app.kafka_triggers {
        match app.broker.positions(&trigger.group, &trigger.topics).await {
            Ok(partitions) => {
                for p in &partitions {
                    app.metrics.consumer_lag(&p.group, &p.topic, p.partition, p.lag);
                }
                let written = match app.broker.first_unhandled_at(&partitions).await {
                    Ok(written) => written,
                    Err(e) => {
                        tracing::warn!(group = %trigger.group, error = %format!("{e:#}"), "cannot read consumer lag in time");
                        vec![None; partitions.len()]
                    }
                };
                for (p, written) in partitions.iter().zip(written) {
                    // A lagging partition whose record time is unknown (not
                    // fetched in time) keeps its last value.
                    if let Some(age) = lag_seconds(p.lag, written, now_ms) {
                        app.metrics.consumer_lag_seconds(&p.group, &p.topic, p.partition, age);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(group = %trigger.group, error = %format!("{e:#}"), "cannot read consumer lag")
            }
        }
    }
    app.metrics.loaded_versions(crate::engine::loaded_versions());
    let sync = app.versions.sync_status();
    app.metrics.control_sync(sync.generations_behind, sync.seconds_since_sync);
    let mut response = app.metrics.encode().into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// A shard's outbox: what `/metrics` and the admin console report.
#[derive(Debug, serde::Serialize)]
pub struct OutboxStatus {
    /// Not published yet, and still being tried.
    pub pending: i64,
    /// Given up on after the retry budget; waiting for a re-drive.
    pub dead_lettered: i64,
    /// `created_at` of the oldest pending row.
    pub oldest_pending: Option<String>,
}

/// Reads the outbox inside `tx` (a read transaction on its shard). Rows
/// the shard holds for a merchant being moved are not this shard's to
/// publish (the other side publishes them: docs/ARCHITECTURE.md "Merchant
/// moves"), so they count neither as pending nor towards the lag.
pub async fn outbox_status(tx: &mut ShardTx) -> Result<OutboxStatus, SqlError> {
    let rows = tx
        .query(
            "SELECT COALESCE(SUM(CASE WHEN dead_lettered = 0 THEN 1 ELSE 0 END), 0), \
                    COALESCE(SUM(CASE WHEN dead_lettered = 1 THEN 1 ELSE 0 END), 0), \
                    MIN(CASE WHEN dead_lettered = 0 THEN created_at END) \
             FROM outbox WHERE published = 0 \
             AND NOT EXISTS (SELECT 1 FROM moving_merchants m \
                             WHERE m.merchant_id = outbox.merchant_id AND m.hold_events = 1)",
            Vec::new(),
        )
        .await?;
    match rows.rows.first().map(Vec::as_slice) {
        Some([Value::Int64(pending), Value::Int64(dead), oldest]) => Ok(OutboxStatus {
            pending: *pending,
            dead_lettered: *dead,
            oldest_pending: match oldest {
                Value::Text(t) => Some(t.clone()),
                _ => None,
            },
        }),
        other => Err(SqlError::Other(format!("unexpected outbox counts {other:?}"))),
    }
}

/// Seconds since the oldest pending row was written (0: none pending), at `now`.
fn oldest_pending_age(outbox: &OutboxStatus, now: std::time::SystemTime) -> Result<f64, String> {
    match &outbox.oldest_pending {
        None => Ok(0.0),
        Some(created_at) => {
            let at = humantime::parse_rfc3339_weak(created_at)
                .map_err(|e| format!("created_at `{created_at}`: {e}"))?;
            Ok(now.duration_since(at).unwrap_or_default().as_secs_f64())
        }
    }
}

/// The age in seconds of the first record a group has not committed past,
/// written at `written_ms`: 0 without lag, `None` when lagging and unknown.
fn lag_seconds(lag: i64, written_ms: Option<i64>, now_ms: i64) -> Option<f64> {
    match (lag, written_ms) {
        (lag, _) if lag <= 0 => Some(0.0),
        (_, Some(at)) => Some((now_ms - at).max(0) as f64 / 1000.0),
        (_, None) => None,
    }
}

async fn outbox_counts(shard: &Shard) -> Result<OutboxStatus, SqlError> {
    let mut tx = shard.begin(false).await?;
    let status = outbox_status(&mut tx).await;
    tx.rollback().await;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_oldest_pending_row_ages_from_its_created_at() {
        let status = |oldest: Option<&str>| OutboxStatus {
            pending: i64::from(oldest.is_some()),
            dead_lettered: 0,
            oldest_pending: oldest.map(str::to_string),
        };
        let now = UNIX_EPOCH + Duration::from_millis(1_764_000_002_500);
        let created = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_764_000_000_250));
        assert_eq!(oldest_pending_age(&status(Some(&created.to_string())), now), Ok(2.25));
        assert_eq!(oldest_pending_age(&status(None), now), Ok(0.0));
        // A row stamped after `now` (another host's clock) is not negative.
        let later = humantime::format_rfc3339_millis(now + Duration::from_secs(1)).to_string();
        assert_eq!(oldest_pending_age(&status(Some(&later)), now), Ok(0.0));
        assert!(oldest_pending_age(&status(Some("yesterday")), now).is_err());
    }

    #[test]
    fn consumer_lag_in_time_is_zero_when_caught_up_and_unknown_when_unread() {
        assert_eq!(lag_seconds(0, None, 10_000), Some(0.0));
        assert_eq!(lag_seconds(0, Some(1_000), 10_000), Some(0.0));
        assert_eq!(lag_seconds(3, Some(7_500), 10_000), Some(2.5));
        assert_eq!(lag_seconds(3, Some(12_000), 10_000), Some(0.0));
        assert_eq!(lag_seconds(3, None, 10_000), None);
    }
}
