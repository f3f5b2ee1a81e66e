//! Liveness, readiness and the Prometheus endpoint.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::App;

/// The process is up and serving.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Every shard and the kv store answer.
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut shards = serde_json::Map::new();
    let mut ok = true;
    for shard in app.shards.iter() {
        let up = shard.ping().await;
        ok &= up;
        shards.insert(shard.name.clone(), json!(if up { "up" } else { "down" }));
    }
    let kv = app.kv.ping().await;
    let events = app.broker.ping().await;
    ok &= kv && events;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"status": if ok { "ready" } else { "unavailable" }, "shards": shards, "kv": if kv { "up" } else { "down" }, "events": if events { "up" } else { "down" }});
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut response = app.metrics.encode().into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
