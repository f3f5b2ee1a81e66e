//! Reconciliation (docs/ARCHITECTURE.md, "Reconciliation"), against the
//! real binary on every backend: settled payments reconcile clean (and
//! events in flight are never reported); a settlement row changed behind
//! the steps' back is reported by `payfn reconcile`, the metric and the log,
//! and never overwritten; a capture whose event was lost is reported
//! unsettled once past the grace period, and `payfn reconcile --repair`
//! re-publishes it so settlement applies it exactly once.

mod support;

use std::time::Duration;

use support::{
    actual_settlements, assert_money_invariants, expected_settlements, manifest, metric, settled,
    take_payments, wait_for, Backend, Host, PAYFN, SHARDS,
};

const SETTLE: Duration = Duration::from_secs(90);
/// Several rounds of the task (every 200 ms in these tests).
const ROUNDS: Duration = Duration::from_secs(20);

/// What `payfn reconcile` printed and how it exited.
struct Reconciled {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Reconciled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit ok: {}\n--- stdout\n{}--- stderr\n{}", self.ok, self.stdout, self.stderr)
    }
}

/// Runs `payfn reconcile <args>` on the host's app (its runtime config and
/// state directory: the same shards).
async fn reconcile(host: &Host, args: &[&str]) -> Reconciled {
    let output = tokio::process::Command::new(PAYFN)
        .arg("reconcile")
        .args(args)
        .arg("--manifest")
        .arg(host.app.join("spin.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run payfn reconcile");
    Reconciled {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The drift gauges of `shard` and `kind`: (rows, amount).
async fn drift(host: &Host, shard: &str, kind: &str) -> (i64, i64) {
    let text = host.metrics().await;
    let labels = [("shard", shard), ("kind", kind)];
    assert!(text.contains("payfn_settlement_drift_rows{"), "no drift gauges:\n{text}");
    (
        metric(&text, "payfn_settlement_drift_rows", &labels) as i64,
        metric(&text, "payfn_settlement_drift_amount", &labels) as i64,
    )
}

async fn no_drift_on_metrics(host: &Host) -> bool {
    for shard in SHARDS {
        for kind in ["mismatch", "unsettled"] {
            if drift(host, shard, kind).await != (0, 0) {
                return false;
            }
        }
    }
    true
}

/// Payments on both shards settle; the task checks every 200 ms throughout
/// (events in flight included) and never reports drift; the CLI finds none.
async fn settled_payments_reconcile_clean(backend: Backend) {
    let config = "[reconcile]\ninterval = \"200ms\"\ngrace = \"60s\"\n";
    let host = backend.start_with(&manifest(""), config).await;
    take_payments(&host, 3).await;
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
    // Ten more rounds of the task, on the settled state.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let out = reconcile(&host, &[]).await;
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("no settlement drift"), "{out:?}");
    for shard in SHARDS {
        assert!(
            out.stdout.contains(&format!("{shard}: 0 mismatched rows (amount 0), 0 unsettled")),
            "{out:?}"
        );
    }
    assert!(no_drift_on_metrics(&host).await, "{}", host.metrics().await);
    let log = host.log();
    assert!(log.contains("reconcile       settlements of the last 3 days"), "{log}");
    assert!(!log.contains("settlement drift"), "drift reported while events were in flight:\n{log}");
    assert!(!log.contains("reconcile: check failed"), "{log}");
    // A day with nothing: clean too.
    let out = reconcile(&host, &["--date", "2001-01-01"]).await;
    assert!(out.ok, "{out:?}");
    let out = reconcile(&host, &["--date", "2001-13-01"]).await;
    assert!(!out.ok && out.stderr.contains("is not a date"), "{out:?}");
}

/// A settlement row changed in the database: the CLI prints the difference
/// and exits non-zero (with --repair too, which leaves the row alone); the
/// task's gauges and a warning show it; put back, all is clean again.
async fn a_tampered_settlement_is_reported_never_overwritten(backend: Backend) {
    let config = "[reconcile]\ninterval = \"200ms\"\ngrace = \"60s\"\n";
    let host = backend.start_with(&manifest(""), config).await;
    // Merchant 2 lives on shard-1.
    let m = host.merchant(2);
    let id = m.authorize(10_000).await;
    assert_eq!(m.post(&format!("/payments/{id}/capture"), r#"{"amount":9000}"#).await.status, 200);
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;

    let tamper = |delta: i64| {
        let host = &host;
        async move {
            let mut db = host.shard_for_writes("shard-1").await;
            db.execute(&format!(
                "UPDATE settlements SET gross_captured = gross_captured + ({delta}) WHERE merchant_id = 2"
            ))
            .await;
            db.close().await;
        }
    };
    tamper(100).await;
    let day = {
        let mut db = host.shard("shard-1").await;
        let day = db.column("SELECT day FROM settlements WHERE merchant_id = 2").await[0].text();
        db.close().await;
        day
    };

    let out = reconcile(&host, &[]).await;
    assert!(!out.ok, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("shard-1") && l.contains("gross_captured"))
        .unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        ["shard-1", "2", &day, "KRW", "gross_captured", "9000", "9100", "+100", "exact"],
        "{out:?}"
    );
    assert!(out.stdout.contains("shard-1: 1 mismatched rows (amount 100), 0 unsettled"), "{out:?}");
    assert!(out.stderr.contains("replaying events cannot repair them"), "{out:?}");

    wait_for(ROUNDS, "the gauges to show the mismatch", || async {
        drift(&host, "shard-1", "mismatch").await == (1, 100)
    })
    .await;
    assert_eq!(drift(&host, "shard-2", "mismatch").await, (0, 0));
    assert_eq!(drift(&host, "shard-1", "unsettled").await, (0, 0));
    let log = host.log();
    let warning = log
        .lines()
        .find(|l| l.contains("settlement drift") && l.contains("shard=shard-1"))
        .unwrap_or_else(|| panic!("no drift warning:\n{log}"));
    for field in [
        "WARN",
        "merchant=2",
        &format!("day={day}"),
        "currency=KRW",
        "expected_gross_captured=9000",
        "actual_gross_captured=9100",
    ] {
        assert!(warning.contains(field), "{field} in {warning}");
    }

    // --repair cannot repair it and does not touch it.
    let out = reconcile(&host, &["--repair", "--wait", "1s"]).await;
    assert!(!out.ok, "{out:?}");
    assert!(!out.stderr.contains("re-published"), "{out:?}");
    let mut db = host.shard("shard-1").await;
    assert_eq!(db.i64("SELECT gross_captured FROM settlements WHERE merchant_id = 2").await, 9100);
    db.close().await;

    tamper(-100).await;
    let out = reconcile(&host, &[]).await;
    assert!(out.ok, "{out:?}");
    wait_for(ROUNDS, "the gauges to clear", || no_drift_on_metrics(&host)).await;
}

/// A capture whose outbox row is marked published without being sent (the
/// event lost on the way): not drift within the grace period; past it,
/// reported unsettled; `--repair` re-publishes it and settlement applies it
/// once.
async fn a_lost_capture_is_reported_and_repaired_once(backend: Backend) {
    // A slow relay (every 4 s), so the test marks the capture's row
    // published between two firings.
    let slow = manifest("").replacen("interval_ms = 200", "interval_ms = 4000", 1);
    assert_ne!(slow, manifest(""), "the relay's interval is in spin.toml");
    let config = "[reconcile]\ninterval = \"200ms\"\ngrace = \"6s\"\n";
    let host = backend.start_with(&slow, config).await;
    let m = host.merchant(2);
    // One payment that settles normally, one whose capture is lost.
    let kept = m.authorize(5_000).await;
    assert_eq!(m.post(&format!("/payments/{kept}/capture"), "{}").await.status, 200);
    let lost = m.authorize(10_000).await;
    // Right after a firing published the authorization, the relay sleeps 4 s.
    let published = |sql: String| {
        let host = &host;
        async move {
            let mut db = host.shard("shard-1").await;
            let n = db.i64(&sql).await;
            db.close().await;
            n == 1
        }
    };
    let authorized = format!(
        "SELECT COUNT(*) FROM outbox WHERE aggregate_id = '{lost}' AND event_type = 'payment.authorized' AND published = 1"
    );
    wait_for(SETTLE, "the authorization to be published", || published(authorized.clone())).await;
    assert_eq!(m.post(&format!("/payments/{lost}/capture"), r#"{"amount":9000}"#).await.status, 200);
    let mut db = host.shard_for_writes("shard-1").await;
    let event =
        db.column(&format!("SELECT capture_event_id FROM payments WHERE id = '{lost}'")).await[0].text();
    // Marked sent now (not long ago: retention would purge the row, and
    // the report would say `outbox=missing`).
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    db.execute(&format!(
        "UPDATE outbox SET published = 1, published_at = '{now}' WHERE event_id = '{event}' AND published = 0"
    ))
    .await;
    let marked =
        db.i64(&format!("SELECT COUNT(*) FROM outbox WHERE event_id = '{event}' AND published = 1")).await;
    db.close().await;
    assert_eq!(marked, 1);
    let captured_at = {
        let mut db = host.shard("shard-1").await;
        let at = db.column(&format!("SELECT captured_at FROM payments WHERE id = '{lost}'")).await[0].text();
        let occurred =
            db.column(&format!("SELECT payload FROM outbox WHERE event_id = '{event}'")).await[0].text();
        db.close().await;
        assert!(
            occurred.contains(&format!("\"occurredAt\":\"{at}\"")),
            "captured_at is the event's occurredAt: {occurred}"
        );
        at
    };

    // Within the grace period it is lag, not drift.
    let out = reconcile(&host, &[]).await;
    assert!(out.ok, "{out:?}");

    // Past it: unsettled, on the gauges, in the log and from the CLI.
    wait_for(ROUNDS, "the lost capture to be reported", || async {
        drift(&host, "shard-1", "unsettled").await == (1, 9000)
    })
    .await;
    assert_eq!(drift(&host, "shard-1", "mismatch").await, (0, 0), "an unsettled capture is no mismatch");
    let log = host.log();
    let warning = log
        .lines()
        .find(|l| l.contains("settlement drift: unsettled") && l.contains(&lost))
        .unwrap_or_else(|| panic!("no unsettled warning:\n{log}"));
    for field in ["merchant=2", &format!("event_id={event}"), "expected=9000", "outbox=published"] {
        assert!(warning.contains(field), "{field} in {warning}");
    }
    let out = reconcile(&host, &[]).await;
    assert!(!out.ok, "{out:?}");
    let line = out.stdout.lines().find(|l| l.contains(&lost)).unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "shard-1",
            "capture",
            &lost,
            &lost,
            "2",
            &captured_at[..10],
            "KRW",
            "9000",
            &captured_at,
            &event,
            "published"
        ],
        "{out:?}"
    );
    assert!(out.stderr.contains("--repair"), "{out:?}");
    // The settlement does not count it yet.
    assert_ne!(expected_settlements(&host, SHARDS).await, actual_settlements(&host, SHARDS).await);

    // The repair re-publishes it, waits for settlement and ends clean.
    let out = reconcile(&host, &["--repair"]).await;
    assert!(out.ok, "{out:?}");
    assert!(out.stderr.contains("re-published 1 events"), "{out:?}");
    assert!(out.stdout.contains("no settlement drift"), "{out:?}");
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
    assert_eq!(expected_settlements(&host, SHARDS).await, actual_settlements(&host, SHARDS).await);
    let mut db = host.shard("shard-1").await;
    let settlement =
        db.rows("SELECT gross_captured, capture_count FROM settlements WHERE merchant_id = 2").await;
    assert_eq!(settlement.len(), 1);
    assert_eq!((settlement[0][0].i64(), settlement[0][1].i64()), (5_000 + 9_000, 2), "applied exactly once");
    let processed = db
        .i64(&format!(
            "SELECT COUNT(*) FROM processed_events WHERE consumer = 'settlement' AND event_id = '{event}'"
        ))
        .await;
    assert_eq!(processed, 1);
    db.close().await;
    // A second repair finds nothing to do.
    let out = reconcile(&host, &["--repair"]).await;
    assert!(out.ok && !out.stderr.contains("re-published"), "{out:?}");
    wait_for(ROUNDS, "the gauges to clear", || no_drift_on_metrics(&host)).await;
    assert_money_invariants(&host, SHARDS).await;
}

on_backends!(
    settled_payments_reconcile_clean,
    a_tampered_settlement_is_reported_never_overwritten,
    a_lost_capture_is_reported_and_repaired_once,
);
