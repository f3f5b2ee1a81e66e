//! Test component: holds an invocation open so a test can swap versions
//! under it. `?ms=N` answers after N milliseconds (at most 4,000, under the
//! host's default 5 s deadline); `?until=KEY` answers once `?release=KEY`
//! (any version of this component) has set KEY in its kv namespace, so a
//! test decides when the invocation ends instead of betting on timing (at
//! most 25 s: give the host a longer `[engine] timeout_ms`); while it waits,
//! `?started=KEY` answers `true`. The waits are
//! `wasi:clocks` polls, which the host serves asynchronously: they hold no
//! host thread.

use std::time::{Duration, Instant};

use payfn_sdk::http::{Request, Response};
use payfn_sdk::{kv, ApiError};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    if let Some(key) = req.query("release") {
        kv::set(&key, b"released", Some(60_000))?;
        return Ok(Response::json(200, &serde_json::json!({ "released": key })));
    }
    if let Some(key) = req.query("started") {
        let started = kv::get(&format!("{key}:started"))?.is_some();
        return Ok(Response::json(200, &serde_json::json!({ "started": started })));
    }
    if let Some(key) = req.query("until") {
        kv::set(&format!("{key}:started"), b"1", Some(60_000))?;
        let started = Instant::now();
        while kv::get(&key)?.is_none() {
            if started.elapsed() > Duration::from_secs(25) {
                return Err(ApiError::internal(format!("`{key}` was never released")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let waited_ms = started.elapsed().as_millis() as u64;
        return Ok(Response::json(200, &serde_json::json!({ "released": key, "waited_ms": waited_ms })));
    }
    let ms: u64 = req.query("ms").and_then(|v| v.parse().ok()).unwrap_or(0).min(4_000);
    std::thread::sleep(Duration::from_millis(ms));
    Ok(Response::json(200, &serde_json::json!({ "slept_ms": ms })))
}
