//! NATS restarted mid-stream (its store kept, fsync on every write): the services reconnect, the
//! consumers resume their pulls, the outbox relay republishes what was not acknowledged, and every
//! payment completes exactly once.

use std::time::{Duration, Instant};

use paystream_common::nats;
use paystream_testkit::Backend;

use crate::helpers::{
    Env, assert_exactly_once, eventually, publish_all, requests, scalar, wait_settled,
};

const PAYMENTS: usize = 1_000;

async fn nats_restart(backend: Backend) {
    let Some(mut env) = Env::start_with(backend, &["--psp-sim-latency-ms=5"], true).await else {
        return;
    };

    let published = requests(PAYMENTS, 30, 6, "r");
    let publisher = {
        let js = nats::jetstream(env.client().await);
        let published = published.clone();
        tokio::spawn(async move { publish_all(&js, &published).await })
    };
    let db = env.db().clone();
    eventually(
        Duration::from_secs(30),
        "a third of the payments in",
        || async { scalar(&db, "SELECT COUNT(*) FROM payments").await > (PAYMENTS / 3) as i64 },
    )
    .await;
    let outage = Instant::now();
    env.nats.server.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.nats
        .server
        .restart()
        .await
        .expect("nats-server restarts on its store");
    eprintln!(
        "{backend:?}: nats-server down for {:.1}s",
        outage.elapsed().as_secs_f64()
    );
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher finished within 60s")
        .unwrap();
    wait_settled(&db, PAYMENTS as i64, Duration::from_secs(120)).await;
    let per_state = assert_exactly_once(&db, &env.psp_url(), &published).await;
    eprintln!(
        "{backend:?}: after a NATS restart mid-stream: {per_state:?}, ready again: {}",
        env.app().readiness.not_ready().is_empty()
    );
    env.wait_ready().await;
    tokio::time::timeout(Duration::from_secs(30), env.shutdown())
        .await
        .expect("graceful shutdown within 30s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_sqlite() {
    nats_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_postgres() {
    nats_restart(Backend::Postgres).await;
}
