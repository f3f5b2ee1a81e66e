//! The transactional outbox: an event is a row written in the same
//! transaction as the change it reports, so it exists if and only if the
//! change committed. The relay publishes it later.

use crate::sql::Batch;

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Event {
    /// Globally unique; consumers dedupe on it.
    pub id: String,
    /// E.g. `payment.captured`.
    pub event_type: &'static str,
    /// The aggregate the event belongs to; the Kafka key, so one aggregate's
    /// events stay in order.
    pub aggregate_id: String,
    pub merchant_id: i64,
    /// The full event value, as published.
    pub payload: serde_json::Value,
    pub created_at: String,
    /// W3C trace context of the request that caused the event.
    pub traceparent: Option<String>,
}

/// Adds `event`'s outbox row to `writes`, which commit with the change it
/// reports.
pub fn emit(writes: &mut Batch, event: &Event) {
    writes.push(
        "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, traceparent) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            event.id.as_str().into(),
            event.aggregate_id.as_str().into(),
            event.merchant_id.into(),
            event.event_type.into(),
            event.payload.to_string().into(),
            event.created_at.as_str().into(),
            event.traceparent.clone().into(),
        ],
        1,
    );
}
