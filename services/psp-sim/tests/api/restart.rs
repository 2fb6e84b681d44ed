//! Records, and the "first POST" of scripted keys, survive a restart on the same store file.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{charge_body, scripted_body, spawn, start};

#[tokio::test]
async fn records_survive_a_restart() {
    let sim = spawn().await;
    let charged = sim.pay("pay-kept", 4200).await;
    assert_eq!(
        sim.post_refund("pay-kept", 200).await.status(),
        StatusCode::OK
    );
    let before = sim.status("pay-kept").await.unwrap();

    let (cfg, dir) = sim.stop().await;
    let sim = start(cfg, dir).await;
    assert_eq!(sim.status("pay-kept").await.unwrap(), before);
    let again = sim.post_payment("pay-kept", &charge_body(4200)).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap(), charged);
    assert_eq!(
        sim.post_refund("pay-kept", 200).await.status(),
        StatusCode::OK
    );
    let stats = sim.stats().await;
    assert_eq!(stats["payments"], 1);
    assert_eq!(stats["charges"], 1);
    assert_eq!(stats["refunds"], 1);
}

#[tokio::test]
async fn the_first_post_is_remembered_across_a_restart() {
    let sim = spawn().await;
    let body = scripted_body(10, "error_once");
    let first = sim.post_payment("pay-once", &body).await;
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let (cfg, dir) = sim.stop().await;
    let sim = start(cfg, dir).await;
    let second = sim.post_payment("pay-once", &body).await;
    assert_eq!(
        second.status(),
        StatusCode::OK,
        "error_once fails only once"
    );
}
