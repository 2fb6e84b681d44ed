//! Two sweepers never work on the same payment at once: concurrent claims on the same payments
//! get disjoint sets, and a lease blocks others until it expires.

use paystream_common::payment::Requested;
use paystream_payment::store;
use paystream_testkit::{Backend, TestDb};

use crate::helpers::requests;

async fn claims_are_exclusive(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let conn = paystream::app::connect_db(
        &crate::helpers::config(
            "nats://127.0.0.1:1",
            &db.url,
            std::path::Path::new("."),
            &[],
        ),
        paystream_common::shutdown::channel().1,
    )
    .await
    .unwrap();
    let reqs: Vec<Requested> = requests(200, 10, 3, "s")
        .into_iter()
        .enumerate()
        .map(|(i, req)| Requested {
            req,
            seq: i as u64 + 1,
            published_ms: 0,
        })
        .collect();
    store::begin_execution(&conn, &reqs, std::time::Duration::ZERO)
        .await
        .unwrap();
    let ids: Vec<String> = reqs.iter().map(|r| r.req.payment_id.to_string()).collect();
    let now = paystream_common::time::now_ms() + 1;
    let (a, b) = tokio::join!(
        store::claim(&conn, &ids, now, now + 60_000),
        store::claim(&conn, &ids, now, now + 60_000)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), ids.len(), "every payment claimed once");
    assert!(
        a.iter().all(|id| !b.contains(id)),
        "no payment claimed twice"
    );
    assert!(
        store::claim(&conn, &ids, now + 1, now + 60_000)
            .await
            .unwrap()
            .is_empty(),
        "held leases block"
    );
    let later = now + 60_001;
    assert_eq!(
        store::claim(&conn, &ids, later, later + 1)
            .await
            .unwrap()
            .len(),
        ids.len(),
        "expired leases free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_sqlite() {
    claims_are_exclusive(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_postgres() {
    claims_are_exclusive(Backend::Postgres).await;
}
