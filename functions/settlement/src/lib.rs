//! Settlement, run by the Kafka trigger on the payments topic: folds
//! `payment.captured` and `payment.refunded` into per merchant, day and
//! currency totals, and emits `settlement.updated`. Other events are
//! acknowledged and ignored.
//!
//! The trigger guarantees each event's effect once (processed-events row in
//! the same transaction), so this component simply adds. It takes the
//! trigger's runs of events whole: a run's changes to one settlement row are
//! summed and written with one statement, and the run's rows are locked with
//! one `SELECT` and written with one more, so a busy merchant's events cost
//! a few round trips per run instead of three each (docs/BENCHMARKS.md).
//! Each changed row emits one `settlement.updated` with its newest state,
//! as the relay's coalescing would have published anyway
//! (docs/API-NOTES.md, "Events").
//!
//! Configuration: `fee_bps`, the fee in basis points of captured volume
//! (default 250 = 2.5 %).

use payfn_sdk::bindings::exports::payfn::host::event_handler::{Event, Refusal};
use payfn_sdk::outbox::{self, Event as OutboxEvent};
use payfn_sdk::sql::Batch;
use payfn_sdk::{variables, ApiError};
use payments::clock;
use payments::settlement::{self, Change, Key, Settlement};
use serde_json::{json, Value};

payfn_sdk::event_batch_step!(on_events);

/// One settling event of a run, read.
struct Settling {
    key: Key,
    change: Change,
    kind: String,
    event_id: Value,
    payment_id: Value,
    traceparent: Option<String>,
}

fn on_events(events: Vec<Event>) -> Result<(), Refusal> {
    // Every event is read before anything is written, so a malformed one is
    // refused by its index and the host retries the others without it.
    let mut rows: Vec<(Key, Vec<Settling>)> = Vec::new();
    for (at, event) in events.iter().enumerate() {
        let refused =
            |e: ApiError| Refusal { event: Some(at as u32), message: format!("{}: {}", e.code, e.message) };
        let Some(settling) = read(event).map_err(refused)? else { continue };
        match rows.iter_mut().find(|(key, _)| *key == settling.key) {
            Some((_, changes)) => changes.push(settling),
            None => rows.push((settling.key.clone(), vec![settling])),
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    settle(&rows).map_err(|e| Refusal { event: None, message: format!("{}: {}", e.code, e.message) })
}

/// The change `event` makes to a settlement, if it is a capture or a refund.
fn read(event: &Event) -> Result<Option<Settling>, ApiError> {
    let payload: Value = serde_json::from_slice(&event.value)
        .map_err(|e| ApiError::invalid_json(format!("event value is not JSON: {e}")))?;
    let kind = payload["type"].as_str().unwrap_or_default();
    if !matches!(kind, "payment.captured" | "payment.refunded") {
        return Ok(None);
    }
    let field = |name: &str| ApiError::missing_field(name);
    let merchant_id = payload["merchantId"].as_i64().ok_or_else(|| field("merchantId"))?;
    let amount = payload["amount"].as_i64().filter(|a| *a > 0).ok_or_else(|| field("amount"))?;
    let currency = payload["currency"].as_str().ok_or_else(|| field("currency"))?;
    let occurred_at = payload["occurredAt"].as_str().ok_or_else(|| field("occurredAt"))?;
    let day = occurred_at.get(..10).filter(|d| d.len() == 10).ok_or_else(|| field("occurredAt"))?;
    let change = if kind == "payment.captured" { Change::Capture(amount) } else { Change::Refund(amount) };
    Ok(Some(Settling {
        key: Key { merchant_id, day: day.to_string(), currency: currency.to_string() },
        change,
        kind: kind.to_string(),
        event_id: payload["eventId"].clone(),
        payment_id: payload["paymentId"].clone(),
        // Carries the trace of the payment request that caused the change.
        traceparent: event
            .headers
            .iter()
            .find(|(k, _)| k == "traceparent")
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok()),
    }))
}

/// Folds each row's changes into it, writes the rows and their
/// `settlement.updated` events.
fn settle(rows: &[(Key, Vec<Settling>)]) -> Result<(), ApiError> {
    let fee_bps: i64 = variables::parse_or("fee_bps", 250);
    let keys: Vec<Key> = rows.iter().map(|(key, _)| key.clone()).collect();
    let mut locked = settlement::load_many(&keys)?;
    let now = clock::now();
    let mut next_rows = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for (key, changes) in rows {
        let prev = locked.remove(key);
        let existed = prev.is_some();
        let mut next = prev.unwrap_or_else(|| Settlement {
            version: -1,
            ..Settlement::empty(key.merchant_id, &key.day, &key.currency)
        });
        for settling in changes {
            next.apply(settling.change, fee_bps, &now);
            next.version += 1;
            // The host tags a run's lines with its first event; each line
            // names its own event and trace.
            payfn_sdk::log::info(&format!(
                "settled {} {} of {} for merchant {} on {}: net {} {} traceparent={}",
                settling.kind,
                settling.event_id.as_str().unwrap_or("?"),
                settling.payment_id.as_str().unwrap_or("?"),
                key.merchant_id,
                key.day,
                next.net,
                key.currency,
                settling.traceparent.as_deref().unwrap_or("-"),
            ));
        }
        assert!(next.version >= 0, "a settled row has at least one change");
        // The snapshot names the newest change it includes.
        let last = changes.last().expect("a row is only listed with a change");
        events.push(snapshot(&next, last));
        next_rows.push((existed, next));
    }
    let mut writes = Batch::new();
    let changed: Vec<(bool, &Settlement)> = next_rows.iter().map(|(existed, s)| (*existed, s)).collect();
    settlement::save_many(&changed, &mut writes);
    outbox::emit_all(&mut writes, &events);
    writes.run()
}

/// The `settlement.updated` event of `row`'s state after `last`.
fn snapshot(row: &Settlement, last: &Settling) -> OutboxEvent {
    let event_id = clock::new_id("evt");
    let mut data = row.to_json();
    if let Value::Object(map) = &mut data {
        map.insert("date".into(), row.day.clone().into());
        map.insert("sourceEventId".into(), last.event_id.clone());
        // Orders the snapshots: a consumer sees increasing versions, not
        // necessarily every one (one per run here, and the relay may
        // coalesce pending ones).
        map.insert("version".into(), row.version.into());
    }
    OutboxEvent {
        id: event_id.clone(),
        event_type: "settlement.updated",
        aggregate_id: format!("stl_{}_{}_{}", row.merchant_id, row.day, row.currency),
        merchant_id: row.merchant_id,
        payload: json!({
            "eventId": event_id,
            "type": "settlement.updated",
            "paymentId": last.payment_id,
            "merchantId": row.merchant_id,
            "amount": row.net,
            "currency": row.currency,
            "occurredAt": row.updated_at,
            "data": data,
        }),
        created_at: row.updated_at.clone(),
        traceparent: last.traceparent.clone(),
    }
}
