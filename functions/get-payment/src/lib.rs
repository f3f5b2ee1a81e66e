//! GET /payments/{id}: the merchant's payment with its refunds.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;
use payments::store;

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("GET")?;
    let payment = store::load(req.merchant_id()?, req.param("id")?, false)?;
    Ok(payment.response(200))
}
