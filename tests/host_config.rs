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
