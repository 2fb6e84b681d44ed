//! Bad input on the ingress subjects: every kind is terminated at once with a reason naming the
//! field (the MSG_TERMINATED advisory lands in DEAD_LETTERS), never blocks the consumer, and a
//! good payment after it still succeeds.

use std::time::Duration;

use paystream_common::nats;
use paystream_common::streams::DEAD_LETTERS;
use paystream_testkit::Backend;

use crate::helpers::{Env, eventually, scalar};

const PID: &str = "0b0f5d1e-58b4-4c0a-9d7e-3f7f2b8c9a10";

fn body(buyer: &str, payment_id: &str, merchant: &str, amount: &str, currency: &str) -> Vec<u8> {
    format!(
        r#"{{"payment_id":"{payment_id}","buyer_id":"{buyer}","merchant_id":"{merchant}","amount":{amount},"currency":"{currency}"}}"#
    )
    .into_bytes()
}

async fn bad_input(backend: Backend) {
    let Some(env) = Env::start(backend, &[]).await else {
        return;
    };
    let client = env.client().await;
    let msgpack_wrong_types = rmp_serde::to_vec_named(&serde_json::json!({
        "payment_id": PID, "buyer_id": "b-1", "merchant_id": "m-1", "amount": "100", "currency": "USD"
    }))
    .unwrap();
    let mut oversized = body("b-1", PID, "m-1", "100", "USD");
    oversized.truncate(oversized.len() - 1);
    oversized.extend(format!(r#","metadata":{{"pad":"{}"}}}}"#, "x".repeat(70_000)).into_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "payments.request.b-1",
            b"not a payment".to_vec(),
            "payload:",
        ),
        (
            "payments.request.b-1",
            b"{\"payment_id\":".to_vec(),
            "payload: invalid JSON",
        ),
        (
            "payments.request.b-1",
            body("b-1", PID, "m-1", "10.5", "USD"),
            "amount: must be an integer in 1..=10^12",
        ),
        (
            "payments.request.b-1",
            body("b-1", PID, "m-1", "-5", "USD"),
            "amount: must be an integer in 1..=10^12",
        ),
        (
            "payments.request.b-1",
            body("b-1", PID, "m-1", "0", "USD"),
            "amount: must be an integer in 1..=10^12",
        ),
        (
            "payments.request.b-1",
            body("b-1", PID, "m-1", "100", "XYZ"),
            "currency:",
        ),
        (
            "payments.request.b-1",
            body("b-2", PID, "m-1", "100", "USD"),
            "buyer_id: subject token b-1 ≠ body b-2",
        ),
        (
            "payments.request.b-1",
            body("b-1", "not-a-uuid", "m-1", "100", "USD"),
            "payment_id: must be a UUID",
        ),
        (
            "payments.request.b-1",
            body("b-1", PID, "m 1", "100", "USD"),
            "merchant_id:",
        ),
        (
            "payments.request.b-1",
            msgpack_wrong_types,
            "amount: must be an integer",
        ),
        (
            "payments.request.b-1",
            oversized,
            "payload: larger than 65536 bytes",
        ),
        (
            "payments.cancel.b-1",
            b"{\"buyer_id\":\"b-1\"}".to_vec(),
            "payment_id: missing",
        ),
    ];
    for (subject, payload, _) in &cases {
        client
            .publish(subject.to_string(), payload.clone().into())
            .await
            .unwrap();
    }
    let good = "7e1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e02";
    client
        .publish(
            "payments.request.b-1",
            body("b-1", good, "m-1", "250", "USD").into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    let db = env.db();
    eventually(Duration::from_secs(30), "the good payment succeeds", || async {
        scalar(db, &format!("SELECT COUNT(*) FROM payments WHERE payment_id = '{good}' AND state = 'SUCCESS'")).await == 1
    })
    .await;
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM payments").await,
        1,
        "no bad input became a payment"
    );

    // Every rejection is in DEAD_LETTERS with its reason.
    let js = nats::jetstream(client.clone());
    let dlq = js.get_stream(DEAD_LETTERS).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "one dead letter per bad message",
        || {
            let mut dlq = dlq.clone();
            let want = cases.len() as u64;
            async move { dlq.info().await.map(|i| i.state.messages).unwrap_or(0) >= want }
        },
    )
    .await;
    // `paystream dlq list` shows each with its reason.
    let listed = paystream::dlq::list(&js, Some(db), Some("payment"))
        .await
        .unwrap();
    assert_eq!(listed.len(), cases.len());
    let mut reasons = Vec::new();
    for e in &listed {
        assert_eq!(
            (e.stream.as_str(), e.kind.as_str(), e.deliveries),
            ("PAYMENTS", "terminated", 1)
        );
        assert!(
            e.subject.starts_with("payments."),
            "resolved to the original: {e:?}"
        );
        reasons.push(e.reason.clone());
    }
    for (subject, _, expected) in &cases {
        assert!(
            reasons.iter().any(|r| r.starts_with(expected)),
            "no dead letter for {subject} with reason {expected:?}; got {reasons:#?}"
        );
    }
    let metrics = env.metrics().await;
    assert!(
        metrics.contains(r#"paystream_ingress_rejected_total{field="amount"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"paystream_ingress_rejected_total{field="buyer_id"} 1"#));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_sqlite() {
    bad_input(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_postgres() {
    bad_input(Backend::Postgres).await;
}
