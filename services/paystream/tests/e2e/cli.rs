//! The `paystream` binary as a script would use it: `pay`, `status`, `balance` and
//! `ledger check` with `--json`, and the exit codes (2 usage, 1 everything else).

use std::time::Duration;

use paystream_testkit::Backend;
use serde_json::Value;

use crate::helpers::{Env, eventually, run_cli};

fn paystream(env: &Env, args: &[&str]) -> (i32, String, String) {
    run_cli(env, args, &[])
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_contract() {
    let env = Env::start(Backend::Sqlite, &[])
        .await
        .expect("SQLite always runs");
    let (code, out, err) = paystream(
        &env,
        &[
            "pay",
            "--buyer",
            "b-9",
            "--merchant",
            "m-9",
            "--amount",
            "4200",
            "--currency",
            "USD",
            "--meta",
            "order=17",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let receipt = json(&out);
    assert_eq!(receipt["stream"], "PAYMENTS");
    assert!(receipt["seq"].as_u64().unwrap() >= 1);
    let id = receipt["payment_id"].as_str().unwrap().to_owned();

    eventually(Duration::from_secs(20), "status SUCCESS", || {
        let (_, out, _) = paystream(&env, &["status", &id, "--json"]);
        async move {
            serde_json::from_str::<Value>(&out)
                .map(|v| v["state"] == "SUCCESS")
                .unwrap_or(false)
        }
    })
    .await;
    let (_, out, _) = paystream(&env, &["status", &id, "--json"]);
    let status = json(&out);
    for field in [
        "payment_id",
        "buyer_id",
        "merchant_id",
        "amount",
        "currency",
        "state",
        "history",
    ] {
        assert!(
            status.get(field).is_some(),
            "status --json lacks {field}: {status}"
        );
    }
    assert_eq!(status["amount"], 4200);
    let first = &status["history"][0];
    assert!(first["state"].is_string() && first["at"].is_string() && first["cause"].is_string());

    eventually(Duration::from_secs(10), "balance credited", || {
        let (_, out, _) = paystream(&env, &["balance", "m-9", "--json"]);
        async move {
            serde_json::from_str::<Value>(&out)
                .map(|v| v["balances"]["USD"] == 4200)
                .unwrap_or(false)
        }
    })
    .await;
    let (code, out, _) = paystream(&env, &["balance", "m-nobody", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out),
        serde_json::json!({"merchant_id": "m-nobody", "balances": {}})
    );

    let (code, out, _) = paystream(&env, &["ledger", "check", "--json"]);
    assert_eq!(code, 0);
    let check = json(&out);
    assert_eq!(check["ok"], true);
    assert_eq!(check["violations"], serde_json::json!([]));

    let (code, _, err) = paystream(
        &env,
        &["status", "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01", "--json"],
    );
    assert_eq!(code, 1, "unknown payment: exit 1");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = paystream(
        &env,
        &[
            "pay",
            "--buyer",
            "b-1",
            "--merchant",
            "m-1",
            "--amount",
            "0",
        ],
    );
    assert_eq!(code, 2, "bad amount is a usage error: {err}");
    assert!(err.contains("amount"), "{err}");
    let (code, out, _) = paystream(&env, &["audit", "--json"]);
    assert_eq!(
        (code, json(&out)),
        (0, serde_json::json!([])),
        "no operator action yet"
    );
    let (code, _, _) = paystream(&env, &["status"]);
    assert_eq!(code, 2, "missing argument: usage");
    env.shutdown().await;
}
