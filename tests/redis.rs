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
