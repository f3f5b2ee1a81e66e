//! WASIp3 beside WASIp2 (issue 19, part 2): a component exporting
//! `wasi:http/handler@0.3.0` (spin-sdk 7) is served by the HTTP trigger with
//! the shard transaction, deadline, memory limit, metrics and hot swap a
//! WASIp2 step gets.

mod support;

use support::{manifest, test_component, Backend, Host};

fn probe_routes() -> String {
    [
        test_component("/test/p3", "p3", "test_p3_probe.wasm", r#"["sql", "log"]"#),
        test_component("/test/trap", "trap", "test_trap.wasm", r#"["sql", "log"]"#),
    ]
    .join("\n")
}

async fn p3_host(backend: Backend) -> Host {
    backend
        .start_with(&manifest(&probe_routes()), "[engine]\ntimeout_ms = 1000\nmemory_limit_mb = 32\n")
        .await
}

/// Outbox rows the probes wrote on the merchant's shard.
async fn probe_rows(host: &Host, aggregate: &str) -> i64 {
    // Merchant 1 is on the second default shard.
    let mut db = host.shard("shard-2").await;
    db.i64(&format!("SELECT COUNT(*) FROM outbox WHERE aggregate_id = '{aggregate}'")).await
}

async fn a_wasip3_component_gets_what_a_wasip2_step_gets(backend: Backend) {
    let host = p3_host(backend).await;
    let m = host.merchant(1);

    // It answers, bound to the merchant's shard through payfn's `sql`.
    let reply = m.get("/test/p3").await;
    assert_eq!((reply.status, String::from_utf8_lossy(&reply.bytes).as_ref()), (200, "p3 on shard-2"));

    // One invocation is one shard transaction: kept on a 2xx, rolled back
    // on a 5xx and on a trap.
    assert_eq!(m.post("/test/p3?mode=write", "{}").await.status, 201);
    assert_eq!(m.post("/test/p3?mode=error", "{}").await.status, 500);
    m.post("/test/p3?mode=trap", "{}").await.assert_error(500, "function_failed");
    assert_eq!(probe_rows(&host, "p3").await, 1, "only the 201's write stands");

    // The deadline and the memory limit hold; the host goes on serving.
    m.post("/test/p3?mode=loop", "{}").await.assert_error(504, "function_timeout");
    m.post("/test/p3?mode=hog", "{}").await.assert_error(500, "function_failed");
    assert_eq!(m.get("/test/p3").await.status, 200);
    let log = host.log();
    assert!(log.contains("memory limit of 32 MiB exceeded"), "{log}");

    // Counted like any invocation: seven calls so far, two of them failures
    // of the guest (trap, hog), one a timeout, one a 5xx answer.
    let metrics = host.metrics().await;
    let count = |name, labels: &[(&str, &str)]| support::metric(&metrics, name, labels);
    let version = reply.headers["payfn-version"].to_str().unwrap().to_string();
    assert_eq!(
        count("payfn_invocations_total", &[("component", "p3"), ("version", &version)]),
        7.0,
        "{metrics}"
    );
    assert_eq!(count("payfn_invocation_errors_total", &[("component", "p3"), ("kind", "timeout")]), 1.0);
    assert_eq!(count("payfn_invocation_errors_total", &[("component", "p3"), ("kind", "trap")]), 2.0);
    assert_eq!(count("payfn_invocation_errors_total", &[("component", "p3"), ("kind", "status_5xx")]), 1.0);
}

on_backends!(a_wasip3_component_gets_what_a_wasip2_step_gets);

/// A WASIp3 version hot-swaps in for a WASIp2 one under the same route, and
/// back: the export is told apart per version, not per route.
#[tokio::test]
async fn a_route_swaps_between_wasip2_and_wasip3_versions() {
    let host = Host::start_with(&manifest(&probe_routes()), "");
    let m = host.merchant(1);
    m.post("/test/trap?mode=error", "{}").await.assert_error(500, "internal");
    let p2_version = m.post("/test/trap?mode=error", "{}").await.headers["payfn-version"].clone();

    let p3_file = support::wasm_dir().join("test_p3_probe.wasm").display().to_string();
    let out = host.admin(&["deploy", "trap", &p3_file, "--version", "p3"]).await;
    assert!(out.ok, "deploy: {}", out.stderr);
    let reply = m.post("/test/trap?mode=write", "{}").await;
    assert_eq!(reply.status, 201, "the WASIp3 version serves the route");
    assert_ne!(reply.headers["payfn-version"], p2_version);
    assert_eq!(probe_rows(&host, "p3").await, 1);

    let out = host.admin(&["rollback", "trap"]).await;
    assert!(out.ok, "rollback: {}", out.stderr);
    let reply = m.post("/test/trap?mode=error", "{}").await;
    reply.assert_error(500, "internal");
    assert_eq!(reply.headers["payfn-version"], p2_version, "the WASIp2 version serves again");
}
