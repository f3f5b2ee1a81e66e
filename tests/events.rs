//! The asynchronous half on the embedded event log: outbox -> relay -> log
//! -> Kafka trigger -> settlement, with nothing lost and nothing counted twice.

mod support;

use std::time::Duration;

use futures::future::join_all;
use support::{
    actual_settlements, assert_money_invariants, settled, take_payments, unpublished, wait_for, Host, SHARDS,
};

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn every_event_is_published_once_and_settled_once() {
    let host = Host::start();
    take_payments(&host, 5).await;
    wait_for(SETTLE, "the outbox to drain and settlements to match the payments", || settled(&host, SHARDS))
        .await;

    // settlement.updated rows are written by settlement, so the outbox
    // drains only after it; then each row the relay sends is in the log
    // exactly once (superseded snapshots are not sent).
    wait_for(SETTLE, "settlement.updated events to be published", || async {
        unpublished(&host, SHARDS).await == 0
    })
    .await;
    let log = host.events().await;
    let (records, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT value) FROM records WHERE topic = 'payments'")
            .fetch_one(&log)
            .await
            .unwrap();
    let sent = support::outbox_rows_sent(&host, SHARDS).await;
    assert!(sent >= 5 * 4, "authorized, captured, refunded twice per payment at least: {sent}");
    assert_eq!((records, distinct), (sent, sent), "every row sent published once");

    // The API serves the same totals, fee included.
    let m = host.merchant(1);
    let today = humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10].to_string();
    let body = m.get(&format!("/settlements?date={today}")).await.json();
    let krw = &body["currencies"][0];
    assert_eq!(krw["currency"], "KRW");
    assert_eq!(krw["grossCaptured"], 5 * 9000);
    assert_eq!(krw["refunded"], 5 * 1500 + 3 * 7500);
    assert_eq!(krw["fee"], (5 * 9000 * 250 + 5000) / 10_000);
    assert_eq!(krw["net"], 5 * 9000 - (5 * 1500 + 3 * 7500) - (5 * 9000 * 250 + 5000) / 10_000);
    m.get("/settlements?date=2026-13-01").await.assert_error(400, "invalid_date");
    m.get("/settlements").await.assert_error(400, "missing_field");
    assert_eq!(m.get("/settlements?date=2001-01-01").await.json()["currencies"], serde_json::json!([]));

    assert_money_invariants(&host, SHARDS).await;
}

#[tokio::test]
async fn redelivered_events_change_nothing() {
    let host = Host::start();
    take_payments(&host, 3).await;
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
    let before = actual_settlements(&host, SHARDS).await;

    // Rewind the settlement group to the beginning: every event comes again.
    let mut host = host;
    host.kill();
    let log = host.events().await;
    sqlx::query("UPDATE group_offsets SET next_offset = 0 WHERE group_id = 'settlement'")
        .execute(&log)
        .await
        .unwrap();
    log.close().await;
    let host = host.restart();
    let log = host.events().await;
    wait_for(SETTLE, "the rewound group to catch up again", || async {
        let behind: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM records r WHERE r.topic = 'payments' AND r.\"offset\" >= COALESCE( \
               (SELECT next_offset FROM group_offsets g WHERE g.group_id = 'settlement' \
                AND g.topic = r.topic AND g.partition = r.partition), 0)",
        )
        .fetch_one(&log)
        .await
        .unwrap();
        behind == 0
    })
    .await;
    assert_eq!(actual_settlements(&host, SHARDS).await, before, "replays must change nothing");
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_the_rest_flows() {
    let host = Host::start();
    let log = host.events().await;
    // No event id, no merchant: can never be handled.
    support::append_event(&log, 0, b"{}", Vec::new()).await;
    take_payments(&host, 2).await;
    wait_for(SETTLE, "settlement after the poison event", || settled(&host, SHARDS)).await;

    let dead: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT headers FROM records WHERE topic = 'payments.dlq'")
        .fetch_all(&log)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "exactly the poison event is dead-lettered");
    assert!(String::from_utf8_lossy(&dead[0].0).contains("no event-id header"));
    let metrics = host.metrics().await;
    assert!(metrics.contains(r#"payfn_events_dead_lettered_total{component="settlement"} 1"#), "{metrics}");
}

#[tokio::test]
async fn an_event_the_component_fails_on_is_dead_lettered_and_its_batch_settles_once() {
    let host = Host::start();
    let log = host.events().await;
    // Well addressed (event id, merchant), but settlement refuses it: a
    // capture without an amount. The trigger handles a shard's records of a
    // batch in one transaction; this one fails that transaction, so its
    // batch is rolled back and handled again record by record. The good
    // events of the batch must settle exactly once all the same.
    for partition in 0..4 {
        let headers =
            support::encode_headers(&[("event-id", &format!("evt_bad_{partition}")), ("merchant-id", "2")]);
        let value = r#"{"type":"payment.captured","merchantId":2,"currency":"EUR","occurredAt":"2026-12-01T00:00:00Z"}"#;
        support::append_event(&log, partition, value.as_bytes(), headers).await;
    }
    take_payments(&host, 8).await;
    wait_for(SETTLE, "settlement around the failing events", || settled(&host, SHARDS)).await;

    let dead: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT headers FROM records WHERE topic = 'payments.dlq'")
        .fetch_all(&log)
        .await
        .unwrap();
    assert_eq!(dead.len(), 4, "exactly the failing events are dead-lettered");
    assert!(dead.iter().all(|(h,)| String::from_utf8_lossy(h).contains("missing_field")), "{dead:?}");
    assert_money_invariants(&host, SHARDS).await;
}

#[tokio::test]
async fn a_killed_host_loses_nothing_and_counts_nothing_twice() {
    let host = support::kill_mid_relay_twice(Host::start()).await;
    wait_for(SETTLE, "settlement after two SIGKILLs", || settled(&host, SHARDS)).await;
    wait_for(SETTLE, "every row published", || async { unpublished(&host, SHARDS).await == 0 }).await;
    // Nothing lost on the way to the log. Delivery is at least once
    // (DESIGN.md): a kill between the append and the row's UPDATE sends the
    // row again, and a settlement snapshot sent before a kill may be
    // superseded after it, so the log may hold more than the rows sent; the
    // money invariants below show every effect counted once.
    let log = host.events().await;
    let values: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT value FROM records WHERE topic = 'payments'").fetch_all(&log).await.unwrap();
    let in_log = support::event_ids(values.iter().map(|(v,)| v.as_slice()));
    let sent = support::sent_event_ids(&host, SHARDS).await;
    let missing: Vec<&String> = sent.difference(&in_log).collect();
    assert!(!sent.is_empty() && missing.is_empty(), "rows sent but not in the log: {missing:?}");
    assert_money_invariants(&host, SHARDS).await;
}

#[tokio::test]
async fn stale_authorizations_expire_through_the_void_path() {
    let manifest = support::manifest("")
        .replace(r#"max_age_secs = "604800""#, r#"max_age_secs = "2""#)
        .replace("interval_ms = 60000", "interval_ms = 200");
    let host = Host::start_with(&manifest, "");
    let m = host.merchant(1);
    let captured = m.authorize(1000).await;
    assert_eq!(m.post(&format!("/payments/{captured}/capture"), "{}").await.status, 200);
    let stale: Vec<String> = join_all((0..3).map(|_| m.authorize(500))).await;

    wait_for(SETTLE, "stale authorizations to expire", || async {
        let paths: Vec<String> = stale.iter().map(|id| format!("/payments/{id}")).collect();
        join_all(paths.iter().map(|path| m.get(path))).await.iter().all(|p| p.json()["status"] == "VOIDED")
    })
    .await;
    assert_eq!(m.get(&format!("/payments/{captured}")).await.json()["status"], "CAPTURED");
    // Capturing after the expiry loses cleanly.
    m.post(&format!("/payments/{}/capture", stale[0]), "{}").await.assert_error(409, "invalid_state");

    let mut db = host.shard("shard-2").await;
    let reasons: Vec<String> = db
        .column(
            "SELECT json_extract(payload, '$.data.reason') FROM outbox WHERE event_type = 'payment.voided'",
        )
        .await
        .iter()
        .map(support::Cell::text)
        .collect();
    assert_eq!(reasons, vec!["expired"; 3]);
    assert_money_invariants(&host, SHARDS).await;
}

#[tokio::test]
async fn rows_that_cannot_be_published_are_dead_lettered_after_the_budget() {
    // The relay told to publish to a topic it is not granted: every attempt fails.
    let manifest = support::manifest("").replace(
        r#"topic = "payments", retry_budget = "10", backoff_base_ms = "1000""#,
        r#"topic = "elsewhere", retry_budget = "3", backoff_base_ms = "50""#,
    );
    let host = Host::start_with(&manifest, "");
    host.merchant(1).authorize(100).await;
    wait_for(SETTLE, "the row to be dead-lettered", || async {
        let mut db = host.shard("shard-2").await;
        db.i64("SELECT COUNT(*) FROM outbox WHERE dead_lettered = 1 AND retry_count = 3").await == 1
    })
    .await;
    let mut db = host.shard("shard-2").await;
    let error = db.column("SELECT last_error FROM outbox").await[0].text();
    assert!(error.contains("TopicNotGranted"), "{error}");
    let metrics = host.metrics().await;
    assert!(metrics.contains("payfn_outbox_dead_lettered{shard=\"shard-2\"} 1"), "{metrics}");
    assert!(metrics.contains("payfn_outbox_pending{shard=\"shard-2\"} 0"), "{metrics}");
}

#[tokio::test]
async fn the_trace_context_travels_from_the_request_to_the_settlement_logs() {
    let host = Host::start();
    let m = host.merchant(2);
    let id = m.authorize(3000).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply =
        m.send("POST", &format!("/payments/{id}/capture"), Some("{}"), &[("traceparent", trace)]).await;
    assert_eq!(reply.status, 200);
    wait_for(SETTLE, "the capture to be settled", || settled(&host, SHARDS)).await;

    let mut db = host.shard("shard-1").await;
    let stored =
        db.column("SELECT traceparent FROM outbox WHERE event_type = 'payment.captured'").await[0].text();
    assert_eq!(stored, trace, "the outbox row carries the request's traceparent");
    let log = host.log();
    assert!(
        log.lines()
            .any(|l| l.contains("settled payment.captured") && l.contains(&format!("traceparent={trace}"))),
        "the settlement's log line carries it too: {log}"
    );
    // A request without one gets a fresh, valid trace.
    let events: Vec<String> = db
        .column("SELECT traceparent FROM outbox WHERE event_type = 'payment.authorized'")
        .await
        .iter()
        .map(support::Cell::text)
        .collect();
    assert!(!events.is_empty(), "the authorization wrote its outbox row");
    assert!(events.iter().all(|t| t.len() == 55 && t.starts_with("00-") && t != trace), "{events:?}");
}

#[tokio::test]
async fn two_hosts_on_one_app_directory_publish_and_settle_once() {
    let first = Host::start();
    let second = first.another();
    futures::future::join(take_payments(&first, 3), take_payments(&second, 3)).await;
    wait_for(SETTLE, "settlement with two hosts", || settled(&first, SHARDS)).await;
    wait_for(SETTLE, "every row published", || async { unpublished(&first, SHARDS).await == 0 }).await;
    let log = first.events().await;
    let (records, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT value) FROM records WHERE topic = 'payments'")
            .fetch_one(&log)
            .await
            .unwrap();
    assert_eq!(records, distinct, "no event published twice by two relays");
    assert_eq!(records, support::outbox_rows_sent(&first, SHARDS).await);
    assert_money_invariants(&first, SHARDS).await;
}

/// The payments manifest with the Kafka trigger's `max_attempts` at 2.
fn two_attempts() -> String {
    let manifest = support::manifest("");
    assert!(manifest.contains("max_attempts = 5"), "the settlement trigger's max_attempts moved");
    manifest.replace("max_attempts = 5", "max_attempts = 2")
}

/// `/metrics` sample `name` summed over its labels.
async fn sample(host: &Host, name: &str) -> f64 {
    support::metric(&host.metrics().await, name, &[])
}

/// Another process holds merchant 1's shard file's write lock (shard-2, a
/// SQLite file) past the busy timeout while an event of that merchant
/// waits to be settled: BEGIN fails as a conflict, a transient failure,
/// tried again until the lock is gone. With two attempts allowed and each
/// try taking at least the 5 s busy timeout, counting those tries would
/// dead-letter the event; it is settled instead (it is a redelivery of a
/// settled capture, so: found a duplicate, changing nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_shard_file_is_waited_out_not_dead_lettered() {
    let host = Host::start_with(&two_attempts(), "");
    let m = host.merchant(1);
    let id = m.authorize(4000).await;
    assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
    wait_for(SETTLE, "the capture to be settled", || settled(&host, SHARDS)).await;
    let before = actual_settlements(&host, SHARDS).await;
    let log = host.events().await;
    let (partition, value, headers): (i64, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT partition, value, headers FROM records \
         WHERE topic = 'payments' AND CAST(value AS TEXT) LIKE '%\"payment.captured\"%'",
    )
    .fetch_one(&log)
    .await
    .unwrap();

    let mut holder = host.shard_for_writes("shard-2").await;
    holder.execute("BEGIN IMMEDIATE").await;
    let retries = sample(&host, "payfn_kafka_transient_retries_total").await;
    support::append_event(&log, partition, &value, headers).await;
    wait_for(Duration::from_secs(90), "two tries on the locked shard", || async {
        sample(&host, "payfn_kafka_transient_retries_total").await >= retries + 2.0
    })
    .await;
    let metrics = host.metrics().await;
    assert_eq!(support::metric(&metrics, "payfn_kafka_transient_waiting", &[("group", "settlement")]), 1.0);
    holder.execute("ROLLBACK").await;
    holder.close().await;

    wait_for(SETTLE, "the redelivery to be found a duplicate", || async {
        sample(&host, "payfn_events_duplicate_total").await >= 1.0
    })
    .await;
    let metrics = host.metrics().await;
    assert_eq!(support::metric(&metrics, "payfn_events_dead_lettered_total", &[]), 0.0, "{metrics}");
    assert_eq!(support::metric(&metrics, "payfn_kafka_transient_waiting", &[]), 0.0, "{metrics}");
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE topic = 'payments.dlq'")
        .fetch_one(&log)
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
    let log_text = host.log();
    assert!(log_text.contains("transient failure, retried with backoff"), "{log_text}");
    assert!(log_text.contains("transient failure cleared"), "{log_text}");
    assert_eq!(actual_settlements(&host, SHARDS).await, before, "settled once");
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
    assert_money_invariants(&host, SHARDS).await;
}

/// Records that fail and that the dead-letter topic refuses (the embedded
/// log takes no message over 1 MiB) are kept in `failed_events`: one the
/// component fails on, on its merchant's shard (merchant 1: shard-2); one
/// without any header, on the first shard. Nothing is dropped, and the
/// events after them are settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_dead_letter_topic_refuses_are_kept_in_failed_events() {
    let host = Host::start_with(&two_attempts(), "");
    // Merchant 1 is in the directory before its bad record is consumed (a
    // record of a merchant without an entry is kept on the first shard).
    host.merchant(1).authorize(100).await;
    let log = host.events().await;
    let mut refused = b"not json ".to_vec();
    refused.resize(1_100_000, b'x');
    let headers = support::encode_headers(&[("event-id", "evt_too_big"), ("merchant-id", "1")]);
    support::append_event(&log, 0, &refused, headers).await;
    let mut poison = b"{}".to_vec();
    poison.resize(1_100_000, b' ');
    support::append_event(&log, 1, &poison, Vec::new()).await;
    take_payments(&host, 2).await;
    wait_for(SETTLE, "settlement past the failed events", || settled(&host, SHARDS)).await;
    wait_for(SETTLE, "both failed events to be stored", || async {
        sample(&host, "payfn_events_failed_stored_total").await == 2.0
    })
    .await;

    let columns = "consumer, source_topic, source_partition, source_offset, event_id, merchant_id, \
                   LENGTH(record_value), headers, error, dead_letter_topic, dead_letter_error, failed_at";
    let mut shard2 = host.shard("shard-2").await;
    let rows = shard2.rows(&format!("SELECT {columns} FROM failed_events")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!((row[0].text(), row[1].text(), row[2].i64()), ("settlement".into(), "payments".into(), 0));
    assert_eq!((row[4].text(), row[5].i64(), row[6].i64()), ("evt_too_big".into(), 1, 1_100_000));
    let headers: serde_json::Value = serde_json::from_str(&row[7].text()).unwrap();
    assert_eq!(
        headers,
        serde_json::json!([{"name": "event-id", "value": "evt_too_big"}, {"name": "merchant-id", "value": "1"}])
    );
    assert!(row[8].text().contains("invalid_json"), "{row:?}");
    assert_eq!(row[9].text(), "payments.dlq");
    assert!(row[10].text().contains("larger than"), "{row:?}");
    assert!(row[11].text().ends_with('Z'), "{row:?}");
    let mut shard1 = host.shard("shard-1").await;
    let rows = shard1.rows(&format!("SELECT {columns} FROM failed_events")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!((row[2].i64(), row[4].clone(), row[5].clone()), (1, support::Cell::Null, support::Cell::Null));
    assert!(row[8].text().contains("no event-id header"), "{row:?}");
    assert_eq!(row[7].text(), "[]");

    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE topic = 'payments.dlq'")
        .fetch_one(&log)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    let metrics = host.metrics().await;
    assert_eq!(support::metric(&metrics, "payfn_events_dead_lettered_total", &[]), 0.0, "{metrics}");
    let refusals = support::metric(
        &metrics,
        "payfn_invocation_errors_total",
        &[("component", "settlement"), ("kind", "refused")],
    );
    assert_eq!(refusals, 2.0, "max_attempts component failures, then no more: {metrics}");
    assert!(host.log().contains("kept in failed_events"));
    assert_money_invariants(&host, SHARDS).await;
}
