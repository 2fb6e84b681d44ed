//! `rate_limit_per_s`: the excess is answered 429 with `Retry-After`, processes nothing (a later
//! retry of the same key is its first real request), is counted in `/v1/sim/stats`, and that
//! count survives a restart.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::helpers::{TestSim, charge_body, scripted_body, spawn_with, start};

/// Requests per second in these tests: the bucket holds this many, then refills at this rate.
const RATE_PER_S: u32 = 5;
/// Requests sent at once: far more than a second's worth.
const BURST: usize = 30;

/// The `Retry-After` of a 429, checked to be whole seconds, at least 1.
fn retry_after_s(response: &Response) -> u64 {
    let value = response
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After");
    let seconds: u64 = value
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!(seconds >= 1, "Retry-After {seconds}");
    seconds
}

/// Sends the request `make` builds until it is not answered 429, waiting `Retry-After` between
/// tries as a well-behaved client does.
async fn until_admitted(make: impl Fn() -> RequestBuilder) -> Response {
    for _ in 0..20 {
        let response = make().send().await.expect("request");
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            return response;
        }
        tokio::time::sleep(Duration::from_secs(retry_after_s(&response))).await;
    }
    panic!("still rate-limited after 20 tries");
}

fn post_payment(sim: &TestSim, key: &str, body: &Value) -> RequestBuilder {
    sim.client
        .post(format!("{}/v1/payments", sim.base))
        .header("Idempotency-Key", key)
        .json(body)
}

/// Sends [`BURST`] charges at once, keys `{prefix}-{i}` with `body`; returns the keys answered
/// 429 (each checked for `Retry-After` and an error body) and how many were not.
async fn burst(sim: &TestSim, prefix: &str, body: &Value) -> (Vec<String>, usize) {
    let keys: Vec<String> = (0..BURST).map(|i| format!("{prefix}-{i}")).collect();
    let started = Instant::now();
    let answers = join_all(keys.iter().map(|key| sim.post_payment(key, body))).await;
    let took = started.elapsed();
    let mut limited = Vec::new();
    for (key, answer) in keys.into_iter().zip(answers) {
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after_s(&answer);
            let error: Value = answer.json().await.expect("JSON error body");
            assert!(error["error"].is_string(), "{error}");
            limited.push(key);
        }
    }
    let admitted = BURST - limited.len();
    // One second's worth at once, then the rate: however slow this machine, never more.
    let allowed = f64::from(RATE_PER_S) * (1.0 + took.as_secs_f64());
    assert!(
        admitted as f64 <= allowed.floor(),
        "{admitted} admitted in {took:?}"
    );
    assert!(!limited.is_empty(), "none of {BURST} refused in {took:?}");
    (limited, admitted)
}

#[tokio::test]
async fn the_excess_is_refused_with_429_and_charges_nothing() {
    let sim = spawn_with(|cfg| cfg.rate_limit_per_s = Some(RATE_PER_S)).await;
    let (limited, admitted) = burst(&sim, "pay-rl", &charge_body(10)).await;

    // `/v1/sim/*` is never limited, however often it is asked.
    for _ in 0..2 * RATE_PER_S {
        sim.stats().await;
    }
    let stats = sim.stats().await;
    assert_eq!(stats["payments"], admitted);
    assert_eq!(stats["charges"], admitted);
    assert_eq!(stats["rate_limited"], limited.len());

    // A refused key was never recorded: its retry is charged once, normally.
    let key = &limited[0];
    let retried = until_admitted(|| post_payment(&sim, key, &charge_body(10))).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let status = until_admitted(|| sim.client.get(format!("{}/v1/payments/{key}", sim.base))).await;
    assert_eq!(status.status(), StatusCode::OK);
    let status: Value = status.json().await.expect("status answer");
    assert_eq!(status["charge_count"], 1);
    let stats = sim.stats().await;
    assert_eq!(stats["charges"], admitted + 1);
    assert_eq!(stats["double_charges"], 0);
}

#[tokio::test]
async fn a_refused_request_is_not_its_keys_first_post() {
    let sim = spawn_with(|cfg| cfg.rate_limit_per_s = Some(RATE_PER_S)).await;
    let body = scripted_body(10, "error_once");
    let (limited, _) = burst(&sim, "pay-rl-once", &body).await;
    let key = &limited[0];
    let first = until_admitted(|| post_payment(&sim, key, &body)).await;
    assert_eq!(
        first.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "the 429 must not have counted as the scripted first POST"
    );
    let second = until_admitted(|| post_payment(&sim, key, &body)).await;
    assert_eq!(second.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_rate_limited_count_survives_a_restart() {
    let sim = spawn_with(|cfg| cfg.rate_limit_per_s = Some(RATE_PER_S)).await;
    let (limited, _) = burst(&sim, "pay-rl-kept", &charge_body(10)).await;
    assert_eq!(sim.stats().await["rate_limited"], limited.len());
    let (cfg, dir) = sim.stop().await;
    let sim = start(cfg, dir).await;
    assert_eq!(sim.stats().await["rate_limited"], limited.len());
}
