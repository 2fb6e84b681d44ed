//! `GET /v1/sim/stats` and `Simulator::stats` count the whole store.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{scripted_body, spawn};

#[tokio::test]
async fn stats_count_keys_charges_and_refunds() {
    let sim = spawn().await;
    assert_eq!(
        sim.stats().await,
        json!({
            "payments": 0, "charges": 0, "refunds": 0, "double_charges": 0, "double_refunds": 0,
            "rate_limited": 0
        })
    );
    sim.pay("pay-1", 10).await;
    sim.pay("pay-1", 10).await;
    sim.pay("pay-2", 20).await;
    let declined = sim
        .post_payment("pay-3", &scripted_body(30, "decline"))
        .await;
    assert_eq!(declined.status(), StatusCode::OK);
    let timed_out = sim
        .post_payment("pay-4", &scripted_body(40, "timeout"))
        .await;
    assert_eq!(timed_out.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(sim.post_refund("pay-2", 20).await.status(), StatusCode::OK);

    let expected = json!({
        "payments": 3, "charges": 2, "refunds": 1, "double_charges": 0, "double_refunds": 0,
        "rate_limited": 0
    });
    assert_eq!(sim.stats().await, expected);
    let direct = sim.sim.stats().await.unwrap();
    assert_eq!(serde_json::to_value(direct).unwrap(), expected);
}
