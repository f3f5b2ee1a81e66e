//! Durability of the embedded backend under group commit: SQLite shards
//! commit many invocations with one fsync (host/src/shards/
//! group_commit.rs), and a 2xx must still mean "on disk". The server
//! backends' equivalent is in `production.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{assert_money_invariants, metric, settled, wait_for, Host, SHARDS};

/// Sixteen clients authorize and capture at once, so write groups form;
/// once the host's metrics show groups of more than one member committing,
/// it is SIGKILLed mid-flight, and every acknowledged payment and capture
/// is in the shard files; after a restart the outbox drains into exact
/// settlements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_group_commit_loses_nothing_acknowledged() {
    let host = Host::start();
    let acked: support::Acknowledged = Arc::default();
    let work = futures::future::join_all(
        (1..=16).map(|merchant| support::load(&host, merchant, 10_000, acked.clone())),
    );
    let kill = async {
        wait_for(Duration::from_secs(60), "groups of several members under load", || async {
            let metrics = host.metrics().await;
            let commits = metric(&metrics, "payfn_shard_group_commits_total", &[]);
            let members = metric(&metrics, "payfn_shard_group_commit_members_total", &[]);
            // More members than commits: some COMMIT acknowledged several.
            acked.lock().unwrap().len() >= 200 && commits > 0.0 && members > commits
        })
        .await;
        let killed = std::process::Command::new("kill").args(["-9", &host.pid().to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()));
    };
    let (reports, ()) = futures::future::join(work, kill).await;
    // Every client was mid-run (10,000 rounds) when its host died.
    assert!(reports.iter().all(|r| r.cut_off), "{reports:?}");
    let refused: Vec<&String> = reports.iter().flat_map(|r| &r.refused).collect();
    assert!(refused.is_empty(), "refused under load: {refused:?}");

    support::assert_acknowledged_committed(&host, &acked, 200).await;
    let host = host.restart();
    wait_for(Duration::from_secs(90), "settlement after the SIGKILL", || settled(&host, SHARDS)).await;
    assert_money_invariants(&host, SHARDS).await;
}
