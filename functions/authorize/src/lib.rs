//! POST /payments/authorize: creates a payment, AUTHORIZED or DECLINED.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::sql::Batch;
use payfn_sdk::ApiError;
use payments::ledger::{Posting, AUTHORIZATION_HOLD, MERCHANT_PENDING};
use payments::{clock, events, input, money, store, Payment, Status};
use serde_json::{json, Value};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("POST")?;
    let merchant_id = req.merchant_id()?;
    let body = input::object(&req.body)?;
    input::only_fields(&body, &["amount", "currency", "orderId", "metadata"])?;
    let amount = body.get("amount").ok_or_else(|| ApiError::missing_field("amount"))?;
    let amount = money::parse_amount(amount, "amount")?;
    let currency = body.get("currency").ok_or_else(|| ApiError::missing_field("currency"))?;
    let currency = money::parse_currency(currency)?;
    let order_id = input::opt_string(&body, "orderId", 255)?;
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => {
            return Err(ApiError::invalid_field("invalid_field", "metadata", "`metadata` must be an object"))
        }
    };

    let now = clock::now();
    let declined = amount > money::decline_threshold(&currency);
    let payment = Payment {
        id: clock::new_id("pay"),
        merchant_id,
        status: if declined { Status::Declined } else { Status::Authorized },
        amount,
        captured_amount: 0,
        refunded_amount: 0,
        currency,
        order_id,
        metadata,
        created_at: now.clone(),
        updated_at: now.clone(),
        version: 0,
        refunds: Vec::new(),
    };
    // The payment, its posting and its event: one batch of writes.
    let mut writes = Batch::new();
    store::insert(&mut writes, &payment);
    if declined {
        let data = json!({"status": "DECLINED", "reason": "amount_over_limit", "orderId": payment.order_id});
        events::emit(&mut writes, &payment, "payment.declined", amount, data, req.traceparent());
    } else {
        Posting::new(&payment, "authorize")
            .transfer(AUTHORIZATION_HOLD, MERCHANT_PENDING, amount)
            .write(&mut writes, &now);
        events::emit(
            &mut writes,
            &payment,
            "payment.authorized",
            amount,
            events::state(&payment),
            req.traceparent(),
        );
    }
    writes.run()?;
    Ok(payment.response(201))
}
