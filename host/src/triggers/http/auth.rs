//! Merchant authentication: `Authorization: Bearer <API key>`, verified
//! offline. The merchant comes from the key, never from the body.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::errors::HostError;
use super::request_id::RequestId;
use super::App;

/// The authenticated merchant.
#[derive(Debug, Clone, Copy)]
pub struct Merchant(pub i64);

pub async fn layer(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let key = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refuse = |message: &str| {
        let id = RequestId::of(&request);
        HostError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).respond(&id)
    };
    let merchant = match key {
        None => return refuse("send `Authorization: Bearer <API key>`"),
        Some(key) => match app.keys.verify(key) {
            Some(id) => id,
            None => return refuse("the API key is not valid"),
        },
    };
    request.extensions_mut().insert(Merchant(merchant));
    next.run(request).await
}
