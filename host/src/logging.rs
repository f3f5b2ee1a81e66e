//! The process's log: human-readable text on a terminal, or one JSON object
//! per line for a log collector (`--log-format json`).
//!
//! Every invocation runs inside a span named `invocation` that carries
//! `request_id`, `merchant`, `shard`, `component` and `version` (the HTTP,
//! timer and Kafka triggers open it), so each line logged while it runs,
//! the host's own and the component's (`log` capability), can be tied to
//! the payment request that caused it. In JSON the span's fields are the
//! `span` object of each line.

use std::sync::OnceLock;

use clap::ValueEnum;

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-12-02T07:00:00Z  INFO invocation{request_id=…}: target: message`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the
    /// event's fields (`message` among them) and `span`.
    Json,
}

/// What is logged unless `RUST_LOG` says otherwise.
const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn,sqlx=warn";

/// The format [`init`] installed.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` filters, as usual; spans are
/// also exported over OTLP when telemetry.rs is configured to.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let _ = FORMAT.set(format);
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        // Colours only for a terminal: logs that go to files stay plain.
        LogFormat::Text => lines.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).boxed(),
        LogFormat::Json => {
            lines.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed()
        }
    };
    // The filter is global, so with export off the hot path is as before:
    // call sites below the level are disabled once, not checked per call.
    tracing_subscriber::registry()
        .with(filter)
        .with(crate::telemetry::layer()?)
        .with(lines)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// The span an invocation runs in (see the module docs). A timer firing
/// serves a whole shard, so it has no merchant.
pub fn invocation_span(
    request_id: &str,
    merchant: Option<i64>,
    shard: &str,
    component: &str,
    version: &str,
) -> tracing::Span {
    // Display, not Debug: a text line reads `request_id=req_...`, unquoted,
    // as the trigger's own fields do.
    tracing::info_span!(
        "invocation",
        request_id = %request_id,
        merchant,
        shard = %shard,
        component = %component,
        version = %version
    )
}

/// The span a timer firing runs in: an invocation span whose target keeps
/// it out of trace export (telemetry.rs says why).
pub fn timer_span(request_id: &str, shard: &str, component: &str, version: &str) -> tracing::Span {
    tracing::info_span!(
        target: "payfn::timer",
        "invocation",
        request_id = %request_id,
        shard = %shard,
        component = %component,
        version = %version
    )
}

/// One line of `payfn up`'s start-up summary (shards, routes, listening
/// address): as it is on a terminal, or as an info event in JSON, so a
/// collector never sees a line that is not JSON.
pub fn banner(line: std::fmt::Arguments<'_>) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::info!(target: "payfn::banner", "{}", line.to_string().trim_start()),
        _ => eprintln!("{line}"),
    }
}
