//! Events the Kafka triggers gave up on (their dead-letter topics and the
//! shards' `failed_events`): listed, and re-driven back to their topics.
//! The work is `crate::failed_events`; this parses and answers.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::handlers::{actor, error, Redrive};
use super::Admin;
use crate::failed_events::{FailedEvents, Selection};

/// Events listed at most per request.
const LIST_MAX: usize = 500;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /admin/v1/events/failed?limit=N`: pending failed events, dead-letter
/// topics first, then `failed_events` rows; `more` says whether there are
/// more than listed.
pub async fn list(State(admin): State<Arc<Admin>>, Query(query): Query<ListQuery>) -> Response {
    let limit = query.limit.unwrap_or(100);
    if !(1..=LIST_MAX).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "invalid_limit", format!("limit is 1 to {LIST_MAX}"));
    }
    match failed_events(&admin).list(limit).await {
        Ok((events, more)) => Json(json!({"failed_events": events, "more": more})).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `POST /admin/v1/events/redrive`: `{"event_ids": [...]}` or `{"all": true}`.
/// One re-drive at a time per host (a second waits): two at once would
/// produce the same events twice (harmless, each consumer skips a
/// duplicate, but noisy).
pub async fn redrive(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Json(body): Json<Redrive>,
) -> Response {
    if let Some(invalid) = body.invalid() {
        return invalid;
    }
    let selection = match body.all {
        true => Selection::All,
        false => Selection::EventIds(body.event_ids.iter().cloned().collect::<BTreeSet<_>>()),
    };
    let _one_at_a_time = admin.redriving.lock().await;
    let actor = actor(&headers);
    match failed_events(&admin).redrive(&selection).await {
        Ok(done) => {
            // The audit trail: who sent which events back.
            tracing::info!(
                %actor, all = body.all, event_ids = ?body.event_ids,
                from_dead_letter_topics = done.from_dead_letter_topics,
                from_failed_events = done.from_failed_events, stopped = ?done.stopped,
                held_for_moves = done.held_for_moves.len(),
                "admin: re-drove failed events"
            );
            Json(done).into_response()
        }
        Err(e) => unavailable(e),
    }
}

fn failed_events(admin: &Admin) -> FailedEvents<'_> {
    let app = &admin.app;
    FailedEvents::new(&app.broker, &app.shards, &app.kafka_triggers)
}

fn unavailable(e: anyhow::Error) -> Response {
    tracing::warn!("admin: failed-events request: {e:#}");
    error(StatusCode::SERVICE_UNAVAILABLE, "events_unavailable", format!("{e:#}"))
}
