//! OpenTelemetry traces: one trace from the payment request, through the
//! outbox relay's publish, to the settlement invocation, exported over
//! OTLP/HTTP to a collector this test runs.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{settled, wait_for, Host, SHARDS};

const SETTLE: Duration = Duration::from_secs(60);

/// One exported span: what the assertions look at.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    component: Option<String>,
    service: String,
}

/// An OTLP/HTTP (JSON) trace receiver on a free port.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let request: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                    sink.lock().unwrap().extend(spans_of(&request));
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// The spans of an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn spans_of(request: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| text(&a["value"]["stringValue"]))
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let component = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "component")
                    .map(|a| text(&a["value"]["stringValue"]));
                out.push(Span {
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    component,
                    service: service.clone(),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_outbox_and_kafka_to_settlement() {
    let collector = Collector::start().await;
    let host = Host::start_with_env(
        &support::manifest(""),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "payfn-under-test"),
        ],
    );
    let m = host.merchant(2);
    let id = m.authorize(3000).await;
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace}-{caller}-01");
    let reply = m
        .send("POST", &format!("/payments/{id}/capture"), Some("{}"), &[("traceparent", &traceparent)])
        .await;
    assert_eq!(reply.status, 200);
    wait_for(SETTLE, "the capture to be settled", || settled(&host, SHARDS)).await;

    // HTTP -> component: the capture's invocation span is the caller's child.
    let mut chain = None;
    for _ in 0..300 {
        let spans = collector.spans();
        let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
        let capture =
            in_trace.iter().find(|s| s.name == "invocation" && s.component.as_deref() == Some("capture"));
        let publish = capture
            .and_then(|c| in_trace.iter().find(|s| s.name == "publish" && s.parent_span_id == c.span_id));
        let settlement = publish.and_then(|p| {
            in_trace
                .iter()
                .find(|s| s.component.as_deref() == Some("settlement") && s.parent_span_id == p.span_id)
        });
        if let (Some(c), Some(p), Some(s)) = (capture, publish, settlement) {
            chain = Some(((*c).clone(), (*p).clone(), (*s).clone(), spans.clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((capture, publish, settlement, spans)) = chain else {
        panic!("no request -> publish -> settlement chain in trace {trace}: {:#?}", collector.spans())
    };
    assert_eq!(capture.parent_span_id, caller, "the invocation continues the caller's trace");
    assert_eq!(capture.service, "payfn-under-test");
    assert_eq!(settlement.name, "invocation");
    assert_ne!(publish.span_id, settlement.span_id);

    // Component -> outbox: the row the capture wrote names the invocation span.
    let mut db = host.shard("shard-1").await;
    let stored =
        db.column("SELECT traceparent FROM outbox WHERE event_type = 'payment.captured'").await[0].text();
    assert_eq!(stored, format!("00-{trace}-{}-01", capture.span_id));

    // The authorization had no traceparent: a trace of its own, not this one.
    let authorize: Vec<&Span> =
        spans.iter().filter(|s| s.component.as_deref() == Some("authorize")).collect();
    assert!(!authorize.is_empty() && authorize.iter().all(|s| s.trace_id != trace), "{authorize:#?}");
    // Timer firings are never exported: one trace per relay firing would drown the rest.
    assert!(
        spans.iter().all(|s| s.component.as_deref() != Some("outbox-relay")),
        "relay firings exported: {spans:#?}"
    );
}

#[test]
fn an_unsupported_protocol_is_refused_at_start() {
    support::build_components();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), support::manifest("")).unwrap();
    let out = std::process::Command::new(support::PAYFN)
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(dir.path().join("spin.toml"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{stderr}");
}
