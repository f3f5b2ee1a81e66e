//! Test component: answers after `?ms=N` milliseconds (at most 4,000, under
//! the host's 5 s deadline), so a test can hold an invocation open across a
//! version swap. The wait is a `wasi:clocks` poll, which the host serves
//! asynchronously: it holds no host thread.

use std::time::Duration;

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    let ms: u64 = req.query("ms").and_then(|v| v.parse().ok()).unwrap_or(0).min(4_000);
    std::thread::sleep(Duration::from_millis(ms));
    Ok(Response::json(200, &serde_json::json!({ "slept_ms": ms })))
}
