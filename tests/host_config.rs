//! Manifest and runtime-config handling: grants, clear errors, rate limits,
//! keys and local state.

mod support;

use std::process::Command;

use support::{manifest, test_component, Host, PAYFN};

/// Runs `payfn up` on a manifest that must be refused; returns its stderr.
fn refused(manifest_text: &str) -> String {
    support::build_components();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), manifest_text).unwrap();
    let out = Command::new(PAYFN)
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(dir.path().join("spin.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "payfn up should have refused the manifest");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_component_importing_an_ungranted_capability_is_refused_at_load() {
    // The trap component imports sql and log; grant it log only.
    let extra = test_component("/test/trap", "trap", "test_trap.wasm", r#"["log"]"#);
    let err = refused(&manifest(&extra));
    assert!(err.contains("component `trap` imports `payfn:host/sql@0.1.0`"), "{err}");
    assert!(err.contains("does not grant `sql`"), "{err}");
}

#[test]
fn invalid_manifests_name_the_key() {
    let err = refused(&manifest("").replace(
        "capabilities = [\"sql\", \"log\"]\n[component.void.build]",
        "capabilities = [\"sql\", \"lgo\"]\n[component.void.build]",
    ));
    assert!(err.contains("lgo"), "{err}");
    let err = refused(&manifest("").replacen(
        "route = \"/payments/authorize\"",
        "rout = \"/payments/authorize\"",
        1,
    ));
    assert!(err.contains("rout"), "{err}");
    let err = refused(&manifest("").replacen("component = \"authorize\"", "component = \"authorise\"", 1));
    assert!(err.contains("authorise"), "{err}");
}

#[tokio::test]
async fn rate_limits_per_merchant_and_route() {
    let config =
        "[http.rate_limits]\nwindow_secs = 60\ndefault_capacity = 100\ncomponents = { authorize = 3 }\n";
    let host = Host::start_with(&manifest(""), config);
    let a = host.merchant(1);
    let b = host.merchant(2);
    for i in 0..3 {
        let reply = a.post("/payments/authorize", r#"{"amount":1,"currency":"KRW"}"#).await;
        assert_eq!(reply.status, 201);
        assert_eq!(reply.header("ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("ratelimit-remaining"), Some((2 - i).to_string().as_str()));
    }
    let limited = a.post("/payments/authorize", r#"{"amount":1,"currency":"KRW"}"#).await;
    limited.assert_error(429, "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    // Another route and another merchant have their own budgets.
    assert_eq!(a.get("/payments/pay_x").await.status, 404);
    assert_eq!(b.post("/payments/authorize", r#"{"amount":1,"currency":"KRW"}"#).await.status, 201);
    let metrics = host.metrics().await;
    assert!(metrics.contains(r#"payfn_rate_limited_total{component="authorize"} 1"#), "{metrics}");
}

#[tokio::test]
async fn keys_are_bound_to_the_app_state_and_production_secret() {
    let host = Host::start();
    let key = host.key(12);
    assert!(key.starts_with("sk_dev_12_"), "{key}");
    // A key from another app directory (another dev secret) is refused here.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(PAYFN)
        .args(["keys", "issue", "--merchant", "12", "--state-dir"])
        .arg(elsewhere.path())
        .env_remove("PAYFN_KEY_SECRET")
        .output()
        .unwrap();
    let foreign = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(foreign, key);
    let url = format!("{}/payments/pay_x", host.base);
    assert_eq!(host.client.get(&url).bearer_auth(&foreign).send().await.unwrap().status(), 401);
    assert_eq!(host.client.get(&url).bearer_auth(&key).send().await.unwrap().status(), 404);

    // Production: the secret from the environment; keys say `live`.
    let out = Command::new(PAYFN)
        .args(["keys", "issue", "--merchant", "12", "--state-dir"])
        .arg(elsewhere.path())
        .env("PAYFN_KEY_SECRET", "ab".repeat(32))
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("sk_live_12_"));
    let out = Command::new(PAYFN).args(["keys", "issue", "--merchant", "0"]).output().unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn restarts_keep_payments_and_reuse_the_compile_cache() {
    let host = Host::start();
    assert!(host.log().contains("(compiled,"), "{}", host.log());
    let id = host.merchant(5).authorize(4200).await;
    let host = host.restart();
    assert!(!host.log().contains("(compiled,"), "every component should come from the cache: {}", host.log());
    assert!(host.log().contains("(cached,"), "{}", host.log());
    let payment = host.merchant(5).get(&format!("/payments/{id}")).await;
    assert_eq!((payment.status, payment.json()["amount"].as_i64()), (200, Some(4200)));
}

#[tokio::test]
async fn kv_is_namespaced_per_component_and_expires() {
    let host = Host::start_with(&manifest(&support::kv_probes()), "");
    support::check_kv_semantics(&host).await;

    // Guest log lines reach the host log tagged with component and request id.
    let log = host.log();
    assert!(log.contains("kv-probe set k -> null") && log.contains("component=kv-a"), "{log}");
}

/// `--log-format json`: every line is one JSON object, and a line logged
/// while a request runs carries the request's id, merchant, shard,
/// component and version in its `span`.
#[tokio::test]
async fn json_logs_tie_each_line_to_its_request() {
    let extra = test_component("/test/trap", "trap", "test_trap.wasm", r#"["sql", "log"]"#);
    let host = Host::start_with_args(&manifest(&extra), "", &["--log-format", "json"]);
    let reply = host.merchant(3).post("/test/trap", "{}").await;
    reply.assert_error(500, "function_failed");
    let request_id = reply.headers["request-id"].to_str().unwrap().to_string();

    let mut tied = None;
    for _ in 0..50 {
        let log = host.log();
        for line in log.lines() {
            let entry: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if entry["span"]["request_id"] == request_id.as_str() {
                tied = Some(entry);
            }
        }
        if tied.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let entry = tied.unwrap_or_else(|| panic!("no line tied to {request_id}:\n{}", host.log()));
    assert_eq!(entry["level"], "ERROR", "{entry}");
    assert!(entry["message"].as_str().is_some_and(|m| m.contains("function failed")), "{entry}");
    let span = &entry["span"];
    assert_eq!(span["name"], "invocation", "{entry}");
    assert_eq!(span["merchant"], 3, "{entry}");
    // Odd merchants live on the second default shard.
    assert_eq!(span["shard"], "shard-2", "{entry}");
    assert_eq!(span["component"], "trap", "{entry}");
    let version = span["version"].as_str().unwrap_or_default();
    assert!(version.len() == 12 && version.bytes().all(|b| b.is_ascii_hexdigit()), "{entry}");
}

/// The Grafana dashboard and the Prometheus alerts in `infra/compose` query
/// only metric names a host exports, so a renamed metric cannot leave a
/// panel or an alert silently empty.
#[tokio::test]
async fn dashboards_and_alerts_query_exported_metrics() {
    let host = Host::start();
    let exported = host.metrics().await;
    // `# TYPE payfn_invocations counter` -> the family and its sample names.
    let mut names = std::collections::HashSet::new();
    for line in exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let family = line.split_whitespace().next().unwrap_or_default();
        for suffix in ["", "_total", "_bucket", "_sum", "_count", "_created"] {
            names.insert(format!("{family}{suffix}"));
        }
    }
    let infra = support::repo().join("infra/compose");
    for file in ["grafana/dashboards/payfn.json", "alerts.yml"] {
        let text = std::fs::read_to_string(infra.join(file)).unwrap();
        let mut queried: Vec<&str> = text
            .match_indices("payfn_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        queried.sort_unstable();
        queried.dedup();
        assert!(!queried.is_empty(), "{file} queries no payfn metric");
        for name in queried {
            assert!(
                names.contains(name),
                "{file} queries `{name}`, which the host does not export:\n{exported}"
            );
        }
    }
}
