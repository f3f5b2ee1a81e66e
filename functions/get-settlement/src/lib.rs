//! GET /settlements?date=YYYY-MM-DD: the calling merchant's settlement for
//! that UTC day, one entry per currency (empty when nothing settled).

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;
use payments::settlement;
use serde_json::json;

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    req.require_method("GET")?;
    let merchant_id = req.merchant_id()?;
    let date = req.query("date").ok_or_else(|| ApiError::missing_field("date"))?;
    if !is_date(&date) {
        return Err(ApiError::invalid_field("invalid_date", "date", "`date` must be YYYY-MM-DD"));
    }
    let settlements = settlement::for_day(merchant_id, &date)?;
    Ok(Response::json(
        200,
        &json!({
            "merchantId": merchant_id,
            "date": date,
            "currencies": settlements.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        }),
    ))
}

/// A plausible calendar date: YYYY-MM-DD with month 1-12 and day 1-31.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let number = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [y, m, d] if number(y, 4) && number(m, 2) && number(d, 2) => {
            let (m, d): (u32, u32) = (m.parse().unwrap_or(0), d.parse().unwrap_or(0));
            (1..=12).contains(&m) && (1..=31).contains(&d)
        }
        _ => false,
    }
}
