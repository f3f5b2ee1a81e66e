//! The shard set and merchant moves: `GET /admin/v1/shards` (figures per
//! shard, moves in progress and recent), `POST /admin/v1/moves` (start one),
//! `GET /admin/v1/moves/{id}`, `GET /admin/v1/shards/rebalance` (a plan).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::handlers::error;
use super::Admin;
use crate::moves::plan;
use crate::moves::store::StartError;

/// Recent moves listed beside the ones in progress.
const RECENT_MOVES: i64 = 20;

/// `GET /admin/v1/shards`.
pub async fn status(State(admin): State<Arc<Admin>>) -> Response {
    let mover = &admin.app.mover;
    let figures = match plan::figures(&admin.app.directory).await {
        Ok(figures) => figures,
        Err(e) => return unavailable(e),
    };
    let (unfinished, recent) =
        match tokio::try_join!(mover.store().unfinished(), mover.store().recent(RECENT_MOVES)) {
            Ok(moves) => moves,
            Err(e) => return unavailable(e),
        };
    Json(json!({"shards": figures, "moving": unfinished, "moves": recent})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct MoveRequest {
    merchant: i64,
    to: String,
}

/// `POST /admin/v1/moves` `{"merchant": 7, "to": "shard-3"}`: 202 with the
/// move; it goes on in the background (poll `GET /admin/v1/moves/{id}`).
pub async fn start(State(admin): State<Arc<Admin>>, Json(request): Json<MoveRequest>) -> Response {
    if request.merchant <= 0 {
        return error(StatusCode::BAD_REQUEST, "invalid_merchant", "merchant is a positive merchant id");
    }
    match admin.app.mover.start(request.merchant, &request.to).await {
        Ok(record) => (StatusCode::ACCEPTED, Json(record)).into_response(),
        Err(e @ StartError::Unknown(_)) => error(StatusCode::NOT_FOUND, "unknown_merchant", e.to_string()),
        Err(e @ StartError::AlreadyThere(..)) => error(StatusCode::CONFLICT, "already_there", e.to_string()),
        Err(e @ StartError::Busy(..)) => error(StatusCode::CONFLICT, "move_in_progress", e.to_string()),
        Err(StartError::Store(e)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "move_refused", format!("{e:#}"))
        }
    }
}

/// `GET /admin/v1/moves/{id}`.
pub async fn one(State(admin): State<Arc<Admin>>, Path(id): Path<i64>) -> Response {
    match admin.app.mover.store().get(id).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_move", format!("no move {id}")),
        Err(e) => unavailable(e),
    }
}

/// `GET /admin/v1/shards/rebalance`: the moves that even the shards out.
pub async fn rebalance(State(admin): State<Arc<Admin>>) -> Response {
    let figures = match plan::figures(&admin.app.directory).await {
        Ok(figures) => figures,
        Err(e) => return unavailable(e),
    };
    let moves = plan::plan(&figures);
    let after = plan::after(&figures, &moves);
    Json(json!({"moves": moves, "paymentsAfter": after})).into_response()
}

fn unavailable(e: anyhow::Error) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "control_store_unavailable", format!("{e:#}"))
}
