//! Retention (docs/ARCHITECTURE.md, "Retention"): with retentions of two
//! seconds, a real payment flow's published outbox rows, processed event ids
//! and idempotency records go, in batches, and `/metrics` counts each one;
//! an unpublished and a dead-lettered outbox row stay whatever their age,
//! and rows within the retention stay.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{manifest, metric, settled, take_payments, wait_for, Backend, Host, ShardDb, SHARDS};

const SETTLE: Duration = Duration::from_secs(90);
const PURGE: Duration = Duration::from_secs(30);
/// Batches of 3 rows: every round of the purge takes several batches.
const RETENTION: &str = "[retention]\noutbox = \"2s\"\nprocessed_events = \"2s\"\nidempotency = \"2s\"\n\
                         interval = \"200ms\"\nbatch_size = 3\n";
/// Long past any retention.
const OLD: &str = "2020-01-01T00:00:00.000Z";

/// Idempotency keys used per merchant (merchant 2 is on shard-1, merchant 1
/// on shard-2).
const KEYS: i64 = 3;

/// A connection to `shard` that may write: the test's own rows.
async fn writable(host: &Host, shard: &str) -> ShardDb {
    use sqlx::ConnectOptions;
    match host.backend() {
        Backend::Embedded => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(host.shard_db(shard))
                .busy_timeout(Duration::from_secs(10));
            ShardDb::Sqlite(options.connect().await.expect("open shard db"))
        }
        _ => host.shard(shard).await,
    }
}

fn outbox_row(
    event_id: &str,
    published: i64,
    published_at: &str,
    dead_lettered: i64,
    retry: (i64, i64),
) -> String {
    let (retry_count, next_attempt_at_ms) = retry;
    format!(
        "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, \
         published, published_at, dead_lettered, retry_count, next_attempt_at_ms) \
         VALUES ('{event_id}', '{event_id}', 1, 'test.retention', '{{}}', '{OLD}', \
                 {published}, '{published_at}', {dead_lettered}, {retry_count}, {next_attempt_at_ms})"
    )
}

fn processed_row(event_id: &str, processed_at: &str) -> String {
    format!(
        "INSERT INTO processed_events (consumer, event_id, processed_at) \
         VALUES ('retention-test', '{event_id}', '{processed_at}')"
    )
}

fn idempotency_row(key: &str, created_at_ms: i64) -> String {
    // '{}' is valid input for BLOB, MEDIUMBLOB and BYTEA alike.
    format!(
        "INSERT INTO idempotency_keys (merchant_id, idempotency_key, fingerprint, status, body, created_at_ms) \
         VALUES (1, '{key}', 'f', 201, '{{}}', {created_at_ms})"
    )
}

/// The rows of each table, in a form to compare.
async fn left(db: &mut ShardDb) -> (Vec<String>, Vec<String>, Vec<String>) {
    let outbox = db
        .rows("SELECT event_id, published, dead_lettered FROM outbox ORDER BY event_id")
        .await
        .iter()
        .map(|r| format!("{} published={} dead_lettered={}", r[0].text(), r[1].i64(), r[2].i64()))
        .collect();
    let processed = db
        .column("SELECT event_id FROM processed_events ORDER BY event_id")
        .await
        .iter()
        .map(|c| c.text())
        .collect();
    let keys = db
        .column("SELECT idempotency_key FROM idempotency_keys ORDER BY idempotency_key")
        .await
        .iter()
        .map(|c| c.text())
        .collect();
    (outbox, processed, keys)
}

/// Polls until `shard` holds exactly `kept`, or fails showing what it holds.
async fn wait_for_rows(host: &Host, shard: &str, kept: &(Vec<String>, Vec<String>, Vec<String>)) {
    let deadline = std::time::Instant::now() + PURGE;
    loop {
        let mut db = host.shard(shard).await;
        let rows = left(&mut db).await;
        db.close().await;
        if &rows == kept {
            return;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!(&rows, kept, "{shard}: (outbox, processed_events, idempotency_keys) after {PURGE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn purged(metrics: &str, shard: &str, table: &str) -> i64 {
    metric(metrics, "payfn_retention_purged_total", &[("shard", shard), ("table", table)]) as i64
}

async fn old_rows_are_purged_and_unseen_events_stay(backend: Backend) {
    let host = backend.start_with(&manifest(""), RETENTION).await;
    assert!(host.log().contains("retention       outbox (published) 2s"), "{}", host.log());
    assert!(host.log().contains("shorter than the 1day an Idempotency-Key replays for"), "{}", host.log());

    // A real flow: payments, captures, refunds, voids on both shards, and
    // idempotency records on both (merchant 2: shard-1; merchant 1: shard-2).
    take_payments(&host, 2).await;
    for merchant in [1, 2] {
        let m = host.merchant(merchant);
        for i in 0..KEYS {
            let key = format!("retention-{merchant}-{i}");
            let reply = m
                .send(
                    "POST",
                    "/payments/authorize",
                    Some(r#"{"amount":1200,"currency":"KRW"}"#),
                    &[("idempotency-key", key.as_str())],
                )
                .await;
            assert_eq!(reply.status, 201, "{:?}", reply.json());
        }
    }
    wait_for(SETTLE, "the outbox to drain and settlements to match the payments", || settled(&host, SHARDS))
        .await;

    // Rows the purge must leave: an old unpublished row (in backoff, so the
    // relay leaves it unpublished too), an old dead-lettered one, and a
    // row of each table within the retention. The old rows carry an old
    // published_at, so that only their flags keep them.
    let now = SystemTime::now();
    let soon = now + Duration::from_secs(3600);
    let soon_text = humantime::format_rfc3339_millis(soon).to_string();
    let soon_ms = soon.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let kept = (
        vec![
            "retention-dead published=0 dead_lettered=1".to_string(),
            "retention-recent published=1 dead_lettered=0".to_string(),
            "retention-unpublished published=0 dead_lettered=0".to_string(),
        ],
        vec!["recent".to_string()],
        vec!["retention-recent".to_string()],
    );
    for shard in SHARDS {
        let mut db = writable(&host, shard).await;
        db.execute(&outbox_row("retention-unpublished", 0, OLD, 0, (1, i64::MAX / 1024))).await;
        db.execute(&outbox_row("retention-dead", 0, OLD, 1, (10, 0))).await;
        db.execute(&outbox_row("retention-recent", 1, &soon_text, 0, (0, 0))).await;
        db.execute(&processed_row("recent", &soon_text)).await;
        db.execute(&idempotency_row("retention-recent", soon_ms)).await;
        db.close().await;
    }

    // Everything the flow wrote is purged; what must stay, stays.
    for shard in SHARDS {
        wait_for_rows(&host, shard, &kept).await;
    }

    // Each purged row was counted: the idempotency records exactly (one per
    // key); at least one outbox row per payment change, and one processed
    // id per capture and refund (the events settlement records).
    // (A batch is counted just after its COMMIT: poll for the count too.)
    wait_for(PURGE, "the idempotency records to be counted", || async {
        let metrics = host.metrics().await;
        SHARDS.iter().all(|shard| purged(&metrics, shard, "idempotency_keys") >= KEYS)
    })
    .await;
    let metrics = host.metrics().await;
    for shard in SHARDS {
        let mut db = host.shard(shard).await;
        let payment_events = db
            .i64(
                "SELECT (SELECT COUNT(*) FROM payments) \
                      + (SELECT COUNT(*) FROM payments WHERE captured_amount > 0) \
                      + (SELECT COUNT(*) FROM payments WHERE status = 'VOIDED') \
                      + (SELECT COUNT(*) FROM refunds)",
            )
            .await;
        let settled_events = db
            .i64(
                "SELECT (SELECT COUNT(*) FROM payments WHERE captured_amount > 0) \
                      + (SELECT COUNT(*) FROM refunds)",
            )
            .await;
        db.close().await;
        assert!(settled_events > 5, "{shard}: {settled_events} captures and refunds");
        assert_eq!(purged(&metrics, shard, "idempotency_keys"), KEYS, "{shard}\n{metrics}");
        assert!(purged(&metrics, shard, "outbox") >= payment_events, "{shard}: {payment_events}\n{metrics}");
        assert!(purged(&metrics, shard, "processed_events") >= settled_events, "{shard}\n{metrics}");
    }

    // Old rows written now go within a round or two, counted exactly.
    let (outbox, processed, keys) = (7, 5, 4);
    for shard in SHARDS {
        let mut db = writable(&host, shard).await;
        for i in 0..outbox {
            db.execute(&outbox_row(&format!("retention-old-{i}"), 1, OLD, 0, (0, 0))).await;
        }
        for i in 0..processed {
            db.execute(&processed_row(&format!("old-{i}"), OLD)).await;
        }
        for i in 0..keys {
            db.execute(&idempotency_row(&format!("retention-old-{i}"), 1_000)).await;
        }
        db.close().await;
    }
    for shard in SHARDS {
        wait_for_rows(&host, shard, &kept).await;
    }
    let delta =
        |after: &str, shard: &str, table: &str| purged(after, shard, table) - purged(&metrics, shard, table);
    wait_for(PURGE, "the old rows to be counted", || async {
        let after = host.metrics().await;
        SHARDS.iter().all(|shard| {
            delta(&after, shard, "outbox") >= outbox
                && delta(&after, shard, "processed_events") >= processed
                && delta(&after, shard, "idempotency_keys") >= keys
        })
    })
    .await;
    let after = host.metrics().await;
    for shard in SHARDS {
        for (table, n) in [("outbox", outbox), ("processed_events", processed), ("idempotency_keys", keys)] {
            assert_eq!(delta(&after, shard, table), n, "{shard} {table}\n{after}");
        }
    }
}

on_backends!(old_rows_are_purged_and_unseen_events_stay);
