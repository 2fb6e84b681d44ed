//! Retry queue and dead letters. A real fault (a database trigger that refuses one merchant's
//! balance) poisons some wallet events while 1,000 others flow: the others are not held back, the
//! poisoned ones retry on the configured schedule, land in DEAD_LETTERS with deliveries =
//! max_deliver and the last error, survive restarts of nats-server and of the services, and once
//! the fault is removed a redrive applies them exactly once.

use std::time::{Duration, Instant};

use paystream::dlq::{self, Selection};
use paystream_common::ingress::PaymentRequest;
use paystream_common::money::Amount;
use paystream_common::nats;
use paystream_testkit::Backend;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::helpers::{Env, eventually, publish_all, requests, scalar, wait_settled};

pub const POISON: &str = "m-poison";
const BACKOFF_MS: [i64; 3] = [1_000, 2_000, 3_000];

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap();
}

pub async fn inject_fault(db: &DatabaseConnection) {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            for op in ["INSERT", "UPDATE"] {
                exec(db, &format!(
                    "CREATE TRIGGER poison_{op} BEFORE {op} ON wallet_balances WHEN NEW.merchant_id = '{POISON}' \
                     BEGIN SELECT RAISE(ABORT, 'injected fault: merchant {POISON} is blocked'); END"
                ))
                .await;
            }
        }
        _ => {
            exec(db, &format!(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.merchant_id = '{POISON}' THEN \
                 RAISE EXCEPTION 'injected fault: merchant {POISON} is blocked'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            ))
            .await;
            exec(db, "CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON wallet_balances FOR EACH ROW EXECUTE FUNCTION poison()").await;
        }
    }
}

pub async fn remove_fault(db: &DatabaseConnection) {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            exec(db, "DROP TRIGGER poison_INSERT").await;
            exec(db, "DROP TRIGGER poison_UPDATE").await;
        }
        _ => exec(db, "DROP TRIGGER poison ON wallet_balances").await,
    }
}

/// p99 of publish → wallet applied, in ms, over the payments whose merchant starts with `prefix`.
async fn wallet_p99_ms(db: &DatabaseConnection, prefix: &str) -> i64 {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT w.applied_at_ms - p.requested_at_ms AS d FROM applied_events w \
                 JOIN payments p ON p.payment_id = w.payment_id WHERE w.consumer = 'wallet' AND p.merchant_id LIKE '{prefix}%'"
            ),
        ))
        .await
        .unwrap();
    let mut d: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get::<i64>("", "d").unwrap())
        .collect();
    d.sort_unstable();
    d[(d.len() * 99 / 100).min(d.len() - 1)]
}

async fn poisoned_merchant(backend: Backend) {
    let extra = ["--backoff=1s,2s,3s", "--max-deliver=4"];
    let Some(mut env) = Env::start_with(backend, &extra, true).await else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let db = env.db().clone();

    // Baseline: 1,000 payments, no fault.
    let baseline = requests(1_000, 50, 10, "a");
    publish_all(&js, &baseline).await;
    wait_settled(&db, 1_000, Duration::from_secs(60)).await;
    let p99_baseline = wallet_p99_ms(&db, "am-").await;

    // The same load with 10 poisoned payments among it.
    inject_fault(&db).await;
    let mut loaded = requests(1_000, 50, 10, "b");
    let poisoned: Vec<PaymentRequest> = requests(10, 50, 1, "b")
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.merchant_id = paystream_common::ids::MerchantId::parse(POISON).unwrap();
            r.amount = Amount::new(1_000 + i as i64).unwrap();
            r
        })
        .collect();
    for (i, p) in poisoned.iter().enumerate() {
        loaded.insert(i * 100, p.clone());
    }
    let started = Instant::now();
    publish_all(&js, &loaded).await;
    eventually(Duration::from_secs(60), "healthy payments applied by the wallet", || async {
        scalar(&db, "SELECT COUNT(*) FROM applied_events w JOIN payments p ON p.payment_id = w.payment_id WHERE w.consumer = 'wallet' AND p.merchant_id LIKE 'bm-%'").await == 1_000
    })
    .await;
    let healthy_done = started.elapsed();
    let p99_fault = wallet_p99_ms(&db, "bm-").await;
    eprintln!(
        "{backend:?}: wallet p99 publish→applied: {p99_baseline} ms without the fault, {p99_fault} ms with 10 poisoned \
         events among 1,000 (all healthy applied after {:.2}s)",
        healthy_done.as_secs_f64()
    );
    assert!(
        p99_fault <= p99_baseline * 3 + 1_000,
        "poisoned events held others back: {p99_fault} vs {p99_baseline} ms"
    );

    // The poisoned ones: retried on schedule, then dead-lettered with the last error.
    eventually(
        Duration::from_secs(30),
        "the poisoned events dead-lettered",
        || async {
            dlq::list(&js, Some(&db), Some("wallet"))
                .await
                .map(|l| l.len())
                .unwrap_or(0)
                == poisoned.len()
        },
    )
    .await;
    let entries = dlq::list(&js, Some(&db), Some("wallet")).await.unwrap();
    // Each was also recorded by the wallet with its last failed delivery (what lands it should
    // its MAX_DELIVERIES advisory be lost), and seen in DEAD_LETTERS.
    eventually(
        Duration::from_secs(20),
        "the wallet's dead letters recorded and landed",
        || async {
            scalar(&db, "SELECT COUNT(*) FROM pending_dead_letters WHERE stream = 'PAYMENT_EVENTS' AND durable LIKE 'wallet%' \
                 AND kind = 'max_deliveries' AND deliveries = 4 AND reason LIKE '%injected fault%' AND landed_at_ms IS NOT NULL").await
                == poisoned.len() as i64
        },
    )
    .await;
    let mut delays = Vec::new();
    for e in &entries {
        assert_eq!(
            (e.stream.as_str(), e.kind.as_str(), e.deliveries),
            ("PAYMENT_EVENTS", "max_deliveries", 4)
        );
        assert!(e.reason.contains("injected fault"), "{}", e.reason);
        let d = dlq::show(&js, Some(&db), e.id).await.unwrap();
        assert_eq!(d.payload["merchant_id"], POISON);
        assert_eq!(d.attempts.len(), 4, "one recorded failure per delivery");
        let at: Vec<i64> =
            paystream_common::failures::attempts(&db, "PAYMENT_EVENTS", "wallet", e.stream_seq)
                .await
                .unwrap()
                .iter()
                .map(|f| f.at_ms)
                .collect();
        delays.push(at.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>());
    }
    for gaps in &delays {
        assert_eq!(gaps.len(), BACKOFF_MS.len());
        // Never earlier than the schedule; later only by the time the redelivery waits behind
        // other batches on a loaded machine (seen up to +3 s in CI). One gap may be short: on a
        // loaded machine a delivery can sit in the client's buffer past its 1 s ack wait, so the
        // server sends a second copy and both fail moments apart (seen once: [140, 2178, 3081]).
        for (gap, want) in gaps.iter().zip(BACKOFF_MS) {
            assert!(
                *gap <= want + 10_000,
                "retry gaps {gaps:?} follow {BACKOFF_MS:?}"
            );
        }
        let on_schedule = gaps
            .iter()
            .zip(BACKOFF_MS)
            .filter(|(gap, want)| **gap >= want - 50)
            .count();
        assert!(
            on_schedule + 1 >= BACKOFF_MS.len(),
            "retry gaps {gaps:?} follow {BACKOFF_MS:?}"
        );
    }
    eprintln!(
        "{backend:?}: observed retry gaps (ms) for the schedule {BACKOFF_MS:?}: {:?}",
        &delays[..3]
    );
    assert_eq!(scalar(&db, &format!("SELECT COUNT(*) FROM applied_events l JOIN payments p ON p.payment_id = l.payment_id WHERE l.consumer = 'ledger' AND p.merchant_id = '{POISON}'")).await, 10, "the ledger was not blocked");

    // Dead letters survive a restart of nats-server and of the services.
    env.nats.server.restart().await.unwrap();
    env.restart_app().await;
    let js = nats::jetstream(env.client().await);
    let db = env.db().clone();
    let after: std::collections::BTreeSet<u64> = dlq::list(&js, Some(&db), Some("wallet"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_seq)
        .collect();
    let before: std::collections::BTreeSet<u64> = entries.iter().map(|e| e.stream_seq).collect();
    assert!(
        after.is_superset(&before),
        "every dead letter survived the restarts: {before:?} ⊄ {after:?}"
    );
    if after.len() > before.len() {
        // A SIGKILLed server can redeliver what it had not persisted as acked; such a message is
        // applied once (de-duplicated) and may be dead-lettered again only if it was poisoned.
        eprintln!(
            "{backend:?}: {} more dead letters after the crash restart",
            after.len() - before.len()
        );
    }

    // Fixed: redrive applies each exactly once, even when the same dead letter is redriven twice at once.
    remove_fault(&db).await;
    let first = entries[0].id;
    let once = Selection::Ids(vec![first]);
    let (a, b) = tokio::join!(
        dlq::redrive(&js, &db, &once, "test"),
        dlq::redrive(&js, &db, &once, "test")
    );
    assert!(a.is_ok() || b.is_ok(), "{a:?} {b:?}");
    let rest = dlq::redrive(
        &js,
        &db,
        &Selection::All {
            consumer: Some("wallet".into()),
        },
        "test",
    )
    .await
    .unwrap();
    assert!(rest >= poisoned.len() as u64 - 1, "{rest}");
    assert!(
        dlq::redrive(&js, &db, &Selection::Ids(vec![first]), "test")
            .await
            .is_err(),
        "a redriven entry is gone"
    );
    wait_settled(&db, 2_010, Duration::from_secs(60)).await;
    let want: i64 = poisoned.iter().map(|p| p.amount.minor()).sum();
    let b = paystream::queries::balance(&db, POISON).await.unwrap();
    assert_eq!(
        b.balances.get("USD"),
        Some(&want),
        "each poisoned payment credited exactly once"
    );
    let check = paystream::queries::ledger_check(&db).await.unwrap();
    assert!(check.ok, "{:?}", check.violations);
    assert!(
        dlq::list(&js, Some(&db), Some("wallet"))
            .await
            .unwrap()
            .is_empty()
    );
    let audited = paystream::audit::count(&db, "dlq.redrive").await.unwrap();
    assert!(
        audited >= poisoned.len() as u64,
        "every redrive audited ({audited})"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_merchant_sqlite() {
    poisoned_merchant(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_merchant_postgres() {
    poisoned_merchant(Backend::Postgres).await;
}

/// The leader's node name (`n1`) of `stream`, once it has one.
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> String {
    for _ in 0..100 {
        if let Some(l) = js
            .get_stream(stream)
            .await
            .ok()
            .and_then(|s| s.cached_info().cluster.clone())
            .and_then(|c| c.leader)
        {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{stream} has no leader");
}

/// Every dead letter lands: on a 3-node cluster with R3 streams, the node leading DEAD_LETTERS is
/// SIGKILLed and 25 invalid requests are terminated while the stream elects a new leader (the
/// server's advisories sent meanwhile are lost). The consumer recorded each before its `+TERM`;
/// the dlq service republishes those DEAD_LETTERS lacks: 25 of 25 land with their reasons, none
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_land_across_a_dead_letters_leader_kill_postgres() {
    use paystream::app::{self, Parts};
    use paystream_common::streams::{DEAD_LETTERS, PAYMENTS};
    use paystream_testkit::{TestCluster, TestDb};

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut cluster = TestCluster::start(3).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = crate::helpers::config(&cluster.urls(), &db.url, data.path(), &["--replicas=3"]);
    let app = app::start(cfg, Parts::all())
        .await
        .expect("paystream starts on the cluster");
    let conn = app.db.clone().unwrap();
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls().split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = nats::jetstream(client.clone());
    // DEAD_LETTERS' leader on another node than PAYMENTS', so requests keep flowing while it is
    // down.
    let mut dl_leader = stream_leader(&js, DEAD_LETTERS).await;
    for _ in 0..10 {
        if dl_leader != stream_leader(&js, PAYMENTS).await {
            break;
        }
        let _ = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{DEAD_LETTERS}"),
                "".into(),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        dl_leader = stream_leader(&js, DEAD_LETTERS).await;
    }
    assert_ne!(dl_leader, stream_leader(&js, PAYMENTS).await);
    let victim: usize = dl_leader.trim_start_matches('n').parse().unwrap();

    cluster.nodes[victim].kill().await;
    let killed = Instant::now();
    const N: usize = 25;
    for i in 0..N {
        let pid = format!("7e1c1e4e-6a3b-4f0e-9a55-{i:012}");
        let body = format!(
            r#"{{"payment_id":"{pid}","buyer_id":"b-{i}","merchant_id":"m-1","amount":0,"currency":"USD"}}"#
        );
        let subject = format!("payments.request.b-{i}");
        let mut tries = 0;
        loop {
            let sent = async {
                js.publish(subject.clone(), body.clone().into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match sent.await {
                Ok(_) => break,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("publish {i}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("publish {i}: {e}"),
            }
        }
    }
    let published = killed.elapsed();
    // Terminated while DEAD_LETTERS elects a leader.
    eventually(
        Duration::from_secs(30),
        "every invalid request terminated",
        || async { scalar(&conn, "SELECT COUNT(*) FROM pending_dead_letters").await == N as i64 },
    )
    .await;
    let terminated = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes[victim]
        .restart()
        .await
        .expect("the node comes back");

    eventually(
        Duration::from_secs(60),
        "every dead letter landed",
        || async {
            scalar(
                &conn,
                "SELECT COUNT(*) FROM pending_dead_letters WHERE landed_at_ms IS NOT NULL",
            )
            .await
                == N as i64
        },
    )
    .await;
    // Republishes and advisories that arrive late would show now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut dlq = js.get_stream(DEAD_LETTERS).await.unwrap();
    let info = dlq.info().await.unwrap().clone();
    let mut republished = 0;
    let mut seen = std::collections::BTreeSet::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let a: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if a["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("dead-letter-"))
        {
            republished += 1;
        }
        assert!(
            seen.insert((a["consumer"].to_string(), a["stream_seq"].as_u64())),
            "dead letter twice in DEAD_LETTERS: {a}"
        );
    }
    assert_eq!(info.state.messages, N as u64, "one entry per termination");
    let listed = dlq::list(&js, Some(&conn), Some("payment")).await.unwrap();
    assert_eq!(listed.len(), N, "{listed:#?}");
    for e in &listed {
        assert_eq!(
            (e.stream.as_str(), e.kind.as_str()),
            ("PAYMENTS", "terminated")
        );
        assert!(e.duplicates.is_empty(), "{e:?}");
        assert!(
            e.reason
                .starts_with("amount: must be an integer in 1..=10^12"),
            "{e:?}"
        );
    }
    eprintln!(
        "dead letters: DEAD_LETTERS leader {dl_leader} SIGKILLed; {N} invalid requests published in {:.1}s, terminated by {:.1}s; {N} of {N} landed ({republished} republished from pending_dead_letters, the rest by their advisory), none twice",
        published.as_secs_f64(),
        terminated.as_secs_f64()
    );
    app.shutdown().await;
}
