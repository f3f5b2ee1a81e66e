//! State changes shared by more than one component.

use payfn_sdk::sql::Batch;
use payfn_sdk::ApiError;
use serde_json::Value;

use crate::ledger::{Posting, AUTHORIZATION_HOLD, MERCHANT_PENDING};
use crate::{clock, events, store, Payment, Status};

/// Voids `prev` (which must be AUTHORIZED): releases the hold, writes the
/// row and the `payment.voided` event. `reason` lands in the event's data
/// (`"requested"` for the API, `"expired"` for authorization expiry).
pub fn void(prev: &Payment, reason: &str, traceparent: Option<&str>) -> Result<Payment, ApiError> {
    if prev.status != Status::Authorized {
        return Err(prev.status.refuse("void"));
    }
    let mut next = prev.clone();
    next.status = Status::Voided;
    next.updated_at = clock::now();
    store::update(prev, &mut next)?;
    let mut writes = Batch::new();
    Posting::new(&next, "void")
        .transfer(MERCHANT_PENDING, AUTHORIZATION_HOLD, prev.amount)
        .write(&mut writes, &next.updated_at);
    let mut data = events::state(&next);
    if let Value::Object(map) = &mut data {
        map.insert("reason".into(), reason.into());
    }
    events::emit(&mut writes, &next, "payment.voided", prev.amount, data, traceparent);
    writes.run()?;
    Ok(next)
}
