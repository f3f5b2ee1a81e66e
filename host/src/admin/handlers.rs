//! The admin API's handlers: parse, call the versions service, answer JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::versions::store::Origin;
use crate::versions::DeployError;

/// An error in the API's envelope.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"type": if status.is_server_error() { "api_error" } else { "invalid_request_error" }, "code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

/// The JSON of `result`, or its error.
fn answer<T: serde::Serialize>(result: Result<T, DeployError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => deploy_error(e),
    }
}

fn deploy_error(e: DeployError) -> Response {
    match e {
        DeployError::NotFound(m) => error(StatusCode::NOT_FOUND, "component_not_found", m),
        DeployError::Refused(m) => error(StatusCode::UNPROCESSABLE_ENTITY, "version_refused", m),
        DeployError::Store(e) => {
            tracing::error!("admin: control store: {e:#}");
            error(StatusCode::SERVICE_UNAVAILABLE, "control_store_unavailable", format!("{e:#}"))
        }
    }
}

/// Who asks, for the audit trail: `X-Payfn-Actor` (the CLI sends
/// `user@host`), else `admin-api`.
pub fn actor(headers: &HeaderMap) -> String {
    let given = headers.get("x-payfn-actor").and_then(|v| v.to_str().ok()).unwrap_or("admin-api");
    given.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Event ids named in one re-drive at most.
const REDRIVE_MAX: usize = 500;

/// A re-drive request (dead-lettered outbox rows, failed events): some by
/// event id, or every one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redrive {
    #[serde(default)]
    pub event_ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

impl Redrive {
    /// The 400 answer for a request that names neither or both, more than
    /// [`REDRIVE_MAX`] ids, or an id empty or over 255 characters.
    pub fn invalid(&self) -> Option<Response> {
        let valid_ids = self.event_ids.iter().all(|id| !id.is_empty() && id.len() <= 255);
        (self.all != self.event_ids.is_empty() || self.event_ids.len() > REDRIVE_MAX || !valid_ids).then(|| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("give either `event_ids` (1 to {REDRIVE_MAX}, each 1 to 255 characters) or `all: true`"),
            )
        })
    }
}

pub async fn list_all(State(admin): State<Arc<Admin>>) -> Response {
    answer(admin.app.versions.list(None).await)
}

pub async fn list_one(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    answer(admin.app.versions.list(Some(&name)).await)
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    label: Option<String>,
    #[serde(default)]
    activate: bool,
    canary: Option<u8>,
}

pub async fn upload(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if query.activate && query.canary.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`activate` and `canary` exclude each other",
        );
    }
    if let Some(label) = &query.label {
        if label.is_empty() || label.len() > 200 || label.chars().any(char::is_control) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_label",
                "a label is 1 to 200 printable characters",
            );
        }
    }
    let actor = actor(&headers);
    let versions = &admin.app.versions;
    let (version, prepare_ms) = match versions.upload(&name, body.to_vec(), query.label, &actor).await {
        Ok(uploaded) => uploaded,
        Err(e) => return deploy_error(e),
    };
    let change = if query.activate {
        Some(versions.activate(&name, &version.digest, Origin::Admin, &actor).await)
    } else if let Some(percent) = query.canary {
        Some(versions.canary(&name, &version.digest, percent, &actor).await)
    } else {
        None
    };
    match change.transpose() {
        Ok(report) => (
            StatusCode::CREATED,
            Json(json!({"version": version, "prepare_ms": prepare_ms, "change": report})),
        )
            .into_response(),
        Err(e) => deploy_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    version: String,
}

pub async fn activate(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Activate>,
) -> Response {
    answer(admin.app.versions.activate(&name, &body.version, Origin::Admin, &actor(&headers)).await)
}

pub async fn rollback(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(admin.app.versions.rollback(&name, &actor(&headers)).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    version: String,
    percent: u8,
}

pub async fn canary(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CanaryBody>,
) -> Response {
    answer(admin.app.versions.canary(&name, &body.version, body.percent, &actor(&headers)).await)
}
