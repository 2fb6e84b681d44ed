//! The console's pages stay fast with a real day's data: 100,000 dead letters (real advisories in
//! DEAD_LETTERS, indexed by the dlq service), a 1,000,000-row reconciliation and a payment with
//! hundreds of PSP attempts, 100,000 audit rows. Each page is asked through NATS as the console asks it, five times;
//! the medians are printed (README "Operator console" quotes them) and bounded.

use std::time::{Duration, Instant};

use paystream_common::nats;
use paystream_testkit::Backend;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::helpers::{Env, eventually, requests, scalar, wait_settled};

const DEAD_LETTERS: i64 = 100_000;
const RECON_ROWS: i64 = 1_000_000;
const ATTEMPTS: i64 = 300;
/// A page slower than this (median of five) fails the test; README quotes what was measured.
const PAGE_MS_MAX: f64 = 500.0;

async fn ask(client: &async_nats::Client, subject: &str, body: &Value) -> (f64, Value) {
    let started = Instant::now();
    let reply = client
        .request(subject.to_owned(), body.to_string().into())
        .await
        .expect("answered");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        crate::helpers::service_error(&reply).is_none(),
        "{subject} {body}: {reply:?}"
    );
    (ms, serde_json::from_slice(&reply.payload).expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_stay_fast() {
    let env = Env::start(Backend::Sqlite, &[]).await.unwrap();
    let db = env.db().clone();
    let client = env.client().await;
    let js = nats::jetstream(client.clone());

    // 100,000 dead letters: advisories as the server writes them, across the three consumers.
    let started = Instant::now();
    let at = paystream_common::time::rfc3339_ms(paystream_common::time::now_ms());
    let mut acks = Vec::with_capacity(512);
    for i in 0..DEAD_LETTERS {
        let (stream, durable) = match i % 3 {
            0 => ("PAYMENTS", "payment-p0"),
            1 => ("PAYMENT_EVENTS", "wallet-p1"),
            _ => ("PAYMENT_EVENTS", "ledger-p2"),
        };
        let advisory = json!({"type": "io.nats.jetstream.advisory.v1.terminated", "stream": stream,
            "consumer": durable, "stream_seq": i + 1, "deliveries": 1,
            "reason": format!("scale test reason {}", i % 7), "timestamp": at});
        acks.push(
            js.publish(
                format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{durable}"),
                advisory.to_string().into(),
            )
            .await
            .expect("published"),
        );
        if acks.len() >= 512 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    eventually(
        Duration::from_secs(300),
        "100,000 dead letters indexed",
        || async { scalar(&db, "SELECT COUNT(*) FROM dead_letter_index").await == DEAD_LETTERS },
    )
    .await;
    eprintln!(
        "100,000 dead letters published and indexed in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // A 1,000,000-row reconciliation (rows as a run stores them).
    let report = json!({"date": "2026-11-29", "run_id": "run-scale", "counts": {"unknown_payment": RECON_ROWS},
        "corrections": 0, "manual_review": [], "errors": [], "manual_review_total": RECON_ROWS,
        "errors_total": 0, "corrections_already_applied": 0, "corrections_skipped": 0, "corrected": [],
        "amounts_by_currency": {}, "lines_read": RECON_ROWS, "source": "scale", "started_at": at,
        "finished_at": at, "duration_seconds": 1.0, "files": {"json": "", "csv": ""}});
    db.execute_unprepared(&format!(
        "INSERT INTO recon_runs (run_id, date, status, source, started_at_ms, finished_at_ms, report, error) \
         VALUES ('run-scale', '2026-11-29', 'ok', 'scale', 1, 2, '{}', NULL)",
        report.to_string().replace('\'', "''")
    ))
    .await
    .unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO recon_rows (run_id, line, class, psp_reference, payment_id, kind, amount_minor, \
         our_amount_minor, currency, correction, detail) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {RECON_ROWS}) \
         SELECT 'run-scale', i + 1, 'unknown_payment', 'ch_' || i, 'pay-' || i, 'charge', 100, NULL, \
         'USD', NULL, 'we never received this payment' FROM n"
    ))
    .await
    .unwrap();

    // A payment with hundreds of attempts (and as many state changes).
    let pay = requests(1, 1, 1, "scale");
    crate::helpers::publish_all(&js, &pay).await;
    wait_settled(&db, 1, Duration::from_secs(30)).await;
    let pid = pay[0].payment_id.to_string();
    db.execute_unprepared(&format!(
        "INSERT INTO psp_attempts (payment_id, kind, via, outcome, detail, latency_ms, at_ms) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ATTEMPTS}) \
         SELECT '{pid}', 'sweep', 'sweeper', 'unknown', 'PSP outcome unknown: timeout', 2000, i FROM n"
    ))
    .await
    .unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO payment_history (payment_id, state, cause, at_ms) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ATTEMPTS}) \
         SELECT '{pid}', 'UNKNOWN', 'sweeper: PSP outcome unknown', i FROM n"
    ))
    .await
    .unwrap();

    // A long audit trail.
    db.execute_unprepared(
        "INSERT INTO audit (at_ms, actor, action, target, result) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
         SELECT i, 'operator', 'dlq.purge', 'DEAD_LETTERS/' || i, 'purged' FROM n",
    )
    .await
    .unwrap();

    let pages: Vec<(&str, &str, Value)> = vec![
        ("overview", "paystream.console.overview", json!({})),
        (
            "dead letters, first page",
            "paystream.console.dead_letters",
            json!({"limit": 100}),
        ),
        (
            "dead letters of one consumer",
            "paystream.console.dead_letters",
            json!({"consumer": "wallet", "limit": 100}),
        ),
        (
            "dead letters by reason",
            "paystream.console.dead_letters",
            json!({"reason": "reason 3", "limit": 100}),
        ),
        (
            "dead letters, page 500",
            "paystream.console.dead_letters",
            json!({"before": 50_000, "limit": 100}),
        ),
        (
            "one dead letter",
            "paystream.dlq.show",
            json!({"id": 77_777}),
        ),
        (
            "reconciliation runs",
            "paystream.console.recon_runs",
            json!({"limit": 31}),
        ),
        (
            "reconciliation rows, first page",
            "paystream.console.recon_rows",
            json!({"date": "2026-11-29", "limit": 100}),
        ),
        (
            "reconciliation rows, page 9,000",
            "paystream.console.recon_rows",
            json!({"date": "2026-11-29", "after": 900_000, "limit": 100}),
        ),
        (
            "timeline, 600+ entries, first 200",
            "paystream.timeline",
            json!({"payment_id": pid, "limit": 200}),
        ),
        (
            "timeline, last page",
            "paystream.timeline",
            json!({"payment_id": pid, "offset": 600, "limit": 200}),
        ),
        (
            "payments of a buyer",
            "paystream.console.find",
            json!({"buyer_id": pay[0].buyer_id.to_string()}),
        ),
        (
            "audit trail",
            "paystream.console.audit",
            json!({"limit": 100}),
        ),
    ];
    let mut report = String::from("| page | median ms | slowest of 5 ms |\n|---|---|---|\n");
    let mut slow = Vec::new();
    for (name, subject, body) in &pages {
        let mut times = Vec::new();
        let mut answer = Value::Null;
        for _ in 0..5 {
            let (ms, a) = ask(&client, subject, body).await;
            times.push(ms);
            answer = a;
        }
        let rows = answer["entries"]
            .as_array()
            .or(answer["rows"].as_array())
            .or(answer.as_array())
            .map_or(1, Vec::len);
        if rows == 0 {
            slow.push(format!("{name}: an empty page measures nothing: {answer}"));
        }
        times.sort_by(f64::total_cmp);
        let median = times[2];
        report.push_str(&format!(
            "| {name} ({rows} rows) | {median:.1} | {:.1} |\n",
            times[4]
        ));
        if median > PAGE_MS_MAX {
            slow.push(format!("{name}: {median:.1} ms"));
        }
    }
    eprintln!("{report}");
    assert!(
        slow.is_empty(),
        "pages over {PAGE_MS_MAX} ms: {slow:?}\n{report}"
    );
    env.shutdown().await;
}
