//! Liveness, readiness and the Prometheus endpoint.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::App;
use crate::bindings::sql::{Error as SqlError, Value};
use crate::capabilities::sql::Shard;

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
    // Outbox state is read at scrape time: it lives in the shards, and
    // several hosts share them.
    for shard in app.shards.iter() {
        match outbox_counts(shard).await {
            Ok((pending, dead)) => app.metrics.outbox(&shard.name, pending, dead),
            Err(e) => tracing::warn!(shard = %shard.name, error = ?e, "cannot read outbox counts"),
        }
    }
    let mut response = app.metrics.encode().into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Rows waiting to be published, and rows given up on (dead-lettered).
async fn outbox_counts(shard: &Shard) -> Result<(i64, i64), SqlError> {
    let mut tx = shard.begin(false).await?;
    let rows = tx
        .query(
            "SELECT COALESCE(SUM(CASE WHEN dead_lettered = 0 THEN 1 ELSE 0 END), 0), \
                    COALESCE(SUM(CASE WHEN dead_lettered = 1 THEN 1 ELSE 0 END), 0) \
             FROM outbox WHERE published = 0",
            Vec::new(),
        )
        .await;
    tx.rollback().await;
    match rows?.rows.first().map(Vec::as_slice) {
        Some([Value::Int64(pending), Value::Int64(dead)]) => Ok((*pending, *dead)),
        other => Err(SqlError::Other(format!("unexpected outbox counts {other:?}"))),
    }
}
