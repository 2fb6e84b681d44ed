//! Reconciling files on their own: malformed lines are reported with their line numbers and the
//! run goes on; a file of a million rows is streamed in bounded memory (the CLI as a child
//! process, its peak RSS read from /proc).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use paystream_testkit::{Backend, TestDb};

use crate::helpers::scalar;

const DAY: &str = "2026-11-30";
const HEADER: &str = "psp_reference,payment_id,merchant_id,type,amount,currency,settled_at";

fn row(i: u128, amount: &str, kind: &str) -> String {
    format!(
        "ch_{i:08},{},m-1,{kind},{amount},USD,{DAY}T12:00:00.000Z",
        uuid::Uuid::from_u128(i + 1)
    )
}

async fn migrated(
    db: &TestDb,
    data: &std::path::Path,
) -> (
    paystream_common::config::Config,
    sea_orm::DatabaseConnection,
) {
    let cfg = crate::helpers::config("nats://127.0.0.1:1", &db.url, data, &[]);
    let conn = paystream::app::connect_db(&cfg, paystream_common::shutdown::channel().1)
        .await
        .unwrap();
    (cfg, conn)
}

async fn malformed_rows(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let (cfg, conn) = migrated(&db, data.path()).await;
    let path = data.path().join("bad.csv");
    let lines = [
        "payment_id,psp_reference,amount".to_owned(), // 1: wrong header
        row(1, "500", "charge"),                      // 2: fine (unknown payment)
        row(2, "12.50", "charge"),                    // 3: bad amount
        row(3, "500", "chargeback"),                  // 4: unknown type
        String::new(),                                // 5: empty
        row(4, "-3", "refund"),                       // 6: bad amount
        row(5, "700", "charge").replace(DAY, "2026-11-29"), // 7: another day
        "ch_x,not-a-uuid,m-1,charge,5,USD,2026-11-30T00:00:00Z".to_owned(), // 8
        row(6, "900", "refund"),                      // 9: fine
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let rec = paystream::recon::reconciler(&cfg, conn.clone(), None);
    let report = paystream::recon::run(&rec, DAY, Some(path.to_str().unwrap()), "test")
        .await
        .expect("a malformed file is reported, not fatal");
    let errors: Vec<(u64, &str)> = report
        .errors
        .iter()
        .map(|e| (e.line, e.error.as_str()))
        .collect();
    let expect = [
        (1, "header"),
        (3, "amount"),
        (4, "type"),
        (5, "empty"),
        (6, "amount"),
        (7, "not on 2026-11-30"),
        (8, "payment_id"),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:?}");
    for ((line, text), (want_line, want)) in errors.iter().zip(expect) {
        assert_eq!(*line, want_line, "{errors:?}");
        assert!(text.contains(want), "line {line}: {text}");
    }
    assert_eq!(report.errors_total, 7);
    assert_eq!(
        report.counts["unknown_payment"], 2,
        "the good rows are reconciled"
    );
    assert_eq!(report.lines_read, 8);
    let stored = paystream::recon::report(&conn, DAY).await.unwrap();
    assert_eq!(
        stored.errors.len(),
        7,
        "errors are part of the stored report"
    );
    assert_eq!(
        scalar(&conn, "SELECT COUNT(*) FROM recon_file_rows").await,
        0,
        "staging is cleared"
    );
    // A missing file fails the run (and says so), it does not invent an empty day.
    let missing = paystream::recon::run(&rec, DAY, Some("/nonexistent.csv"), "test").await;
    assert!(missing.is_err());
    assert_eq!(
        scalar(
            &conn,
            "SELECT COUNT(*) FROM recon_runs WHERE status = 'failed'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_sqlite() {
    malformed_rows(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_postgres() {
    malformed_rows(Backend::Postgres).await;
}

/// Peak RSS the reconciling process may reach; a million-row file alone is ~93 MB.
const RSS_KB_MAX: u64 = 100 * 1024;

/// Peak resident memory (VmHWM) of a running process, in kB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every row is an unknown payment, the costliest case (each is stored for manual review).
async fn rows_in_bounded_memory(rows: u128) {
    let db = TestDb::sqlite().await;
    let data = tempfile::tempdir().unwrap();
    let (_cfg, conn) = migrated(&db, data.path()).await;
    let path = data.path().join("million.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(f, "{HEADER}").unwrap();
        for i in 0..rows {
            writeln!(f, "{}", row(i, &(100 + i % 10_000).to_string(), "charge")).unwrap();
        }
    }
    let bytes = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    // Output to a file: a pipe nobody reads while the child runs would block it.
    let out_path = data.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args([
            "recon",
            "run",
            "--date",
            DAY,
            "--file",
            path.to_str().unwrap(),
            "--direct",
            "--json",
        ])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("PAYSTREAM_DATA_DIR", data.path())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_kb = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(child.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(report["counts"]["unknown_payment"], rows as u64);
    assert_eq!(report["manual_review_total"], rows as u64);
    assert_eq!(
        report["manual_review"].as_array().unwrap().len(),
        10_000,
        "the JSON lists are bounded"
    );
    let rows_per_s = rows as f64 / took.as_secs_f64();
    eprintln!(
        "{rows} rows ({} MB) reconciled in {took:.1?}: {rows_per_s:.0} rows/s, peak RSS {} MB",
        bytes / 1_000_000,
        peak_kb / 1024
    );
    assert!(peak_kb > 0, "the child's memory was read");
    assert!(
        peak_kb < RSS_KB_MAX,
        "peak RSS {peak_kb} kB ≥ {RSS_KB_MAX} kB"
    );
    drop(conn);
}

/// The million rows (~70 s in a debug build), the child's peak RSS bounded (memory does
/// not grow with the file: 100,000 rows peaked at 48 MB, a million at 46 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_rows_in_bounded_memory() {
    rows_in_bounded_memory(1_000_000).await;
}
