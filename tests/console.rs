//! The admin console: its API (status, dead letters, re-drive) against the
//! real binary, and the page itself end to end in headless Chromium, on the
//! production shape (MariaDB shards, Redis, a tansu Kafka broker).
//! Screenshots land in `target/test-artifacts/console/`.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::time::Duration;

use browser::Browser;
use serde_json::Value;
use support::{settled, unpublished, wait_for, Backend, Host, SHARDS};

const SETTLE: Duration = Duration::from_secs(60);
const RELAY_ENV: &str = r#"topic = "payments", retry_budget = "10", backoff_base_ms = "1000""#;

/// The development admin token of `host`.
fn token(host: &Host) -> String {
    std::fs::read_to_string(host.app.join(".payfn/admin-token")).expect("admin token file").trim().to_string()
}

async fn admin_get(host: &Host, path: &str) -> (u16, Value) {
    let reply = host
        .client
        .get(format!("{}/admin/v1{path}", host.base))
        .bearer_auth(token(host))
        .send()
        .await
        .expect("admin request");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

async fn admin_post(host: &Host, path: &str, body: &str) -> (u16, Value) {
    let reply = host
        .client
        .post(format!("{}/admin/v1{path}", host.base))
        .bearer_auth(token(host))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("admin request");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Today (UTC), as settlement keys its days.
fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}

/// The status endpoint tells what the shards, the broker and the settlement
/// tables hold, on the embedded defaults; the console's assets are public,
/// its data is not.
#[tokio::test]
async fn status_reports_shards_consumer_lag_and_settlement_per_day() {
    let host = Host::start();
    let m = host.merchant(2);
    for amount in [3000, 4500] {
        let id = m.authorize(amount).await;
        assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
    }
    host.merchant(1).authorize(700).await;
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;

    let anonymous = host.client.get(format!("{}/admin/v1/status", host.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let page = host.client.get(format!("{}/admin/", host.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().await.unwrap().contains("console.js"));

    // Settlement's own events (settlement.updated) are published and
    // passed over after the totals match: wait for the group to catch up.
    wait_for(SETTLE, "the settlement group to catch up", || async {
        unpublished(&host, SHARDS).await == 0
            && admin_get(&host, "/status").await.1["consumers"][0]["lag"] == 0
    })
    .await;
    let (code, status) = admin_get(&host, "/status").await;
    assert_eq!(code, 200, "{status}");
    let shard = |name: &str| {
        status["shards"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap()
    };
    let (one, two) = (shard("shard-1"), shard("shard-2"));
    assert_eq!((one["up"].as_bool(), two["up"].as_bool()), (Some(true), Some(true)), "{status}");
    assert_eq!(one["rows"]["payments"], 2, "{one}");
    assert_eq!(two["rows"]["payments"], 1, "{two}");
    // Two postings of two entries per captured payment on shard-1.
    let mut db = host.shard("shard-1").await;
    assert_eq!(one["rows"]["ledger_entries"], db.i64("SELECT COUNT(*) FROM ledger_entries").await);
    assert_eq!(one["outbox"]["pending"], 0);
    assert_eq!(one["outbox"]["dead_lettered"], 0);
    assert!(one["pool"]["max"].as_u64().unwrap() >= 2, "{one}");
    assert_eq!(status["kv"]["up"], true);
    assert_eq!(status["events"]["up"], true, "{status}");

    let settlement = &status["consumers"][0];
    assert_eq!(settlement["group"], "settlement");
    assert_eq!(settlement["lag"], 0, "settled, so nothing left: {settlement}");
    let handled: i64 =
        settlement["partitions"].as_array().unwrap().iter().map(|p| p["end"].as_i64().unwrap()).sum();
    // Every outbox row was published to the log and handled by the group.
    assert_eq!(handled, support::outbox_rows_sent(&host, SHARDS).await, "{settlement}");

    let day = &status["settlement"][0];
    assert_eq!(day["day"], today(), "{status}");
    assert_eq!(day["currency"], "KRW");
    assert_eq!((day["merchants"].as_i64(), day["captures"].as_i64()), (Some(1), Some(2)));
    assert_eq!(day["gross_captured"], 7500);
    assert_eq!(day["fee"].as_i64().unwrap() + day["net"].as_i64().unwrap(), 7500, "{day}");

    // The same lag, per partition, for Prometheus.
    let metrics = host.metrics().await;
    let lag_lines: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("payfn_kafka_consumer_lag{")).collect();
    assert!(!lag_lines.is_empty() && lag_lines.iter().all(|l| l.ends_with(" 0")), "{metrics}");

    // Re-drive requests are checked before anything is touched.
    let (code, _) = admin_post(&host, "/shards/shard-9/dead-letters/redrive", r#"{"all":true}"#).await;
    assert_eq!(code, 404);
    let (code, body) =
        admin_post(&host, "/shards/shard-1/dead-letters/redrive", r#"{"all":true,"event_ids":["e"]}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = admin_post(&host, "/shards/shard-1/dead-letters/redrive", r#"{}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = admin_get(&host, "/shards/shard-1/dead-letters?limit=0").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = admin_get(&host, "/shards/shard-1/dead-letters").await;
    assert_eq!((code, body["dead_letters"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
}

/// An operator signs in, watches a broker outage hold an event back, sees
/// an event the broker refuses dead-lettered, repairs and re-drives it,
/// deploys a new authorize version
/// from the page and rolls it back, all in a real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_redrive_deploy_and_roll_back_from_the_console() {
    let manifest = support::manifest("")
        .replace(RELAY_ENV, r#"topic = "payments", retry_budget = "3", backoff_base_ms = "500""#);
    let host = Backend::Mariadb.start_with(&manifest, "").await;
    let m = host.merchant(2);
    let id = m.authorize(5000).await;
    assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
    wait_for(SETTLE, "the capture to be settled", || settled(&host, SHARDS)).await;

    // The broker goes away: merchant 1's next events (shard-2) wait. One of
    // them is made larger than the producer accepts (over 1 MB): refused
    // whenever the producer is tried (while its breaker is open, it waits
    // like the other), it spends its budget (3) and is dead-lettered.
    host.kafka().set_outage(true);
    host.merchant(1).authorize(700).await;
    let refused = host.merchant(1).authorize(800).await;
    let select = format!("SELECT payload FROM outbox WHERE aggregate_id = '{refused}'");
    let original = host.shard("shard-2").await.column(&select).await[0].text();
    let oversized = original.replacen('{', &format!("{{\"padding\": \"{}\", ", "x".repeat(1_100_000)), 1);
    host.shard_for_writes("shard-2")
        .await
        .execute(&format!(
            "UPDATE outbox SET payload = '{}' WHERE aggregate_id = '{refused}'",
            oversized.replace('\'', "''")
        ))
        .await;

    let mut browser = Browser::start("console").await;
    browser.client.goto(&format!("{}/admin/", host.base)).await.expect("open the console");
    browser.find("#token").await.send_keys("not-the-admin-token-at-all").await.unwrap();
    browser.click("#sign-in-form button").await;
    browser.wait_text("#sign-in-error", "a refused token", |t| t.contains("not valid")).await;
    browser.screenshot("refused-token").await;
    let field = browser.find("#token").await;
    field.clear().await.unwrap();
    field.send_keys(&token(&host)).await.unwrap();
    browser.click("#sign-in-form button").await;

    // Every section shows what the platform holds.
    browser
        .wait_text("#components-body", "the components", |t| {
            t.contains("authorize") && t.contains("settlement")
        })
        .await;
    browser.wait_text("#shards-body tr[data-shard='shard-2'] td.pending", "rows pending", |t| t != "0").await;
    browser
        .wait_text("#shards-body tr[data-shard='shard-1']", "shard health", |t| {
            t.contains("up") && t.contains("mysql")
        })
        .await;
    browser.wait_text("#backends-body tr[data-service='kafka']", "Kafka down", |t| t.contains("down")).await;
    browser
        .wait_text("#backends-body tr[data-service='redis']", "Redis up", |t| {
            t.contains("up") && t.contains("redis")
        })
        .await;
    // Lag is read from the broker, which is away.
    browser
        .wait_text("#consumers-body tr[data-group='settlement']", "the group's lag unknown", |t| {
            t.contains("settlement") && t.contains("partitions of `payments`")
        })
        .await;
    let day = today();
    browser
        .wait_text("#settlement-body", "today's settlement", |t| {
            t.contains(&day) && t.contains("KRW") && t.contains("5,000")
        })
        .await;
    browser.wait_text("#traffic-body", "authorize traffic", |t| t.contains("authorize")).await;
    // The dead-letter topics are on the broker: that section says it
    // cannot list them, the rest of the page stays live.
    browser
        .wait_text("#failed-events-body", "failed events unavailable", |t| {
            t.contains("cannot list failed events now")
        })
        .await;
    browser.screenshot("kafka-down").await;

    // The broker is back: the waiting event goes out by itself, the
    // oversized one is dead-lettered.
    host.kafka().set_outage(false);
    browser.wait_text("#backends-body tr[data-service='kafka']", "Kafka up", |t| t.contains(" up")).await;
    browser
        .wait_text("#consumers-body tr[data-group='settlement']", "the group's lag", |t| {
            t.contains("payments/")
        })
        .await;
    wait_for(SETTLE, "a dead-lettered row", || async {
        host.shard("shard-2").await.i64("SELECT COUNT(*) FROM outbox WHERE dead_lettered = 1").await == 1
    })
    .await;
    let event =
        host.shard("shard-2").await.column("SELECT event_id FROM outbox WHERE dead_lettered = 1").await[0]
            .text();
    browser
        .wait_text("#shards-body tr[data-shard='shard-2'] td.pending", "nothing pending", |t| t == "0")
        .await;
    browser.wait_text("#shards-body tr[data-shard='shard-2'] td.dead", "one dead letter", |t| t == "1").await;
    browser
        .wait_text(&format!("#dead-letters-body tr[data-event='{event}']"), "the dead letter", |t| {
            t.contains("payment.authorized") && t.contains("Rejected")
        })
        .await;
    browser.screenshot("dead-letter").await;

    // The operator repairs the event and re-drives it from the page; the
    // relay publishes it.
    host.shard_for_writes("shard-2")
        .await
        .execute(&format!(
            "UPDATE outbox SET payload = '{}' WHERE event_id = '{event}'",
            original.replace('\'', "''")
        ))
        .await;
    browser.click(&format!("#dead-letters-body tr[data-event='{event}'] button.redrive")).await;
    browser.wait_text("#notice", "the re-drive", |t| t.contains("1 row(s) handed back")).await;
    wait_for(SETTLE, "the re-driven row to be published", || async {
        host.shard("shard-2").await.i64("SELECT COUNT(*) FROM outbox WHERE published = 0").await == 0
    })
    .await;
    let published = format!(
        "SELECT COUNT(*) FROM outbox WHERE event_id = '{event}' AND published = 1 AND dead_lettered = 0"
    );
    assert_eq!(host.shard("shard-2").await.i64(&published).await, 1);
    browser.wait_text("#dead-letters-body", "no dead letters", |t| t.contains("none")).await;
    browser.wait_text("#shards-body tr[data-shard='shard-2'] td.dead", "no dead letter", |t| t == "0").await;
    wait_for(SETTLE, "settlement after the re-drive", || settled(&host, SHARDS)).await;
    browser.screenshot("redriven").await;

    // A consumed event settlement cannot apply (a capture without an
    // amount) is dead-lettered by the Kafka trigger and shows under
    // "Failed events"; re-driving it from the page sends it back to
    // `payments`, where it fails again and comes back: nothing is lost.
    browser.wait_text("#failed-events-body", "no failed events", |t| t.contains("none")).await;
    produce_bad_capture(&host, "evt_console_bad").await;
    let failed_row = "#failed-events-body tr[data-event='evt_console_bad']";
    browser
        .wait_text(failed_row, "the failed event", |t| {
            t.contains("payment.captured") && t.contains("missing_field") && t.contains("payments.dlq/")
        })
        .await;
    browser.screenshot("failed-event").await;
    browser.click(&format!("{failed_row} button.redrive-event")).await;
    browser.wait_text("#notice", "the event re-drive", |t| t.contains("1 event(s) sent back")).await;
    wait_for(SETTLE, "the re-driven event to be dead-lettered again", || async {
        support::metric(&host.metrics().await, "payfn_events_dead_lettered_total", &[]) == 2.0
    })
    .await;

    // Deploy build B of authorize from the page and activate it.
    let before = host.active_digest("authorize").await;
    let wasm = support::variant_b().join("authorize.wasm");
    browser.click("tr.component[data-component='authorize'] button.toggle").await;
    let form = "tr.detail[data-component='authorize'] form.deploy";
    browser
        .find(&format!("{form} input.deploy-file"))
        .await
        .send_keys(&wasm.display().to_string())
        .await
        .unwrap();
    browser.find(&format!("{form} input.deploy-label")).await.send_keys("build-b").await.unwrap();
    browser.click(&format!("{form} button.deploy-submit")).await;
    browser.wait_text("#notice", "the deploy", |t| t.contains("deploy authorize: done")).await;
    let deployed = host.active_digest("authorize").await;
    assert_ne!(deployed, before, "the page's upload is active");
    let listing = host.versions().await;
    let authorize =
        listing["components"].as_array().unwrap().iter().find(|c| c["component"] == "authorize").unwrap();
    let labelled =
        authorize["versions"].as_array().unwrap().iter().find(|v| v["label"] == "build-b").unwrap();
    assert_eq!(labelled["digest"], deployed.as_str());
    let reply = m.post("/payments/authorize", r#"{"amount":100,"currency":"KRW"}"#).await;
    assert_eq!((reply.status, reply.header("build-id")), (201, Some("b")));
    browser
        .wait_text("tr.component[data-component='authorize'] .active-version", "build-b active", |t| {
            t.contains("build-b")
        })
        .await;
    browser.screenshot("deployed").await;

    // Roll it back from the page.
    browser.click_and_confirm("tr.component[data-component='authorize'] button.rollback").await;
    browser.wait_text("#notice", "the rollback", |t| t.contains("roll back authorize: done")).await;
    assert_eq!(host.active_digest("authorize").await, before);
    let reply = m.post("/payments/authorize", r#"{"amount":100,"currency":"KRW"}"#).await;
    assert_eq!((reply.status, reply.header("build-id")), (201, None));
    browser
        .wait_text(
            "tr.component[data-component='authorize'] .active-version",
            "the old version active",
            |t| t.contains(&before[..12]),
        )
        .await;
    browser.screenshot("rolled-back").await;

    // Canary build B to 25% of merchants from its version row, then end it.
    let row = format!("tr.detail[data-component='authorize'] tr[data-digest='{deployed}']");
    let percent = browser.find(&format!("{row} input.percent")).await;
    percent.clear().await.unwrap();
    percent.send_keys("25").await.unwrap();
    browser.click(&format!("{row} button.canary")).await;
    browser
        .wait_text("#notice", "the canary", |t| {
            t.contains(&format!("canary authorize {}: done", &deployed[..12]))
        })
        .await;
    browser
        .wait_text("tr.component[data-component='authorize'] .canary-version", "the canary shown", |t| {
            t.contains("build-b") && t.contains("25%")
        })
        .await;
    let listing = host.versions().await;
    let active =
        &listing["components"].as_array().unwrap().iter().find(|c| c["component"] == "authorize").unwrap()
            ["active"];
    assert_eq!(
        (active["canary_digest"].as_str(), active["canary_percent"].as_u64()),
        (Some(deployed.as_str()), Some(25))
    );
    browser.screenshot("canary").await;
    browser.click_and_confirm("tr.component[data-component='authorize'] button.rollback").await;
    browser
        .wait_text("tr.component[data-component='authorize'] .canary-version", "the canary ended", |t| {
            t == "–"
        })
        .await;
    assert_eq!(host.active_digest("authorize").await, before);

    // Merchants per shard, and merchant 1 moved from the page.
    browser
        .wait_text("#placement-body tr[data-shard='shard-2'] td.merchants", "merchant 1 on shard-2", |t| {
            t == "1"
        })
        .await;
    browser.find("#move-merchant").await.send_keys("1").await.unwrap();
    browser.click("#move-to option[value='shard-1']").await;
    browser.click_and_confirm("#move-form button[type='submit']").await;
    browser.wait_text("#notice", "the move", |t| t.contains("move merchant 1 to shard-1: done")).await;
    browser.wait_text("#moves-body tr[data-move='1'] td.step", "the move's step", |t| !t.is_empty()).await;
    browser.screenshot("moving").await;
    browser.wait_text("#moves-body tr[data-move='1'] td.step", "the move done", |t| t == "done").await;
    browser
        .wait_text(
            "#placement-body tr[data-shard='shard-1'] td.merchants",
            "merchants 1 and 2 on shard-1",
            |t| t == "2",
        )
        .await;
    browser
        .wait_text("#placement-body tr[data-shard='shard-2'] td.merchants", "none left on shard-2", |t| {
            t == "0"
        })
        .await;
    browser.screenshot("moved").await;
    host.merchant(1).authorize(900).await;
    let mut shard1 = host.shard("shard-1").await;
    assert!(
        shard1.i64("SELECT COUNT(*) FROM payments WHERE merchant_id = 1").await > 1,
        "its payments moved"
    );
    shard1.close().await;
    browser.close().await;
}

/// Produces to `payments` a capture event of merchant 1 without an amount:
/// well addressed, but settlement refuses it.
async fn produce_bad_capture(host: &Host, event_id: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", host.kafka().port))
        .create()
        .expect("a producer");
    let value =
        r#"{"type":"payment.captured","merchantId":1,"currency":"KRW","occurredAt":"2026-12-01T00:00:00Z"}"#;
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "event-id", value: Some(event_id) })
        .insert(rdkafka::message::Header { key: "event-type", value: Some("payment.captured") })
        .insert(rdkafka::message::Header { key: "merchant-id", value: Some("1") });
    let record = FutureRecord::to("payments").key("pay_console_bad").payload(value).headers(headers);
    producer.send(record, Duration::from_secs(10)).await.expect("produce the bad capture");
}
