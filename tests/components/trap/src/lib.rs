//! Test component: traps (a Rust panic is a wasm `unreachable`) after
//! writing a row, so the test can also see the write rolled back.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::{sql, ApiError};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    sql::execute(
        "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at) \
         VALUES (?, 'trap', ?, 'test.trap', '{}', '')",
        &[req.request_id().into(), req.merchant_id()?.into()],
    )?;
    panic!("test component traps on purpose");
}
