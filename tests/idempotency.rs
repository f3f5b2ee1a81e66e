//! Idempotency-Key semantics of API.md.

mod support;

use support::{assert_money_invariants, Backend};

const BODY: &str = r#"{"amount":2500,"currency":"USD","orderId":"idem"}"#;

async fn replay_is_byte_for_byte_and_changes_nothing(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(1);
    let key = [("Idempotency-Key", "order-1-attempt")];
    let first = m.send("POST", "/payments/authorize", Some(BODY), &key).await;
    assert_eq!(first.status, 201);
    assert!(first.header("idempotent-replayed").is_none());
    for _ in 0..3 {
        let again = m.send("POST", "/payments/authorize", Some(BODY), &key).await;
        assert_eq!(again.status, 201);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.bytes, first.bytes, "replay must be byte for byte");
    }

    // Errors replay too (they committed nothing but their record).
    let id = first.json()["id"].as_str().unwrap().to_string();
    let refund_key = [("Idempotency-Key", "refund-early")];
    let refused = m.send("POST", &format!("/payments/{id}/refund"), Some("{}"), &refund_key).await;
    refused.assert_error(409, "invalid_state");
    let replayed = m.send("POST", &format!("/payments/{id}/refund"), Some("{}"), &refund_key).await;
    assert_eq!((replayed.status, replayed.bytes.clone()), (409, refused.bytes.clone()));

    // Another merchant may use the same key independently.
    let other = host.merchant(3);
    let theirs = other.send("POST", "/payments/authorize", Some(BODY), &key).await;
    assert_eq!(theirs.status, 201);
    assert!(theirs.header("idempotent-replayed").is_none());
    assert_ne!(theirs.json()["id"], first.json()["id"]);

    let mut db = host.shard("shard-2").await;
    let n = db.i64("SELECT COUNT(*) FROM payments WHERE merchant_id = 1").await;
    assert_eq!(n, 1, "replays must not create payments");
    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

async fn reused_key_with_another_body_or_route_is_refused(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(5);
    let key = [("Idempotency-Key", "k-1")];
    assert_eq!(m.send("POST", "/payments/authorize", Some(BODY), &key).await.status, 201);
    let other_body = BODY.replace("2500", "2501");
    m.send("POST", "/payments/authorize", Some(&other_body), &key)
        .await
        .assert_error(422, "idempotency_key_reused");
    m.send("POST", "/payments/pay_x/void", Some("{}"), &key)
        .await
        .assert_error(422, "idempotency_key_reused");

    for bad in ["", &"k".repeat(256)] {
        let reply = m.send("POST", "/payments/authorize", Some(BODY), &[("Idempotency-Key", bad)]).await;
        reply.assert_error(400, "invalid_idempotency_key");
    }
}

async fn concurrent_requests_with_one_key_create_one_payment(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(7);
    let key = [("Idempotency-Key", "burst")];
    let replies =
        futures::future::join_all((0..20).map(|_| m.send("POST", "/payments/authorize", Some(BODY), &key)))
            .await;

    let originals: Vec<_> =
        replies.iter().filter(|r| r.status == 201 && r.header("idempotent-replayed").is_none()).collect();
    assert_eq!(
        originals.len(),
        1,
        "exactly one request runs: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in &replies {
        match reply.status {
            201 => assert_eq!(reply.bytes, originals[0].bytes),
            409 => reply.assert_error(409, "idempotency_key_in_use"),
            other => panic!("unexpected status {other}: {:?}", reply.json()),
        }
    }
    let mut db = host.shard("shard-2").await;
    let n = db.i64("SELECT COUNT(*) FROM payments WHERE merchant_id = 7").await;
    assert_eq!(n, 1);
}

on_backends!(
    replay_is_byte_for_byte_and_changes_nothing,
    reused_key_with_another_body_or_route_is_refused,
    concurrent_requests_with_one_key_create_one_payment
);
