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
    // Accounting, not speed (docs/BENCHMARKS.md holds the speed): 50
    // iterations a second for 2 s are scheduled, each sent or dropped; each
    // sent one is three requests, one per step.
    let sent = summary["iterations"].as_i64().expect("iterations");
    let dropped = summary["dropped_iterations"].as_i64().expect("dropped_iterations");
    assert_eq!(sent + dropped, 100, "{summary}");
    assert!(sent >= 10, "the run sent iterations: {summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["requests"], 3 * sent, "{summary}");
    for step in ["authorize", "capture", "refund"] {
        assert_eq!(summary["steps"][step]["count"], sent, "{summary}");
        assert!(summary["steps"][step]["p99_ms"].as_f64().unwrap() > 0.0, "{summary}");
    }
    // The HTTP requests cost the load generator some CPU, and it says how much.
    let cores = summary["load_generator_cores"].as_f64().expect("the load generator's CPU is reported");
    assert!(cores > 0.0, "{summary}");
    // Every sent iteration is in the shards, each on its merchant's shard
    // (even merchants on shard-1, odd ones on shard-2), and both took some.
    assert_eq!(count(&host, SHARDS, "SELECT COUNT(*) FROM payments").await, sent);
    assert_eq!(count(&host, SHARDS, "SELECT COUNT(*) FROM refunds").await, sent);
    let h = &host;
    let on = |shard, parity| {
        let sql = format!("SELECT COUNT(*) FROM payments WHERE merchant_id % 2 = {parity}");
        async move { count(h, &[shard], &sql).await }
    };
    assert_eq!(
        (on("shard-1", 1).await, on("shard-2", 0).await),
        (0, 0),
        "a payment on another merchant's shard"
    );
    assert!(on("shard-1", 0).await > 0 && on("shard-2", 1).await > 0, "both shards took payments");
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
    let sent = summary["iterations"].as_i64().expect("iterations");
    let dropped = summary["dropped_iterations"].as_i64().expect("dropped_iterations");
    assert_eq!(sent + dropped, 40, "{summary}");
    // Each refusal is counted as an error of its kind, and what was not
    // refused is in the shards: at most the two merchants' budgets.
    let refused = summary["error_kinds"]["authorize 429"].as_i64().unwrap_or(0);
    assert!(refused > 0, "the run went over the budget of 20: {summary}");
    assert_eq!(summary["errors"], refused, "{summary}");
    let created = count(&host, SHARDS, "SELECT COUNT(*) FROM payments").await;
    assert_eq!(created, sent - refused, "{summary}");
    assert!(created <= 20, "{created} created on a budget of 10 per merchant");

    // One iteration in flight at most, and one due every 10 µs, less than
    // any request over TCP takes: the rest are dropped and counted.
    let host = Host::start_with(&support::manifest(""), NO_LIMITS);
    let summary = bench(&host, &["--rate", "100000", "--duration", "1s", "--max-in-flight", "1"]).await;
    let (sent, dropped) =
        (summary["iterations"].as_u64().unwrap(), summary["dropped_iterations"].as_u64().unwrap());
    assert_eq!(sent + dropped, 100_000, "{summary}");
    assert!(sent > 0 && dropped > 0, "{summary}");
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
    let sent = summary["iterations"].as_i64().expect("iterations");
    assert_eq!(sent + summary["dropped_iterations"].as_i64().expect("dropped"), 200, "{summary}");
    assert!(sent > 0, "{summary}");
    assert_eq!(summary["requests"], sent, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["steps"]["noop"]["count"], sent, "{summary}");
}
