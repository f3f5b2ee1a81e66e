//! The admin token check. Merchant keys never reach here: the admin token is
//! a separate secret, compared as SHA-256 digests so the comparison's timing
//! tells nothing about the token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::handlers::error;
use super::Admin;

pub async fn layer(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let Some(expected) = &admin.token else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_disabled",
            format!("the admin API is disabled on this host; set ${} to enable it", super::TOKEN_ENV),
        );
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "invalid_admin_token", "a valid admin token is required");
    }
    next.run(request).await
}
