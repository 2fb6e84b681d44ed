//! `POST /v1/refunds`: idempotent, one per payment, refused when there is nothing to refund.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{scripted_body, spawn};

#[tokio::test]
async fn refund_is_idempotent() {
    let sim = spawn().await;
    sim.pay("pay-r", 1000).await;
    let first = sim.post_refund("pay-r", 400).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "succeeded");
    let reference = first["psp_reference"].as_str().unwrap().to_owned();
    assert!(reference.starts_with("re_") && reference.len() == 35);

    let again: Value = sim.post_refund("pay-r", 400).await.json().await.unwrap();
    assert_eq!(again, first);
    let status = sim.status("pay-r").await.unwrap();
    assert_eq!(status["refund_count"], 1);
    assert_eq!(status["refund_reference"], reference);
    assert_eq!(status["charge_count"], 1);
    let stats = sim.stats().await;
    assert_eq!(stats["refunds"], 1);
    assert_eq!(stats["double_refunds"], 0);
}

#[tokio::test]
async fn refund_of_an_unknown_payment_is_not_found() {
    let sim = spawn().await;
    let answer = sim.post_refund("never-charged", 10).await;
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let body: Value = answer.json().await.unwrap();
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn refund_conflicts() {
    let sim = spawn().await;
    let declined = sim
        .post_payment("pay-declined", &scripted_body(100, "decline"))
        .await;
    assert_eq!(declined.status(), StatusCode::OK);
    let answer = sim.post_refund("pay-declined", 100).await;
    assert_eq!(answer.status(), StatusCode::CONFLICT, "declined charge");

    sim.pay("pay-small", 100).await;
    let answer = sim.post_refund("pay-small", 101).await;
    assert_eq!(answer.status(), StatusCode::CONFLICT, "more than charged");

    assert_eq!(
        sim.post_refund("pay-small", 100).await.status(),
        StatusCode::OK
    );
    let answer = sim.post_refund("pay-small", 50).await;
    assert_eq!(answer.status(), StatusCode::CONFLICT, "key reused");
    let body: Value = answer.json().await.unwrap();
    assert!(body["error"].is_string());
    assert_eq!(sim.status("pay-small").await.unwrap()["refund_count"], 1);
}

#[tokio::test]
async fn refund_key_must_be_the_payment_id() {
    let sim = spawn().await;
    sim.pay("pay-k", 100).await;
    let answer = sim
        .client
        .post(format!("{}/v1/refunds", sim.base))
        .header("Idempotency-Key", "other-key")
        .json(&serde_json::json!({"payment_id": "pay-k", "amount": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sim.status("pay-k").await.unwrap()["refund_count"], 0);
}
