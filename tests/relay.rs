//! The outbox relay on the embedded event log: a payment's events go out in
//! one firing and in commit order; a refused message holds the rest of its
//! payment until it goes out, so a retry never reorders; snapshot events
//! coalesce to their newest state.
//!
//! The relay runs every 2 s here (instead of 200 ms) so that steps taken
//! back to back land in one firing's window.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{metric, settled, unpublished, wait_for, Host, SHARDS};

const SETTLE: Duration = Duration::from_secs(60);
const RELAY_ENV: &str = r#"topic = "payments", retry_budget = "10", backoff_base_ms = "1000""#;

/// The payments manifest with the relay firing every `interval_ms`.
fn manifest(interval_ms: u64, relay_env: &str) -> String {
    let text = support::manifest("");
    let slow = text.replace("interval_ms = 200\n", &format!("interval_ms = {interval_ms}\n"));
    assert_ne!(slow, text, "the relay's interval is in the manifest");
    slow.replace(RELAY_ENV, relay_env)
}

/// `(event_type, published, published_at)` of `payment`'s outbox rows, in id order.
async fn rows_of(host: &Host, shard: &str, payment: &str) -> Vec<(String, i64, String)> {
    host.shard(shard)
        .await
        .rows(&format!(
            "SELECT event_type, published, COALESCE(published_at, '') FROM outbox \
             WHERE aggregate_id = '{payment}' ORDER BY id"
        ))
        .await
        .into_iter()
        .map(|r| (r[0].text(), r[1].i64(), r[2].text()))
        .collect()
}

/// The settlement states (`data.version`, `amount`) the log holds, in
/// offset order.
async fn logged_states(host: &Host) -> Vec<(i64, i64)> {
    let log = host.events().await;
    let values: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM records WHERE key LIKE 'stl_%' ORDER BY partition, \"offset\"")
            .fetch_all(&log)
            .await
            .unwrap();
    values
        .iter()
        .map(|v| {
            let event: Value = serde_json::from_slice(v).unwrap();
            (event["data"]["version"].as_i64().unwrap(), event["amount"].as_i64().unwrap())
        })
        .collect()
}

/// The event types the log holds for `key`, in offset order.
async fn logged_types(host: &Host, key: &str) -> Vec<String> {
    let log = host.events().await;
    let values: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM records WHERE key = ? ORDER BY partition, \"offset\"")
            .bind(key.as_bytes())
            .fetch_all(&log)
            .await
            .unwrap();
    values
        .iter()
        .map(|v| serde_json::from_slice::<Value>(v).unwrap()["type"].as_str().unwrap().to_string())
        .collect()
}

/// Authorizes, captures and refunds a payment of merchant 1 (shard-2) back
/// to back; `None` if a firing fell between the steps (a row was already
/// published when the last step returned), so the caller tries another.
async fn three_steps_in_one_window(host: &Host) -> Option<String> {
    let m = host.merchant(1);
    let id = m.authorize(10_000).await;
    assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
    assert_eq!(m.post(&format!("/payments/{id}/refund"), r#"{"amount":1000}"#).await.status, 200);
    let rows = rows_of(host, "shard-2", &id).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    rows.iter().all(|(_, published, _)| *published == 0).then_some(id)
}

#[tokio::test]
async fn a_payments_events_go_out_in_one_firing_in_commit_order() {
    let host = Host::start_with(&manifest(2000, RELAY_ENV), "");
    let mut id = None;
    for _ in 0..5 {
        id = three_steps_in_one_window(&host).await;
        if id.is_some() {
            break;
        }
    }
    let id = id.expect("three steps inside one 2 s relay window in 5 tries");
    wait_for(SETTLE, "the payment's events to be published", || async {
        rows_of(&host, "shard-2", &id).await.iter().all(|(_, published, _)| *published == 1)
    })
    .await;
    let rows = rows_of(&host, "shard-2", &id).await;
    // One firing marked all three: one published_at.
    assert!(rows.iter().all(|(_, _, at)| *at == rows[0].2), "published over several firings: {rows:?}");
    assert_eq!(
        logged_types(&host, &id).await,
        ["payment.authorized", "payment.captured", "payment.refunded"],
        "the log holds the payment's events in commit order"
    );
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
}

#[tokio::test]
async fn a_refused_event_holds_the_rest_of_its_payment_until_it_goes_out() {
    // Refusals back off 1 s, 2 s, 4 s...; the budget outlasts the test.
    let env = r#"topic = "payments", retry_budget = "10", backoff_base_ms = "1000""#;
    let host = Host::start_with(&manifest(2000, env), "");
    let mut attempt = 0;
    let (id, capture_payload) = loop {
        attempt += 1;
        assert!(attempt <= 5, "three steps inside one 2 s relay window in 5 tries");
        let Some(id) = three_steps_in_one_window(&host).await else { continue };
        // Make the capture's event too large for the log (over 1 MiB)
        // before the relay reads it; if a firing came first, try another.
        let mut db = host.shard_for_writes("shard-2").await;
        let original = db
            .column(&format!(
                "SELECT payload FROM outbox WHERE aggregate_id = '{id}' AND event_type = 'payment.captured'"
            ))
            .await[0]
            .text();
        db.execute(&format!(
            "UPDATE outbox SET payload = payload || '{}' \
             WHERE aggregate_id = '{id}' AND event_type = 'payment.captured' AND published = 0",
            " ".repeat(1_100_000)
        ))
        .await;
        if rows_of(&host, "shard-2", &id).await[0].1 == 0 {
            break (id, original);
        }
    };

    // The authorization goes; the capture is refused, and the refund, behind
    // it, waits: not published while the capture is being retried.
    wait_for(SETTLE, "the capture to be refused twice", || async {
        host.shard("shard-2")
            .await
            .i64(&format!(
                "SELECT retry_count FROM outbox WHERE aggregate_id = '{id}' AND event_type = 'payment.captured'"
            ))
            .await
            >= 2
    })
    .await;
    let rows = rows_of(&host, "shard-2", &id).await;
    let published: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(published, [1, 0, 0], "the refund waits behind the refused capture: {rows:?}");
    let metrics = host.metrics().await;
    assert!(metric(&metrics, "payfn_kafka_produced_total", &[("outcome", "rejected")]) >= 2.0, "{metrics}");
    let error = host
        .shard("shard-2")
        .await
        .column(&format!(
            "SELECT last_error FROM outbox WHERE aggregate_id = '{id}' AND event_type = 'payment.captured'"
        ))
        .await[0]
        .text();
    assert!(error.contains("Rejected") && error.contains("limit"), "{error}");

    // The operator repairs the event; the next attempt publishes it, then the refund.
    host.shard_for_writes("shard-2")
        .await
        .execute(&format!(
            "UPDATE outbox SET payload = '{}' WHERE aggregate_id = '{id}' AND event_type = 'payment.captured'",
            capture_payload.replace('\'', "''")
        ))
        .await;
    wait_for(SETTLE, "every row published", || async { unpublished(&host, SHARDS).await == 0 }).await;
    assert_eq!(
        logged_types(&host, &id).await,
        ["payment.authorized", "payment.captured", "payment.refunded"],
        "the retry did not reorder the payment's events"
    );
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
}

#[tokio::test]
async fn snapshots_waiting_together_coalesce_to_the_newest_and_payment_events_never_do() {
    let host = Host::start_with(&manifest(2000, RELAY_ENV), "");
    // Ten states of one settlement and two events of one payment, committed
    // together (one statement), so one firing finds them all waiting. The
    // settlement consumer writes fewer snapshots than that (one per run of
    // events it folds), so they are written here as it would write them.
    let rows: Vec<String> = (0..10)
        .map(|v| {
            let payload = format!(
                r#"{{"eventId":"evt_stl_{v}","type":"settlement.updated","merchantId":1,"amount":{},"currency":"EUR","data":{{"version":{v}}}}}"#,
                100 * (v + 1)
            );
            format!("('evt_stl_{v}', 'stl_1_2026-12-03_EUR', 1, 'settlement.updated', '{payload}', '2026-12-03T00:00:0{v}Z', NULL)")
        })
        // Types settlement does not take (a capture without an amount would
        // be dead-lettered, and its copy in the DLQ has the same key).
        .chain(["authorized", "voided"].iter().map(|kind| {
            format!(
                r#"('evt_pay_{kind}', 'pay_coalesce', 1, 'payment.{kind}', '{{"eventId":"evt_pay_{kind}","type":"payment.{kind}","merchantId":1}}', '2026-12-03T00:00:10Z', NULL)"#
            )
        }))
        .collect();
    let mut db = host.shard_for_writes("shard-2").await;
    db.execute(&format!(
        "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, traceparent) \
         VALUES {}",
        rows.join(", ")
    ))
    .await;
    db.close().await;
    wait_for(SETTLE, "every row published", || async { unpublished(&host, SHARDS).await == 0 }).await;

    let mut db = host.shard("shard-2").await;
    let newest = db.i64("SELECT id FROM outbox WHERE event_id = 'evt_stl_9'").await;
    let superseded = db
        .column("SELECT event_id FROM outbox WHERE superseded_by IS NOT NULL ORDER BY id")
        .await
        .into_iter()
        .map(|c| c.text())
        .collect::<Vec<_>>();
    assert_eq!(superseded, (0..9).map(|v| format!("evt_stl_{v}")).collect::<Vec<_>>(), "the older states");
    let wrong = db
        .i64(&format!(
            "SELECT COUNT(*) FROM outbox WHERE superseded_by IS NOT NULL AND (superseded_by <> {newest} \
             OR published <> 1)"
        ))
        .await;
    assert_eq!(wrong, 0, "a row superseded by anything but the newest, sent state of its aggregate");

    // The log holds the newest state alone and both payment events.
    let states: Vec<i64> = logged_states(&host).await.iter().map(|(version, _)| *version).collect();
    assert_eq!(states, [9], "only the newest state went out");
    assert_eq!(logged_types(&host, "pay_coalesce").await, ["payment.authorized", "payment.voided"]);
}

#[tokio::test]
async fn settlement_states_reach_the_log_in_increasing_versions_ending_with_the_table() {
    let host = Host::start_with(&manifest(2000, RELAY_ENV), "");
    // Ten captures of one merchant: settlement folds those of one run into
    // one state, and the relay coalesces states waiting together.
    let m = host.merchant(1);
    for i in 0..10 {
        let id = m.authorize(1_000 + i).await;
        assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
    }
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
    // The last state's outbox row committed with the settlement: now out.
    wait_for(SETTLE, "every row published", || async { unpublished(&host, SHARDS).await == 0 }).await;

    let mut db = host.shard("shard-2").await;
    let snapshots = db.i64("SELECT COUNT(*) FROM outbox WHERE event_type = 'settlement.updated'").await;
    let superseded = db.i64("SELECT COUNT(*) FROM outbox WHERE superseded_by IS NOT NULL").await;
    let (version, net, captures) = {
        let row = &db.rows("SELECT version, net, capture_count FROM settlements").await[0];
        (row[0].i64(), row[1].i64(), row[2].i64())
    };
    // The version counts changes, however they were folded.
    assert_eq!((captures, version), (10, 9));

    // The log holds increasing versions of the settlement, ending with the
    // state the table holds.
    let states = logged_states(&host).await;
    assert_eq!(states.len() as i64, snapshots - superseded, "{states:?}");
    assert!(states.windows(2).all(|w| w[0].0 < w[1].0), "versions out of order: {states:?}");
    assert_eq!(states.last(), Some(&(version, net)), "the newest state went out last");
}
