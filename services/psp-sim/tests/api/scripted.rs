//! Test cards: `metadata.sim` outcomes are deterministic and random faults leave them alone.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{HANG_MS, client_builder, day_of, scripted_body, spawn, spawn_with};

#[tokio::test]
async fn decline_card_declines() {
    let sim = spawn().await;
    let answer = sim
        .post_payment("pay-decline", &scripted_body(100, "decline"))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "declined");
    assert_eq!(body["decline_code"], "card_declined");
    assert_eq!(sim.status("pay-decline").await.unwrap()["charge_count"], 0);
}

#[tokio::test]
async fn lost_response_charges_then_drops_only_the_first_answer() {
    let sim = spawn().await;
    let body = scripted_body(700, "lost_response");
    let started = Instant::now();
    let first = sim.post_payment("pay-lost", &body).await;
    assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(HANG_MS));

    let status = sim
        .status("pay-lost")
        .await
        .expect("charged despite the lost answer");
    assert_eq!(status["charge_count"], 1);
    let second = sim.post_payment("pay-lost", &body).await;
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["psp_reference"], status["psp_reference"]);
    assert_eq!(sim.status("pay-lost").await.unwrap()["charge_count"], 1);
}

#[tokio::test]
async fn lost_response_outlasts_a_client_deadline() {
    let sim = spawn().await;
    let impatient = client_builder()
        .timeout(Duration::from_millis(HANG_MS / 2))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/v1/payments", sim.base))
        .header("Idempotency-Key", "pay-impatient")
        .json(&scripted_body(5, "lost_response"))
        .send()
        .await
        .expect_err("the client gives up first");
    assert!(gave_up.is_timeout(), "{gave_up}");
    let status = sim.status("pay-impatient").await.expect("charged");
    assert_eq!(status["charge_count"], 1);
}

#[tokio::test]
async fn timeout_records_nothing_the_first_time() {
    let sim = spawn().await;
    let body = scripted_body(300, "timeout");
    let started = Instant::now();
    let first = sim.post_payment("pay-timeout", &body).await;
    assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(HANG_MS));
    assert!(sim.status("pay-timeout").await.is_none(), "never received");

    let second = sim.post_payment("pay-timeout", &body).await;
    assert_eq!(second.status(), StatusCode::OK);
    let third = sim.post_payment("pay-timeout", &body).await;
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(sim.status("pay-timeout").await.unwrap()["charge_count"], 1);
}

#[tokio::test]
async fn error_once_fails_only_the_first_post() {
    let sim = spawn().await;
    let body = scripted_body(300, "error_once");
    let first = sim.post_payment("pay-error", &body).await;
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error: Value = first.json().await.unwrap();
    assert!(error["error"].is_string());
    assert!(sim.status("pay-error").await.is_none(), "never received");

    let second = sim.post_payment("pay-error", &body).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(sim.status("pay-error").await.unwrap()["charge_count"], 1);
}

#[tokio::test]
async fn error_once_fails_exactly_one_of_concurrent_posts() {
    let sim = spawn().await;
    let body = scripted_body(300, "error_once");
    let posts = (0..10).map(|_| sim.post_payment("pay-error-race", &body));
    let statuses: Vec<StatusCode> = futures::future::join_all(posts)
        .await
        .iter()
        .map(|answer| answer.status())
        .collect();
    let errors = statuses
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert_eq!(errors, 1, "{statuses:?}");
    assert_eq!(
        sim.status("pay-error-race").await.unwrap()["charge_count"],
        1
    );
}

#[tokio::test]
async fn never_settle_charges_but_stays_out_of_the_file() {
    let sim = spawn().await;
    let answer = sim
        .post_payment("pay-ns", &scripted_body(900, "never_settle"))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    sim.pay("pay-settles", 100).await;
    let status = sim.status("pay-ns").await.unwrap();
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["charge_count"], 1);
    let file = sim
        .settlement(&day_of(status["created_at"].as_str().unwrap()))
        .await;
    assert!(!file.contains("pay-ns"), "{file}");
    assert!(file.contains("pay-settles"), "{file}");
}

#[tokio::test]
async fn random_faults_leave_scripted_payments_alone() {
    let sim = spawn_with(|cfg| {
        cfg.error_rate = 1.0;
        cfg.decline_rate = 1.0;
    })
    .await;
    let answer = sim
        .post_payment("pay-ns", &scripted_body(900, "never_settle"))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "succeeded");
}
