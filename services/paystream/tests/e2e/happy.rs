//! The happy path at volume: 1,000 payments over 50 buyers and 10 merchants, JSON through a plain
//! NATS publish and MessagePack through `paystream pay`'s code, with one payment published three
//! times. Every payment ends as the simulator decided, money is exact, nothing is charged twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paystream::{client, queries};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::PaymentRequest;
use paystream_common::money::{Amount, Currency};
use paystream_common::nats;
use paystream_testkit::Backend;

use crate::helpers::{Env, scalar, sim_payment, sim_stats, wait_settled};

const PAYMENTS: usize = 1_000;
const BUYERS: usize = 50;
const MERCHANTS: usize = 10;

fn request(i: usize) -> PaymentRequest {
    let mut metadata = BTreeMap::new();
    if i % 10 == 3 {
        metadata.insert("sim".to_owned(), "decline".to_owned());
    }
    PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse(&format!("b-{}", i % BUYERS)).unwrap(),
        merchant_id: MerchantId::parse(&format!("m-{}", i % MERCHANTS)).unwrap(),
        amount: Amount::new(100 + i64::try_from(i).unwrap()).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata,
    }
}

fn json_of(r: &PaymentRequest) -> Vec<u8> {
    serde_json::to_vec(r).unwrap()
}

async fn thousand_payments(backend: Backend) {
    let Some(env) = Env::start(backend, &[]).await else {
        return;
    };
    let client = env.client().await;
    let js = nats::jetstream(client.clone());
    let requests: Vec<PaymentRequest> = (0..PAYMENTS).map(request).collect();
    let started = Instant::now();
    for (i, r) in requests.iter().enumerate() {
        if i % 2 == 0 {
            // What `nats pub payments.request.b-1 '{…}'` does: a core publish of JSON.
            client
                .publish(
                    format!("payments.request.{}", r.buyer_id),
                    json_of(r).into(),
                )
                .await
                .unwrap();
        } else {
            client::pay(&js, r).await.unwrap();
        }
    }
    // The same payment three more times: twice as plain JSON (no Nats-Msg-Id, so the stream
    // stores both) and once as MessagePack.
    let repeated = &requests[1];
    for _ in 0..2 {
        client
            .publish(
                format!("payments.request.{}", repeated.buyer_id),
                json_of(repeated).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let db = env.db();
    wait_settled(db, PAYMENTS as i64, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    eprintln!(
        "{backend:?}: {PAYMENTS} payments published and settled end to end in {:.2}s ({:.0} payments/s)",
        elapsed.as_secs_f64(),
        PAYMENTS as f64 / elapsed.as_secs_f64()
    );

    let declined = requests
        .iter()
        .filter(|r| r.metadata.contains_key("sim"))
        .count() as i64;
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM payments WHERE state = 'FAILURE'").await,
        declined
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM payments WHERE state = 'SUCCESS'").await,
        PAYMENTS as i64 - declined
    );
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for r in requests.iter().filter(|r| !r.metadata.contains_key("sim")) {
        *expected.entry(r.merchant_id.to_string()).or_default() += r.amount.minor();
    }
    for (merchant, sum) in &expected {
        let b = queries::balance(db, merchant).await.unwrap();
        assert_eq!(
            b.balances.get("USD"),
            Some(sum),
            "wallet of {merchant} = Σ succeeded"
        );
    }
    let check = queries::ledger_check(db).await.unwrap();
    assert!(check.ok, "ledger check: {:?}", check.violations);
    assert_eq!(check.merchants_checked, MERCHANTS);

    let stats = sim_stats(&env.psp_url()).await;
    assert_eq!(
        stats["charges"],
        PAYMENTS as i64 - declined,
        "one charge per SUCCESS: {stats}"
    );
    assert_eq!(stats["double_charges"], 0);
    let one = sim_payment(&env.psp_url(), &repeated.payment_id.to_string())
        .await
        .unwrap();
    assert_eq!(one["charge_count"], 1, "published 3 times, charged once");
    let pid = repeated.payment_id.to_string();
    assert_eq!(scalar(db, &format!("SELECT COUNT(*) FROM payment_history WHERE payment_id = '{pid}' AND state = 'SUCCESS'")).await, 1);
    assert_eq!(
        scalar(
            db,
            &format!("SELECT COUNT(*) FROM outbox WHERE payment_id = '{pid}'")
        )
        .await,
        1
    );
    for r in requests
        .iter()
        .filter(|r| r.metadata.contains_key("sim"))
        .take(5)
    {
        let p = sim_payment(&env.psp_url(), &r.payment_id.to_string())
            .await
            .unwrap();
        assert_eq!(p["charge_count"], 0, "a declined payment moved no money");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_payments_sqlite() {
    thousand_payments(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_payments_postgres() {
    thousand_payments(Backend::Postgres).await;
}
