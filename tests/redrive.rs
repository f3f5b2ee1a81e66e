//! Re-driving the events a Kafka trigger gave up on (`payfn events failed`,
//! `payfn events redrive`), on the embedded event log and on Kafka (tansu),
//! SQLite shards both.
//!
//! The failure is a real one: the settlement table of shard-2 refuses every
//! write (a trigger the test installs, as a broken migration or a bad
//! grant would), so settlement fails on each capture and refund of the
//! shard's merchants, the trigger dead-letters them after `max_attempts`,
//! and settlement of that shard stops matching its payments. Once the
//! table takes writes again, re-driving settles each event exactly once,
//! however often it is re-driven.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{assert_money_invariants, count, settled, take_payments, wait_for, Backend, Host, SHARDS};

const SETTLE: Duration = Duration::from_secs(90);
const REFUSE: [&str; 2] = [
    "CREATE TRIGGER refuse_insert BEFORE INSERT ON settlements \
     BEGIN SELECT RAISE(ABORT, 'settlements closed by the test'); END",
    "CREATE TRIGGER refuse_update BEFORE UPDATE ON settlements \
     BEGIN SELECT RAISE(ABORT, 'settlements closed by the test'); END",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_redriven_once_the_cause_is_fixed_embedded() {
    let host = Host::start_with(&two_attempts(), "");
    failed_events_are_redriven_once_the_cause_is_fixed(host, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_redriven_once_the_cause_is_fixed_on_kafka() {
    let host = Backend::sqlite_with_kafka(&two_attempts(), "").await;
    failed_events_are_redriven_once_the_cause_is_fixed(host, true).await;
}

async fn failed_events_are_redriven_once_the_cause_is_fixed(host: Host, kafka: bool) {
    let mut shard2 = host.shard_for_writes("shard-2").await;
    for sql in REFUSE {
        shard2.execute(sql).await;
    }
    take_payments(&host, 2).await;
    // Every capture and refund of shard-2's merchants fails and is dead-lettered.
    let refused = count(
        &host,
        &["shard-2"],
        "SELECT COUNT(*) FROM outbox WHERE event_type IN ('payment.captured', 'payment.refunded')",
    )
    .await;
    assert!(refused >= 5, "shard-2 has captures and refunds: {refused}");
    wait_for(SETTLE, "shard-2's captures and refunds to be dead-lettered", || async {
        listed(&host).await.len() as i64 == refused && caught_up(&host).await
    })
    .await;
    wait_for(SETTLE, "shard-1 to settle", || settled(&host, &["shard-1"])).await;
    assert!(!settled(&host, &["shard-2"]).await, "shard-2 cannot settle while its table refuses");
    let failed = listed(&host).await;
    for event in &failed {
        assert_eq!(event["consumer"], "settlement", "{event}");
        assert_eq!(event["kept_in"]["kind"], "dead_letter_topic", "{event}");
        assert_eq!(event["kept_in"]["topic"], "payments.dlq", "{event}");
        assert!(event["error"].as_str().unwrap_or("").contains("settlements closed by the test"), "{event}");
        assert!(event["source"].as_str().unwrap_or("").starts_with("payments/"), "{event}");
        assert!(
            matches!(event["event_type"].as_str(), Some("payment.captured" | "payment.refunded")),
            "{event}"
        );
    }
    let table = host.admin(&["events", "failed"]).await;
    assert!(table.ok && table.stdout.contains("payments.dlq/"), "{table:?}");

    // One of them is also kept in failed_events, as the trigger keeps a
    // record its dead-letter topic did not take (here a copy: the
    // dead-letter produce was acknowledged after all, say).
    let (key, value, headers) = dead_lettered(&host, kafka, refused as usize).await.remove(0);
    let copied = header(&headers, "event-id");
    assert!(!copied.contains('\''), "{copied}");
    let headers_json: Vec<Value> = headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq-"))
        .map(|(k, v)| serde_json::json!({"name": k, "value": String::from_utf8_lossy(v)}))
        .collect();
    shard2
        .execute(&format!(
            "INSERT INTO failed_events (consumer, source_topic, source_partition, source_offset, event_id, \
             merchant_id, record_key, record_value, headers, error, dead_letter_topic, dead_letter_error, \
             failed_at) VALUES ('settlement', 'payments', 0, 999999, '{copied}', {merchant}, X'{key}', \
             X'{value}', '{headers}', 'settlements closed by the test', 'payments.dlq', 'test copy', \
             '2026-12-03T00:00:00.000Z')",
            merchant = header(&headers, "merchant-id"),
            key = hex::encode(&key),
            value = hex::encode(&value),
            headers = Value::Array(headers_json).to_string().replace('\'', "''"),
        ))
        .await;
    assert_eq!(listed(&host).await.len() as i64, refused + 1);

    // Re-driving while the cause is still there: they fail again and come
    // back to the dead-letter topic; nothing is lost or applied.
    let processed = "SELECT COUNT(*) FROM processed_events WHERE consumer = 'settlement'";
    let processed_before = host.shard("shard-2").await.i64(processed).await;
    // One that is only in the topic.
    let first = failed
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .find(|id| *id != copied)
        .expect("another event id")
        .to_string();
    let out = host.admin(&["events", "redrive", "--event-id", &first]).await;
    assert!(
        out.ok && out.stderr.contains("re-drove 1 events (1 from dead-letter topics, 0 from failed_events)"),
        "{out:?}"
    );
    wait_for(SETTLE, "the re-driven event to fail again", || async {
        listed(&host).await.len() as i64 == refused + 2 && caught_up(&host).await
    })
    .await;
    assert_eq!(host.shard("shard-2").await.i64(processed).await, processed_before);

    // The cause fixed: everything re-driven, each applied exactly once,
    // though `first` and the copied one are each re-driven more than once.
    for name in ["refuse_insert", "refuse_update"] {
        shard2.execute(&format!("DROP TRIGGER {name}")).await;
    }
    // The copied row's merchant is being moved (the move's fence is on
    // its shard): its row stays, held, while the topics' records go back.
    let merchant = header(&headers, "merchant-id");
    let kept = host.shard("shard-2").await.i64("SELECT MAX(id) FROM failed_events").await;
    shard2
        .execute(&format!(
            "INSERT INTO moving_merchants (merchant_id, move_id, role) VALUES ({merchant}, 99, 'source')"
        ))
        .await;
    let out = host.admin(&["events", "redrive", "--all", "--json"]).await;
    assert!(!out.ok && out.stderr.contains("being moved"), "a held row is not re-driven: {out:?}");
    let done: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(done["from_dead_letter_topics"], refused + 1, "{done}");
    assert_eq!(done["from_failed_events"], 0, "{done}");
    assert_eq!(
        done["held_for_moves"],
        serde_json::json!([format!("shard-2:failed_events#{kept}")]),
        "{done}"
    );
    assert_eq!(host.shard("shard-2").await.i64("SELECT COUNT(*) FROM failed_events").await, 1);
    // The move over, the row goes back too.
    shard2.execute(&format!("DELETE FROM moving_merchants WHERE merchant_id = {merchant}")).await;
    let out = host.admin(&["events", "redrive", "--all", "--json"]).await;
    assert!(out.ok, "{out:?}");
    let done: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(done["from_dead_letter_topics"], 0, "{done}");
    assert_eq!(done["from_failed_events"], 1, "{done}");
    assert_eq!(done["held_for_moves"], serde_json::json!([]), "{done}");
    assert_eq!(done["stopped"], Value::Null, "{done}");
    wait_for(SETTLE, "shard-2 to settle after the re-drive", || settled(&host, SHARDS)).await;
    assert_money_invariants(&host, SHARDS).await;
    assert_eq!(host.shard("shard-2").await.i64("SELECT COUNT(*) FROM failed_events").await, 0);
    // Processed once each. The re-drive sent `refused + 2` records of
    // `refused` events (`first` twice from the topic, `copied` once from
    // each place): two were skipped as duplicates.
    wait_for(SETTLE, "the extra copies to be skipped as duplicates", || async {
        duplicates(&host).await >= 2.0 && caught_up(&host).await
    })
    .await;
    assert_eq!(host.shard("shard-2").await.i64(processed).await, processed_before + refused);
    assert_eq!(duplicates(&host).await, 2.0);

    // Nothing left to re-drive; a re-drive by id still finds an old one
    // (and changes nothing); an unknown id is an error.
    assert!(listed(&host).await.is_empty());
    let out = host.admin(&["events", "redrive", "--all"]).await;
    assert!(out.ok && out.stderr.contains("re-drove 0 events"), "{out:?}");
    let before = support::actual_settlements(&host, SHARDS).await;
    let out = host.admin(&["events", "redrive", "--event-id", &first, "--event-id", "evt_nowhere"]).await;
    assert!(!out.ok && out.stderr.contains("not found") && out.stderr.contains("evt_nowhere"), "{out:?}");
    assert!(out.stderr.contains("re-drove 2 events"), "both copies of {first} in the topic: {out:?}");
    wait_for(SETTLE, "the copies of the old event to be skipped", || async {
        duplicates(&host).await == 4.0 && caught_up(&host).await
    })
    .await;
    assert_eq!(support::actual_settlements(&host, SHARDS).await, before);
    let out = host.admin(&["events", "redrive"]).await;
    assert!(!out.ok && out.stderr.contains("--all"), "one of --all or --event-id is required: {out:?}");
}

fn two_attempts() -> String {
    let manifest = support::manifest("");
    assert!(manifest.contains("max_attempts = 5"), "the settlement trigger's max_attempts moved");
    manifest.replace("max_attempts = 5", "max_attempts = 2")
}

/// Whether the settlement group has handled every record of its topic.
async fn caught_up(host: &Host) -> bool {
    support::metric(&host.metrics().await, "payfn_kafka_consumer_lag", &[("group", "settlement")]) == 0.0
}

/// Records the settlement consumer skipped as already processed.
async fn duplicates(host: &Host) -> f64 {
    support::metric(&host.metrics().await, "payfn_events_duplicate_total", &[("component", "settlement")])
}

/// `payfn events failed --json --limit 500`.
async fn listed(host: &Host) -> Vec<Value> {
    let out = host.admin(&["events", "failed", "--json", "--limit", "500"]).await;
    assert!(out.ok, "{out:?}");
    let answer: Value = serde_json::from_str(&out.stdout).expect("JSON");
    answer["failed_events"].as_array().cloned().unwrap_or_default()
}

type Headers = Vec<(String, Vec<u8>)>;
/// A stored record of the embedded log: key, value, encoded headers.
type StoredRecord = (Option<Vec<u8>>, Vec<u8>, Vec<u8>);

/// The records of `payments.dlq` as (key, value, headers), at least `expected`.
async fn dead_lettered(host: &Host, kafka: bool, expected: usize) -> Vec<(Vec<u8>, Vec<u8>, Headers)> {
    if kafka {
        return host.kafka().read_all("payments.dlq", expected).await;
    }
    let log = host.events().await;
    let rows: Vec<StoredRecord> = sqlx::query_as(
        "SELECT key, value, headers FROM records WHERE topic = 'payments.dlq' ORDER BY partition, \"offset\"",
    )
    .fetch_all(&log)
    .await
    .expect("read the dead-letter topic");
    rows.into_iter().map(|(key, value, headers)| (key.unwrap_or_default(), value, decode(&headers))).collect()
}

/// The event log's header encoding, read back (`support::encode_headers`).
fn decode(mut bytes: &[u8]) -> Headers {
    let take = |bytes: &mut &[u8]| {
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("a length")) as usize;
        let part = bytes[4..4 + len].to_vec();
        *bytes = &bytes[4 + len..];
        part
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let name = String::from_utf8(take(&mut bytes)).expect("a UTF-8 name");
        out.push((name, take(&mut bytes)));
    }
    out
}

fn header(headers: &Headers, name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}
