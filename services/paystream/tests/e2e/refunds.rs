//! Refunds executed like charges (issue #16): a cancellation commits the refund intent
//! (REFUNDING) before the PSP is asked, and a refund whose answer is lost, or whose process dies
//! mid-refund, is finished by the sweeper (asked about by key, refunded again with the same key),
//! never by the cancellation's delivery budget. Real `paystream up` processes, a real simulator
//! restarted with new faults, real nats-server and databases; crashes are aborts at failpoints and
//! SIGKILLs.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use paystream::{client, queries};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use paystream_common::money::{Amount, Currency};
use paystream_common::nats;
use paystream_psp_sim::{SimConfig, Simulator};
use paystream_testkit::{Backend, TestDb, TestNats};
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use crate::crash::spawn_up;
use crate::helpers::{config, eventually, sim_payment};

/// A simulator on a fixed address that can be stopped and started again with other faults (its
/// store survives, as a real PSP's records do).
struct Sim {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl Sim {
    async fn start(cfg: SimConfig, addr: &str) -> Self {
        let sim = Simulator::open(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let _ = sim
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            stop: Some(tx),
            served: Some(served),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn restart(&mut self, cfg: SimConfig) {
        let _ = self.stop.take().expect("running").send(());
        self.served.take().expect("running").await.unwrap();
        *self = Self::start(cfg, &self.addr.to_string()).await;
    }
}

fn spawn(
    nats_url: &str,
    db_url: &str,
    psp_url: &str,
    data: &std::path::Path,
    failpoint: Option<&str>,
) -> Child {
    // The issue's reproduction: three deliveries, which waiting and lost answers used to spend.
    let env = [
        ("PAYSTREAM_BACKOFF", "200ms,400ms"),
        ("PAYSTREAM_MAX_DELIVER", "3"),
    ];
    spawn_up(nats_url, db_url, psp_url, data, failpoint, &env)
}

fn payment(buyer: &str) -> PaymentRequest {
    PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse(buyer).unwrap(),
        merchant_id: MerchantId::parse("m-r").unwrap(),
        amount: Amount::new(4_200).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: BTreeMap::new(),
    }
}

fn cancel_of(p: &PaymentRequest) -> CancelRequest {
    CancelRequest {
        payment_id: p.payment_id,
        buyer_id: p.buyer_id.clone(),
        reason: Some("refund test".into()),
    }
}

async fn state(db: &DatabaseConnection, id: PaymentId) -> String {
    queries::status(db, &id.to_string())
        .await
        .map(|s| s.state)
        .unwrap_or_default()
}

/// What must hold once a cancellation is done: CANCELLED through REFUNDING, charged and refunded
/// exactly once at the PSP, the merchant's wallet back to zero, the ledger balanced, no dead letter.
async fn assert_refunded_once(
    db: &DatabaseConnection,
    js: &async_nats::jetstream::Context,
    psp_url: &str,
    p: &PaymentRequest,
) {
    let s = sim_payment(psp_url, &p.payment_id.to_string())
        .await
        .expect("the PSP knows the payment");
    assert_eq!(
        (s["charge_count"].as_i64(), s["refund_count"].as_i64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let status = queries::status(db, &p.payment_id.to_string())
        .await
        .unwrap();
    let states: Vec<&str> = status.history.iter().map(|h| h.state.as_str()).collect();
    assert!(
        states.ends_with(&["REFUNDING", "CANCELLED"]),
        "the refund intent came first: {states:?}"
    );
    eventually(
        Duration::from_secs(30),
        "wallet debited by the cancellation",
        || async {
            queries::balance(db, "m-r")
                .await
                .is_ok_and(|b| b.balances.get("USD").copied().unwrap_or(0) == 0)
                // The ledger too, before it is checked against the wallet.
                && crate::helpers::events_applied(db).await
        },
    )
    .await;
    let check = queries::ledger_check(db).await.unwrap();
    assert!(check.ok, "{:?}", check.violations);
    let dead = js
        .get_stream("DEAD_LETTERS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dead, 0, "nothing was dead-lettered");
}

/// The issue's reproduction: charge a payment, make the simulator lose every answer, cancel with
/// `max_deliver` 3: the payment ends CANCELLED, the wallet debited, the PSP refunded once.
async fn lost_refund_answers(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let nats = TestNats::start(false).await;
    let data = tempfile::tempdir().unwrap();
    let sim_cfg = SimConfig {
        store_path: data.path().join("psp.sqlite"),
        ..SimConfig::default()
    };
    let mut sim = Sim::start(sim_cfg.clone(), "127.0.0.1:0").await;
    let cfg = config(&nats.url(), &db.url, data.path(), &[]);
    let js = nats::jetstream(nats::connect(&cfg.client, "test", false).await.unwrap());
    paystream_common::streams::ensure_streams(&js, &cfg)
        .await
        .unwrap();
    let mut child = spawn(&nats.url(), &db.url, &sim.url(), data.path(), None);
    let conn = paystream_common::db::connect(&db.url).await.unwrap();
    let p = payment("b-r1");
    client::pay(&js, &p).await.unwrap();
    eventually(Duration::from_secs(30), "payment charged", || async {
        state(&conn, p.payment_id).await == "SUCCESS"
    })
    .await;

    sim.restart(SimConfig {
        lost_response_rate: 1.0,
        ..sim_cfg
    })
    .await;
    client::cancel(&js, &cancel_of(&p)).await.unwrap();
    // A second payment whose charge answer is lost too: its cancellation arrives while it is
    // UNKNOWN, is recorded on it (no delivery spent waiting), and is carried out once the sweeper
    // learns it was charged.
    let unknown = payment("b-r2");
    client::pay(&js, &unknown).await.unwrap();
    eventually(Duration::from_secs(30), "charge answer lost", || async {
        state(&conn, unknown.payment_id).await == "UNKNOWN"
    })
    .await;
    client::cancel(&js, &cancel_of(&unknown)).await.unwrap();
    for p in [&p, &unknown] {
        eventually(Duration::from_secs(30), "payment cancelled", || async {
            state(&conn, p.payment_id).await == "CANCELLED"
        })
        .await;
    }
    assert_refunded_once(&conn, &js, &sim.url(), &p).await;
    assert_refunded_once(&conn, &js, &sim.url(), &unknown).await;
    let status = queries::status(&conn, &unknown.payment_id.to_string())
        .await
        .unwrap();
    assert!(
        status
            .history
            .iter()
            .any(|h| h.state == "UNKNOWN" && h.cause.starts_with("cancellation recorded")),
        "{:?}",
        status.history
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_refund_answers_sqlite() {
    lost_refund_answers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_refund_answers_postgres() {
    lost_refund_answers(Backend::Postgres).await;
}

/// A process that dies during a refund — aborted right after the refund intent commits, aborted
/// after the PSP refunded but before the outcome is recorded, SIGKILLed while the PSP works on the
/// refund — leaves the refund to the next process's sweeper: refunded once, recorded once.
async fn crash_during_refund(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let nats = TestNats::start(false).await;
    let data = tempfile::tempdir().unwrap();
    // Slow enough that a SIGKILL finds the refund call under way.
    let sim = Sim::start(
        SimConfig {
            store_path: data.path().join("psp.sqlite"),
            latency_ms: 500,
            ..SimConfig::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let cfg = config(&nats.url(), &db.url, data.path(), &[]);
    let conn = paystream_common::db::connect(&db.url).await.unwrap();
    let js = &nats::jetstream(nats::connect(&cfg.client, "test", false).await.unwrap());
    paystream_common::streams::ensure_streams(js, &cfg)
        .await
        .unwrap();
    for (i, crash) in [
        Some("payment.after_refund_intent"),
        Some("payment.after_refund_psp"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let mut child = spawn(&nats.url(), &db.url, &sim.url(), data.path(), crash);
        let p = payment(&format!("b-k{i}"));
        client::pay(js, &p).await.unwrap();
        let charged = tokio::time::timeout(Duration::from_secs(40), async {
            while state(&conn, p.payment_id).await != "SUCCESS" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if charged.is_err() {
            let log =
                std::fs::read_to_string(data.path().join("paystream.log")).unwrap_or_default();
            panic!(
                "life {i} ({crash:?}): payment not charged; state {:?}; child {:?}; log:\n{log}",
                state(&conn, p.payment_id).await,
                child.try_wait()
            );
        }
        client::cancel(js, &cancel_of(&p)).await.unwrap();
        match crash {
            Some(point) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let status = child.try_wait().unwrap();
                assert!(
                    status.is_some_and(|s| !s.success()),
                    "failpoint {point} aborted the process"
                );
            }
            None => {
                // The refund intent is committed and the call (500 ms) under way: kill now.
                eventually(Duration::from_secs(30), "refund intent", || async {
                    state(&conn, p.payment_id).await == "REFUNDING"
                })
                .await;
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
        }
        assert_eq!(
            state(&conn, p.payment_id).await,
            "REFUNDING",
            "the crash left the refund unrecorded"
        );
        let mut next = spawn(&nats.url(), &db.url, &sim.url(), data.path(), None);
        eventually(Duration::from_secs(40), "refund finished", || async {
            state(&conn, p.payment_id).await == "CANCELLED"
        })
        .await;
        assert_refunded_once(&conn, js, &sim.url(), &p).await;
        next.kill().unwrap();
        next.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_refund_sqlite() {
    crash_during_refund(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_refund_postgres() {
    crash_during_refund(Backend::Postgres).await;
}
