//! POST /payments/{id}/capture: captures all or part of an authorization, once.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::sql::Batch;
use payfn_sdk::ApiError;
use payments::ledger::{
    Posting, AUTHORIZATION_HOLD, MERCHANT_PAYABLE, MERCHANT_PENDING, PROCESSOR_RECEIVABLE,
};
use payments::{clock, events, input, store, Status};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("POST")?;
    let merchant_id = req.merchant_id()?;
    let body = input::object(&req.body)?;
    input::only_fields(&body, &["amount"])?;
    let requested = input::opt_amount(&body, "amount")?;

    let prev = store::load(merchant_id, req.param("id")?, true)?;
    if prev.status != Status::Authorized {
        return Err(prev.status.refuse("capture"));
    }
    let amount = requested.unwrap_or(prev.amount);
    if amount > prev.amount {
        return Err(ApiError::unprocessable(
            "amount_exceeds_authorized",
            format!("cannot capture {amount}: only {} was authorized", prev.amount),
        )
        .with_param("amount"));
    }

    let mut next = prev.clone();
    next.status = Status::Captured;
    next.captured_amount = amount;
    next.updated_at = clock::now();
    // The row keeps the capture's instant and its event's id (reconciliation).
    let event_id = events::new_event_id();
    store::update_captured(&prev, &mut next, &event_id)?;
    let mut writes = Batch::new();
    // The whole hold is released; an uncaptured remainder goes back to the card.
    Posting::new(&next, "capture")
        .transfer(MERCHANT_PENDING, AUTHORIZATION_HOLD, prev.amount)
        .transfer(PROCESSOR_RECEIVABLE, MERCHANT_PAYABLE, amount)
        .write(&mut writes, &next.updated_at);
    let data = events::state(&next);
    events::emit_with_id(&mut writes, event_id, &next, "payment.captured", amount, data, req.traceparent());
    writes.run()?;
    Ok(next.response(200))
}
