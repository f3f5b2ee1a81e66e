//! A trapping, runaway or memory-hungry component fails its own request with
//! the right status; the host and concurrent requests carry on.

mod support;

use futures::future::join_all;
use support::{manifest, test_component, Backend, Host};

async fn isolation_host(backend: Backend) -> Host {
    let extra = [
        test_component("/test/trap", "trap", "test_trap.wasm", r#"["sql", "log"]"#),
        test_component("/test/spin", "spin", "test_spin.wasm", r#"["log"]"#),
        test_component("/test/hog", "hog", "test_hog.wasm", r#"["log"]"#),
    ]
    .join("\n");
    backend.start_with(&manifest(&extra), "[engine]\ntimeout_ms = 1000\nmemory_limit_mb = 32\n").await
}

async fn failures_cost_one_request_only(backend: Backend) {
    let host = isolation_host(backend).await;
    let m = host.merchant(1);

    let trap = m.post("/test/trap", "{}");
    let spin = m.post("/test/spin", "{}");
    let hog = m.post("/test/hog", "{}");
    let normal = join_all((0..30).map(|i| {
        m.post(
            "/payments/authorize",
            if i % 2 == 0 {
                r#"{"amount":100,"currency":"KRW"}"#
            } else {
                r#"{"amount":200,"currency":"USD"}"#
            },
        )
    }));
    let (trap, spin, hog, normal) = tokio::join!(trap, spin, hog, normal);

    trap.assert_error(500, "function_failed");
    spin.assert_error(504, "function_timeout");
    hog.assert_error(500, "function_failed");
    assert!(
        normal.iter().all(|r| r.status == 201),
        "{:?}",
        normal.iter().map(|r| r.status).collect::<Vec<_>>()
    );

    // A 5xx answer rolls back like a trap does.
    m.post("/test/trap?mode=error", "{}").await.assert_error(500, "internal");

    // The trap's and the 5xx's writes were rolled back.
    let mut db = host.shard("shard-2").await;
    let leaked = db.i64("SELECT COUNT(*) FROM outbox WHERE aggregate_id = 'trap'").await;
    assert_eq!(leaked, 0, "a trapped invocation must commit nothing");

    // The host logged each failure with its request id, and still serves.
    let log = host.log();
    let trap_id = trap.json()["requestId"].as_str().unwrap().to_string();
    assert!(log.contains("function failed") && log.contains(&format!("request_id={trap_id}")), "{log}");
    assert!(log.contains("memory limit of 32 MiB exceeded"), "{log}");
    for _ in 0..3 {
        m.post("/test/trap", "{}").await.assert_error(500, "function_failed");
        assert_eq!(m.authorize(100).await.len(), 36);
    }
    let metrics = host.metrics().await;
    let errors = |component, kind| {
        support::metric(
            &metrics,
            "payfn_invocation_errors_total",
            &[("component", component), ("kind", kind)],
        )
    };
    assert_eq!(errors("spin", "timeout"), 1.0, "{metrics}");
    assert_eq!(errors("trap", "trap"), 4.0, "{metrics}");
}

on_backends!(failures_cost_one_request_only);
