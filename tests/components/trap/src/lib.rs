//! Test component: writes a row, then fails — by trapping (a Rust panic is
//! a wasm `unreachable`), or with `?mode=error` by answering 500 — so the
//! test can see the write rolled back either way.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::{sql, ApiError};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    sql::execute(
        "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at) \
         VALUES (?, 'trap', ?, 'test.trap', '{}', '')",
        &[req.request_id().into(), req.merchant_id()?.into()],
    )?;
    if req.path.ends_with("mode=error") {
        return Err(ApiError::internal("test component fails on purpose"));
    }
    panic!("test component traps on purpose");
}
