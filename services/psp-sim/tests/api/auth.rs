//! With an API key, every `/v1` request needs `Authorization: Bearer <key>`; `/healthz` not.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{charge_body, spawn_with};

#[tokio::test]
async fn api_key_guards_v1() {
    let sim = spawn_with(|cfg| cfg.api_key = Some("sk_test_1".into())).await;
    let url = format!("{}/v1/payments", sim.base);
    let send = |auth: Option<&'static str>| {
        let mut request = sim
            .client
            .post(&url)
            .header("Idempotency-Key", "pay-auth")
            .json(&charge_body(10));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        request.send()
    };
    for auth in [None, Some("Bearer sk_test_2"), Some("sk_test_1")] {
        let answer = send(auth).await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let body: Value = answer.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    let stats = sim.get("/v1/sim/stats").await;
    assert_eq!(stats.status(), StatusCode::UNAUTHORIZED);

    let answer = send(Some("Bearer sk_test_1")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(sim.get("/healthz").await.status(), StatusCode::OK);
}
