//! `payfn bench`, the load generator: what it reports is what the host did.

mod support;

use support::{count, Host, SHARDS};

/// Runs `payfn bench` against `host` and returns its JSON summary.
async fn bench(host: &Host, args: &[&str]) -> serde_json::Value {
    let (stdout, _) = run_bench(host, args, "-").await;
    serde_json::from_str(&stdout).expect("a JSON summary")
}

/// Runs `payfn bench` with `--json json` and returns what it printed.
async fn run_bench(host: &Host, args: &[&str], json: &str) -> (String, String) {
    let out = tokio::process::Command::new(support::PAYFN)
        .arg("bench")
        .args(args)
        .args(["--url", &host.base, "--json", json, "--manifest"])
        .arg(host.app.join("spin.toml"))
        .output()
        .await
        .expect("run payfn bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "payfn bench failed: {stderr}");
    (String::from_utf8(out.stdout).expect("UTF-8 output"), stderr)
}

/// `{p50, p99, max}` of the pipeline's lag: ordered, not negative.
fn assert_quantiles(q: &serde_json::Value, what: &str) {
    let get = |k: &str| q[k].as_f64().unwrap_or_else(|| panic!("{what}.{k} in {q}"));
    let (p50, p99, max) = (get("p50"), get("p99"), get("max"));
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{what}: {q}");
}

const NO_LIMITS: &str = "[http.rate_limits]\ndefault_capacity = 1000000000\ncomponents = {}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_flow_counts_what_the_host_committed() {
    let host = Host::start_with(&support::manifest(""), NO_LIMITS);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let (table, _) = run_bench(
        &host,
        &["--scenario", "full", "--rate", "50", "--duration", "2s", "--merchants", "10"],
        json.to_str().unwrap(),
    )
    .await;
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["scenario"], "full", "{summary}");
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

    // The pipeline was sampled while the load ran, and waited for after it.
    let pipeline = &summary["pipeline"];
    assert!(pipeline["samples"].as_u64().unwrap() > 0, "{pipeline}");
    assert_eq!(pipeline["failed_scrapes"], 0, "{pipeline}");
    assert_eq!(pipeline["consumer_group"], "settlement", "{pipeline}");
    assert!(pipeline["note"].is_null(), "{pipeline}");
    for figure in ["outbox_lag_s", "outbox_pending", "consumer_lag_s", "consumer_lag_records", "scrape_ms"] {
        assert_quantiles(&pipeline[figure], figure);
    }
    // Drained (the cap is 120 s: this is not a speed check), and the host
    // agrees: nothing of the outbox left, the consumer caught up.
    let drain = &pipeline["drain"];
    assert_eq!(drain["drained"], true, "{pipeline}");
    assert!(drain["seconds"].as_f64().unwrap() >= 0.0, "{pipeline}");
    assert_eq!((&drain["outbox_pending"], &drain["consumer_lag_records"]), (&0.into(), &0.into()), "{drain}");
    let pending = "SELECT COUNT(*) FROM outbox WHERE published = 0 AND dead_lettered = 0";
    assert_eq!(count(&host, SHARDS, pending).await, 0);
    let metrics = host.metrics().await;
    let lag: Vec<&str> = metrics.lines().filter(|l| l.starts_with("payfn_kafka_consumer_lag{")).collect();
    assert!(!lag.is_empty() && lag.iter().all(|l| l.ends_with(" 0")), "{lag:?}");
    // The gauges behind it are exported.
    for gauge in ["payfn_outbox_oldest_pending_age_seconds{", "payfn_kafka_consumer_lag_seconds{"] {
        assert!(metrics.lines().any(|l| l.starts_with(gauge)), "{gauge} in {metrics}");
    }

    // The table names the scenario and prints the lag lines, plus one JSON
    // line for scripts (the same figures as the summary).
    let line = |start: &str| {
        table.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("`{start}` in\n{table}"))
    };
    assert_eq!(line("scenario "), "scenario full at 50 iterations/s", "{table}");
    assert!(line("300 requests in ").contains(" req/s; 100 iterations, 0 dropped; 0 errors"), "{table}");
    line("  outbox lag s ");
    line("  consumer lag s ");
    assert!(line("  drained ").contains(" s after the load"), "{table}");
    let grep: serde_json::Value =
        serde_json::from_str(line("pipeline-json: ").trim_start_matches("pipeline-json: ")).unwrap();
    assert_eq!(grep["scenario"], "full", "{grep}");
    assert_eq!(grep["outbox_lag_s"], pipeline["outbox_lag_s"], "{grep}");
    assert_eq!(grep["consumer_lag_s"], pipeline["consumer_lag_s"], "{grep}");
    assert_eq!(grep["drain"], pipeline["drain"], "{grep}");
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

/// On Kafka the consumer's lag in time comes from record timestamps, which
/// the host reads with a consumer of its own: sampled and drained as on the
/// embedded log, and no scrape fails to read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_is_sampled_on_kafka_too() {
    let host = support::Backend::sqlite_with_kafka(&support::manifest(""), NO_LIMITS).await;
    let summary =
        bench(&host, &["--scenario", "full", "--rate", "50", "--duration", "2s", "--merchants", "10"]).await;
    assert_eq!((&summary["scenario"], &summary["errors"]), (&"full".into(), &0.into()), "{summary}");
    let pipeline = &summary["pipeline"];
    assert_eq!(pipeline["failed_scrapes"], 0, "{pipeline}");
    assert!(pipeline["note"].is_null(), "{pipeline}");
    for figure in ["outbox_lag_s", "consumer_lag_s", "consumer_lag_records"] {
        assert_quantiles(&pipeline[figure], figure);
    }
    assert_eq!(pipeline["drain"]["drained"], true, "{pipeline}");
    let metrics = host.metrics().await;
    assert!(metrics.lines().any(|l| l.starts_with("payfn_kafka_consumer_lag_seconds{")), "{metrics}");
    let log = host.log();
    assert!(!log.contains("cannot read consumer lag"), "{log}");
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
