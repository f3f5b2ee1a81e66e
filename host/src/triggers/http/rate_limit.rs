//! Per-merchant, per-route rate limits.
//!
//! A fixed window counted in the kv store (`INCR` with expiry): the one
//! algorithm that runs atomically on both the in-process store and Redis, so
//! with Redis configured the limit holds across hosts. Every response
//! carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`;
//! a refused request gets 429 `rate_limited` with `Retry-After`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;

use super::auth::Merchant;
use super::errors::HostError;
use super::request_id::RequestId;
use super::routes::Matched;
use super::App;
use crate::kv::host_key;

/// The `[http.rate_limits]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Window length in seconds.
    pub window_secs: u64,
    /// Requests per window per merchant for routes not listed below.
    pub default_capacity: u64,
    /// Requests per window per merchant, by the route's component.
    pub components: BTreeMap<String, u64>,
    /// Components whose requests are refused (503 `rate_limiter_unavailable`)
    /// while the limiter's store cannot be reached. Every other route fails
    /// open: an unreachable limiter must not take payments down.
    pub fail_closed: Vec<String>,
}

impl Default for RateLimitConfig {
    /// The seed's limits: authorize and capture 30,000 and refund 15,000
    /// per 60 s.
    fn default() -> Self {
        let components = [("authorize", 30_000), ("capture", 30_000), ("refund", 15_000)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Self { window_secs: 60, default_capacity: 30_000, components, fail_closed: Vec::new() }
    }
}

impl RateLimitConfig {
    pub fn capacity_for(&self, component: &str) -> u64 {
        self.components.get(component).copied().unwrap_or(self.default_capacity)
    }
}

/// Where a merchant stands in the current window.
struct Window {
    limit: u64,
    remaining: u64,
    reset_secs: u64,
    allowed: bool,
}

impl Window {
    fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

pub async fn layer(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let (Some(matched), Some(Merchant(merchant))) = (
        request.extensions().get::<Arc<Matched>>().cloned(),
        request.extensions().get::<Merchant>().copied(),
    ) else {
        return next.run(request).await;
    };
    let config = &app.config.rate_limits;
    let limit = config.capacity_for(&matched.component);
    let window_secs = config.window_secs.max(1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let index = now / window_secs;
    let reset_secs = (index + 1) * window_secs - now;
    let key = host_key("rl", &[&matched.component, &merchant.to_string(), &index.to_string()]);
    let count = match app.kv.incr(&key, 1, Some(Duration::from_secs(window_secs + 1))).await {
        Ok(n) => u64::try_from(n).unwrap_or(0),
        Err(e) if config.fail_closed.contains(&matched.component) => {
            tracing::warn!(error = ?e, component = %matched.component, "rate limiter unavailable; request refused");
            let refused = HostError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limiter_unavailable",
                "the rate limiter cannot be reached; retry shortly",
            );
            let mut response = refused.respond(&RequestId::of(&request));
            response.headers_mut().insert("retry-after", HeaderValue::from(1));
            return response;
        }
        Err(e) => {
            tracing::warn!(error = ?e, component = %matched.component, "rate limiter unavailable; request allowed");
            return next.run(request).await;
        }
    };
    let window =
        Window { limit, remaining: limit.saturating_sub(count), reset_secs, allowed: count <= limit };
    let mut response = if window.allowed {
        next.run(request).await
    } else {
        app.metrics.rate_limited(&matched.component);
        let message = format!("more than {limit} requests in {window_secs} s to this route");
        let mut response = HostError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .respond(&RequestId::of(&request));
        response.headers_mut().insert("retry-after", HeaderValue::from(reset_secs));
        response
    };
    window.write_headers(response.headers_mut());
    response
}
