//! Settlement, run by the Kafka trigger on the payments topic: folds
//! `payment.captured` and `payment.refunded` into per merchant, day and
//! currency totals, and emits `settlement.updated`. Other events are
//! acknowledged and ignored.
//!
//! The trigger guarantees each event's effect once (processed-events row in
//! the same transaction), so this component simply adds.
//! Configuration: `FEE_BPS`, the fee in basis points of captured volume
//! (default 250 = 2.5 %).

use payfn_sdk::bindings::exports::payfn::host::event_handler::Event;
use payfn_sdk::outbox::{self, Event as OutboxEvent};
use payfn_sdk::sql::Batch;
use payfn_sdk::ApiError;
use payments::clock;
use payments::settlement::{self, Settlement};
use serde_json::{json, Value};

payfn_sdk::event_step!(on_event);

fn on_event(event: Event) -> Result<(), String> {
    apply(&event).map_err(|e| format!("{}: {}", e.code, e.message))
}

fn apply(event: &Event) -> Result<(), ApiError> {
    let payload: Value = serde_json::from_slice(&event.value)
        .map_err(|e| ApiError::invalid_json(format!("event value is not JSON: {e}")))?;
    let kind = payload["type"].as_str().unwrap_or_default();
    if !matches!(kind, "payment.captured" | "payment.refunded") {
        return Ok(());
    }
    let field = |name: &str| ApiError::missing_field(name);
    let merchant_id = payload["merchantId"].as_i64().ok_or_else(|| field("merchantId"))?;
    let amount = payload["amount"].as_i64().filter(|a| *a > 0).ok_or_else(|| field("amount"))?;
    let currency = payload["currency"].as_str().ok_or_else(|| field("currency"))?;
    let occurred_at = payload["occurredAt"].as_str().ok_or_else(|| field("occurredAt"))?;
    let day = occurred_at.get(..10).filter(|d| d.len() == 10).ok_or_else(|| field("occurredAt"))?;
    let fee_bps: i64 = std::env::var("FEE_BPS").ok().and_then(|v| v.parse().ok()).unwrap_or(250);

    let prev = settlement::load(merchant_id, day, currency)?;
    let mut next = prev.clone().unwrap_or_else(|| Settlement::empty(merchant_id, day, currency));
    if kind == "payment.captured" {
        next.gross_captured += amount;
        next.capture_count += 1;
    } else {
        next.refunded += amount;
        next.refund_count += 1;
    }
    next.updated_at = clock::now();
    next.settle(fee_bps);
    settlement::save(prev.as_ref(), &mut next)?;
    // The host tags this line with the event id and its traceparent.
    payfn_sdk::log::info(&format!(
        "settled {kind} of {} for merchant {merchant_id} on {day}: net {} {currency}",
        payload["paymentId"].as_str().unwrap_or("?"),
        next.net
    ));

    let event_id = clock::new_id("evt");
    let mut data = next.to_json();
    if let Value::Object(map) = &mut data {
        map.insert("date".into(), day.into());
        map.insert("sourceEventId".into(), payload["eventId"].clone());
        // Orders the snapshots: the relay may coalesce pending ones, so a
        // consumer sees increasing versions, not necessarily every one.
        map.insert("version".into(), next.version.into());
    }
    let mut writes = Batch::new();
    outbox::emit(
        &mut writes,
        &OutboxEvent {
            id: event_id.clone(),
            event_type: "settlement.updated",
            aggregate_id: format!("stl_{merchant_id}_{day}_{currency}"),
            merchant_id,
            payload: json!({
                "eventId": event_id,
                "type": "settlement.updated",
                "paymentId": payload["paymentId"],
                "merchantId": merchant_id,
                "amount": next.net,
                "currency": currency,
                "occurredAt": next.updated_at,
                "data": data,
            }),
            created_at: next.updated_at.clone(),
            // Carry the trace of the payment request that caused this update.
            traceparent: event
                .headers
                .iter()
                .find(|(k, _)| k == "traceparent")
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok()),
        },
    );
    writes.run()
}
