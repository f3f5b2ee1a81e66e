//! Gives every request an id, echoed as `Request-Id` and in error bodies.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = format!("req_{}", uuid::Uuid::now_v7().simple());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

impl RequestId {
    /// The id the outer layer gave `request`.
    pub fn of<B>(request: &axum::http::Request<B>) -> RequestId {
        request.extensions().get::<RequestId>().cloned().unwrap_or(RequestId(String::new()))
    }
}
