//! Cancellations: a succeeded payment is refunded once and leaves the wallet and ledger exact; a
//! cancellation that arrives before its payment waits for it; a failed payment cannot be
//! cancelled (terminated with a reason).

use std::collections::BTreeMap;
use std::time::Duration;

use paystream::{client, queries};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use paystream_common::money::{Amount, Currency};
use paystream_common::nats;
use paystream_testkit::Backend;

use crate::helpers::{Env, eventually, scalar, sim_payment};

fn pay(buyer: &str, amount: i64, meta: Option<(&str, &str)>) -> PaymentRequest {
    PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse(buyer).unwrap(),
        merchant_id: MerchantId::parse("m-c").unwrap(),
        amount: Amount::new(amount).unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        metadata: meta
            .map(|(k, v)| BTreeMap::from([(k.to_owned(), v.to_owned())]))
            .unwrap_or_default(),
    }
}

fn cancel_of(p: &PaymentRequest) -> CancelRequest {
    CancelRequest {
        payment_id: p.payment_id,
        buyer_id: p.buyer_id.clone(),
        reason: Some("buyer asked".into()),
    }
}

async fn state(env: &Env, id: PaymentId) -> String {
    queries::status(env.db(), &id.to_string())
        .await
        .map(|s| s.state)
        .unwrap_or_default()
}

async fn cancellations(backend: Backend) {
    let Some(env) = Env::start(backend, &["--backoff=200ms,400ms", "--max-deliver=20"]).await
    else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let kept = pay("b-c1", 700, None);
    let refunded = pay("b-c1", 300, None);
    let early = pay("b-c2", 900, None);
    let declined = pay("b-c3", 100, Some(("sim", "decline")));

    // The early cancellation is published before its payment exists.
    client::cancel(&js, &cancel_of(&early)).await.unwrap();
    for p in [&kept, &refunded, &declined] {
        client::pay(&js, p).await.unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "refunded payment succeeded",
        || async { state(&env, refunded.payment_id).await == "SUCCESS" },
    )
    .await;
    client::cancel(&js, &cancel_of(&refunded)).await.unwrap();
    // Publishing the same cancellation twice refunds once.
    client::cancel(&js, &cancel_of(&refunded)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    client::pay(&js, &early).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "declined payment failed",
        || async { state(&env, declined.payment_id).await == "FAILURE" },
    )
    .await;
    client::cancel(&js, &cancel_of(&declined)).await.unwrap();

    for p in [&refunded, &early] {
        eventually(Duration::from_secs(30), "cancelled", || async {
            state(&env, p.payment_id).await == "CANCELLED"
        })
        .await;
    }
    let db = env.db();
    eventually(
        Duration::from_secs(20),
        "wallet and ledger caught up",
        || async {
            let events = scalar(db, "SELECT COUNT(*) FROM outbox").await;
            scalar(
                db,
                "SELECT COUNT(*) FROM applied_events WHERE consumer = 'wallet'",
            )
            .await
                == events
                && scalar(
                    db,
                    "SELECT COUNT(*) FROM applied_events WHERE consumer = 'ledger'",
                )
                .await
                    == events
        },
    )
    .await;
    assert_eq!(state(&env, kept.payment_id).await, "SUCCESS");
    assert_eq!(state(&env, declined.payment_id).await, "FAILURE");
    let b = queries::balance(db, "m-c").await.unwrap();
    assert_eq!(
        b.balances.get("EUR"),
        Some(&700),
        "only the kept payment stays credited"
    );
    let check = queries::ledger_check(db).await.unwrap();
    assert!(check.ok, "{:?}", check.violations);
    for p in [&refunded, &early] {
        let s = sim_payment(&env.psp_url(), &p.payment_id.to_string())
            .await
            .unwrap();
        assert_eq!(
            (s["charge_count"].as_i64(), s["refund_count"].as_i64()),
            (Some(1), Some(1)),
            "{s}"
        );
    }
    let status = queries::status(db, &early.payment_id.to_string())
        .await
        .unwrap();
    let states: Vec<&str> = status.history.iter().map(|h| h.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "NOT_STARTED",
            "EXECUTING",
            "SUCCESS",
            "REFUNDING",
            "CANCELLED"
        ]
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_sqlite() {
    cancellations(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_postgres() {
    cancellations(Backend::Postgres).await;
}
