//! The one error envelope of API.md, built by components.

use crate::http::Response;

/// An error answered to the caller: HTTP status, stable `code`, a message for
/// humans and, when one input field is at fault, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), param: None }
    }

    /// Names the request field the error is about.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_json", message)
    }

    pub fn missing_field(field: &str) -> Self {
        Self::new(400, "missing_field", format!("`{field}` is required")).with_param(field)
    }

    pub fn invalid_field(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message).with_param(field)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, "method_not_allowed", "this route does not accept that method")
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }

    /// A failure that is not the caller's fault; the host rolls back on it.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The shard could not serve the transaction; safe to retry.
    pub fn shard_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "shard_unavailable", message)
    }

    /// The `type` of the envelope, derived from the code and status.
    pub fn kind(&self) -> &'static str {
        error_type(self.status, self.code)
    }

    /// The response carrying this error in the API.md envelope.
    pub fn to_response(&self, request_id: &str) -> Response {
        let body = serde_json::json!({
            "error": {
                "type": self.kind(),
                "code": self.code,
                "message": self.message,
                "param": self.param,
            },
            "requestId": request_id,
        });
        Response::json(self.status, &body)
    }
}

/// The envelope `type` for a status and code, the same table the host uses.
pub fn error_type(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (401, _) => "authentication_error",
        (429, _) => "rate_limit_error",
        (_, c) if c.starts_with("idempotency_") => "idempotency_error",
        (s, _) if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}
