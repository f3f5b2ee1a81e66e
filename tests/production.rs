//! The production shapes: MariaDB or PostgreSQL shards, Redis and Kafka,
//! several hosts at once. A shard that is down costs only its merchants;
//! hosts share one rate-limit budget; a host killed under load loses
//! nothing that was acknowledged and counts nothing twice.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{assert_money_invariants, manifest, settled, wait_for, Backend, Host, SHARDS};

const SETTLE: Duration = Duration::from_secs(90);

async fn ready(host: &Host) -> (u16, serde_json::Value) {
    let reply = host.client.get(format!("{}/health/ready", host.base)).send().await.expect("ready");
    (reply.status().as_u16(), reply.json().await.expect("ready json"))
}

/// Merchant 1 lives on shard-2, merchant 2 on shard-1.
async fn a_shard_down_fails_only_its_merchants(backend: Backend) {
    let host = backend.start().await;
    let env = host.env.clone().expect("a server backend");
    let (odd, even) = (host.merchant(1), host.merchant(2));
    let paid = odd.authorize(500).await;
    even.authorize(500).await;

    env.set_shard_outage("shard-2", true);
    // Every connection to shard-2 dropped (the proxy's count, not a sleep
    // that may or may not have let it), and the host sees it down.
    wait_for(Duration::from_secs(10), "the proxy to drop shard-2's connections", || async {
        env.shard_connections("shard-2") == 0 && ready(&host).await.1["shards"]["shard-2"] == "down"
    })
    .await;
    let started = std::time::Instant::now();
    odd.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#)
        .await
        .assert_error(503, "shard_unavailable");
    odd.get(&format!("/payments/{paid}")).await.assert_error(503, "shard_unavailable");
    assert!(started.elapsed() < Duration::from_secs(5), "a down shard must fail fast, not hang");
    assert_eq!(even.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#).await.status, 201);
    // Degraded, still in the load balancer: it serves shard-1's merchants.
    let (status, body) = ready(&host).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("degraded")));
    assert_eq!(
        (body["shards"]["shard-1"].as_str(), body["shards"]["shard-2"].as_str()),
        (Some("up"), Some("down"))
    );

    env.set_shard_outage("shard-2", false);
    wait_for(Duration::from_secs(30), "shard-2 to serve again", || async {
        odd.get(&format!("/payments/{paid}")).await.status == 200
    })
    .await;
    assert_eq!(ready(&host).await.0, 200);
    assert_money_invariants(&host, SHARDS).await;
}

/// A shard unreachable when the host starts: the host starts anyway and
/// serves the other shard; the missing one migrates and joins when it
/// comes back.
async fn a_shard_unreachable_at_start_joins_when_it_comes_back(backend: Backend) {
    let env = Arc::new(backend.env().await);
    env.set_shard_outage("shard-2", true);
    let host = Host::start_in(&manifest(""), &env.runtime_config(), Some(env.clone()));
    let (odd, even) = (host.merchant(1), host.merchant(2));
    assert_eq!(even.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#).await.status, 201);
    odd.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#)
        .await
        .assert_error(503, "shard_unavailable");
    let (status, body) = ready(&host).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("degraded")));
    assert!(body["shard_errors"]["shard-2"].is_string(), "the reason is given: {body}");
    assert!(host.log().contains("shard not ready"), "{}", host.log());

    env.set_shard_outage("shard-2", false);
    wait_for(Duration::from_secs(40), "shard-2 to be migrated and ready", || async {
        odd.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#).await.status == 201
    })
    .await;
    assert_money_invariants(&host, SHARDS).await;
}

/// `migrate = false`: the host refuses a database that is behind until
/// `payfn migrate` has run; then the shard becomes ready by itself.
async fn payfn_migrate_brings_a_database_up_to_date(backend: Backend) {
    let env = Arc::new(backend.env().await);
    let config = env
        .runtime_config()
        .replace("acquire_timeout_ms = 1000\n", "acquire_timeout_ms = 1000\nmigrate = false\n");
    let host = Host::start_in(&manifest(""), &config, Some(env.clone()));
    let m = host.merchant(2);
    m.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#)
        .await
        .assert_error(503, "shard_unavailable");
    let (status, body) = ready(&host).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unavailable")), "no shard can serve");
    let why = body["shard_errors"]["shard-1"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("payfn migrate"), "{body}");

    let out = std::process::Command::new(support::PAYFN)
        .args(["migrate", "--manifest"])
        .arg(host.app.join("spin.toml"))
        .output()
        .expect("payfn migrate");
    let printed = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{printed}");
    // Every dialect has the same numbered migrations.
    let latest = std::fs::read_dir(support::repo().join("infra/migrations/sqlite")).unwrap().count();
    let applied = format!("  {latest} migrations applied now, {latest} in all, latest {latest}\n");
    assert_eq!(printed.matches(&applied).count(), 2, "both shards migrated from nothing: {printed}");
    // Idempotent: a second run applies nothing new, and says so.
    let again = std::process::Command::new(support::PAYFN)
        .args(["migrate", "--manifest"])
        .arg(host.app.join("spin.toml"))
        .output()
        .expect("payfn migrate");
    let printed = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(again.status.success(), "{printed}");
    let current = format!("  up to date: {latest} migrations, latest {latest}\n");
    assert_eq!(printed.matches(&current).count(), 2, "both shards already up to date: {printed}");
    assert!(!printed.contains("applied now"), "{printed}");

    wait_for(Duration::from_secs(40), "the shards to notice the migration", || async {
        m.post("/payments/authorize", r#"{"amount":700,"currency":"KRW"}"#).await.status == 201
    })
    .await;
}

/// Two hosts, one Redis: 40 concurrent requests against a budget of 10
/// create exactly 10 payments (the fixed window's counter is one atomic
/// INCR on the server, so the tolerance is zero within a window).
async fn rate_limits_hold_across_hosts_under_concurrency(backend: Backend) {
    let first = backend
        .start_with(&manifest(""), "[http.rate_limits]\nwindow_secs = 60\ncomponents = { authorize = 10 }\n")
        .await;
    let second = first.another();
    let (a, b) = (first.merchant(3), second.merchant(3));
    let replies = futures::future::join_all((0..40).map(|i| {
        let m = if i % 2 == 0 { &a } else { &b };
        m.post("/payments/authorize", r#"{"amount":1,"currency":"KRW"}"#)
    }))
    .await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((created, limited), (10, 30));
    let mut db = first.shard("shard-2").await;
    assert_eq!(db.i64("SELECT COUNT(*) FROM payments WHERE merchant_id = 3").await, 10);
}

/// Three hosts under load, one killed with SIGKILL mid-flight: every
/// acknowledged payment and capture is committed, nothing counts twice,
/// and after a restart the backlog drains into exact settlements.
async fn a_host_killed_under_load_loses_nothing_acknowledged(backend: Backend) {
    // Every host reads every partition: the mode docs/ARCHITECTURE.md
    // prescribes for several hosts on tansu 0.6, whose group coordinator
    // never hands a dead leader's partitions over (the group-mode SIGKILL
    // loop is tests/group_kills.rs).
    let first = backend.start_with(&manifest(""), "[kafka]\nassignment = \"all-partitions\"\n").await;
    let second = first.another();
    let third = first.another();
    // Each host's clients record what it acknowledged, so the kill can wait
    // for work on the victim itself.
    let [on_first, on_second, on_third]: [support::Acknowledged; 3] = Default::default();
    let work = async {
        futures::future::join3(
            futures::future::join_all((1..=4).map(|m| support::load(&first, m, 15, on_first.clone()))),
            futures::future::join_all((1..=4).map(|m| support::load(&second, m, 1_000, on_second.clone()))),
            futures::future::join_all((1..=4).map(|m| support::load(&third, m, 15, on_third.clone()))),
        )
        .await
    };
    let kill = async {
        wait_for(Duration::from_secs(60), "the second host to acknowledge 20 payments", || async {
            on_second.lock().unwrap().len() >= 20
        })
        .await;
        // SIGKILL while its requests are in flight.
        let killed = std::process::Command::new("kill").args(["-9", &second.pid().to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()));
    };
    let ((firsts, seconds, thirds), ()) = futures::future::join(work, kill).await;
    // The victim's four clients were mid-run (1,000 rounds each) and lost
    // their connection; the others ran to the end. Nobody was refused.
    assert!(seconds.iter().all(|r| r.cut_off), "the kill cut every client of the victim off: {seconds:?}");
    assert!(firsts.iter().chain(&thirds).all(|r| !r.cut_off), "{firsts:?} {thirds:?}");
    let refused: Vec<&String> =
        firsts.iter().chain(&seconds).chain(&thirds).flat_map(|r| &r.refused).collect();
    assert!(refused.is_empty(), "refused under load: {refused:?}");
    assert_eq!(on_first.lock().unwrap().len() + on_third.lock().unwrap().len(), 2 * 4 * 15);

    let acked = support::all_acknowledged(&[&on_first, &on_second, &on_third]);
    support::assert_acknowledged_committed(&first, &acked, 20 + 2 * 4 * 15).await;

    let restarted = second.restart();
    let converged = tokio::time::timeout(SETTLE, async {
        while !settled(&first, SHARDS).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if converged.is_err() {
        let kafka_lines = |h: &Host| {
            h.log()
                .lines()
                .filter(|l| l.contains("kafka") || l.contains("WARN") || l.contains("ERROR"))
                .map(String::from)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let kafka_metrics = |m: String| {
            m.lines()
                .filter(|l| {
                    l.starts_with("payfn_kafka") || l.contains("dead_lettered") || l.contains("duplicate")
                })
                .map(String::from)
                .collect::<Vec<_>>()
                .join("\n")
        };
        for shard in SHARDS {
            let mut db = first.shard(shard).await;
            let missing = db
                .rows(
                    "SELECT o.event_id, o.aggregate_id, o.created_at, o.published_at, o.retry_count FROM outbox o \
                     WHERE o.event_type = 'payment.captured' \
                     AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = o.event_id)",
                )
                .await;
            eprintln!("{shard}: captures never settled: {missing:?}");
        }
        eprintln!(
            "metrics first:\n{}\nmetrics third:\n{}",
            kafka_metrics(first.metrics().await),
            kafka_metrics(third.metrics().await)
        );
        panic!(
            "settlements did not converge: unpublished {}, expected {:?}, actual {:?}\nfirst:\n{}\nthird:\n{}\nrestarted:\n{}",
            support::unpublished(&first, SHARDS).await,
            support::expected_settlements(&first, SHARDS).await,
            support::actual_settlements(&first, SHARDS).await,
            kafka_lines(&first),
            kafka_lines(&third),
            kafka_lines(&restarted),
        );
    }
    assert_money_invariants(&first, SHARDS).await;
    // No settlement effect twice: one processed event per capture.
    let captures =
        support::count(&first, SHARDS, "SELECT COUNT(*) FROM payments WHERE captured_amount > 0").await;
    let processed = support::count(
        &first,
        SHARDS,
        "SELECT COUNT(*) FROM processed_events p JOIN outbox o ON o.event_id = p.event_id WHERE o.event_type = 'payment.captured'",
    )
    .await;
    assert_eq!(processed, captures);
}

on_server_backends!(
    a_shard_down_fails_only_its_merchants,
    a_shard_unreachable_at_start_joins_when_it_comes_back,
    payfn_migrate_brings_a_database_up_to_date,
    rate_limits_hold_across_hosts_under_concurrency,
    a_host_killed_under_load_loses_nothing_acknowledged,
);
