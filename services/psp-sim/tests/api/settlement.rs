//! `GET /v1/settlements/{date}`: content, order, paging, and deterministic drift.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestSim, day_of, scripted_body, spawn, start};

const HEADER: &str = "psp_reference,payment_id,merchant_id,type,amount,currency,settled_at";

/// The data rows of a file, split into columns, after checking its header.
fn rows(file: &str) -> Vec<Vec<String>> {
    let mut lines = file.lines();
    assert_eq!(lines.next(), Some(HEADER));
    lines
        .map(|line| line.split(',').map(str::to_owned).collect())
        .collect()
}

/// Pays `keys` (100 minor units more each), refunds the first in full, declines one more;
/// returns the settlement day.
async fn some_activity(sim: &TestSim, keys: &[&str]) -> String {
    for (i, key) in keys.iter().enumerate() {
        sim.pay(key, 100 * (i as i64 + 1)).await;
    }
    assert_eq!(sim.post_refund(keys[0], 100).await.status(), StatusCode::OK);
    let declined = sim
        .post_payment("pay-declined", &scripted_body(5, "decline"))
        .await;
    assert_eq!(declined.status(), StatusCode::OK);
    let status = sim.status(keys[0]).await.unwrap();
    day_of(status["created_at"].as_str().unwrap())
}

#[tokio::test]
async fn file_lists_charges_and_refunds_of_the_day_in_order() {
    let sim = spawn().await;
    let day = some_activity(&sim, &["pay-a", "pay-b"]).await;
    let file = sim.settlement(&day).await;
    let rows = rows(&file);
    assert_eq!(rows.len(), 3, "{file}");

    let a = sim.status("pay-a").await.unwrap();
    let b = sim.status("pay-b").await.unwrap();
    let expected = [
        (a["psp_reference"].clone(), "pay-a", "charge", "100"),
        (b["psp_reference"].clone(), "pay-b", "charge", "200"),
        (a["refund_reference"].clone(), "pay-a", "refund", "100"),
    ];
    for (row, (reference, payment, kind, amount)) in rows.iter().zip(expected) {
        assert_eq!(row.len(), 7, "{row:?}");
        assert_eq!(Value::from(row[0].as_str()), reference);
        assert_eq!(row[1], payment);
        assert_eq!(row[2], "m-1");
        assert_eq!(row[3], kind);
        assert_eq!(row[4], amount);
        assert_eq!(row[5], "USD");
        assert_eq!(row[6].len(), "2026-11-25T13:01:02.123Z".len(), "{}", row[6]);
        assert_eq!(day_of(&row[6]), day);
    }
    let settled: Vec<&String> = rows.iter().map(|row| &row[6]).collect();
    assert!(settled.is_sorted(), "{settled:?}");
    assert!(!file.contains("pay-declined"));

    assert_eq!(sim.settlement("2001-01-01").await, format!("{HEADER}\n"));
}

#[tokio::test]
async fn bad_dates_are_bad_requests() {
    let sim = spawn().await;
    for date in ["2026-13-01", "2026-02-30", "20261125", "today"] {
        let answer = sim.get(&format!("/v1/settlements/{date}")).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{date}");
        let body: Value = answer.json().await.unwrap();
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn drift_is_deterministic_per_row() {
    let sim = spawn().await;
    let day = some_activity(&sim, &["pay-a", "pay-b", "pay-c"]).await;
    let truth = rows(&sim.settlement(&day).await);
    assert_eq!(truth.len(), 4);

    // The same store under each drift in turn.
    let (mut cfg, dir) = sim.stop().await;
    cfg.drift.duplicate_rate = 1.0;
    let sim = start(cfg, dir).await;
    let file = sim.settlement(&day).await;
    assert_eq!(file, sim.settlement(&day).await, "two fetches, one file");
    let doubled = rows(&file);
    assert_eq!(doubled.len(), 8);
    for (pair, row) in doubled.chunks(2).zip(&truth) {
        assert_eq!(pair[0], *row);
        assert_eq!(pair[1], *row);
    }

    let (mut cfg, dir) = sim.stop().await;
    cfg.drift.amount_rate = 1.0;
    let sim = start(cfg, dir).await;
    let changed = rows(&sim.settlement(&day).await);
    assert_eq!(changed.len(), truth.len());
    for (row, original) in changed.iter().zip(&truth) {
        let delta = row[4].parse::<i64>().unwrap() - original[4].parse::<i64>().unwrap();
        assert!((1..=100).contains(&delta), "{delta}");
        assert_eq!(row[0], original[0]);
    }

    let (mut cfg, dir) = sim.stop().await;
    cfg.drift.missing_rate = 0.5;
    let sim = start(cfg, dir).await;
    let file = sim.settlement(&day).await;
    assert_eq!(file, sim.settlement(&day).await);
    for row in rows(&file) {
        assert!(truth.contains(&row), "a kept row is unchanged");
    }

    let (mut cfg, dir) = sim.stop().await;
    cfg.drift.missing_rate = 1.0;
    let sim = start(cfg, dir).await;
    assert_eq!(sim.settlement(&day).await, format!("{HEADER}\n"));
}

#[tokio::test]
async fn unknown_rows_are_added_to_days_with_real_rows() {
    let sim = spawn().await;
    let day = some_activity(&sim, &["pay-a"]).await;
    let (mut cfg, dir) = sim.stop().await;
    cfg.drift.unknown_rows = 3;
    let sim = start(cfg, dir).await;

    let file = sim.settlement(&day).await;
    assert_eq!(file, sim.settlement(&day).await);
    let rows = rows(&file);
    assert_eq!(rows.len(), 2 + 3);
    let unknown: Vec<&Vec<String>> = rows.iter().filter(|r| r[2] == "m-unknown").collect();
    assert_eq!(unknown.len(), 3);
    for row in unknown {
        assert_eq!(row[3], "charge");
        assert!(row[0].starts_with("ch_"));
        assert!(row[1].parse::<uuid::Uuid>().is_ok(), "{}", row[1]);
        assert!(sim.status(&row[1]).await.is_none(), "never received");
        assert!(row[6].ends_with("T23:59:59.999Z"));
    }
    assert_eq!(sim.settlement("2001-01-01").await, format!("{HEADER}\n"));
}

#[tokio::test]
async fn file_pages_through_thousands_of_rows() {
    let sim = spawn().await;
    let count = 2_500;
    let payments = futures::stream::iter(0..count)
        .map(|i| {
            let sim = &sim;
            async move { sim.pay(&format!("pay-{i:05}"), 100).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let day = day_of(
        sim.status("pay-00000").await.unwrap()["created_at"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(payments.len(), count);
    let rows = rows(&sim.settlement(&day).await);
    assert_eq!(rows.len(), count);
    let mut references: Vec<&String> = rows.iter().map(|row| &row[0]).collect();
    references.sort();
    references.dedup();
    assert_eq!(references.len(), count, "no row twice, none missing");
    let settled: Vec<&String> = rows.iter().map(|row| &row[6]).collect();
    assert!(settled.is_sorted());
}
