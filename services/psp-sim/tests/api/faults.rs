//! Random faults, each at rate 1.0: errors and timeouts process nothing, lost answers process.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{HANG_MS, charge_body, spawn, spawn_with};

#[tokio::test]
async fn error_rate_answers_500_and_records_nothing() {
    let sim = spawn_with(|cfg| cfg.error_rate = 1.0).await;
    let answer = sim.post_payment("pay-e", &charge_body(10)).await;
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(sim.status("pay-e").await.is_none());
}

#[tokio::test]
async fn timeout_rate_holds_then_504_and_records_nothing() {
    let sim = spawn_with(|cfg| cfg.timeout_rate = 1.0).await;
    let started = Instant::now();
    let answer = sim.post_payment("pay-t", &charge_body(10)).await;
    assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(HANG_MS));
    assert!(sim.status("pay-t").await.is_none());
}

#[tokio::test]
async fn lost_response_rate_charges_and_drops_every_answer() {
    let sim = spawn_with(|cfg| cfg.lost_response_rate = 1.0).await;
    for _ in 0..2 {
        let answer = sim.post_payment("pay-l", &charge_body(10)).await;
        assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(sim.status("pay-l").await.unwrap()["charge_count"], 1);
}

#[tokio::test]
async fn refunds_meet_random_faults_too() {
    let healthy = spawn().await;
    healthy.pay("pay-rf", 10).await;
    let (mut cfg, dir) = healthy.stop().await;
    cfg.lost_response_rate = 1.0;
    let faulty = crate::helpers::start(cfg, dir).await;
    let answer = faulty.post_refund("pay-rf", 10).await;
    assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(faulty.status("pay-rf").await.unwrap()["refund_count"], 1);
}

#[tokio::test]
async fn latency_is_added_to_every_answer() {
    let sim = spawn_with(|cfg| cfg.latency_ms = 150).await;
    let started = Instant::now();
    sim.pay("pay-slow", 10).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn shutdown_releases_held_requests_at_once() {
    let sim = spawn_with(|cfg| {
        cfg.lost_response_rate = 1.0;
        cfg.hang_ms = 60_000;
    })
    .await;
    let held = {
        let request = sim
            .client
            .post(format!("{}/v1/payments", sim.base))
            .header("Idempotency-Key", "pay-held")
            .json(&charge_body(10));
        tokio::spawn(request.send())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.status("pay-held").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the held request was never processed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    sim.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited out the hang"
    );
    if let Ok(answer) = held.await.expect("request task") {
        assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
