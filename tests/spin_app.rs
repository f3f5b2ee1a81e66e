//! A plain Spin app on payfn (issue 19, parts 3 and 5): `tests/components/
//! spin-app`, written only against spin-sdk 7, runs from a Spin manifest
//! with no payfn key, and gets Spin's variables and key-value interfaces
//! served from payfn's providers and kv backends.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use support::{wasm_dir, Host, Upstream};

/// A Spin manifest as `spin new` would write it, plus the app's variables
/// and stores: no `capabilities`, nothing payfn-specific.
fn spin_manifest(upstream_port: u16) -> String {
    format!(
        r#"spin_manifest_version = 2

[application]
name = "plain-spin-app"
version = "0.1.0"
authors = ["A Spin user"]
description = "Written against spin-sdk 7 only"

[variables]
token = {{ required = true, secret = true }}
api_host = {{ default = "api.example.com" }}
region = {{ default = "eu" }}
upstream = {{ default = "127.0.0.1:{upstream_port}" }}

[[trigger.http]]
route = "/spin/..."
component = "spin-app"

[[trigger.http]]
route = "/neighbour/..."
component = "neighbour"

[component.spin-app]
source = "{wasm}"
allowed_outbound_hosts = ["http://{{{{ upstream }}}}"]
key_value_stores = ["default", "sessions"]
[component.spin-app.variables]
token = "{{{{ token }}}}"
greeting = "hello from {{{{ api_host }}}} in {{{{region}}}}"

[component.neighbour]
source = "{wasm}"
key_value_stores = ["default"]
"#,
        wasm = wasm_dir().join("test_spin_app.wasm").display()
    )
}

/// A trace collector that takes and drops every export, so the host
/// exports spans (and propagates `traceparent`) without a real backend.
async fn trace_sink() -> String {
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "{}" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    endpoint
}

const TOKEN: &str = "tok-5ecret-77a1";

/// The runtime config: a store for `sessions` on the backend's kv, and a
/// value for `region` from the runtime-config provider.
fn runtime_config(kv_section: &str) -> String {
    format!(
        "{kv_section}\n[variables]\nvalues = {{ region = \"ap-northeast-2\" }}\n\n\
         [key_value_store.sessions]\nbackend = \"memory\"\n"
    )
}

/// Runs the app's checks on a host whose `[kv]` is `kv_section` (empty:
/// in-process memory); with a Redis prefix, also checks where the keys land.
async fn a_plain_spin_app_runs_unmodified(kv_section: &str, redis_prefix: Option<&str>) {
    let upstream = Upstream::start("pong").await;
    let traces = trace_sink().await;
    let host = Host::start_with_env(
        &spin_manifest(upstream.port),
        &runtime_config(kv_section),
        &[
            ("SPIN_VARIABLE_TOKEN", TOKEN),
            ("SPIN_VARIABLE_API_HOST", "acquirer.test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &traces),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    let m = host.merchant(1);
    let text = |r: &support::Reply| String::from_utf8_lossy(&r.bytes).into_owned();

    // Variables: the environment beats the default, the runtime config
    // gives `region`; a component sees only its own names.
    let token = m.get("/spin/variables/token").await;
    assert_eq!((token.status, text(&token)), (200, TOKEN.to_string()));
    let greeting = m.get("/spin/variables/greeting").await;
    assert_eq!(text(&greeting), "hello from acquirer.test in ap-northeast-2");
    let undeclared = m.get("/spin/variables/api_host").await;
    assert_eq!(undeclared.status, 404, "{}", text(&undeclared));
    assert!(text(&undeclared).contains("Undefined"), "{}", text(&undeclared));
    assert_eq!(m.get("/neighbour/variables/token").await.status, 404);
    assert_eq!(m.get("/spin/variables/Not-A-Name").await.status, 400);

    // Key-value: the labels the component lists, nothing else.
    assert_eq!(m.send("PUT", "/spin/kv/default/b", Some("2"), &[]).await.status, 204);
    assert_eq!(m.send("PUT", "/spin/kv/default/a", Some("1"), &[]).await.status, 204);
    let a = m.get("/spin/kv/default/a").await;
    assert_eq!((a.status, text(&a)), (200, "1".to_string()));
    assert_eq!(text(&m.get("/spin/kv/default").await), "a\nb");
    assert_eq!(m.send("DELETE", "/spin/kv/default/a", None, &[]).await.status, 204);
    assert_eq!(m.get("/spin/kv/default/a").await.status, 404);
    assert_eq!(text(&m.get("/spin/kv/default").await), "b");
    // A label is one keyspace for the app's components that list it; other
    // labels are apart, and one not listed is refused.
    assert_eq!(text(&m.get("/neighbour/kv/default/b").await), "2");
    assert_eq!(m.send("PUT", "/spin/kv/sessions/s1", Some("x"), &[]).await.status, 204);
    assert_eq!(text(&m.get("/spin/kv/sessions").await), "s1");
    assert_eq!(m.get("/spin/kv/sessions/b").await.status, 404);
    let denied = m.get("/neighbour/kv/sessions/s1").await;
    assert_eq!(denied.status, 403, "{}", text(&denied));

    // On Redis, `default` is the host's store, under the label's keyspace.
    if let Some(prefix) = redis_prefix {
        let client = redis::Client::open(support::REDIS).unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let stored: Option<Vec<u8>> =
            redis::cmd("GET").arg(format!("{prefix}s:default:b")).query_async(&mut redis).await.unwrap();
        assert_eq!(stored.as_deref(), Some(&b"2"[..]));
    }

    // Outbound HTTP: to the allowed host (a template over `upstream`),
    // on one reused connection, carrying the invocation's traceparent.
    let ping = format!("/spin/outbound?url=http://127.0.0.1:{}/ping", upstream.port);
    for _ in 0..3 {
        let reply = m.get(&ping).await;
        assert_eq!((reply.status, text(&reply)), (200, "pong".to_string()));
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1, "the connection was not reused");
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for head in &heads {
        assert!(head.starts_with("GET /ping HTTP/1.1"), "{head}");
        assert!(head.to_ascii_lowercase().contains("traceparent: 00-"), "no traceparent: {head}");
    }
    // Any other destination fails at once, named in the log; the neighbour
    // may call nowhere.
    let closed = support::free_port();
    let denied = m.get(&format!("/spin/outbound?url=http://127.0.0.1:{closed}/")).await;
    assert_eq!(denied.status, 502);
    assert!(text(&denied).contains("HttpRequestDenied"), "{}", text(&denied));
    let neighbour = m.get(&format!("/neighbour/outbound?url=http://127.0.0.1:{}/ping", upstream.port)).await;
    assert!(text(&neighbour).contains("HttpRequestDenied"), "{}", text(&neighbour));
    assert_eq!(upstream.heads.lock().unwrap().len(), 3, "a denied request reached the upstream");
    let log = host.log();
    assert!(
        log.contains(&format!("http://127.0.0.1:{closed}")) && log.contains("not in allowed_outbound_hosts"),
        "{log}"
    );
    // Counted per destination.
    let metrics = host.metrics().await;
    let count = |labels: &[(&str, &str)]| support::metric(&metrics, "payfn_outbound_requests_total", labels);
    let allowed = format!("http://127.0.0.1:{}", upstream.port);
    assert_eq!(count(&[("component", "spin-app"), ("destination", &allowed), ("outcome", "2xx")]), 3.0);
    assert_eq!(count(&[("component", "spin-app"), ("outcome", "denied")]), 1.0);
    assert_eq!(count(&[("component", "neighbour"), ("outcome", "denied")]), 1.0);

    // A secret's value is never logged.
    let log = host.log();
    assert!(!log.contains(TOKEN), "the secret leaked into the log:\n{log}");
}

#[tokio::test]
async fn a_plain_spin_app_runs_unmodified_on_the_embedded_store() {
    a_plain_spin_app_runs_unmodified("", None).await;
}

#[tokio::test]
async fn a_plain_spin_app_runs_unmodified_on_redis() {
    let prefix = format!("payfn-test-spin-{}:", std::process::id());
    let kv = format!("[kv]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n", support::REDIS);
    a_plain_spin_app_runs_unmodified(&kv, Some(&prefix)).await;
}

/// Runs `payfn up` on the Spin manifest, which must fail; returns stderr.
fn refused(runtime_config: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), spin_manifest(9)).unwrap();
    std::fs::write(dir.path().join("runtime-config.toml"), runtime_config).unwrap();
    // The test's own environment has no SPIN_VARIABLE_TOKEN.
    assert!(std::env::var_os("SPIN_VARIABLE_TOKEN").is_none());
    support::refused_start(dir.path(), env)
}

#[test]
fn what_a_spin_app_asks_for_and_does_not_get_is_named() {
    // A required variable no provider sets stops the host, named, with
    // where to set it.
    let err = refused(&runtime_config(""), &[]);
    assert!(err.contains("`token` is required") && err.contains("SPIN_VARIABLE_TOKEN"), "{err}");
    // A store label declared nowhere.
    let err = refused("", &[("SPIN_VARIABLE_TOKEN", TOKEN)]);
    assert!(err.contains("component.spin-app.key_value_stores") && err.contains("`sessions`"), "{err}");
    // A runtime-config value for a variable the manifest does not declare.
    let err =
        refused(&runtime_config("").replace("region = ", "regoin = "), &[("SPIN_VARIABLE_TOKEN", TOKEN)]);
    assert!(err.contains("values.regoin"), "{err}");
}

/// An upstream that accepts and never answers: the host's first-byte
/// timeout ends the call (a 502 from the app, not the invocation deadline's
/// 504), counted as a timeout, and the host goes on serving.
#[tokio::test]
async fn an_outbound_call_to_a_silent_host_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let config = format!("{}\n[outbound_http]\nfirst_byte_timeout = \"300ms\"\n", runtime_config(""));
    let host = Host::start_with_env(&spin_manifest(port), &config, &[("SPIN_VARIABLE_TOKEN", TOKEN)]);
    let m = host.merchant(1);
    let reply = m.get(&format!("/spin/outbound?url=http://127.0.0.1:{port}/slow")).await;
    assert_eq!(reply.status, 502, "{}", String::from_utf8_lossy(&reply.bytes));
    assert!(
        String::from_utf8_lossy(&reply.bytes).contains("Timeout"),
        "{}",
        String::from_utf8_lossy(&reply.bytes)
    );
    assert_eq!(held.lock().unwrap().len(), 1, "the request never reached the silent host");
    let metrics = host.metrics().await;
    let timeouts = support::metric(
        &metrics,
        "payfn_outbound_requests_total",
        &[("component", "spin-app"), ("outcome", "timeout")],
    );
    assert_eq!(timeouts, 1.0, "{metrics}");
    assert_eq!(m.get("/spin/variables/token").await.status, 200);
}

#[test]
fn a_spin_interface_payfn_does_not_serve_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // What a spin-sdk app using SQLite imports; the check comes before
    // anything else about the component.
    let component = wat::parse_str(r#"(component (import "spin:sqlite/sqlite@3.1.0" (instance)))"#).unwrap();
    std::fs::write(dir.path().join("uses-sqlite.wasm"), component).unwrap();
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"a\"\n\
                    [[trigger.http]]\nroute = \"/...\"\ncomponent = \"db\"\n\
                    [component.db]\nsource = \"uses-sqlite.wasm\"\n";
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    let err = support::refused_start(dir.path(), &[]);
    assert!(err.contains("`spin:sqlite/sqlite@3.1.0`, a Spin interface payfn does not serve"), "{err}");
    assert!(err.contains("spin:variables/variables") && err.contains("spin:key-value/key-value"), "{err}");
}

/// A WASIp2 step on payfn-sdk reads its variables the way a Spin app does
/// (synchronously, through `payfn_sdk::variables`), over the HTTP trigger's
/// WASIp2 path.
#[tokio::test]
async fn a_wasip2_step_reads_its_variables() {
    let probe = support::test_component("/test/kv-a", "kv-a", "test_kv_probe.wasm", r#"["kv", "log"]"#);
    let manifest = support::manifest(&format!(
        "{probe}[component.kv-a.variables]\ngreeting = \"hello {{{{ region }}}}\"\n\n\
         [variables]\nregion = {{ default = \"eu\" }}\n"
    ));
    let host = Host::start_with_env(&manifest, "", &[("SPIN_VARIABLE_REGION", "ap-northeast-2")]);
    let m = host.merchant(1);
    let ask = |name: &str| format!(r#"{{"op":"variable","key":"{name}"}}"#);
    let reply = m.post("/test/kv-a", &ask("greeting")).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.bytes));
    assert_eq!(reply.json()["result"]["Ok"], "hello ap-northeast-2");
    let undefined = m.post("/test/kv-a", &ask("region")).await.json();
    assert!(undefined["result"]["Err"].as_str().unwrap_or("").contains("Undefined"), "{undefined}");
}
