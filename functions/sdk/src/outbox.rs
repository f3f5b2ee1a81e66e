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
    emit_all(writes, std::slice::from_ref(event));
}

/// Rows per outbox statement: well under every dialect's limit on
/// placeholders.
const ROWS_PER_STATEMENT: usize = 100;

/// Adds the outbox rows of `events`, in their order (one multi-row
/// statement per hundred: one round trip instead of one per event).
pub fn emit_all(writes: &mut Batch, events: &[Event]) {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut params = Vec::with_capacity(chunk.len() * 7);
        for event in chunk {
            params.extend([
                event.id.as_str().into(),
                event.aggregate_id.as_str().into(),
                event.merchant_id.into(),
                event.event_type.into(),
                event.payload.to_string().into(),
                event.created_at.as_str().into(),
                event.traceparent.clone().into(),
            ]);
        }
        writes.push(
            format!(
                "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, \
                 traceparent) VALUES {rows}"
            ),
            params,
            chunk.len() as u64,
        );
    }
}
