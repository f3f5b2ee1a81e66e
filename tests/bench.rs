//! `payfn bench`, the load generator: what it reports is what the host did.

mod support;

use support::{count, Host, SHARDS};

/// Runs `payfn bench` against `host` and returns its JSON summary.
async fn bench(host: &Host, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(support::PAYFN)
        .arg("bench")
        .args(args)
        .args(["--url", &host.base, "--json", "-", "--manifest"])
        .arg(host.app.join("spin.toml"))
        .output()
        .await
        .expect("run payfn bench");
    assert!(out.status.success(), "payfn bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

const NO_LIMITS: &str = "[http.rate_limits]\ndefault_capacity = 1000000000\ncomponents = {}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_flow_counts_what_the_host_committed() {
    let host = Host::start_with(&support::manifest(""), NO_LIMITS);
    let summary =
        bench(&host, &["--scenario", "full", "--rate", "50", "--duration", "2s", "--merchants", "10"]).await;
    // 50 iterations a second for 2 s, three requests each.
    assert_eq!(summary["iterations"], 100, "{summary}");
    assert_eq!(summary["dropped_iterations"], 0, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["requests"], 300, "{summary}");
    for step in ["authorize", "capture", "refund"] {
        assert_eq!(summary["steps"][step]["count"], 100, "{summary}");
        assert!(summary["steps"][step]["p99_ms"].as_f64().unwrap() > 0.0, "{summary}");
    }
    // 300 HTTP requests cost the load generator some CPU, and at most what
    // two cores can give (the machine has two).
    let cores = summary["load_generator_cores"].as_f64().expect("the load generator's CPU is reported");
    assert!(cores > 0.0 && cores <= 2.0, "{summary}");
    // Both shards took them, and every one is in the shards.
    assert_eq!(count(&host, SHARDS, "SELECT COUNT(*) FROM payments").await, 100);
    assert_eq!(count(&host, SHARDS, "SELECT COUNT(*) FROM refunds").await, 100);
    assert_eq!(count(&host, &["shard-1"], "SELECT COUNT(*) FROM payments").await, 50);
    support::assert_money_invariants(&host, SHARDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_overload_are_counted_not_hidden() {
    // Ten authorizations a minute per merchant: most of the run is refused.
    let limits = "[http.rate_limits]\ndefault_capacity = 10\ncomponents = {}\n";
    let host = Host::start_with(&support::manifest(""), limits);
    // Windows are fixed minutes: a run that straddles one would get a
    // second allowance. Start well inside a minute.
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if second >= 55 {
        tokio::time::sleep(std::time::Duration::from_secs(61 - second)).await;
    }
    let summary = bench(&host, &["--rate", "40", "--duration", "1s", "--merchants", "2"]).await;
    assert_eq!(summary["iterations"], 40, "{summary}");
    assert_eq!(summary["error_kinds"]["authorize 429"], 20, "{summary}");
    assert_eq!(summary["errors"], 20, "{summary}");

    // One iteration in flight at most, at a rate a single slot cannot keep:
    // the rest are dropped and counted.
    let host = Host::start_with(&support::manifest(""), NO_LIMITS);
    let summary = bench(&host, &["--rate", "2000", "--duration", "1s", "--max-in-flight", "1"]).await;
    let (sent, dropped) =
        (summary["iterations"].as_u64().unwrap(), summary["dropped_iterations"].as_u64().unwrap());
    assert_eq!(sent + dropped, 2000, "{summary}");
    assert!(dropped > 0, "{summary}");
    assert_eq!(count(&host, SHARDS, "SELECT COUNT(*) FROM payments").await, sent as i64);
}

/// The peer comparison's component: a bare `wasi:http` handler, served by
/// payfn like any other component and counted by the `noop` scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noop_scenario_drives_the_bare_wasi_http_component() {
    let noop = support::test_component("/noop", "noop", "test_noop.wasm", "[]");
    let host = Host::start_with(&support::manifest(&noop), NO_LIMITS);
    let reply = host.merchant(1).get("/noop").await;
    assert_eq!((reply.status, reply.bytes.as_slice()), (200, b"ok".as_slice()));
    let summary = bench(&host, &["--scenario", "noop", "--rate", "200", "--duration", "1s"]).await;
    assert_eq!(summary["requests"], 200, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["steps"]["noop"]["count"], 200, "{summary}");
}
