//! Manifest and runtime-config handling: grants, clear errors, rate limits,
//! keys and local state.

mod support;

use std::process::Command;

use support::{manifest, test_component, Host, PAYFN};

/// Runs `payfn up` on a manifest that must be refused; returns its stderr.
fn refused(manifest_text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), manifest_text).unwrap();
    support::refused_start(dir.path(), &[])
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
    // A key a capability reads, misspelt, and one of the wrong shape: the
    // capability's own check names the component and the key.
    let err = refused(&manifest("").replace("kafka_topics = [\"payments\"]", "kafka_topic = [\"payments\"]"));
    assert!(err.contains("component.outbox-relay") && err.contains("kafka_topic`"), "{err}");
    let err = refused(&manifest("").replace("kafka_topics = [\"payments\"]", "kafka_topics = \"payments\""));
    assert!(err.contains("component.outbox-relay.kafka_topics"), "{err}");
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
    // A real key of the same merchant (not an empty one, which would be
    // refused whatever the secret), made with another secret.
    assert!(out.status.success(), "keys issue failed: {}", String::from_utf8_lossy(&out.stderr));
    let foreign = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(foreign.starts_with("sk_dev_12_"), "{foreign}");
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
    assert!(out.status.success(), "keys issue failed: {}", String::from_utf8_lossy(&out.stderr));
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
async fn dashboards_and_alerts_query_exported_metrics_and_labels() {
    use std::collections::{HashMap, HashSet};
    // Drive the host until every family the dashboards use has samples: a
    // trap (errors by kind), a rate-limited read, a payment through
    // settlement, a poison record and a replayed one (consumed-event outcomes).
    let extra = test_component("/test/trap", "trap", "test_trap.wasm", r#"["sql", "log"]"#);
    let host = Host::start_with(&manifest(&extra), "[http.rate_limits.components]\nget-payment = 1\n");
    let m = host.merchant(2);
    let id = m.authorize(1000).await;
    assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
    assert_eq!(m.get(&format!("/payments/{id}")).await.status, 200);
    assert_eq!(m.get(&format!("/payments/{id}")).await.status, 429);
    host.merchant(3).post("/test/trap", "{}").await.assert_error(500, "function_failed");
    let settle = std::time::Duration::from_secs(60);
    support::wait_for(settle, "settlement", || support::settled(&host, support::SHARDS)).await;
    let log = host.events().await;
    support::append_event(&log, 0, b"{}", Vec::new()).await;
    let (partition, value, headers): (i64, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT partition, value, headers FROM records \
         WHERE topic = 'payments' AND instr(headers, 'payment.captured') > 0 LIMIT 1",
    )
    .fetch_one(&log)
    .await
    .unwrap();
    support::append_event(&log, partition, &value, headers).await;
    support::wait_for(settle, "a dead-lettered and a duplicate event", || async {
        // The counters exist at 0 from the start: wait for the events.
        let text = host.metrics().await;
        support::metric(&text, "payfn_events_dead_lettered_total", &[]) >= 1.0
            && support::metric(&text, "payfn_events_duplicate_total", &[]) >= 1.0
    })
    .await;

    // Family -> the label names on its samples; sample name -> family.
    let exported = host.metrics().await;
    let mut labels: HashMap<String, HashSet<String>> = HashMap::new();
    let mut family_of: HashMap<String, String> = HashMap::new();
    for line in exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let family = line.split_whitespace().next().unwrap_or_default().to_string();
        for suffix in ["", "_total", "_bucket", "_sum", "_count", "_created"] {
            family_of.insert(format!("{family}{suffix}"), family.clone());
        }
    }
    for line in exported.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let family = family_of.get(&line[..name_end]).unwrap_or_else(|| panic!("unknown sample {line}"));
        let names = labels.entry(family.clone()).or_default();
        if line[name_end..].starts_with('{') {
            names.extend(selector_labels(&line[name_end + 1..]));
        }
    }

    // Prometheus's own target labels, and the histogram bucket bound.
    let implicit = ["instance", "job", "vm", "le"];
    let infra = support::repo().join("infra/compose");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(infra.join("grafana/dashboards/payfn.json")).unwrap())
            .unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            queries
                .push((format!("dashboard panel `{title}`"), target["expr"].as_str().unwrap().to_string()));
        }
    }
    let alerts = std::fs::read_to_string(infra.join("alerts.yml")).unwrap();
    for line in alerts.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        queries.push(("alerts.yml".to_string(), line.trim().to_string()));
    }
    assert!(queries.len() > 20, "{queries:?}");
    for (place, expr) in &queries {
        // Every payfn metric the query names, and the labels its selector uses.
        let mut families = Vec::new();
        for (at, _) in expr.match_indices("payfn_") {
            let rest = &expr[at..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let family = family_of.get(&rest[..end]).unwrap_or_else(|| {
                panic!("{place} queries `{}`, which is not exported:\n{exported}", &rest[..end])
            });
            let have = labels.get(family).unwrap_or_else(|| panic!("{place}: `{family}` has no samples"));
            if let Some(selector) = rest[end..].strip_prefix('{') {
                for label in selector_labels(selector) {
                    assert!(
                        implicit.contains(&label.as_str()) || have.contains(&label),
                        "{place} selects `{family}` by `{label}`, which it does not carry ({have:?})"
                    );
                }
            }
            families.push(family);
        }
        if families.is_empty() {
            // Prometheus's own scrape health is the only other series used.
            assert!(expr.contains(r#"up{job="payfn"}"#), "{place} queries no payfn metric: {expr}");
            continue;
        }
        // Every label it groups by is on every metric of the query.
        for (at, _) in expr.match_indices("by (") {
            let list = &expr[at + 4..at + 4 + expr[at + 4..].find(')').unwrap()];
            for label in list.split(',').map(str::trim).filter(|l| !implicit.contains(l)) {
                for family in &families {
                    assert!(
                        labels[*family].contains(label),
                        "{place} groups `{family}` by `{label}`, which it does not carry ({:?})",
                        labels[*family]
                    );
                }
            }
        }
    }
}

/// The label names of a selector or sample, from just after its `{`:
/// `a="x",b=~"y"}` -> a, b. Values may hold any escaped character.
fn selector_labels(text: &str) -> Vec<String> {
    let (mut names, mut chars) = (Vec::new(), text.chars().peekable());
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=' && *c != '!').collect();
        let name = name.trim().trim_start_matches(',').trim().to_string();
        if name.is_empty() || name.starts_with('}') {
            return names;
        }
        names.push(name);
        // Past the operator's rest (`~`, `=`) to the opening quote, then the value.
        for c in chars.by_ref() {
            if c == '"' {
                break;
            }
        }
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        if chars.peek() == Some(&'}') {
            return names;
        }
    }
}
