//! The Redis backend of `kv` and of rate limits, against the machine's Redis
//! (127.0.0.1:6379): shared by several hosts.

mod support;

use support::{manifest, Host};

/// A runtime config on Redis with a key prefix of its own, plus `extra`.
fn redis_config(extra: &str) -> String {
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/\"\nprefix = \"payfn-test-{unique}:\"\n{extra}")
}

#[tokio::test]
async fn kv_on_redis_is_namespaced_and_expires() {
    let host = Host::start_with(&manifest(&support::kv_probes()), &redis_config(""));
    assert!(host.log().contains("kv              redis redis://127.0.0.1:6379/"), "{}", host.log());
    support::check_kv_semantics(&host).await;
    let ready = host.client.get(format!("{}/health/ready", host.base)).send().await.unwrap();
    assert_eq!(ready.json::<serde_json::Value>().await.unwrap()["kv"], "up");
}

#[tokio::test]
async fn rate_limits_on_redis_hold_across_hosts() {
    let config = redis_config(
        "[http.rate_limits]\nwindow_secs = 60\ndefault_capacity = 100\ncomponents = { authorize = 5 }\n",
    );
    let first = Host::start_with(&manifest(""), &config);
    let second = first.another();
    let (a, b) = (first.merchant(1), second.merchant(1));
    let mut created = 0;
    let mut limited = 0;
    for i in 0..8 {
        let m = if i % 2 == 0 { &a } else { &b };
        let reply = m.post("/payments/authorize", r#"{"amount":1,"currency":"KRW"}"#).await;
        match reply.status {
            201 => created += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((created, limited), (5, 3), "one budget of 5 shared by both hosts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_per_route_and_never_hangs() {
    let redis = support::Proxy::start(6379).await;
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let config = format!(
        "[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\nprefix = \"payfn-test-{unique}:\"\ntimeout_ms = 300\n\
         [http.rate_limits]\nfail_closed = [\"capture\"]\n",
        redis.port
    );
    let host = Host::start_with(&manifest(""), &config);
    let m = host.merchant(1);
    let id = m.authorize(1000).await;

    redis.set_outage(true);
    // Down as the host sees it (its readiness pings Redis): the proxy has
    // dropped the connections, whatever the scheduling.
    support::wait_for(std::time::Duration::from_secs(10), "the host to see Redis down", || async {
        let ready = host.client.get(format!("{}/health/ready", host.base)).send().await.unwrap();
        redis.live() == 0 && ready.json::<serde_json::Value>().await.unwrap()["kv"] == "down"
    })
    .await;
    let started = std::time::Instant::now();
    // Fail open: reads and writes without an idempotency key carry on.
    assert_eq!(m.get(&format!("/payments/{id}")).await.status, 200);
    assert_eq!(m.post("/payments/authorize", r#"{"amount":5,"currency":"KRW"}"#).await.status, 201);
    // Idempotency keys still hold: the shard's record is the backstop.
    let key = [("Idempotency-Key", "while-redis-is-down")];
    let body = r#"{"amount":6,"currency":"KRW"}"#;
    let first = m.send("POST", "/payments/authorize", Some(body), &key).await;
    assert_eq!(first.status, 201);
    let again = m.send("POST", "/payments/authorize", Some(body), &key).await;
    assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")));
    assert_eq!(again.bytes, first.bytes);
    // Fail closed where configured.
    m.post(&format!("/payments/{id}/capture"), "{}").await.assert_error(503, "rate_limiter_unavailable");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "Redis down must not hang requests");
    // Degraded, not unavailable: every host sees the same Redis, and this
    // one still serves.
    let ready = host.client.get(format!("{}/health/ready", host.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!((ready["status"].as_str(), ready["kv"].as_str()), (Some("degraded"), Some("down")));

    redis.set_outage(false);
    support::wait_for(std::time::Duration::from_secs(30), "Redis to be back", || async {
        m.post(&format!("/payments/{id}/capture"), "{}").await.status == 200
    })
    .await;
}
