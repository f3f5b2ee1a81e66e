//! The merchant directory (issue 18): merchants keep their shard when
//! shards are added, new merchants may land on the new one, and a runtime
//! config that drops a shard holding merchants, or pins a merchant away
//! from its rows, is refused at start.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;

use support::{assert_money_invariants, manifest, Backend, Host, PAYFN, THREE_SHARDS};

/// `payfn up` on `host`'s (stopped) app directory, which must refuse to
/// start within 30 s; its stderr.
fn refused_start(host: &Host) -> String {
    let mut child = Command::new(PAYFN)
        .args(["up", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(host.app.join("spin.toml"))
        .env_remove("PAYFN_KEY_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run payfn up");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll payfn up").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("payfn up started (or hung) instead of refusing the runtime config");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("payfn up's output");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "payfn up should have refused to start: {stderr}");
    stderr
}

/// The scenario, on every backend: merchants 1-6 take payments on
/// two shards, the operator adds `shard-3` and restarts, and every earlier
/// payment is found and capturable; new merchants may land on shard-3.
async fn adding_a_shard_moves_no_merchant_and_new_ones_may_land_on_it(backend: Backend) {
    let env = Arc::new(backend.env_with_shards(&["shard-1", "shard-2", "shard-3"]).await);
    let (two, three) = match backend {
        Backend::Embedded => (String::new(), THREE_SHARDS.to_string()),
        _ => (env.runtime_config_of(&["shard-1", "shard-2"]), env.runtime_config()),
    };
    let mut host = Host::start_in(&manifest(""), &two, Some(env));
    let mut earlier = Vec::new();
    for merchant in 1..=6 {
        earlier.push((merchant, host.merchant(merchant).authorize(10_000 + merchant).await));
    }
    let placed = host.directory().await;
    for merchant in 1..=6 {
        let expected = if merchant % 2 == 0 { "shard-1" } else { "shard-2" };
        assert_eq!(placed[&merchant], (expected.to_string(), "placed".to_string()), "merchant {merchant}");
    }

    // The operator adds shard-3 and restarts.
    host.kill();
    host.set_runtime_config(&three);
    let host = host.restart();
    for (merchant, payment) in &earlier {
        let reply = host.merchant(*merchant).post(&format!("/payments/{payment}/capture"), "{}").await;
        assert_eq!(reply.status, 200, "merchant {merchant}'s earlier payment: {}", reply.json());
    }
    // New merchants: `id mod 3` over the three shards.
    for merchant in 7..=12 {
        host.merchant(merchant).authorize(500).await;
    }
    let placed = host.directory().await;
    for merchant in 1..=6 {
        let expected = if merchant % 2 == 0 { "shard-1" } else { "shard-2" };
        assert_eq!(placed[&merchant].0, expected, "merchant {merchant} kept its shard");
    }
    for merchant in 7..=12 {
        let expected = ["shard-1", "shard-2", "shard-3"][merchant as usize % 3];
        assert_eq!(placed[&merchant].0, expected, "new merchant {merchant}");
    }
    let mut shard3 = host.shard("shard-3").await;
    let on_shard3 = shard3.column("SELECT DISTINCT merchant_id FROM payments ORDER BY merchant_id").await;
    assert_eq!(on_shard3.iter().map(|c| c.i64()).collect::<Vec<_>>(), [8, 11]);
    shard3.close().await;
    assert_money_invariants(&host, &["shard-1", "shard-2", "shard-3"]).await;
}

on_backends!(adding_a_shard_moves_no_merchant_and_new_ones_may_land_on_it);

#[tokio::test]
async fn merchants_of_a_deployment_older_than_the_directory_are_adopted_where_their_rows_are() {
    let mut host = Host::start_with(&manifest(""), "");
    let mut earlier = Vec::new();
    for merchant in 1..=4 {
        earlier.push((merchant, host.merchant(merchant).authorize(2_000).await));
    }
    host.kill();
    // As an earlier release left it: rows on the shards, no directory.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(host.control_file());
    let mut control = options.connect().await.unwrap();
    sqlx::query("DELETE FROM merchant_directory").execute(&mut control).await.unwrap();
    sqlx::query("DELETE FROM directory_shards").execute(&mut control).await.unwrap();
    drop(control);

    host.set_runtime_config(THREE_SHARDS);
    let host = host.restart();
    let adopted = host.directory().await;
    for merchant in 1..=4 {
        let expected = if merchant % 2 == 0 { "shard-1" } else { "shard-2" };
        assert_eq!(adopted[&merchant], (expected.to_string(), "adopted".to_string()), "merchant {merchant}");
    }
    for (merchant, payment) in &earlier {
        let reply = host.merchant(*merchant).post(&format!("/payments/{payment}/capture"), "{}").await;
        assert_eq!(reply.status, 200, "merchant {merchant}'s earlier payment: {}", reply.json());
    }
}

#[tokio::test]
async fn a_config_that_drops_a_shard_holding_merchants_is_refused() {
    let mut host = Host::start_with(&manifest(""), "");
    let payment = host.merchant(1).authorize(700).await; // shard-2
    host.merchant(2).authorize(700).await; // shard-1
    host.merchant(4).authorize(700).await; // shard-1
    host.kill();

    host.set_runtime_config("[[shards]]\nname = \"shard-1\"\nbackend = \"sqlite\"\n");
    let err = refused_start(&host);
    assert!(err.contains("`shard-2` (1 merchants)"), "{err}");
    // Renamed is dropped as well.
    host.set_runtime_config(
        "[[shards]]\nname = \"shard-1\"\nbackend = \"sqlite\"\n\n[[shards]]\nname = \"shard-two\"\nbackend = \"sqlite\"\n",
    );
    let err = refused_start(&host);
    assert!(err.contains("`shard-2` (1 merchants)"), "{err}");

    // Back as it was: merchant 1's payment is where it was left.
    host.set_runtime_config("");
    let host = host.restart();
    assert_eq!(host.merchant(1).get(&format!("/payments/{payment}")).await.status, 200);
}

#[tokio::test]
async fn a_pin_that_contradicts_the_directory_is_refused_and_a_new_pin_places() {
    let mut host = Host::start_with(&manifest(""), "");
    host.merchant(3).authorize(900).await; // placed on shard-2
    host.kill();

    host.set_runtime_config("[routing]\npins = { \"3\" = \"shard-1\" }\n");
    let err = refused_start(&host);
    assert!(err.contains("merchant 3 on `shard-1`, but the merchant directory has it on `shard-2`"), "{err}");

    // A pin for a merchant the directory does not know yet places it.
    host.set_runtime_config("[routing]\npins = { \"5\" = \"shard-1\" }\n");
    let host = host.restart();
    assert_eq!(host.directory().await[&5], ("shard-1".to_string(), "pinned".to_string()));
    host.merchant(5).authorize(900).await;
    let mut shard1 = host.shard("shard-1").await;
    assert_eq!(shard1.i64("SELECT COUNT(*) FROM payments WHERE merchant_id = 5").await, 1);
}
