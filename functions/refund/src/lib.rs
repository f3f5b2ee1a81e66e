//! POST /payments/{id}/refund: refunds all or part of what is still
//! refundable; repeatable until the payment is fully refunded.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::sql::Batch;
use payfn_sdk::ApiError;
use payments::ledger::{Posting, MERCHANT_PAYABLE, PROCESSOR_RECEIVABLE};
use payments::{clock, events, input, store, Refund, Status};
use serde_json::Value;

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("POST")?;
    let merchant_id = req.merchant_id()?;
    let body = input::object(&req.body)?;
    input::only_fields(&body, &["amount", "reason"])?;
    let requested = input::opt_amount(&body, "amount")?;
    let reason = input::opt_string(&body, "reason", 500)?;

    let prev = store::load(merchant_id, req.param("id")?, true)?;
    if !matches!(prev.status, Status::Captured | Status::PartiallyRefunded) {
        return Err(prev.status.refuse("refund"));
    }
    let amount = requested.unwrap_or(prev.refundable());
    if amount > prev.refundable() {
        return Err(ApiError::unprocessable(
            "amount_exceeds_refundable",
            format!("cannot refund {amount}: only {} is refundable", prev.refundable()),
        )
        .with_param("amount"));
    }

    let now = clock::now();
    let refund = Refund { id: clock::new_id("rf"), amount, reason, created_at: now.clone() };
    let mut next = prev.clone();
    next.refunded_amount += amount;
    next.status = if next.refunded_amount == next.captured_amount {
        Status::Refunded
    } else {
        Status::PartiallyRefunded
    };
    next.updated_at = now;
    store::update(&prev, &mut next)?;
    let mut writes = Batch::new();
    // The refund row keeps its event's id (reconciliation).
    let event_id = events::new_event_id();
    store::insert_refund(&mut writes, &next, &refund, &event_id);
    Posting::new(&next, "refund")
        .transfer(MERCHANT_PAYABLE, PROCESSOR_RECEIVABLE, amount)
        .write(&mut writes, &next.updated_at);
    let mut data = events::state(&next);
    if let Value::Object(map) = &mut data {
        map.insert("refundId".into(), refund.id.clone().into());
        map.insert("reason".into(), refund.reason.clone().into());
    }
    next.refunds.push(refund);
    events::emit_with_id(&mut writes, event_id, &next, "payment.refunded", amount, data, req.traceparent());
    writes.run()?;
    Ok(next.response(200))
}
