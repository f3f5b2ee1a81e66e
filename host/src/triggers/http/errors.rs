//! Errors the host answers itself, in the API.md envelope.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::request_id::RequestId;

/// An error response: status, stable code, message.
#[derive(Debug, Clone)]
pub struct HostError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header, if the client should come back.
    pub retry_after: Option<u32>,
}

impl HostError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// Asks the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The response, with `request_id` in the envelope.
    pub fn respond(&self, request_id: &RequestId) -> Response {
        let body = serde_json::json!({
            "error": {
                "type": error_type(self.status.as_u16(), self.code),
                "code": self.code,
                "message": self.message,
                "param": null,
            },
            "requestId": request_id.0,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert("retry-after", HeaderValue::from(seconds));
        }
        response
    }
}

/// The envelope `type` for a status and code; the guest SDK uses the same table.
fn error_type(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (401, _) => "authentication_error",
        (429, _) => "rate_limit_error",
        (_, c) if c.starts_with("idempotency_") => "idempotency_error",
        (s, _) if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}
