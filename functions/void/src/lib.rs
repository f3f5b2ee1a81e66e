//! POST /payments/{id}/void: cancels an uncaptured authorization.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;
use payments::{input, steps, store};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("POST")?;
    let merchant_id = req.merchant_id()?;
    input::only_fields(&input::object(&req.body)?, &[])?;
    let prev = store::load(merchant_id, req.param("id")?, true)?;
    let next = steps::void(&prev, "requested", req.traceparent())?;
    Ok(next.response(200))
}
