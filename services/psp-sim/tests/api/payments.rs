//! `POST /v1/payments` and `GET /v1/payments/{key}`: idempotency, concurrency, declines, 400s.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{charge_body, day_of, spawn, spawn_with};

#[tokio::test]
async fn same_key_twice_charges_once() {
    let sim = spawn().await;
    let first = sim.pay("pay-1", 1250).await;
    let second = sim.pay("pay-1", 1250).await;
    assert_eq!(first, second);
    assert_eq!(first["status"], "succeeded");
    assert!(first.get("decline_code").is_none());
    let reference = first["psp_reference"].as_str().unwrap();
    assert!(
        reference.starts_with("ch_") && reference.len() == 35,
        "{reference}"
    );

    let status = sim.status("pay-1").await.expect("recorded");
    assert_eq!(status["payment_id"], "pay-1");
    assert_eq!(status["psp_reference"], reference);
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["amount"], 1250);
    assert_eq!(status["currency"], "USD");
    assert_eq!(status["merchant_id"], "m-1");
    assert_eq!(status["charge_count"], 1);
    assert_eq!(status["refund_count"], 0);
    assert!(status.get("refund_reference").is_none());
    let created_at = status["created_at"].as_str().unwrap();
    assert!(created_at.ends_with('Z'), "{created_at}");
    day_of(created_at);
}

#[tokio::test]
async fn concurrent_same_key_posts_charge_once() {
    let sim = spawn().await;
    let body = charge_body(500);
    let posts = (0..20).map(|_| sim.post_payment("pay-race", &body));
    let answers = futures::future::join_all(posts).await;
    let mut references = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.unwrap();
        references.push(body["psp_reference"].as_str().unwrap().to_owned());
    }
    references.dedup();
    assert_eq!(references.len(), 1, "every POST got the same charge");
    assert_eq!(sim.status("pay-race").await.unwrap()["charge_count"], 1);
    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 1);
    assert_eq!(stats["double_charges"], 0);
}

/// Charges arriving together are committed as one group: within a group, each key is charged
/// once, a repeat of it replays that charge and a different request under it is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_keys_is_charged_once_each() {
    let sim = spawn().await;
    let keys: Vec<String> = (0..200).map(|i| format!("burst-{i}")).collect();
    let same = charge_body(700);
    let other = charge_body(701);
    // Every key three times at once: twice the same request, once a different one.
    let posts = keys.iter().flat_map(|k| {
        [
            sim.post_payment(k, &same),
            sim.post_payment(k, &same),
            sim.post_payment(k, &other),
        ]
    });
    let answers = futures::future::join_all(posts).await;
    let mut per_key: std::collections::HashMap<String, Vec<(StatusCode, Option<String>)>> =
        Default::default();
    for (i, answer) in answers.into_iter().enumerate() {
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        let reference = body["psp_reference"].as_str().map(str::to_owned);
        per_key
            .entry(keys[i / 3].clone())
            .or_default()
            .push((status, reference));
    }
    for (key, answers) in &per_key {
        let charged: Vec<&Option<String>> = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::OK)
            .map(|(_, r)| r)
            .collect();
        let conflicts = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .count();
        // Whichever request came first was charged; the other kind is the conflict.
        assert_eq!(charged.len() + conflicts, 3, "{key}: {answers:?}");
        assert!(conflicts >= 1, "{key}: {answers:?}");
        assert!(
            charged.windows(2).all(|w| w[0] == w[1]) && charged[0].is_some(),
            "{key}: every successful answer is the one charge: {answers:?}"
        );
        assert_eq!(sim.status(key).await.unwrap()["charge_count"], 1, "{key}");
    }
    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 200);
    assert_eq!(stats["double_charges"], 0);
}

#[tokio::test]
async fn key_reused_with_a_different_request_is_a_conflict() {
    let sim = spawn().await;
    sim.pay("pay-1", 100).await;
    let changes = [
        charge_body(101),
        json!({"amount": 100, "currency": "EUR", "merchant_id": "m-1"}),
        json!({"amount": 100, "currency": "USD", "merchant_id": "m-2"}),
    ];
    for body in changes {
        let answer = sim.post_payment("pay-1", &body).await;
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            body["error"],
            "idempotency key reused with a different request"
        );
    }
    assert_eq!(sim.status("pay-1").await.unwrap()["charge_count"], 1);
}

#[tokio::test]
async fn decline_rate_declines_and_the_decline_is_stored() {
    let sim = spawn_with(|cfg| cfg.decline_rate = 1.0).await;
    let first = sim.pay("pay-d", 100).await;
    assert_eq!(first["status"], "declined");
    assert_eq!(first["decline_code"], "card_declined");
    assert_eq!(sim.pay("pay-d", 100).await, first);
    let status = sim.status("pay-d").await.unwrap();
    assert_eq!(status["status"], "declined");
    assert_eq!(status["charge_count"], 0);
}

#[tokio::test]
async fn malformed_requests_are_bad_requests() {
    let sim = spawn().await;
    let url = format!("{}/v1/payments", sim.base);
    let no_key = sim
        .client
        .post(&url)
        .json(&charge_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), StatusCode::BAD_REQUEST);
    let long_key = sim.post_payment(&"k".repeat(256), &charge_body(1)).await;
    assert_eq!(long_key.status(), StatusCode::BAD_REQUEST);
    let bodies = [
        json!({"amount": 0, "currency": "USD", "merchant_id": "m"}),
        json!({"amount": 1_000_000_000_001_i64, "currency": "USD", "merchant_id": "m"}),
        json!({"amount": 1, "currency": "US", "merchant_id": "m"}),
        json!({"amount": 1, "currency": "USD"}),
        json!({"amount": 1, "currency": "USD", "merchant_id": "m", "metadata": {"sim": "explode"}}),
    ];
    for body in bodies {
        let answer = sim.post_payment("pay-bad", &body).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = answer.json().await.unwrap();
        assert!(error["error"].is_string());
    }
    let not_json = sim
        .client
        .post(&url)
        .header("Idempotency-Key", "pay-bad")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    assert!(
        sim.status("pay-bad").await.is_none(),
        "nothing was recorded"
    );
}

#[tokio::test]
async fn unknown_key_is_not_found() {
    let sim = spawn().await;
    let answer = sim.get("/v1/payments/never-sent").await;
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body, json!({"error": "not found"}));
}

#[tokio::test]
async fn health_answers_ok() {
    let sim = spawn().await;
    let answer = sim.get("/healthz").await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn wrong_method_is_method_not_allowed() {
    let sim = spawn().await;
    let answer = sim.get("/v1/payments").await;
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        sim.get("/v1/refunds").await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
