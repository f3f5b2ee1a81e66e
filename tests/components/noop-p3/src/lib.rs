//! Test and benchmark component on WASIp3: answers every request `200 ok`,
//! doing nothing else. Written only against spin-sdk 7.

// spin-sdk's export macro only links for wasm32: elsewhere (the workspace's
// `cargo test`) this crate is empty.
#![cfg(target_family = "wasm")]

use spin_sdk::http::{IntoResponse, Request, StatusCode};

#[spin_sdk::http_service]
async fn handle(_req: Request) -> impl IntoResponse {
    (StatusCode::OK, String::from("ok"))
}
