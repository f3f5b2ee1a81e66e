//! Online merchant moves (issue 18): `payfn shards move` takes one
//! merchant's rows to another shard while the host serves; nothing is lost
//! or doubled (rows, events, settlement), other merchants never notice, the
//! moving merchant sees only bounded 503s, and a host killed at any step of
//! a move finishes it after its restart.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{
    assert_acknowledged_committed, assert_money_invariants, count, settled, wait_for, Backend, Host, SHARDS,
};

/// Every table a merchant has rows in, as the move copies them.
const TABLES: [&str; 7] = [
    "payments",
    "refunds",
    "ledger_entries",
    "outbox",
    "idempotency_keys",
    "settlements",
    "processed_events",
];

/// Small pages: every paged table takes several, so that each dialect
/// runs the keyset reads of a move's rounds (host/src/moves/pages.rs).
const SMALL_PAGES: &str = "[moves]\npage_rows = 10\n";
/// Pages that still keep up with a merchant's own load (a round must
/// copy faster than the merchant writes for the rounds to get small).
const PAGES_UNDER_LOAD: &str = "[moves]\npage_rows = 200\n";

/// How long the relay and settlement get to drain.
const DRAIN: Duration = Duration::from_secs(60);

/// `merchant`'s rows per table on `shard`.
async fn rows_of(host: &Host, shard: &str, merchant: i64) -> Vec<(String, i64)> {
    let mut db = host.shard(shard).await;
    let mut out = Vec::new();
    for table in TABLES {
        let filter = if table == "processed_events" {
            format!(
                "merchant_id = {merchant} OR (merchant_id IS NULL AND event_id IN \
                 (SELECT event_id FROM outbox WHERE merchant_id = {merchant}))"
            )
        } else {
            format!("merchant_id = {merchant}")
        };
        out.push((table.to_string(), db.i64(&format!("SELECT COUNT(*) FROM {table} WHERE {filter}")).await));
    }
    db.close().await;
    out
}

/// A merchant's business: payments captured, refunded and voided, some
/// with idempotency keys. Returns an authorized payment left open and an
/// idempotency key used.
async fn business(host: &Host, merchant: i64, rounds: i64) -> (String, String) {
    let m = host.merchant(merchant);
    for i in 0..rounds {
        let id = m.authorize(20_000 + i).await;
        assert_eq!(m.post(&format!("/payments/{id}/capture"), r#"{"amount":15000}"#).await.status, 200);
        if i % 3 == 0 {
            assert_eq!(m.post(&format!("/payments/{id}/refund"), r#"{"amount":2000}"#).await.status, 200);
        }
        if i % 4 == 0 {
            let voided = m.authorize(700).await;
            assert_eq!(m.post(&format!("/payments/{voided}/void"), "{}").await.status, 200);
        }
    }
    let key = format!("order-{merchant}-1");
    let body = r#"{"amount":4200,"currency":"KRW"}"#;
    let first = m.send("POST", "/payments/authorize", Some(body), &[("Idempotency-Key", &key)]).await;
    assert_eq!(first.status, 201, "{}", first.json());
    (first.json()["id"].as_str().expect("id").to_string(), key)
}

/// The move, through `payfn shards move`; its final record.
async fn move_merchant(host: &Host, merchant: i64, to: &str) -> Value {
    let out =
        host.admin(&["shards", "move", "--merchant", &merchant.to_string(), "--to", to, "--json"]).await;
    assert!(out.ok, "payfn shards move failed:\n{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).expect("the move's JSON")
}

/// The pages the first copying round of the first move read, from the
/// host's log (`move: copied a round ... pages=N`); 0 if none is logged.
fn first_round_pages(log: &str) -> u64 {
    log.lines()
        .find(|line| line.contains("move: copied a round"))
        .and_then(|line| line.split_whitespace().find_map(|field| field.strip_prefix("pages=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `payfn shards status --json`.
async fn status(host: &Host) -> Value {
    let out = host.admin(&["shards", "status", "--json"]).await;
    assert!(out.ok, "payfn shards status failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("status JSON")
}

/// Every event the relays published, as (records, distinct records).
async fn published(host: &Host, expected: usize) -> (i64, i64) {
    if let Some(kafka) = host.env.as_ref().and_then(|env| env.kafka.as_ref()) {
        let records = kafka.read_all("payments", expected).await;
        let distinct: std::collections::HashSet<&Vec<u8>> = records.iter().map(|(_, v, _)| v).collect();
        return (records.len() as i64, distinct.len() as i64);
    }
    let log = host.events().await;
    sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT value) FROM records WHERE topic = 'payments'")
        .fetch_one(&log)
        .await
        .expect("read the event log")
}

/// A merchant with payments, refunds, voids, idempotency records, events
/// and settlements moves from shard-2 to shard-1: every row goes across and
/// none stays behind, its payments go on being served, every event is
/// published exactly once, settlement agrees with the payments, and the
/// other merchant of the shard is untouched.
async fn a_moved_merchant_keeps_every_row_and_event(backend: Backend) {
    let host = backend.start_with(&support::manifest(""), SMALL_PAGES).await;
    // Odd merchants are placed on shard-2.
    let (open, key) = business(&host, 3, 12).await;
    business(&host, 5, 4).await;
    wait_for(DRAIN, "the outbox and settlement to drain", || settled(&host, SHARDS)).await;
    let before = rows_of(&host, "shard-2", 3).await;
    let neighbour = rows_of(&host, "shard-2", 5).await;
    assert!(before.iter().all(|(table, n)| *n > 0 || table == "processed_events"), "{before:?}");

    let record = move_merchant(&host, 3, "shard-1").await;
    assert_eq!(record["step"], "done", "{record}");
    assert!(record["pauseMs"].as_i64().is_some_and(|ms| ms >= 0), "{record}");
    assert!(record["detail"].as_str().is_some_and(|d| d.starts_with("verified; pause")), "{record}");
    // The first round went in pages: 8 of 2 payments with their refunds
    // and ledger entries, then the outbox's, and so on.
    let pages = first_round_pages(&host.log());
    assert!(pages >= 8 + 4, "the first round read {pages} pages");

    assert_eq!(rows_of(&host, "shard-1", 3).await, before, "every row on the new shard");
    assert!(rows_of(&host, "shard-2", 3).await.iter().all(|(_, n)| *n == 0), "none left behind");
    assert_eq!(rows_of(&host, "shard-2", 5).await, neighbour, "the neighbour is untouched");
    for shard in SHARDS {
        let mut db = host.shard(shard).await;
        assert_eq!(db.i64("SELECT COUNT(*) FROM moving_merchants").await, 0, "{shard}: fences lifted");
        db.close().await;
    }

    // Served on shard-1 now: reads, a capture, an idempotent replay.
    let m = host.merchant(3);
    assert_eq!(m.get(&format!("/payments/{open}")).await.status, 200);
    let replay = m
        .send(
            "POST",
            "/payments/authorize",
            Some(r#"{"amount":4200,"currency":"KRW"}"#),
            &[("Idempotency-Key", &key)],
        )
        .await;
    assert_eq!(replay.json()["id"], open.as_str(), "the idempotency record moved with the merchant");
    assert_eq!(m.post(&format!("/payments/{open}/capture"), "{}").await.status, 200);
    let after_move = m.authorize(3_300).await;
    let mut db = host.shard("shard-1").await;
    assert_eq!(db.i64(&format!("SELECT COUNT(*) FROM payments WHERE id = '{after_move}'")).await, 1);
    db.close().await;

    // Settlement continues on the new shard; every event once.
    wait_for(DRAIN, "settlement to catch up after the move", || settled(&host, SHARDS)).await;
    let sent = support::outbox_rows_sent(&host, SHARDS).await;
    assert_eq!(published(&host, sent as usize).await, (sent, sent), "every event published exactly once");
    assert_money_invariants(&host, SHARDS).await;
    // Settlement agrees with the captures and refunds on every shard.
    let reconciled = tokio::process::Command::new(support::PAYFN)
        .args(["reconcile", "--manifest"])
        .arg(host.app.join("spin.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run payfn reconcile");
    let report = String::from_utf8_lossy(&reconciled.stdout);
    assert!(reconciled.status.success() && report.contains("no settlement drift"), "{report}");

    // The directory and the status agree.
    let status = status(&host).await;
    let merchants: Vec<(String, i64)> = status["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or_default().to_string(), s["merchants"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(merchants, [("shard-1".to_string(), 1), ("shard-2".to_string(), 1)], "{status}");
    assert_eq!(status["moves"][0]["step"], "done", "{status}");
}

on_backends!(a_moved_merchant_keeps_every_row_and_event);

/// Moving is refused with a reason: to the shard the merchant is on, to a
/// shard the config lacks, a merchant never served.
#[tokio::test]
async fn a_move_that_cannot_be_made_is_refused() {
    let host = Host::start();
    host.merchant(1).authorize(1_000).await; // shard-2
    for (args, expected) in [
        (["--merchant", "1", "--to", "shard-2"], "already"),
        (["--merchant", "1", "--to", "shard-9"], "no shard named `shard-9`"),
        (["--merchant", "77", "--to", "shard-1"], "has never been served"),
    ] {
        let out = host.admin(&[&["shards", "move"][..], &args[..]].concat()).await;
        assert!(!out.ok, "{args:?} was accepted: {}", out.stdout);
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
}

/// Load on other merchants and on the moving one while it moves: the
/// others never fail; the moving merchant gets only 503 `merchant_moving`
/// with `Retry-After`, and every change it was told of is stored.
async fn a_move_under_load(backend: Backend) {
    let host = Arc::new(backend.start_with(&support::manifest(""), PAGES_UNDER_LOAD).await);
    business(&host, 3, 30).await;
    let stop = Arc::new(AtomicBool::new(false));
    let others_failed = Arc::new(AtomicU64::new(0));
    let others_done = Arc::new(AtomicU64::new(0));
    let mut others = Vec::new();
    for merchant in [2, 4, 5, 7] {
        let (host, stop, failed, done) =
            (host.clone(), stop.clone(), others_failed.clone(), others_done.clone());
        others.push(tokio::spawn(async move {
            let m = host.merchant(merchant);
            while !stop.load(Ordering::SeqCst) {
                let reply = m.post("/payments/authorize", r#"{"amount":1234,"currency":"KRW"}"#).await;
                if reply.status == 201 {
                    let id = reply.json()["id"].as_str().unwrap_or_default().to_string();
                    if m.post(&format!("/payments/{id}/capture"), "{}").await.status == 200 {
                        done.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                }
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // The moving merchant's own load: what it was told, and its refusals.
    let acked: support::Acknowledged = Default::default();
    let refused = Arc::new(std::sync::Mutex::new(Vec::<(u16, String, Option<String>)>::new()));
    let own = {
        let (host, stop, acked, refused) = (host.clone(), stop.clone(), acked.clone(), refused.clone());
        tokio::spawn(async move {
            let m = host.merchant(3);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = format!(r#"{{"amount":{},"currency":"KRW"}}"#, 5_000 + i);
                let reply = m.post("/payments/authorize", &body).await;
                if reply.status != 201 {
                    refused.lock().unwrap().push((
                        reply.status,
                        reply.code(),
                        reply.header("retry-after").map(str::to_string),
                    ));
                    continue;
                }
                let id = reply.json()["id"].as_str().unwrap_or_default().to_string();
                acked.lock().unwrap().insert(id.clone(), (5_000 + i, false));
                let reply = m.post(&format!("/payments/{id}/capture"), "{}").await;
                if reply.status == 200 {
                    acked.lock().unwrap().insert(id, (5_000 + i, true));
                } else {
                    refused.lock().unwrap().push((
                        reply.status,
                        reply.code(),
                        reply.header("retry-after").map(str::to_string),
                    ));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let record = move_merchant(&host, 3, "shard-1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for task in others {
        task.await.expect("other merchants' load");
    }
    own.await.expect("the moving merchant's load");

    assert_eq!(record["step"], "done", "{record}");
    // The freeze verified the changes since the verified round as written
    // (a difference would have meant a copy of every row while frozen).
    let detail = record["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("verified; pause"), "{record}");
    assert_eq!(others_failed.load(Ordering::SeqCst), 0, "other merchants saw failures");
    assert!(others_done.load(Ordering::SeqCst) > 10, "the other merchants' load ran");
    for (status, code, retry_after) in refused.lock().unwrap().iter() {
        assert_eq!((*status, code.as_str()), (503, "merchant_moving"), "only bounded 503s for the mover");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert_acknowledged_committed(&host, &acked, 5).await;
    let mut old = host.shard("shard-2").await;
    assert_eq!(old.i64("SELECT COUNT(*) FROM payments WHERE merchant_id = 3").await, 0);
    old.close().await;
    wait_for(DRAIN, "the outbox and settlement to drain", || settled(&host, SHARDS)).await;
    assert_money_invariants(&host, SHARDS).await;
    eprintln!(
        "move under load: pause {} ms, {} rows, {} refusals for the mover",
        record["pauseMs"],
        record["rowsCopied"],
        refused.lock().unwrap().len()
    );
}

on_backends!(a_move_under_load);

/// The host is killed (SIGKILL) with a move parked at each step; the host
/// started again takes the move over and ends it, nothing lost or doubled.
#[tokio::test]
async fn a_move_killed_at_each_step_ends_after_a_restart() {
    for stall in ["copying after a round", "frozen", "frozen after the last copy", "cleanup"] {
        let mut host = Host::start_with_env(&support::manifest(""), "", &[("PAYFN_MOVE_STALL_AT", stall)]);
        let (open, _) = business(&host, 3, 6).await;
        business(&host, 5, 2).await;
        wait_for(DRAIN, "the outbox and settlement to drain", || settled(&host, SHARDS)).await;
        let before = rows_of(&host, "shard-2", 3).await;
        let id = start_move(&host, 3, "shard-1").await;
        let step = stall.split(' ').next().unwrap_or_default();
        wait_for(Duration::from_secs(30), &format!("the move to reach `{stall}`"), || async {
            let status = status(&host).await;
            status["moving"].as_array().is_some_and(|m| m.iter().any(|m| m["id"] == id && m["step"] == step))
        })
        .await;
        // Let the parked step get as far as it goes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        host.kill();

        let host = host.restart();
        wait_for(Duration::from_secs(60), &format!("the move killed at `{stall}` to end"), || async {
            status(&host).await["moving"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
        let record = status(&host).await["moves"][0].clone();
        // Killed after the switch, it can only go forward; before, either
        // way is right, but whichever it took must be whole.
        let (on, off) =
            if record["step"] == "done" { ("shard-1", "shard-2") } else { ("shard-2", "shard-1") };
        assert!(record["step"] == "done" || stall != "cleanup", "{stall}: {record}");
        assert_eq!(rows_of(&host, on, 3).await, before, "{stall}: {record}");
        assert!(rows_of(&host, off, 3).await.iter().all(|(_, n)| *n == 0), "{stall}: rows left on {off}");
        let m = host.merchant(3);
        assert_eq!(m.post(&format!("/payments/{open}/capture"), "{}").await.status, 200, "{stall}");
        assert_ended_whole(&host, stall).await;
    }
}

/// The freeze's counts catch what the rows' times cannot show: a row of
/// the merchant deleted on the source after the verified round (as a
/// guest's statement may delete one) is missing there but still on the
/// target. The freeze finds the counts apart, copies the merchant again
/// whole, and the move ends with the row gone on both sides.
#[tokio::test]
async fn a_row_deleted_after_the_verified_round_is_caught_at_the_freeze() {
    let mut host = Host::start_with_env(&support::manifest(""), "", &[("PAYFN_MOVE_STALL_AT", "frozen")]);
    let (_, key) = business(&host, 3, 4).await;
    wait_for(DRAIN, "the outbox and settlement to drain", || settled(&host, SHARDS)).await;
    let id = start_move(&host, 3, "shard-1").await;
    wait_for(Duration::from_secs(60), "the move to be parked at the freeze", || async {
        move_record(&host, id).await["step"] == "frozen"
    })
    .await;
    host.kill();
    // The verified round's copy is on the target, the key's record in it.
    let copied = rows_of(&host, "shard-1", 3).await;
    assert_eq!(copied, rows_of(&host, "shard-2", 3).await, "the verified copy");
    let record =
        format!("SELECT COUNT(*) FROM idempotency_keys WHERE merchant_id = 3 AND idempotency_key = '{key}'");
    assert_eq!(host.shard("shard-1").await.i64(&record).await, 1);
    host.shard_for_writes("shard-2")
        .await
        .execute(&format!("DELETE FROM idempotency_keys WHERE merchant_id = 3 AND idempotency_key = '{key}'"))
        .await;

    let host = host.restart();
    wait_for(Duration::from_secs(60), "the move to end", || async {
        status(&host).await["moving"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let record_of_move = move_record(&host, id).await;
    assert_eq!(record_of_move["step"], "done", "{record_of_move}");
    assert!(
        record_of_move["detail"].as_str().is_some_and(|d| d.contains("after copying every row again")),
        "the counts found the deleted row: {record_of_move}"
    );
    let expected: Vec<(String, i64)> = copied
        .into_iter()
        .map(|(table, n)| if table == "idempotency_keys" { (table, n - 1) } else { (table, n) })
        .collect();
    assert_eq!(rows_of(&host, "shard-1", 3).await, expected);
    assert_eq!(host.shard("shard-1").await.i64(&record).await, 0, "the deleted record stays deleted");
    assert!(rows_of(&host, "shard-2", 3).await.iter().all(|(_, n)| *n == 0), "rows left on shard-2");
    assert_ended_whole(&host, "a row deleted after the verified round").await;
}

/// After a move ended (done or rolled back): the fences are lifted, the
/// outbox and settlement drain, every event is published exactly once and
/// the money invariants hold on every shard.
async fn assert_ended_whole(host: &Host, what: &str) {
    assert_eq!(
        count(host, SHARDS, "SELECT COUNT(*) FROM moving_merchants").await,
        0,
        "{what}: fences lifted"
    );
    wait_for(DRAIN, &format!("{what}: the outbox and settlement to drain"), || settled(host, SHARDS)).await;
    let sent = support::outbox_rows_sent(host, SHARDS).await;
    assert_eq!(published(host, sent as usize).await, (sent, sent), "{what}: every event once");
    assert_money_invariants(host, SHARDS).await;
}

/// The move's record by id, from `payfn shards status --json`.
async fn move_record(host: &Host, id: i64) -> Value {
    let status = status(host).await;
    status["moves"].as_array().and_then(|m| m.iter().find(|m| m["id"] == id).cloned()).unwrap_or(Value::Null)
}

/// Starts moving `merchant` to `to` without waiting; the move's id.
async fn start_move(host: &Host, merchant: i64, to: &str) -> i64 {
    let merchant = merchant.to_string();
    let out =
        host.admin(&["shards", "move", "--merchant", &merchant, "--to", to, "--no-wait", "--json"]).await;
    assert!(out.ok, "{}", out.stderr);
    serde_json::from_str::<Value>(&out.stdout).expect("move JSON")["id"].as_i64().expect("id")
}

/// The target shard becomes unreachable as the move begins: the copy
/// fails, the move rolls back, and the merchant is served on its source
/// all along.
/// Once the target is back, its leftover copy is deleted and the fences
/// lifted; nothing is lost or doubled.
async fn a_move_to_an_unreachable_shard_rolls_back(backend: Backend) {
    let host = backend.start().await;
    let env = host.env.clone().expect("a server backend");
    let (open, _) = business(&host, 3, 4).await;
    wait_for(DRAIN, "the outbox and settlement to drain", || settled(&host, SHARDS)).await;
    let before = rows_of(&host, "shard-2", 3).await;

    // Cut after the start (which checks the target is there): the copying
    // cannot end before an invocation timeout has passed since its fences.
    let id = start_move(&host, 3, "shard-1").await;
    env.set_shard_outage("shard-1", true);
    wait_for(Duration::from_secs(60), "the move to give up and roll back", || async {
        move_record(&host, id).await["step"] == "rolling_back"
    })
    .await;
    assert_eq!(host.directory().await[&3].0, "shard-2", "the entry names the source again");
    assert_eq!(rows_of(&host, "shard-2", 3).await, before, "the source kept every row");
    let m = host.merchant(3);
    assert_eq!(m.post(&format!("/payments/{open}/capture"), "{}").await.status, 200, "served meanwhile");

    env.set_shard_outage("shard-1", false);
    wait_for(Duration::from_secs(60), "the roll-back to end", || async {
        move_record(&host, id).await["step"] == "rolled_back"
    })
    .await;
    let record = move_record(&host, id).await;
    assert!(record["detail"].as_str().is_some_and(|d| !d.is_empty()), "the reason is kept: {record}");
    assert!(rows_of(&host, "shard-1", 3).await.iter().all(|(_, n)| *n == 0), "the target's copy is gone");
    assert_ended_whole(&host, "rolled back").await;
}

on_server_backends!(a_move_to_an_unreachable_shard_rolls_back);

/// A host that checks in but never confirms the freeze (an invocation of
/// the merchant stuck on it, as the mover sees it): the move rolls back
/// after the acknowledgement timeout, naming the host, and the merchant
/// is served on its source again with every row.
#[tokio::test]
async fn a_freeze_a_host_never_confirms_rolls_back() {
    let host = Backend::Embedded.start().await;
    let (open, _) = business(&host, 3, 4).await;
    wait_for(DRAIN, "the outbox and settlement to drain", || settled(&host, SHARDS)).await;
    let before = rows_of(&host, "shard-2", 3).await;

    // The stuck peer: live (it checks in) but at generation 0, below any
    // freeze's.
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (control, stop) = (host.control_file(), stop.clone());
        tokio::spawn(async move {
            use sqlx::ConnectOptions;
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(control)
                .busy_timeout(Duration::from_secs(5));
            let mut db = options.connect().await.expect("open the control store");
            while !stop.load(Ordering::SeqCst) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as i64;
                sqlx::query(
                    "INSERT INTO control_hosts (host_id, address, started_at, seen_at, generation) \
                     VALUES ('stuck-peer', '127.0.0.1:9', ?1, ?1, 0) \
                     ON CONFLICT (host_id) DO UPDATE SET seen_at = excluded.seen_at",
                )
                .bind(now)
                .execute(&mut db)
                .await
                .expect("the peer's check-in");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let id = start_move(&host, 3, "shard-1").await;
    wait_for(Duration::from_secs(60), "the freeze", || async {
        move_record(&host, id).await["step"] == "frozen"
    })
    .await;
    // The record says frozen once the mover wrote it; this host applies
    // the freeze at its next control sync (up to a sync interval later,
    // and until then it serves the merchant on the source, which the
    // cut-over waits for). A read refused shows the freeze has landed.
    wait_for(Duration::from_secs(30), "the host to apply the freeze", || async {
        host.merchant(3).get(&format!("/payments/{open}")).await.status == 503
    })
    .await;
    // Frozen, the merchant's writes wait, then get a bounded 503.
    let refused = host.merchant(3).post(&format!("/payments/{open}/capture"), "{}").await;
    assert_eq!((refused.status, refused.code().as_str()), (503, "merchant_moving"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    wait_for(Duration::from_secs(60), "the move to roll back", || async {
        move_record(&host, id).await["step"] == "rolled_back"
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    peer.await.expect("the stuck peer");

    let record = move_record(&host, id).await;
    assert!(
        record["detail"].as_str().is_some_and(|d| d.contains("stuck-peer")),
        "the host is named: {record}"
    );
    assert_eq!(host.directory().await[&3].0, "shard-2");
    assert_eq!(rows_of(&host, "shard-2", 3).await, before, "the source kept every row");
    assert!(rows_of(&host, "shard-1", 3).await.iter().all(|(_, n)| *n == 0), "the target's copy is gone");
    let m = host.merchant(3);
    assert_eq!(m.post(&format!("/payments/{open}/capture"), "{}").await.status, 200, "served again");
    assert_ended_whole(&host, "rolled back").await;
}

/// A third shard joins; `payfn shards rebalance --plan` names the moves
/// that even the shards out and `--apply` makes them one at a time, with
/// progress on the terminal. Afterwards each moved merchant's payments are
/// on the new shard and a new plan has nothing to move.
#[tokio::test]
async fn rebalance_applies_its_plan_one_move_at_a_time() {
    let mut host = Backend::Embedded.start().await;
    // Merchant m takes m + 2 payments: shard-1 (2, 4, 6) has 18, shard-2
    // (1, 3, 5) has 15.
    let mut payments = std::collections::BTreeMap::new();
    for merchant in 1..=6 {
        let m = host.merchant(merchant);
        for i in 0..merchant + 2 {
            payments.entry(merchant).or_insert_with(Vec::new).push(m.authorize(1_000 + i).await);
        }
    }
    host.kill();
    host.set_runtime_config(support::THREE_SHARDS);
    let host = host.restart();

    // 33 payments, 11 a shard: merchant 4 (6) leaves shard-1, then merchant
    // 1 (3) leaves shard-2; nothing else fits the gaps left.
    let out = host.admin(&["shards", "rebalance", "--plan", "--json"]).await;
    assert!(out.ok, "{}", out.stderr);
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    let planned: Vec<(i64, &str, &str)> = plan["moves"]
        .as_array()
        .expect("moves")
        .iter()
        .map(|m| {
            (
                m["merchant"].as_i64().unwrap_or(-1),
                m["from"].as_str().unwrap_or(""),
                m["to"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(planned, [(4, "shard-1", "shard-3"), (1, "shard-2", "shard-3")], "{plan}");
    assert_eq!(plan["paymentsAfter"], serde_json::json!({"shard-1": 12, "shard-2": 12, "shard-3": 9}));

    let out = host.admin(&["shards", "rebalance", "--apply"]).await;
    assert!(out.ok, "rebalance --apply failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("[1/2] merchant 4 -> shard-3"), "{}", out.stdout);
    assert!(out.stdout.contains("[2/2] merchant 1 -> shard-3"), "{}", out.stdout);
    assert!(out.stdout.contains("rebalanced: 2 merchants moved"), "{}", out.stdout);
    assert!(out.stderr.contains("copying") && out.stderr.contains("done"), "progress: {}", out.stderr);

    let directory = host.directory().await;
    for (merchant, from) in [(4, "shard-1"), (1, "shard-2")] {
        assert_eq!(directory[&merchant].0, "shard-3", "merchant {merchant}");
        let filter = format!("SELECT COUNT(*) FROM payments WHERE merchant_id = {merchant}");
        assert_eq!(count(&host, &["shard-3"], &filter).await, payments[&merchant].len() as i64);
        assert_eq!(count(&host, &[from], &filter).await, 0, "merchant {merchant} left {from}");
        let m = host.merchant(merchant);
        for id in &payments[&merchant] {
            assert_eq!(m.post(&format!("/payments/{id}/capture"), "{}").await.status, 200);
        }
    }
    let out = host.admin(&["shards", "rebalance", "--plan", "--json"]).await;
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    assert_eq!(plan["moves"], serde_json::json!([]), "balanced: {plan}");
    assert_money_invariants(&host, &["shard-1", "shard-2", "shard-3"]).await;
}
