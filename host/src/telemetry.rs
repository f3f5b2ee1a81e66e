//! OpenTelemetry traces over OTLP: off unless an endpoint is configured.
//!
//! The host's `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry`. A payment flow is one trace, carried by the W3C
//! `traceparent` at each hop:
//!
//! 1. the HTTP trigger's `invocation` span continues the caller's
//!    `traceparent` (or starts a trace), and the component sees that span
//!    as its parent, so the outbox rows it writes carry it;
//! 2. when the relay produces a row, a `publish` span continues the row's
//!    context, and the Kafka header carries the `publish` span onward;
//! 3. the Kafka trigger's `invocation` span (settlement) continues the
//!    header's context.
//!
//! Configured with the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` is `http/protobuf` (default) or
//! `http/json`; `OTEL_SERVICE_NAME` defaults to `payfn`; the batch
//! processor honours `OTEL_BSP_*`. Timer firings are not exported: an idle
//! relay fires five times a second per shard, and each firing would be a
//! trace of its own; what it publishes is exported within the trace of the
//! request that wrote the row.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The target of spans and events that are never exported.
pub const NOT_EXPORTED: &str = "payfn::timer";

const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The provider while export is on, to flush it at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The exporting layer, if an endpoint is configured.
pub fn layer<S>() -> anyhow::Result<Option<impl Layer<S>>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(endpoint) = ENDPOINT_VARS.iter().find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))
    else {
        return Ok(None);
    };
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Err(_) | Ok("http/protobuf") => Protocol::HttpBinary,
        Ok("http/json") => Protocol::HttpJson,
        Ok(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other}: payfn exports over http/protobuf or http/json"
        ),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(traces_url(&endpoint))
        .build()
        .with_context(|| format!("OTLP exporter for {endpoint}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "payfn".to_string());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("payfn");
    let _ = PROVIDER.set(provider);
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(exported())))
}

/// payfn's own spans and events, but timer firings'.
fn exported<S>() -> impl Filter<S> {
    filter_fn(|meta| meta.target().starts_with("payfn") && !meta.target().starts_with(NOT_EXPORTED))
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` names the collector; the traces signal
/// has its own path under it. A `_TRACES_ENDPOINT` is taken as given.
fn traces_url(endpoint: &str) -> String {
    if std::env::var(ENDPOINT_VARS[0]).is_ok_and(|v| !v.is_empty()) {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// Exports what is still buffered; called as the host stops.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("OTLP export at shutdown failed: {e}");
        }
    }
}

/// Makes `span` a child of the remote span `traceparent` names (a W3C
/// `traceparent` value); a missing or malformed value leaves it a root.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&[u8]>) {
    if !enabled() {
        return;
    }
    let Some(value) = traceparent.and_then(|v| std::str::from_utf8(v).ok()) else { return };
    let carrier = HashMap::from([("traceparent".to_string(), value.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` naming `span`, while export is on.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Sets the `traceparent` a guest's request carries: with export on, the
/// current span's (the invocation's, a child of the caller's); else the
/// caller's if well formed; else a new trace's.
pub fn propagate(headers: &mut http::HeaderMap) {
    let exported = traceparent(&tracing::Span::current());
    if let Some(value) = exported.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
        headers.insert("traceparent", value);
    }
    let caller = headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|v| valid_traceparent(v));
    if caller.is_none() {
        let ids: [u8; 24] = rand::random();
        let value = format!("00-{}-{}-01", hex::encode(&ids[..16]), hex::encode(&ids[16..]));
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert("traceparent", value);
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(parts.as_slice(), [v, t, p, f]
        if hex(v, 2) && *v != "ff" && hex(t, 32) && hex(p, 16) && hex(f, 2)
            && t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0'))
}
