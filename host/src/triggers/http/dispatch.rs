//! Running a component for a matched, authenticated, admitted request.
//!
//! DESIGN.md rule 2: one invocation is one shard transaction. The host
//! opens it on the merchant's shard, the component's `sql` calls run in it,
//! and the host commits only when the component returned a non-5xx
//! response; a trap, a timeout or a 5xx rolls it back. The idempotency
//! record commits in the same transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Full;
use tracing::Instrument;

use super::auth::Merchant;
use super::body;
use super::errors::HostError;
use super::idempotency::{self, Claim, Outcome};
use super::request_id::RequestId;
use super::routes::Matched;
use super::App;
use crate::capabilities::sql::{Shard, ShardTx};
use crate::directory::RouteError;
use crate::engine::{Bindings, HttpOutput, InvokeError, LoadedComponent};
use crate::logging::invocation_span;

/// Headers only the host may set; stripped from what clients send.
const HOST_HEADER_PREFIX: &str = "payfn-";
/// The response header naming the version (first 12 hex digits of its
/// SHA-256) that served the request.
const VERSION_HEADER: &str = "payfn-version";

pub async fn dispatch(State(app): State<Arc<App>>, request: Request) -> Response {
    let id = RequestId::of(&request);
    let (Some(matched), Some(Merchant(merchant))) = (
        request.extensions().get::<Arc<Matched>>().cloned(),
        request.extensions().get::<Merchant>().copied(),
    ) else {
        return HostError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "request reached dispatch unrouted",
        )
        .respond(&id);
    };
    match run(&app, &id, &matched, merchant, request).await {
        Ok(response) => response,
        Err(e) => e.respond(&id),
    }
}

async fn run(
    app: &App,
    id: &RequestId,
    matched: &Matched,
    merchant: i64,
    request: Request,
) -> Result<Response, HostError> {
    let (parts, body) = request.into_parts();
    let body = body::read(body, app.config.max_body_bytes).await?;
    let slot = app.versions.registry().get(&matched.component).ok_or_else(|| {
        HostError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the route's component is not loaded")
    })?;
    // The version is picked once; this request runs on it to the end, even
    // if a deploy swaps another one in meanwhile.
    let component = slot.pick(merchant.to_string().as_bytes());
    // A merchant's first request places it in the directory.
    // Held to the end of the request: a move's cut-over waits for it.
    let routed = app.directory.place(merchant).await.map_err(|e| match e {
        RouteError::Moving(_) => {
            tracing::info!(request_id = %id.0, merchant, "refused during the merchant's move: {e}");
            HostError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "merchant_moving",
                "the merchant is being moved to another shard; retry after the Retry-After delay",
            )
            .retry_after(1)
        }
        e => {
            tracing::warn!(request_id = %id.0, merchant, "no shard for the merchant: {e}");
            HostError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_unavailable",
                "the merchant's shard cannot be determined right now; retry shortly",
            )
        }
    })?;
    let shard = &routed.shard;
    let call = Call { app, id, matched, merchant, component: &component, shard };
    let span =
        invocation_span(&id.0, Some(merchant), &shard.name, &matched.component, component.short_digest());
    // The trace the caller started, if it sent one (telemetry.rs).
    crate::telemetry::continue_trace(&span, parts.headers.get("traceparent").map(|v| v.as_bytes()));
    call.serve(parts, body).instrument(span).await
}

/// A request on its way to one component, for one merchant, on one shard.
struct Call<'a> {
    app: &'a App,
    id: &'a RequestId,
    matched: &'a Matched,
    merchant: i64,
    component: &'a LoadedComponent,
    shard: &'a Shard,
}

impl Call<'_> {
    /// The idempotency claim, the invocation and the answer.
    async fn serve(&self, parts: axum::http::request::Parts, body: Bytes) -> Result<Response, HostError> {
        let Call { app, merchant, component, shard, .. } = *self;
        let claim = match (parts.method == Method::POST, idempotency::key_from(&parts.headers)?) {
            (true, Some(key)) => {
                let fingerprint = idempotency::fingerprint(&parts.method, parts.uri.path(), &body);
                // The lock outlives the longest invocation.
                let lock_ttl = app.engine.config().timeout() + Duration::from_secs(30);
                match idempotency::begin(&app.kv, shard, merchant, key, fingerprint, lock_ttl).await? {
                    Outcome::Replay { status, body } => return Ok(replay(status, body)),
                    Outcome::Proceed(claim) => Some(claim),
                }
            }
            _ => None,
        };
        let mut result = self.invoke(parts, body, claim.as_ref()).await;
        if let Some(claim) = &claim {
            claim.release(&app.kv).await;
        }
        // Which version answered: what a deploy or canary is checked by.
        if let (Ok(response), Ok(value)) = (&mut result, HeaderValue::from_str(component.short_digest())) {
            response.headers_mut().insert(VERSION_HEADER, value);
        }
        result
    }

    async fn invoke(
        &self,
        parts: axum::http::request::Parts,
        body: Bytes,
        claim: Option<&Claim>,
    ) -> Result<Response, HostError> {
        let Call { app, id, matched, merchant, component, shard } = *self;
        // Only a component granted `sql` holds a shard transaction while it
        // runs: on SQLite a write transaction is the shard's single writer
        // slot. It is taken before the instance, so requests queued for the
        // writer hold no instance and their wait is not the function's time.
        let tx = if component.uses_sql() {
            let write = !matches!(parts.method, Method::GET | Method::HEAD);
            Some(begin(shard, write, id).await?)
        } else {
            None
        };
        let request = guest_request(parts, body, id, matched, merchant);
        let bindings = Bindings {
            request_id: id.0.clone(),
            sql: shard.bind(tx),
            kv: app.kv.clone(),
            broker: Some(app.broker.clone()),
        };

        let started = Instant::now();
        let (result, tx) = app.engine.invoke_http(component, bindings, request).await;
        let failure = match &result {
            Ok(output) if output.status.is_server_error() => Some("status_5xx"),
            Ok(_) => None,
            Err(e) => Some(e.kind()),
        };
        app.metrics.invoked(
            &matched.component,
            component.short_digest(),
            &component.stats,
            started.elapsed(),
            failure,
        );

        let output = match result {
            Ok(output) => output,
            Err(e) => {
                if let Some(tx) = tx {
                    tx.rollback().await;
                }
                return Err(invoke_error(e, id, &matched.component));
            }
        };
        if output.status.is_server_error() {
            if let Some(tx) = tx {
                tx.rollback().await;
            }
            return Ok(respond(output));
        }
        let mut tx = match (tx, claim) {
            (Some(tx), _) => tx,
            // No sql grant, but the idempotency record still needs a transaction.
            (None, Some(_)) => begin(shard, true, id).await?,
            (None, None) => return Ok(respond(output)),
        };
        if let Some(claim) = claim {
            if let Err(e) = claim.record(&mut tx, output.status, &output.body).await {
                tx.rollback().await;
                tracing::warn!(request_id = %id.0, error = ?e, "idempotency record refused; rolled back");
                return Err(HostError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "another request with this Idempotency-Key completed first",
                ));
            }
        }
        tx.commit().await.map_err(|e| {
            tracing::error!(request_id = %id.0, shard = %shard.name, error = ?e, "commit failed");
            HostError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_unavailable",
                "the shard could not commit; nothing was changed",
            )
        })?;
        Ok(respond(output))
    }
}

async fn begin(shard: &Shard, write: bool, id: &RequestId) -> Result<ShardTx, HostError> {
    shard.begin(write).await.map_err(|e| {
        tracing::error!(request_id = %id.0, shard = %shard.name, error = ?e, "cannot open a shard transaction");
        HostError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_unavailable",
            format!("shard `{}` is unavailable", shard.name),
        )
    })
}

/// The request the guest sees: the client's, minus any `payfn-*` header,
/// plus the host's facts as `payfn-*` headers.
fn guest_request(
    parts: axum::http::request::Parts,
    body: Bytes,
    id: &RequestId,
    matched: &Matched,
    merchant: i64,
) -> http::Request<Full<Bytes>> {
    let mut headers = parts.headers;
    let forged: Vec<HeaderName> =
        headers.keys().filter(|k| k.as_str().starts_with(HOST_HEADER_PREFIX)).cloned().collect();
    for name in forged {
        headers.remove(name);
    }
    let mut set = |name: String, value: &str| {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    };
    set("payfn-merchant-id".into(), &merchant.to_string());
    set("payfn-request-id".into(), &id.0);
    for (name, value) in &matched.params {
        set(format!("payfn-param-{name}"), value);
    }
    // W3C trace context: with export on, the invocation span (a child of the
    // caller's); else the caller's if well formed, else a new trace.
    let exported = crate::telemetry::traceparent(&tracing::Span::current());
    if let Some(value) = exported.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert("traceparent", value);
    }
    let traceparent =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|v| valid_traceparent(v));
    if traceparent.is_none() {
        let ids: [u8; 24] = rand::random();
        let value = format!("00-{}-{}-01", hex::encode(&ids[..16]), hex::encode(&ids[16..]));
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("traceparent", value);
        }
    }
    if !headers.contains_key("host") {
        headers.insert("host", HeaderValue::from_static("localhost"));
    }
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = parts.method;
    *request.uri_mut() = parts.uri;
    *request.headers_mut() = headers;
    request
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(parts.as_slice(), [v, t, p, f]
        if hex(v, 2) && *v != "ff" && hex(t, 32) && hex(p, 16) && hex(f, 2)
            && t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0'))
}

fn invoke_error(e: InvokeError, id: &RequestId, component: &str) -> HostError {
    match e {
        InvokeError::Timeout(limit) => {
            tracing::warn!(request_id = %id.0, component, "function timed out after {limit:?}");
            HostError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "function_timeout",
                format!("the function ran longer than {limit:?}"),
            )
        }
        InvokeError::Failed(why) => {
            tracing::error!(request_id = %id.0, component, "function failed: {why}");
            HostError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "function_failed",
                "the function failed; nothing was changed",
            )
        }
        InvokeError::Unavailable(why) => {
            tracing::error!(request_id = %id.0, component, "no instance: {why}");
            HostError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "no function instance is free; retry shortly",
            )
        }
        InvokeError::Refused(_) | InvokeError::RefusedEvent(..) | InvokeError::WrongTrigger => {
            tracing::error!(request_id = %id.0, component, "{e}");
            HostError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "function_failed",
                "the function failed; nothing was changed",
            )
        }
    }
}

fn respond(output: HttpOutput) -> Response {
    let mut response = Response::new(Body::from(output.body));
    *response.status_mut() = output.status;
    *response.headers_mut() = output.headers;
    response
}

fn replay(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
