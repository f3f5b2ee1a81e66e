//! Durability of the embedded backend under group commit: SQLite shards
//! commit many invocations with one fsync (host/src/capabilities/sql/
//! group_commit.rs), and a 2xx must still mean "on disk". The server
//! backends' equivalent is in `production.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{assert_money_invariants, settled, wait_for, Host, SHARDS};

/// Sixteen clients authorize and capture at once (so groups form), the
/// host is SIGKILLed mid-flight, and every acknowledged payment and capture
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
        wait_for(Duration::from_secs(60), "load on the host", || async {
            acked.lock().unwrap().len() >= 200
        })
        .await;
        let killed = std::process::Command::new("kill").args(["-9", &host.pid().to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()));
    };
    futures::future::join(work, kill).await;

    support::assert_acknowledged_committed(&host, &acked, 200).await;
    let host = host.restart();
    wait_for(Duration::from_secs(90), "settlement after the SIGKILL", || settled(&host, SHARDS)).await;
    assert_money_invariants(&host, SHARDS).await;
}
