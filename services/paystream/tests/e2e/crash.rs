//! Crashes: `paystream up` (payment, wallet, ledger in one process) is killed over and over while
//! 2,000 payments and 200 cancellations flow, then restarted each time. First one life per crash
//! point (aborted by a failpoint exactly in that window), then lives ended by SIGKILL at random
//! moments. Afterwards nothing is lost, nothing is charged, refunded or applied twice.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paystream::client;
use paystream_common::ingress::CancelRequest;
use paystream_common::nats;
use paystream_psp_sim::{SimConfig, Simulator};
use paystream_testkit::{Backend, TestDb, TestNats};
use rand::Rng;

use crate::helpers::{assert_exactly_once, config, publish_all, requests, scalar, wait_settled};

const PAYMENTS: usize = 2_000;
const WAVES: usize = 10;

/// The windows that matter: each gets a life that crashes exactly there, the first time it is
/// reached. (Not a later hit: the first is passed once per batch, and a slow start-up can find a
/// whole wave ready and take it in one batch, so a 2nd hit may never come.)
const FAILPOINTS: [&str; 6] = [
    "payment.after_executing",
    "payment.after_psp",
    "payment.after_record",
    "outbox.after_publish",
    "wallet.after_commit",
    "ledger.after_commit",
];

fn spawn(
    nats_url: &str,
    db_url: &str,
    psp_url: &str,
    data: &std::path::Path,
    failpoint: Option<&str>,
) -> Child {
    spawn_up(nats_url, db_url, psp_url, data, failpoint, &[])
}

/// `paystream up` as its own process (so it can be SIGKILLed), with short timeouts and sweeps;
/// `env` overrides or adds settings.
pub(crate) fn spawn_up(
    nats_url: &str,
    db_url: &str,
    psp_url: &str,
    data: &std::path::Path,
    failpoint: Option<&str>,
    env: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.arg("up")
        .env_clear()
        .env("PAYSTREAM_NATS_URL", nats_url)
        .env("DATABASE_URL", db_url)
        .env("PAYSTREAM_PSP_URL", psp_url)
        .env("PAYSTREAM_DATA_DIR", data)
        .env("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_PARTITIONS", "4")
        .env("PAYSTREAM_PSP_TIMEOUT", "2s")
        .env("PAYSTREAM_EXECUTING_TIMEOUT", "3s")
        .env("PAYSTREAM_SWEEP_INTERVAL", "300ms")
        .env("PAYSTREAM_BACKOFF", "300ms,600ms,1s")
        .env("PAYSTREAM_MAX_DELIVER", "100")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join("paystream.log")).expect("log file"));
    if let Some(f) = failpoint {
        cmd.env("PAYSTREAM_FAILPOINTS", format!("{f}@1"));
    }
    cmd.spawn().expect("paystream starts")
}

async fn crashes(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let nats = TestNats::start(false).await;
    let data = tempfile::tempdir().unwrap();
    let sim = Simulator::open(SimConfig {
        store_path: data.path().join("psp.sqlite"),
        // A real PSP's tail, so a kill finds calls of very different ages in flight.
        latency_ms: 30,
        latency_p99_ms: Some(400),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let psp_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.serve(listener, std::future::pending()));

    let cfg = config(&nats.url(), &db.url, data.path(), &[]);
    let js = nats::jetstream(nats::connect(&cfg.client, "test", false).await.unwrap());
    // The streams exist before the first life, as they would in any deployment.
    paystream_common::streams::ensure_streams(&js, &cfg)
        .await
        .unwrap();
    let published = requests(PAYMENTS, 40, 8, "k");
    let cancelled: Vec<_> = published.iter().step_by(10).collect();
    let wave = PAYMENTS / WAVES;
    let mut rng = rand::rng();
    let (mut aborted, mut killed) = (0, 0);
    let started = Instant::now();
    let lives = FAILPOINTS.len() + 6;
    for life in 0..lives {
        // Keep work in flight in every life: a wave of payments, and cancellations of earlier ones
        // (which wait for their payment's outcome when it is not final yet).
        if life < WAVES {
            let batch = &published[life * wave..(life + 1) * wave];
            publish_all(&js, batch).await;
            for r in batch.iter().step_by(10) {
                let c = CancelRequest {
                    payment_id: r.payment_id,
                    buyer_id: r.buyer_id.clone(),
                    reason: None,
                };
                client::cancel(&js, &c).await.unwrap();
            }
        }
        let failpoint = FAILPOINTS.get(life).copied();
        eprintln!(
            "life {life}: failpoint {failpoint:?} after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let mut child = spawn(&nats.url(), &db.url, &psp_url, data.path(), failpoint);
        if failpoint.is_some() {
            // Wait for the failpoint to abort the process (or give up after a while).
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match child.try_wait().unwrap() {
                Some(status) => {
                    assert!(!status.success(), "life {life} ended by its failpoint");
                    aborted += 1;
                }
                None => {
                    let log = std::fs::read_to_string(data.path().join("paystream.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    panic!(
                        "failpoint {failpoint:?} was never reached; log tail:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed += 1;
        }
    }
    let mut last = spawn(&nats.url(), &db.url, &psp_url, data.path(), None);
    let conn = paystream_common::db::connect(&db.url).await.unwrap();
    wait_settled(&conn, PAYMENTS as i64, Duration::from_secs(240)).await;
    // A cancellation caught by a crash between its refund and its record is redelivered later.
    let want = cancelled.len() as i64;
    crate::helpers::eventually(
        Duration::from_secs(120),
        "every cancellation recorded",
        || async {
            scalar(
                &conn,
                "SELECT COUNT(*) FROM payments WHERE state = 'CANCELLED'",
            )
            .await
                == want
        },
    )
    .await;
    wait_settled(&conn, PAYMENTS as i64, Duration::from_secs(60)).await;
    let per_state = assert_exactly_once(&conn, &psp_url, &published).await;
    assert_eq!(
        per_state.get("CANCELLED").copied(),
        Some(cancelled.len()),
        "{per_state:?}"
    );
    let retried = scalar(
        &conn,
        // Caught between EXECUTING and the PSP's answer, a payment is taken up again either by
        // its request's redelivery or, past its execution lease, by the sweeper.
        "SELECT COUNT(*) FROM payment_history WHERE cause LIKE '%redelivered%' OR cause LIKE 'sweeper%'",
    )
    .await;
    eprintln!(
        "{backend:?}: {PAYMENTS} payments + {} cancellations through {aborted} failpoint aborts and {killed} SIGKILLs \
         in {:.1}s: {per_state:?}; {retried} charges taken up again after a crash (redelivery or sweeper)",
        cancelled.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(aborted == FAILPOINTS.len() && killed >= 5);
    assert!(
        retried > 0,
        "some payment was caught between EXECUTING and the PSP answer"
    );
    last.kill().unwrap();
    last.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_sqlite() {
    crashes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_postgres() {
    crashes(Backend::Postgres).await;
}
