//! Merchants land on the shard the routing table names, and a component
//! sees only the shard it was bound to.

mod support;

use support::{manifest, test_component, Backend};

async fn merchants_land_on_their_shard_and_components_see_only_it(backend: Backend) {
    let extra = test_component("/test/shard", "probe", "test_shard_probe.wasm", r#"["sql", "log"]"#);
    // Default even/odd split, plus merchant 7 pinned to the first shard.
    let host = backend.start_with(&manifest(&extra), "[routing]\npins = { \"7\" = \"shard-1\" }\n").await;
    for merchant in [1, 2, 3, 4, 7] {
        host.merchant(merchant).authorize(100).await;
    }

    let merchants_on = |shard: &'static str| {
        let host = &host;
        async move {
            let mut db = host.shard(shard).await;
            let merchants = db.column("SELECT DISTINCT merchant_id FROM payments ORDER BY merchant_id").await;
            merchants.iter().map(support::Cell::i64).collect::<Vec<_>>()
        }
    };
    assert_eq!(merchants_on("shard-1").await, vec![2, 4, 7], "even ids and the pin on shard-1");
    assert_eq!(merchants_on("shard-2").await, vec![1, 3], "odd ids on shard-2");

    // The probe selects every payment it can reach, unfiltered: only its shard.
    let seen = host.merchant(3).get("/test/shard").await.json();
    assert_eq!(seen["shard"], "shard-2");
    assert_eq!(seen["merchants"], serde_json::json!([1, 3]));
    let seen = host.merchant(7).get("/test/shard").await.json();
    assert_eq!(seen["shard"], "shard-1");
    assert_eq!(seen["merchants"], serde_json::json!([2, 4, 7]));
}

on_backends!(merchants_land_on_their_shard_and_components_see_only_it);
