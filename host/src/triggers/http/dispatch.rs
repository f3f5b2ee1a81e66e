//! Running a component for a matched, authenticated, admitted request.
//!
//! DESIGN.md rule 2: one invocation is one shard transaction. The host
//! opens it on the merchant's shard, the component's `sql` calls run in it,
//! and the host commits only when the component returned a non-5xx
//! response; a trap, a timeout or a 5xx rolls it back. The idempotency
//! record commits in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Full;

use super::auth::Merchant;
use super::body;
use super::errors::HostError;
use super::idempotency::{self, Claim, Outcome};
use super::request_id::RequestId;
use super::routes::Matched;
use super::App;
use crate::directory::RouteError;
use crate::engine::{HttpOutput, Invocation, InvokeError, LoadedComponent, Settled, Trace};
use crate::shards::{Shard, ShardTx};

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
    call.serve(parts, body).await
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
        let tx = if component.holds_transaction() {
            let write = !matches!(parts.method, Method::GET | Method::HEAD);
            Some(begin(shard, write, id).await?)
        } else {
            None
        };
        // The caller's trace, continued by the invocation's span (telemetry.rs).
        let traceparent = parts.headers.get("traceparent").map(|v| v.as_bytes().to_vec());
        let request = guest_request(parts, body, id, matched, merchant);
        let invocation = Invocation {
            component,
            request_id: id.0.clone(),
            merchant: Some(merchant),
            shard: Some(shard),
            tx,
            trace: Trace::Continue(traceparent.as_deref()),
        };
        let mut outcome = app.engine.invoke_http(invocation, request).await;
        let keeps = |output: &HttpOutput| !output.status.is_server_error();
        if let (None, Some(_), Ok(output)) = (&outcome.tx, claim, &outcome.result) {
            // No sql grant, but the idempotency record still needs a transaction.
            if keeps(output) {
                outcome.tx = Some(begin(shard, true, id).await?);
            }
        }
        let record = async |output: &HttpOutput, tx: &mut ShardTx| match claim {
            Some(claim) => claim.record(tx, output.status, &output.body).await,
            None => Ok(()),
        };
        match outcome.settle(keeps, record).await {
            Settled::Committed(output) | Settled::Discarded(output) => Ok(respond(output)),
            Settled::Failed(e) => Err(invoke_error(e)),
            Settled::Refused(e) => {
                tracing::warn!(request_id = %id.0, error = ?e, "idempotency record refused; rolled back");
                Err(HostError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "another request with this Idempotency-Key completed first",
                ))
            }
            Settled::CommitFailed(e) => {
                tracing::error!(request_id = %id.0, shard = %shard.name, error = ?e, "commit failed");
                Err(HostError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shard_unavailable",
                    "the shard could not commit; nothing was changed",
                ))
            }
        }
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
    // The trace context is set inside the invocation's span (engine/envelope.rs).
    if !headers.contains_key("host") {
        headers.insert("host", HeaderValue::from_static("localhost"));
    }
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = parts.method;
    *request.uri_mut() = parts.uri;
    *request.headers_mut() = headers;
    request
}

/// The answer to an invocation that produced no result (the envelope has
/// logged why, in the invocation's span).
fn invoke_error(e: InvokeError) -> HostError {
    match e {
        InvokeError::Timeout(limit) => HostError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "function_timeout",
            format!("the function ran longer than {limit:?}"),
        ),
        InvokeError::Unavailable(_) => HostError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "no function instance is free; retry shortly",
        ),
        InvokeError::Failed(_)
        | InvokeError::Refused(_)
        | InvokeError::RefusedEvent(..)
        | InvokeError::WrongTrigger => HostError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_failed",
            "the function failed; nothing was changed",
        ),
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
