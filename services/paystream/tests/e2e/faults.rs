//! Payment execution under PSP faults: 5,000 payments against a simulator that fails 10% of
//! calls with 5xx, times out 10%, charges and loses the answer for 10%, and declines 5%. Every
//! payment must end SUCCESS or FAILURE with exactly one charge per SUCCESS and none per FAILURE;
//! then 10% of the successes are cancelled under the same faults: exactly one refund each.

use std::time::{Duration, Instant};

use paystream::client;
use paystream_common::ingress::CancelRequest;
use paystream_common::nats;
use paystream_common::telemetry::names;
use paystream_testkit::Backend;

use crate::helpers::{
    Env, assert_exactly_once, eventually, publish_all, requests, scalar, wait_settled,
};

const PAYMENTS: usize = 5_000;

async fn fault_storm(backend: Backend) {
    let extra = [
        "--psp-sim-error-rate=0.1",
        "--psp-sim-timeout-rate=0.1",
        "--psp-sim-lost-response-rate=0.1",
        "--psp-sim-decline-rate=0.05",
        "--psp-sim-seed=20261125",
        "--psp-sim-hang=2s",
        "--psp-timeout=300ms",
        "--psp-connect-timeout=200ms",
        "--executing-timeout=1s",
        "--sweep-interval=200ms",
        "--sweep-max-attempts=100",
        "--backoff=500ms,1s,2s",
        "--max-deliver=40",
    ];
    let Some(env) = Env::start(backend, &extra).await else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let published = requests(PAYMENTS, 100, 20, "f");
    let started = Instant::now();
    publish_all(&js, &published).await;
    let db = env.db();
    wait_settled(db, PAYMENTS as i64, Duration::from_secs(300)).await;
    let settled = started.elapsed();
    let per_state = assert_exactly_once(db, &env.psp_url(), &published).await;
    let unknown_seen = scalar(
        db,
        "SELECT COUNT(DISTINCT payment_id) FROM payment_history WHERE state = 'UNKNOWN'",
    )
    .await;
    let redriven = scalar(
        db,
        "SELECT COUNT(*) FROM payment_history WHERE cause LIKE 'sweeper (re-executed)%'",
    )
    .await;
    let adopted = scalar(
        db,
        "SELECT COUNT(*) FROM payment_history WHERE cause LIKE 'sweeper (PSP lookup)%'",
    )
    .await;
    let (opened, _) = env
        .app()
        .psp_gate
        .as_ref()
        .expect("payment runs")
        .transitions();
    eprintln!(
        "{backend:?}: {PAYMENTS} payments under faults settled in {:.1}s: {per_state:?}; {unknown_seen} went UNKNOWN, \
         sweeper re-executed {redriven} and adopted {adopted} PSP answers; the breaker opened {opened} times",
        settled.as_secs_f64()
    );
    assert!(
        unknown_seen > PAYMENTS as i64 / 10,
        "the faults really made payments UNKNOWN ({unknown_seen})"
    );
    assert!(
        adopted > 0 && redriven > 0,
        "both recovery paths were exercised"
    );
    assert!(per_state.get("FAILURE").copied().unwrap_or(0) > 0);

    // Cancel every tenth success, under the same faults.
    let succeeded: Vec<_> = {
        let ids: std::collections::HashSet<String> = {
            use paystream_payment::entity::payment;
            use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
            payment::Entity::find()
                .filter(payment::Column::State.eq("SUCCESS"))
                .all(db)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.payment_id)
                .collect()
        };
        published
            .iter()
            .filter(|r| ids.contains(&r.payment_id.to_string()))
            .step_by(10)
            .collect()
    };
    for r in &succeeded {
        let c = CancelRequest {
            payment_id: r.payment_id,
            buyer_id: r.buyer_id.clone(),
            reason: None,
        };
        client::cancel(&js, &c).await.unwrap();
    }
    let want = succeeded.len() as i64;
    eventually(
        Duration::from_secs(180),
        "every cancellation applied",
        || async {
            scalar(
                db,
                "SELECT COUNT(*) FROM payments WHERE state = 'CANCELLED'",
            )
            .await
                == want
        },
    )
    .await;
    wait_settled(db, PAYMENTS as i64, Duration::from_secs(60)).await;
    let per_state = assert_exactly_once(db, &env.psp_url(), &published).await;
    assert_eq!(per_state.get("CANCELLED").copied(), Some(succeeded.len()));
    let metrics = env.metrics().await;
    assert!(metrics.contains(&format!(
        "{}{{outcome=\"success\"}}",
        names::SWEEPER_ATTEMPTS
    )));
    eprintln!(
        "{backend:?}: {} cancellations refunded exactly once each under faults",
        succeeded.len()
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_storm_sqlite() {
    fault_storm(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_storm_postgres() {
    fault_storm(Backend::Postgres).await;
}
