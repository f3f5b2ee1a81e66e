//! The outbox relay: run by a timer trigger once per shard, inside a write
//! transaction on that shard.
//!
//! Each firing claims, per aggregate, the oldest unpublished row (so one
//! payment's events go out in commit order, also with several relays:
//! `FOR UPDATE SKIP LOCKED` where the dialect has it, and a later row never
//! overtakes a locked or failed earlier one). It produces them as one batch
//! and, per message, marks the row published or records the failure with an
//! exponential backoff; past the retry budget the row is dead-lettered:
//! kept, flagged, no longer tried, and no longer holding its successors.
//!
//! Configuration (component environment): `TOPIC` (default `payments`),
//! `RETRY_BUDGET` (attempts before dead-lettering, default 10),
//! `BACKOFF_BASE_MS` (default 1000; doubles per attempt, capped at 5 min).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payfn_sdk::bindings::exports::payfn::host::timer_handler::Tick;
use payfn_sdk::kafka::{self, Message};
use payfn_sdk::sql;
use payfn_sdk::ApiError;

payfn_sdk::timer_step!(on_tick);

const BACKOFF_CAP: Duration = Duration::from_secs(300);

fn on_tick(tick: Tick) -> Result<String, String> {
    relay(&tick).map_err(|e| format!("{}: {}", e.code, e.message))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn relay(tick: &Tick) -> Result<String, ApiError> {
    let topic = std::env::var("TOPIC").unwrap_or_else(|_| "payments".to_string());
    let budget: i64 = env_or("RETRY_BUDGET", 10);
    let backoff_base: u64 = env_or("BACKOFF_BASE_MS", 1000);
    let now = SystemTime::now();
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let now_text = humantime::format_rfc3339_millis(now).to_string();

    let skip_locked = sql::skip_locked_suffix();
    let rows = sql::query(
        &format!(
            "SELECT o.id, o.event_id, o.aggregate_id, o.merchant_id, o.event_type, o.payload, o.traceparent, o.retry_count \
             FROM outbox o \
             WHERE o.published = 0 AND o.dead_lettered = 0 AND o.next_attempt_at_ms <= ? \
               AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.aggregate_id = o.aggregate_id \
                               AND e.published = 0 AND e.dead_lettered = 0 AND e.id < o.id) \
             ORDER BY o.id LIMIT ?{skip_locked}"
        ),
        &[now_ms.into(), i64::from(tick.batch_size).into()],
    )?;
    if rows.is_empty() {
        return Ok(String::new());
    }

    let mut messages = Vec::with_capacity(rows.len());
    for row in rows.iter() {
        let mut headers = vec![
            ("event-id".to_string(), row.text("event_id")?.into_bytes()),
            ("event-type".to_string(), row.text("event_type")?.into_bytes()),
            ("merchant-id".to_string(), row.i64("merchant_id")?.to_string().into_bytes()),
        ];
        if let Some(trace) = row.opt_text("traceparent")? {
            headers.push(("traceparent".to_string(), trace.into_bytes()));
        }
        messages.push(Message {
            topic: topic.clone(),
            key: Some(row.text("aggregate_id")?.into_bytes()),
            value: row.text("payload")?.into_bytes(),
            headers,
        });
    }

    let results = kafka::produce(&messages);
    let (mut published, mut failed, mut dead) = (Vec::new(), 0, 0);
    for (row, result) in rows.iter().zip(results) {
        let id = row.i64("id")?;
        match result {
            Ok(_) => published.push(id),
            Err(error) => {
                let attempts = row.i64("retry_count")? + 1;
                let give_up = attempts >= budget;
                let exponent = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
                let delay =
                    Duration::from_millis(backoff_base.saturating_mul(1 << exponent)).min(BACKOFF_CAP);
                sql::execute(
                    "UPDATE outbox SET retry_count = ?, last_retry_at = ?, next_attempt_at_ms = ?, \
                     last_error = ?, dead_lettered = ? WHERE id = ?",
                    &[
                        attempts.into(),
                        now_text.as_str().into(),
                        (now_ms + delay.as_millis() as i64).into(),
                        format!("{error:?}").into(),
                        // Flags are integer columns on every dialect.
                        i64::from(give_up).into(),
                        id.into(),
                    ],
                )?;
                if give_up {
                    dead += 1;
                } else {
                    failed += 1;
                }
            }
        }
    }
    mark_published(&published, &now_text)?;
    let published = published.len();
    Ok(format!("shard {}: published {published}, will retry {failed}, dead-lettered {dead}", tick.shard))
}

/// Rows per UPDATE: well under every dialect's limit on parameters.
const MARK_CHUNK: usize = 500;

/// Marks the acknowledged rows published: one statement per chunk instead
/// of one per row, the relay's main cost on the shard.
fn mark_published(ids: &[i64], now: &str) -> Result<(), ApiError> {
    for chunk in ids.chunks(MARK_CHUNK) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let mut params = Vec::with_capacity(chunk.len() + 1);
        params.push(now.into());
        params.extend(chunk.iter().map(|&id| id.into()));
        let changed = sql::execute(
            &format!("UPDATE outbox SET published = 1, published_at = ? WHERE id IN ({placeholders})"),
            &params,
        )?;
        // The rows are locked by this transaction (FOR UPDATE, or the
        // SQLite writer), so each one is still there to mark.
        assert_eq!(changed, chunk.len() as u64, "marked a different number of outbox rows than claimed");
    }
    Ok(())
}
