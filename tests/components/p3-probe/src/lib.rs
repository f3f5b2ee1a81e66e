//! Test component on WASIp3: answers through spin-sdk 7's `#[http_service]`
//! and runs statements through payfn's `sql` import.
//!
//! By `?mode=`: none answers 200 naming the shard it is bound to; `write`
//! writes an outbox row and answers 201; `error` writes, then answers 500;
//! `trap` writes, then panics; `loop` never returns; `hog` grows its memory
//! past any limit.

// spin-sdk's export macro only links for wasm32: elsewhere (the workspace's
// `cargo test`) this crate is empty.
#![cfg(target_family = "wasm")]

use spin_sdk::http::{IntoResponse, Request, StatusCode};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "payfn:host/capabilities",
    generate_all,
});

use payfn::host::sql::{self, Value};

#[spin_sdk::http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (request_id, merchant) = (header("payfn-request-id"), header("payfn-merchant-id"));
    let mode = req.uri().query().and_then(|q| q.strip_prefix("mode=")).unwrap_or("").to_string();
    if mode.is_empty() {
        return (StatusCode::OK, format!("p3 on {}", sql::shard_name()));
    }
    if mode == "loop" {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    if mode == "hog" {
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            held.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&held);
        }
    }
    let merchant: i64 = merchant.parse().unwrap_or(0);
    let written = sql::execute(
        "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at) \
         VALUES (?, 'p3', ?, 'test.p3', '{}', '')",
        &[Value::Text(request_id), Value::Int64(merchant)],
    );
    if let Err(e) = written {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e:?}"));
    }
    match mode.as_str() {
        "write" => (StatusCode::CREATED, "written".to_string()),
        "error" => (StatusCode::INTERNAL_SERVER_ERROR, "fails on purpose".to_string()),
        _ => panic!("test component traps on purpose"),
    }
}
