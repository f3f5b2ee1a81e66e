//! Concurrent steps on one payment: exactly the allowed ones succeed and
//! amounts never pass their bounds.

mod support;

use futures::future::join_all;
use support::{assert_money_invariants, Backend};

async fn fifty_concurrent_captures_one_wins(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(2);
    let id = m.authorize(10_000).await;
    let path = format!("/payments/{id}/capture");
    let replies = join_all((0..50).map(|i| {
        let body = format!(r#"{{"amount":{}}}"#, 100 + i);
        let path = path.clone();
        let m = &m;
        async move { m.post(&path, &body).await }
    }))
    .await;
    let winners: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(winners.len(), 1, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for loser in replies.iter().filter(|r| r.status != 200) {
        loser.assert_error(409, "invalid_state");
    }
    let payment = m.get(&format!("/payments/{id}")).await.json();
    assert_eq!(payment["capturedAmount"], winners[0].json()["capturedAmount"]);
    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

async fn fifty_concurrent_refunds_never_exceed_the_captured_amount(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(9);
    let id = m.authorize(10_000).await;
    assert_eq!(m.post(&format!("/payments/{id}/capture"), r#"{"amount":7000}"#).await.status, 200);
    // 50 refunds of 300: exactly 23 fit into 7000 (6900), the rest must fail.
    let path = format!("/payments/{id}/refund");
    let replies = join_all((0..50).map(|_| m.post(&path, r#"{"amount":300}"#))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 23, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for reply in replies.iter().filter(|r| r.status != 200) {
        reply.assert_error(422, "amount_exceeds_refundable");
    }
    let payment = m.get(&format!("/payments/{id}")).await.json();
    assert_eq!(payment["refundedAmount"], 6900);
    assert_eq!(payment["refunds"].as_array().unwrap().len(), 23);
    assert_eq!(payment["status"], "PARTIALLY_REFUNDED");

    // Mixed: refunds racing a final full refund on a second payment.
    let id = m.authorize(5_000).await;
    m.post(&format!("/payments/{id}/capture"), "{}").await;
    let path = format!("/payments/{id}/refund");
    let replies = join_all((0..50).map(|i| {
        let path = path.clone();
        let m = &m;
        async move {
            let body = if i % 10 == 0 { "{}".to_string() } else { r#"{"amount":1000}"#.to_string() };
            m.post(&path, &body).await
        }
    }))
    .await;
    let refunded: i64 = replies
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["refunds"].as_array().unwrap().last().unwrap()["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(refunded, 5000, "successful refunds add up to exactly the captured amount");
    for reply in replies.iter().filter(|r| r.status != 200) {
        assert!(
            matches!(reply.code().as_str(), "amount_exceeds_refundable" | "invalid_state"),
            "{:?}",
            reply.json()
        );
    }
    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

async fn capture_and_void_race_one_wins(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(11);
    for _ in 0..5 {
        let id = m.authorize(1_000).await;
        let capture = format!("/payments/{id}/capture");
        let void = format!("/payments/{id}/void");
        let replies = join_all((0..20).map(|i| {
            let path = if i % 2 == 0 { capture.clone() } else { void.clone() };
            let m = &m;
            async move { m.post(&path, "{}").await }
        }))
        .await;
        let winners: Vec<_> = replies.iter().enumerate().filter(|(_, r)| r.status == 200).collect();
        assert_eq!(winners.len(), 1, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
        // Every loser lost to the winner's state change, not to an error.
        for loser in replies.iter().filter(|r| r.status != 200) {
            loser.assert_error(409, "invalid_state");
        }
        // The payment is in the state the winner's step left it in.
        let (at, winner) = winners[0];
        let expected = if at % 2 == 0 { "CAPTURED" } else { "VOIDED" };
        assert_eq!(winner.json()["status"], expected, "{:?}", winner.json());
        assert_eq!(m.get(&format!("/payments/{id}")).await.json()["status"], expected);
    }
    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

on_backends!(
    fifty_concurrent_captures_one_wins,
    fifty_concurrent_refunds_never_exceed_the_captured_amount,
    capture_and_void_race_one_wins
);
