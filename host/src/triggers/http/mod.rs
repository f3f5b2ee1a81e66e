//! The HTTP trigger: axum serving the manifest's `[[trigger.http]]` routes.
//!
//! A request to a component route passes these layers, outermost first:
//! unread body drained ([`body`]) -> request id -> route match -> merchant
//! authentication -> rate limit -> [`dispatch`] (body limit, idempotency,
//! shard transaction, invocation, commit or rollback). Health and metrics
//! endpoints sit beside them.

mod auth;
mod body;
mod dispatch;
mod errors;
mod health;
mod idempotency;
mod rate_limit;
mod request_id;
mod routes;

pub use health::{outbox_status, OutboxStatus};
pub use rate_limit::RateLimitConfig;
pub use routes::RouteTable;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::broker::Broker;
use crate::engine::Engine;
use crate::keys::KeyRing;
use crate::kv::Kv;
use crate::manifest::KafkaTrigger;
use crate::metrics::Metrics;
use crate::shards::ShardSet;
use crate::versions::Versions;

/// The `[http]` section of the runtime config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on; `payfn up --listen` overrides it.
    pub listen: SocketAddr,
    /// Largest request body accepted (413 `body_too_large` beyond).
    pub max_body_bytes: usize,
    pub rate_limits: RateLimitConfig,
    /// HTTPS: the certificate chain (PEM, leaf first); with `tls_key`.
    /// `payfn up --tls-cert` (or `SPIN_TLS_CERT`) overrides it.
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the private key of `tls_cert` (PEM); `--tls-key` overrides it.
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            max_body_bytes: 64 * 1024,
            rate_limits: RateLimitConfig::default(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Everything the HTTP layers share.
pub struct App {
    pub engine: Engine,
    /// What serves each component; a deploy swaps it.
    pub versions: Arc<Versions>,
    pub routes: RouteTable,
    pub shards: Arc<ShardSet>,
    /// Which shard each merchant is on.
    pub directory: Arc<crate::directory::Directory>,
    /// Starts and drives merchant moves.
    pub mover: Arc<crate::moves::Mover>,
    pub kv: Kv,
    pub broker: Broker,
    pub keys: KeyRing,
    pub config: HttpConfig,
    pub metrics: Metrics,
    /// The manifest's Kafka triggers: whose consumer lag to report.
    pub kafka_triggers: Vec<KafkaTrigger>,
}

/// The router: component routes behind their layers, plus health and
/// metrics, plus `admin` (the admin API) when it shares this listener.
pub fn router(app: Arc<App>, admin: Option<Router>) -> Router {
    let components = Router::new()
        .fallback(dispatch::dispatch)
        .layer(from_fn_with_state(app.clone(), rate_limit::layer))
        .layer(from_fn_with_state(app.clone(), auth::layer))
        .layer(from_fn_with_state(app.clone(), routes::layer))
        .with_state(app.clone());
    let router = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback_service(components)
        .layer(axum::middleware::from_fn(request_id::layer))
        .layer(axum::middleware::from_fn(body::layer))
        .with_state(app);
    match admin {
        Some(admin) => router.merge(admin),
        None => router,
    }
}
