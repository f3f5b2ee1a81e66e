//! Payment events, in the format of API.md, written to the outbox.

use payfn_sdk::outbox::{self, Event};
use payfn_sdk::sql::Batch;
use serde_json::{json, Value};

use crate::{clock, Payment};

/// A new event id. A step that stores its event's id with the row it
/// changes (a capture, a refund: what reconciliation matches against the
/// settlement consumer's processed events) takes one first and passes it to
/// [`emit_with_id`].
pub fn new_event_id() -> String {
    clock::new_id("evt")
}

/// Adds one event about `payment` to the outbox writes. `amount` is the
/// amount of this change (the refund's amount for a refund); `data`
/// carries the rest.
pub fn emit(
    writes: &mut Batch,
    payment: &Payment,
    event_type: &'static str,
    amount: i64,
    data: Value,
    traceparent: Option<&str>,
) {
    emit_with_id(writes, new_event_id(), payment, event_type, amount, data, traceparent);
}

/// [`emit`] with an id from [`new_event_id`]. The event's `occurredAt` is
/// `payment.updated_at`: the instant settlement files the change under
/// (its UTC day), which capture and refund also store with their rows.
pub fn emit_with_id(
    writes: &mut Batch,
    id: String,
    payment: &Payment,
    event_type: &'static str,
    amount: i64,
    data: Value,
    traceparent: Option<&str>,
) {
    let payload = json!({
        "eventId": id,
        "type": event_type,
        "paymentId": payment.id,
        "merchantId": payment.merchant_id,
        "amount": amount,
        "currency": payment.currency,
        "occurredAt": payment.updated_at,
        "data": data,
    });
    outbox::emit(
        writes,
        &Event {
            id,
            event_type,
            aggregate_id: payment.id.clone(),
            merchant_id: payment.merchant_id,
            payload,
            created_at: payment.updated_at.clone(),
            traceparent: traceparent.map(str::to_string),
        },
    );
}

/// The payment's state after the change, as every event's `data` carries it.
pub fn state(payment: &Payment) -> Value {
    json!({
        "status": payment.status.as_str(),
        "capturedAmount": payment.captured_amount,
        "refundedAmount": payment.refunded_amount,
        "orderId": payment.order_id,
    })
}
