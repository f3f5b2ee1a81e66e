//! The admin API and console: deploy, activate, roll back and canary
//! component versions, and list them; the platform's status; dead-lettered
//! outbox rows and their re-drive; events the Kafka triggers gave up on and
//! their re-drive. JSON over HTTP under `/admin/v1`, on the
//! main listener or on `[admin] listen` alone, behind an admin token that is
//! never a merchant key. The console (`/admin/`, console.rs) is a static
//! page that calls this API with the token the operator gives it.
//!
//! | Method | Path | Does |
//! |---|---|---|
//! | GET | `/admin/v1/components` | every component, its versions, hosts |
//! | GET | `/admin/v1/components/{name}` | one component |
//! | POST | `/admin/v1/components/{name}/versions` | upload (body: the `.wasm`); `?label=`, `?activate=true`, `?canary=PCT` |
//! | POST | `/admin/v1/components/{name}/activate` | `{"version": "<digest, prefix or label>"}` |
//! | POST | `/admin/v1/components/{name}/rollback` | back to the previous version, or end the canary |
//! | POST | `/admin/v1/components/{name}/canary` | `{"version": "...", "percent": 10}` |
//! | GET | `/admin/v1/status` | shards, kv, events, consumer lag, settlement per day |
//! | GET | `/admin/v1/shards/{shard}/dead-letters` | dead-lettered outbox rows, oldest first; `?limit=` |
//! | POST | `/admin/v1/shards/{shard}/dead-letters/redrive` | `{"event_ids": [...]}` or `{"all": true}` |
//! | GET | `/admin/v1/events/failed` | events the Kafka triggers gave up on (dead-letter topics, `failed_events`); `?limit=` |
//! | POST | `/admin/v1/events/redrive` | back to their topics: `{"event_ids": [...]}` or `{"all": true}` |

mod auth;
mod console;
mod dead_letters;
mod failed_events;
mod handlers;
mod shards;
pub mod status;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::triggers::http::App;

/// Environment variable holding the admin token.
pub const TOKEN_ENV: &str = "PAYFN_ADMIN_TOKEN";
/// File under the state directory holding the development admin token.
pub const DEV_TOKEN_FILE: &str = "admin-token";

/// The `[admin]` section of the runtime config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A listener of its own for the admin API (say `127.0.0.1:3001`, or a
    /// private interface); unset: `/admin/v1` on the main listener.
    pub listen: Option<SocketAddr>,
    /// Largest component binary accepted, in MiB.
    pub max_upload_mb: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: None, max_upload_mb: 64 }
    }
}

/// What the admin handlers share.
pub struct Admin {
    /// `None`: the admin API is disabled (no token configured in live mode).
    token: Option<String>,
    /// Where the token came from, for the startup summary.
    access: String,
    /// What the HTTP trigger serves with: versions, shards, kv, broker.
    pub app: Arc<App>,
    /// Held while failed events are re-driven: one re-drive at a time.
    redriving: tokio::sync::Mutex<()>,
}

impl Admin {
    /// The token from `PAYFN_ADMIN_TOKEN`; or, with development keys, one
    /// generated into the state directory; or none (the API is disabled).
    pub fn new(app: Arc<App>, dev_mode: bool, state_dir: &Path) -> anyhow::Result<Self> {
        let (token, access) = match std::env::var(TOKEN_ENV) {
            Ok(token) if token.len() >= 16 => (Some(token), format!("token from ${TOKEN_ENV}")),
            Ok(_) => anyhow::bail!("${TOKEN_ENV} must be at least 16 characters"),
            Err(_) if dev_mode => {
                let path = state_dir.join(DEV_TOKEN_FILE);
                (Some(crate::keys::local_secret(&path)?), format!("token in {}", path.display()))
            }
            Err(_) => (None, format!("disabled (set ${TOKEN_ENV} to enable)")),
        };
        Ok(Self { token, access, app, redriving: tokio::sync::Mutex::new(()) })
    }

    /// How the startup summary describes access.
    pub fn describe(&self) -> &str {
        &self.access
    }
}

/// The admin routes: the API under `/admin/v1`, the console under `/admin/`.
pub fn router(admin: Arc<Admin>, config: &AdminConfig) -> Router {
    let api = Router::new()
        .route("/components", get(handlers::list_all))
        .route("/components/{name}", get(handlers::list_one))
        .route("/components/{name}/versions", post(handlers::upload))
        .route("/components/{name}/activate", post(handlers::activate))
        .route("/components/{name}/rollback", post(handlers::rollback))
        .route("/components/{name}/canary", post(handlers::canary))
        .route("/status", get(status::handler))
        .route("/shards/{shard}/dead-letters", get(dead_letters::list))
        .route("/shards/{shard}/dead-letters/redrive", post(dead_letters::redrive))
        .route("/events/failed", get(failed_events::list))
        .route("/events/redrive", post(failed_events::redrive))
        .route("/shards", get(shards::status))
        .route("/shards/rebalance", get(shards::rebalance))
        .route("/moves", post(shards::start))
        .route("/moves/{id}", get(shards::one))
        .layer(DefaultBodyLimit::max(config.max_upload_mb.saturating_mul(1 << 20)))
        .layer(axum::middleware::from_fn_with_state(admin.clone(), auth::layer))
        .with_state(admin);
    Router::new().nest("/admin/v1", api).merge(console::router())
}
