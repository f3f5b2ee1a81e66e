//! POST /payments/{id}/void: cancels an uncaptured authorization.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;
use payments::ledger::{Posting, AUTHORIZATION_HOLD, MERCHANT_PENDING};
use payments::{clock, events, input, store, Status};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("POST")?;
    let merchant_id = req.merchant_id()?;
    input::only_fields(&input::object(&req.body)?, &[])?;

    let prev = store::load(merchant_id, req.param("id")?, true)?;
    if prev.status != Status::Authorized {
        return Err(prev.status.refuse("void"));
    }
    let mut next = prev.clone();
    next.status = Status::Voided;
    next.updated_at = clock::now();
    store::update(&prev, &mut next)?;
    Posting::new(&next, "void")
        .transfer(MERCHANT_PENDING, AUTHORIZATION_HOLD, prev.amount)
        .write(&next.updated_at)?;
    events::emit(&next, "payment.voided", prev.amount, events::state(&next), req.traceparent())?;
    Ok(next.response(200))
}
