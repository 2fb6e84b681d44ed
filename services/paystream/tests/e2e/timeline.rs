//! `paystream timeline` and `paystream.recon.resolve` over NATS on a secure server, without a
//! browser: the timeline of a real payment has each kind of fact the services recorded (request,
//! states, the PSP attempt with its latency, the event, wallet and ledger applying it); an unknown
//! id exits 1; a reconciliation's row and correction of it join its timeline; a viewer may read the timeline but not resolve; an operator's resolution needs a
//! note, is audited under their name and shows in `recon report` and its files.

use std::time::Duration;

use paystream::operator::{self, OperatorError};
use paystream_common::ids::PaymentId;
use paystream_common::nats;
use paystream_testkit::Backend;
use serde_json::{Value, json};

use crate::helpers::{Env, publish_all, reconcile_an_unknown_payment, requests, wait_settled};
use crate::security::paystream_cli;

const DAY: &str = "2026-11-30";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelines_and_resolutions_over_nats() {
    let env = Env::start_secure(Backend::Sqlite, &[]).await.unwrap();
    let db = env.db().clone();
    let (checkout, _) = env.client_as("checkout").await;
    let pay = requests(1, 1, 1, "tl");
    publish_all(&nats::jetstream(checkout), &pay).await;
    wait_settled(&db, 1, Duration::from_secs(30)).await;
    let pid = pay[0].payment_id.to_string();

    let out = paystream_cli(&env, "viewer", &["timeline", &pid, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let tl: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = tl["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["request", "state", "psp_attempt", "event", "applied"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds[0], "request", "the request comes first: {kinds:?}");
    let attempt = tl["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "psp_attempt")
        .unwrap();
    assert_eq!(attempt["fields"]["outcome"], "succeeded", "{attempt}");
    assert!(attempt["fields"]["latency_ms"].is_i64(), "{attempt}");
    let appliers: Vec<&str> = tl["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "applied")
        .map(|e| e["fields"]["consumer"].as_str().unwrap())
        .collect();
    assert!(
        appliers.contains(&"wallet") && appliers.contains(&"ledger"),
        "{appliers:?}"
    );
    assert_eq!(tl["request"]["stream"], "PAYMENTS");
    let table = paystream_cli(&env, "viewer", &["timeline", &pid]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("psp_attempt") && table.contains("PAYMENTS seq"),
        "{table}"
    );
    let unknown = PaymentId::new_random().to_string();
    let out = paystream_cli(&env, "viewer", &["timeline", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );

    // A day with a row for manual review.
    // Line 3: our payment, settled for 5 more than we hold: corrected by an `adjusted` event.
    let ours = &pay[0];
    let adjusted = format!(
        "ch_tl_adj,{pid},{},charge,{},{},{DAY}T11:00:00Z",
        ours.merchant_id,
        ours.amount.minor() + 5,
        ours.currency
    );
    reconcile_an_unknown_payment(&env, DAY, &[adjusted]).await;
    let tl: Value = serde_json::from_slice(
        &paystream_cli(&env, "viewer", &["timeline", &pid, "--json"]).stdout,
    )
    .unwrap();
    let entries = tl["entries"].as_array().unwrap();
    let correction = entries
        .iter()
        .find(|e| e["kind"] == "correction")
        .unwrap_or_else(|| panic!("no correction in {tl}"));
    assert_eq!(correction["fields"]["delta_minor"], 5, "{correction}");
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "recon_row" && e["fields"]["class"] == "amount_mismatch"),
        "{tl}"
    );
    let resolve = json!({"date": DAY, "line": 2, "note": "another platform's charge"});
    let (viewer, viewer_errors) = env.client_as("viewer").await;
    let refused =
        operator::request(&viewer, &viewer_errors, "paystream.recon.resolve", &resolve).await;
    assert!(
        matches!(refused, Err(OperatorError::NotPermitted(..))),
        "{refused:?}"
    );
    let (op, op_errors) = env.client_as("operator").await;
    let no_note = operator::request(
        &op,
        &op_errors,
        "paystream.recon.resolve",
        &json!({"date": DAY, "line": 2, "note": " "}),
    )
    .await;
    assert!(
        matches!(&no_note, Err(OperatorError::Refused { code, .. }) if code == "400"),
        "{no_note:?}"
    );
    let no_row = operator::request(
        &op,
        &op_errors,
        "paystream.recon.resolve",
        &json!({"date": DAY, "line": 99, "note": "x"}),
    )
    .await;
    assert!(
        matches!(&no_row, Err(OperatorError::Refused { code, .. }) if code == "404"),
        "{no_row:?}"
    );
    let report = operator::request(&op, &op_errors, "paystream.recon.resolve", &resolve)
        .await
        .expect("the operator resolves");
    assert_eq!(report["manual_review"][0]["resolution"]["by"], "operator");
    // `recon report`'s table.
    let text = paystream::recon::table(&paystream::recon::report(&db, DAY).await.unwrap());
    assert!(
        text.contains("operator at") && text.contains("another platform's charge"),
        "{text}"
    );
    let files = report["files"]["resolutions"].as_str().expect("a file");
    assert!(std::fs::read_to_string(files).unwrap().contains("operator"));
    let json_file: Value =
        serde_json::from_slice(&std::fs::read(report["files"]["json"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        json_file["manual_review"][0]["resolution"]["note"],
        "another platform's charge"
    );
    let audit = paystream::audit::list(&db, 100).await.unwrap();
    let resolved: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "recon.resolve")
        .map(|a| (a.actor.as_str(), a.result.starts_with("resolved")))
        .collect();
    assert!(resolved.contains(&("operator", true)), "{resolved:?}");
    env.shutdown().await;
}
