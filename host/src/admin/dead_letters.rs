//! Dead-lettered outbox rows: listed per shard, and re-driven, which hands
//! them back to the outbox relay with a fresh retry budget.
//!
//! A re-driven row becomes its aggregate's oldest unpublished row again, so
//! it goes out before any later event of the same aggregate that is still
//! waiting. Events of that aggregate the relay already published while the
//! row was dead-lettered stay published: consumers see the re-driven event
//! after them. That is why consumers key on the event id and read each
//! event's own data (DESIGN.md, events), never its position.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::handlers::{actor, error, Redrive};
use super::Admin;
use crate::bindings::sql::{Error as SqlError, Value};
use crate::shards::Shard;

/// Rows listed at most per request.
const LIST_MAX: i64 = 500;

/// One dead-lettered row.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub event_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    pub merchant_id: i64,
    pub created_at: String,
    pub attempts: i64,
    pub last_attempt_at: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

/// `GET /admin/v1/shards/{shard}/dead-letters?limit=N`: oldest first.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let Some(shard) = find(&admin, &name) else {
        return unknown_shard(&name);
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=LIST_MAX).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "invalid_limit", format!("limit is 1 to {LIST_MAX}"));
    }
    match read(shard, limit).await {
        Ok(rows) => Json(json!({"shard": name, "dead_letters": rows})).into_response(),
        Err(e) => shard_error(&name, e),
    }
}

/// `POST /admin/v1/shards/{shard}/dead-letters/redrive`.
pub async fn redrive(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Redrive>,
) -> Response {
    let Some(shard) = find(&admin, &name) else {
        return unknown_shard(&name);
    };
    if let Some(invalid) = body.invalid() {
        return invalid;
    }
    let actor = actor(&headers);
    match requeue(shard, &body).await {
        Ok(count) => {
            // The audit trail: who handed which rows back.
            tracing::info!(%actor, shard = %name, count, all = body.all, event_ids = ?body.event_ids,
                "admin: re-drove dead-lettered outbox rows");
            Json(json!({"shard": name, "redriven": count})).into_response()
        }
        Err(e) => shard_error(&name, e),
    }
}

fn find<'a>(admin: &'a Admin, name: &str) -> Option<&'a Arc<Shard>> {
    admin.app.shards.iter().find(|s| s.name == name)
}

fn unknown_shard(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, "shard_not_found", format!("no shard named `{name}`"))
}

fn shard_error(name: &str, e: SqlError) -> Response {
    tracing::warn!(shard = %name, error = ?e, "admin: dead-letter request failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "shard_unavailable", format!("shard `{name}`: {e:?}"))
}

async fn read(shard: &Shard, limit: i64) -> Result<Vec<DeadLetter>, SqlError> {
    let mut tx = shard.begin(false).await?;
    let rows = tx
        .query(
            "SELECT event_id, event_type, aggregate_id, merchant_id, created_at, retry_count, \
                    last_retry_at, last_error \
             FROM outbox WHERE dead_lettered = 1 AND published = 0 ORDER BY id LIMIT ?",
            vec![Value::Int64(limit)],
        )
        .await;
    tx.rollback().await;
    rows?.rows.into_iter().map(dead_letter).collect()
}

fn dead_letter(row: Vec<Value>) -> Result<DeadLetter, SqlError> {
    let text = |v: &Value| match v {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    };
    match row.as_slice() {
        [event_id, event_type, aggregate, Value::Int64(merchant), created, Value::Int64(attempts), last_at, last_error] => {
            Ok(DeadLetter {
                event_id: text(event_id).unwrap_or_default(),
                event_type: text(event_type).unwrap_or_default(),
                aggregate_id: text(aggregate).unwrap_or_default(),
                merchant_id: *merchant,
                created_at: text(created).unwrap_or_default(),
                attempts: *attempts,
                last_attempt_at: text(last_at),
                last_error: text(last_error),
            })
        }
        other => Err(SqlError::Other(format!("unexpected outbox row {other:?}"))),
    }
}

/// Clears the dead-letter flag and the attempt count of the named rows
/// that are still dead-lettered; returns how many changed.
async fn requeue(shard: &Shard, body: &Redrive) -> Result<u64, SqlError> {
    let mut sql = String::from(
        "UPDATE outbox SET dead_lettered = 0, retry_count = 0, next_attempt_at_ms = 0 \
         WHERE dead_lettered = 1 AND published = 0",
    );
    let mut params = Vec::new();
    if !body.all {
        sql.push_str(" AND event_id IN (");
        sql.push_str(&vec!["?"; body.event_ids.len()].join(", "));
        sql.push(')');
        params.extend(body.event_ids.iter().map(|id| Value::Text(id.clone())));
    }
    let mut tx = shard.begin(true).await?;
    match tx.execute(&sql, params).await {
        Ok(count) => {
            tx.commit().await?;
            Ok(count)
        }
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}
