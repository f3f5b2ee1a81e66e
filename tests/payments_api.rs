//! Every flow and error row of API.md that the HTTP steps serve, against the
//! real binary on embedded backends.

mod support;

use support::{assert_money_invariants, Backend};

async fn authorize_capture_refund_and_read(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(1);

    let created = m
        .post(
            "/payments/authorize",
            r#"{"amount":15000,"currency":"KRW","orderId":"o-1","metadata":{"k":"v"}}"#,
        )
        .await;
    assert_eq!(created.status, 201);
    let p = created.json();
    let id = p["id"].as_str().unwrap();
    assert!(id.starts_with("pay_"));
    assert_eq!(p["status"], "AUTHORIZED");
    assert_eq!(
        (p["amount"].as_i64(), p["capturedAmount"].as_i64(), p["refundedAmount"].as_i64()),
        (Some(15000), Some(0), Some(0))
    );
    assert_eq!((p["currency"].as_str(), p["orderId"].as_str()), (Some("KRW"), Some("o-1")));
    assert_eq!(p["metadata"]["k"], "v");
    assert!(p["createdAt"].is_string() && p["updatedAt"].is_string());
    assert_eq!(p["refunds"].as_array().map(Vec::len), Some(0));

    // Partial capture.
    let captured = m.post(&format!("/payments/{id}/capture"), r#"{"amount":12000}"#).await;
    assert_eq!(captured.status, 200, "{:?}", captured.json());
    assert_eq!(captured.json()["status"], "CAPTURED");
    assert_eq!(captured.json()["capturedAmount"], 12000);

    // Capture twice.
    m.post(&format!("/payments/{id}/capture"), "{}").await.assert_error(409, "invalid_state");

    // Several partial refunds up to the captured amount.
    let r1 = m.post(&format!("/payments/{id}/refund"), r#"{"amount":5000,"reason":"damaged"}"#).await;
    assert_eq!(r1.status, 200);
    assert_eq!(
        (r1.json()["status"].as_str(), r1.json()["refundedAmount"].as_i64()),
        (Some("PARTIALLY_REFUNDED"), Some(5000))
    );
    let r2 = m.post(&format!("/payments/{id}/refund"), r#"{"amount":4000}"#).await;
    assert_eq!(r2.json()["refundedAmount"], 9000);
    m.post(&format!("/payments/{id}/refund"), r#"{"amount":3001}"#)
        .await
        .assert_error(422, "amount_exceeds_refundable");
    let r3 = m.post(&format!("/payments/{id}/refund"), "{}").await;
    assert_eq!(r3.status, 200);
    assert_eq!(
        (r3.json()["status"].as_str(), r3.json()["refundedAmount"].as_i64()),
        (Some("REFUNDED"), Some(12000))
    );
    m.post(&format!("/payments/{id}/refund"), r#"{"amount":1}"#).await.assert_error(409, "invalid_state");

    let read = m.get(&format!("/payments/{id}")).await;
    assert_eq!(read.status, 200);
    let refunds = read.json()["refunds"].as_array().cloned().unwrap();
    assert_eq!(
        refunds.iter().map(|r| r["amount"].as_i64().unwrap()).collect::<Vec<_>>(),
        vec![5000, 4000, 3000]
    );
    assert!(refunds.iter().all(|r| r["id"].as_str().unwrap().starts_with("rf_")));
    assert_eq!(refunds[0]["reason"], "damaged");
    // One shape: the read equals the last write.
    assert_eq!(read.json(), r3.json());

    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

async fn full_capture_void_and_their_state_errors(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(2);

    let id = m.authorize(7000).await;
    let full = m.post(&format!("/payments/{id}/capture"), "").await;
    assert_eq!((full.status, full.json()["capturedAmount"].as_i64()), (200, Some(7000)));
    m.post(&format!("/payments/{id}/void"), "{}").await.assert_error(409, "invalid_state");

    let id = m.authorize(5000).await;
    m.post(&format!("/payments/{id}/refund"), "{}").await.assert_error(409, "invalid_state");
    m.post(&format!("/payments/{id}/capture"), r#"{"amount":5001}"#)
        .await
        .assert_error(422, "amount_exceeds_authorized");
    let voided = m.post(&format!("/payments/{id}/void"), "{}").await;
    assert_eq!((voided.status, voided.json()["status"].as_str()), (200, Some("VOIDED")));
    m.post(&format!("/payments/{id}/capture"), "{}").await.assert_error(409, "invalid_state");
    m.post(&format!("/payments/{id}/void"), "{}").await.assert_error(409, "invalid_state");
    m.post(&format!("/payments/{id}/refund"), "{}").await.assert_error(409, "invalid_state");

    // The built-in risk rule declines very large payments; DECLINED is final.
    let declined = m.post("/payments/authorize", r#"{"amount":5000000000,"currency":"KRW"}"#).await;
    assert_eq!((declined.status, declined.json()["status"].as_str()), (201, Some("DECLINED")));
    let id = declined.json()["id"].as_str().unwrap().to_string();
    m.post(&format!("/payments/{id}/capture"), "{}").await.assert_error(409, "invalid_state");

    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

async fn bad_input_is_refused_with_stable_codes(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(3);
    let authorize = |body: &'static str| m.post("/payments/authorize", body);

    authorize("{\"amount\": 1").await.assert_error(400, "invalid_json");
    authorize("[1,2]").await.assert_error(400, "invalid_json");
    authorize(r#"{"currency":"KRW"}"#).await.assert_error(400, "missing_field");
    authorize(r#"{"amount":100}"#).await.assert_error(400, "missing_field");
    for amount in
        ["0", "-100", "1.5", "\"100\"", "null", "true", "99999999999999999999", "1e3", "1000000000000000001"]
    {
        let body = format!(r#"{{"amount":{amount},"currency":"KRW"}}"#);
        let reply = m.post("/payments/authorize", &body).await;
        reply.assert_error(400, "invalid_amount");
        assert_eq!(reply.json()["error"]["param"], "amount");
    }
    for currency in ["\"XXY\"", "\"krw\"", "\"\"", "410", "\"KRWX\""] {
        let body = format!(r#"{{"amount":100,"currency":{currency}}}"#);
        m.post("/payments/authorize", &body).await.assert_error(400, "invalid_currency");
    }
    authorize(r#"{"amount":100,"currency":"KRW","amout":5}"#).await.assert_error(400, "unknown_field");
    authorize(r#"{"amount":100,"currency":"KRW","metadata":"x"}"#).await.assert_error(400, "invalid_field");

    let id = m.authorize(1000).await;
    for body in [r#"{"amount":0}"#, r#"{"amount":-1}"#, r#"{"amount":"5"}"#] {
        m.post(&format!("/payments/{id}/capture"), body).await.assert_error(400, "invalid_amount");
    }
    m.post(&format!("/payments/{id}/void"), r#"{"amount":1}"#).await.assert_error(400, "unknown_field");

    // Unknown payment; the wrong method on a route.
    m.get("/payments/pay_nope").await.assert_error(404, "payment_not_found");
    m.post("/payments/pay_nope/capture", "{}").await.assert_error(404, "payment_not_found");
    m.get("/payments/authorize").await.assert_error(405, "method_not_allowed");

    // Body too large.
    let big = format!(r#"{{"amount":100,"currency":"KRW","orderId":"{}"}}"#, "x".repeat(70_000));
    m.post("/payments/authorize", &big).await.assert_error(413, "body_too_large");

    // Nothing above changed money.
    assert_money_invariants(&host, &["shard-1", "shard-2"]).await;
}

/// A client that writes its whole body before it reads the answer, as
/// Python's urllib does, gets the answer the host gives before reading it
/// all (413 for a body over the limit, 401 for a bad key), not a reset
/// connection: the host reads the rest and throws it away first.
#[tokio::test]
async fn a_client_that_writes_its_whole_body_first_gets_the_early_answer() {
    let host = support::Host::start();
    let address = host.base.trim_start_matches("http://").to_string();
    for (key, status, code) in
        [(host.key(1), 413, "body_too_large"), ("sk_dev_1_not_a_key".to_string(), 401, "unauthenticated")]
    {
        let to = address.clone();
        let answer = tokio::task::spawn_blocking(move || post_written_whole(&to, &key, 8 * 1024 * 1024))
            .await
            .expect("the client thread");
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains(&format!(r#""code":"{code}""#)), "{answer}");
    }
}

/// POSTs `size` bytes to /payments/authorize over a plain socket, all of
/// them written before anything is read; the answer, whole.
fn post_written_whole(address: &str, key: &str, size: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("read timeout");
    stream.set_write_timeout(Some(std::time::Duration::from_secs(30))).expect("write timeout");
    let head = format!(
        "POST /payments/authorize HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("the request head");
    stream.write_all(&vec![b'x'; size]).expect("the whole body is taken, not reset");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn authentication_and_tenancy(backend: Backend) {
    let host = backend.start().await;
    let owner = host.merchant(4);
    let other = host.merchant(6);
    let id = owner.authorize(1000).await;

    // Missing and wrong keys.
    let url = format!("{}/payments/{id}", host.base);
    let none = host.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    for key in ["sk_dev_4_00000000000000000000000000000000", "nonsense", ""] {
        let reply = host.client.get(&url).bearer_auth(key).send().await.unwrap();
        assert_eq!(reply.status(), 401, "{key}");
    }
    let forged = owner.key.replace("sk_dev_4_", "sk_dev_6_");
    assert_eq!(host.client.get(&url).bearer_auth(forged).send().await.unwrap().status(), 401);

    // Another merchant's payment is 404, on every route, and stays untouched.
    other.get(&format!("/payments/{id}")).await.assert_error(404, "payment_not_found");
    for step in ["capture", "void", "refund"] {
        other.post(&format!("/payments/{id}/{step}"), "{}").await.assert_error(404, "payment_not_found");
    }
    assert_eq!(owner.get(&format!("/payments/{id}")).await.json()["status"], "AUTHORIZED");

    // The merchant comes from the key, never from the body or forged headers.
    let reply = other
        .send(
            "POST",
            "/payments/authorize",
            Some(r#"{"amount":10,"currency":"USD"}"#),
            &[("payfn-merchant-id", "4")],
        )
        .await;
    assert_eq!(reply.status, 201);
    let new_id = reply.json()["id"].as_str().unwrap().to_string();
    owner.get(&format!("/payments/{new_id}")).await.assert_error(404, "payment_not_found");
    assert_eq!(other.get(&format!("/payments/{new_id}")).await.status, 200);
}

async fn health_metrics_and_request_ids(backend: Backend) {
    let host = backend.start().await;
    let m = host.merchant(1);
    m.authorize(100).await;
    m.get("/payments/pay_missing").await;

    let live = host.client.get(format!("{}/health/live", host.base)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready: serde_json::Value =
        host.client.get(format!("{}/health/ready", host.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["shards"]["shard-1"], "up");

    let metrics = host.metrics().await;
    let authorize = support::metric(&metrics, "payfn_invocations_total", &[("component", "authorize")]);
    assert_eq!(authorize, 1.0, "{metrics}");
    let reads =
        support::metric(&metrics, "payfn_invocation_duration_seconds_count", &[("component", "get-payment")]);
    assert_eq!(reads, 1.0, "{metrics}");
    // Every sample names the version that served it.
    assert!(metrics.contains(r#"payfn_invocations_total{component="authorize",version=""#), "{metrics}");

    let reply = m.post("/payments/authorize", "{}").await;
    let header = reply.header("request-id").unwrap().to_string();
    assert_eq!(reply.json()["requestId"], header.as_str());
    assert!(reply.header("ratelimit-limit").is_some() && reply.header("ratelimit-remaining").is_some());
    host.client
        .get(format!("{}/nowhere", host.base))
        .send()
        .await
        .map(|r| assert_eq!(r.status(), 404))
        .unwrap();
}

on_backends!(
    authorize_capture_refund_and_read,
    full_capture_void_and_their_state_errors,
    bad_input_is_refused_with_stable_codes,
    authentication_and_tenancy,
    health_metrics_and_request_ids
);
