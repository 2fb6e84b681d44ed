//! Storage bounds (issue 17): a checkout that publishes junk in a loop can no longer fill
//! DEAD_LETTERS and the disk. Against nats/accounts.conf (account JetStream limits) and the
//! stream definitions of nats/streams (DEAD_LETTERS's `max_msgs` from configuration, here small),
//! junk and good payments are published as `checkout`: DEAD_LETTERS stays within its limit, the
//! near-full alert's expression holds, and every good payment acknowledged completes.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::PaymentRequest;
use paystream_common::money::{Amount, Currency};
use paystream_common::nats;
use paystream_testkit::Backend;

use crate::helpers::{Env, eventually};

const LIMIT: u64 = 50;
const JUNK: u64 = 300;

/// One gauge's value in the metrics text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_stays_within_the_limits_and_good_payments_flow() {
    let env = Env::start_secure(
        Backend::Sqlite,
        &[&format!("--dead-letters-max-msgs={LIMIT}")],
    )
    .await
    .unwrap();
    let (checkout, _) = env.client_as("checkout").await;
    let js = nats::jetstream(checkout);
    let mut good = Vec::new();
    for i in 0..JUNK {
        js.publish(
            format!("payments.request.b-junk{}", i % 7),
            Bytes::from_static(b"\x00junk"),
        )
        .await
        .unwrap()
        .await
        .expect("junk is acknowledged (and then dead-lettered)");
        if i % 30 == 0 {
            let req = PaymentRequest {
                payment_id: PaymentId::new_random(),
                buyer_id: BuyerId::parse(&format!("b-good{i}")).unwrap(),
                merchant_id: MerchantId::parse("m-flood").unwrap(),
                amount: Amount::new(100).unwrap(),
                currency: Currency::parse("USD").unwrap(),
                metadata: BTreeMap::new(),
            };
            paystream::client::pay(&js, &req)
                .await
                .expect("a good payment is acknowledged during the flood");
            good.push(req.payment_id);
        }
    }

    // Every acknowledged good payment completes, and the money is all there.
    eventually(Duration::from_secs(60), "good payments succeed", || async {
        let mut done = 0;
        for id in &good {
            if let Ok(s) = paystream::queries::status(env.db(), &id.to_string()).await
                && s.state == "SUCCESS"
            {
                done += 1;
            }
        }
        done == good.len()
    })
    .await;
    let balance = paystream::queries::balance(env.db(), "m-flood")
        .await
        .unwrap();
    assert_eq!(balance.balances["USD"], 100 * good.len() as i64);

    // DEAD_LETTERS took every advisory and kept only its limit, the newest.
    let admin = nats::jetstream(env.client().await);
    eventually(
        Duration::from_secs(30),
        "every junk message dead-lettered",
        || {
            let admin = admin.clone();
            async move {
                let mut s = admin.get_stream("DEAD_LETTERS").await.unwrap();
                s.info().await.unwrap().state.last_sequence >= JUNK
            }
        },
    )
    .await;
    let mut dead = admin.get_stream("DEAD_LETTERS").await.unwrap();
    let info = dead.info().await.unwrap().clone();
    assert_eq!(info.config.max_messages, LIMIT as i64);
    assert!(info.state.messages <= LIMIT, "{:?}", info.state);
    assert!(info.state.first_sequence > JUNK - LIMIT, "{:?}", info.state);
    // PAYMENTS kept every request (far below its byte limit): nothing acknowledged was dropped.
    let mut payments = admin.get_stream("PAYMENTS").await.unwrap();
    let payments = payments.info().await.unwrap().clone();
    assert_eq!(payments.state.messages, JUNK + good.len() as u64);
    assert!(payments.config.max_bytes > 0 && payments.config.max_age > Duration::ZERO);

    // The alert's expression (depth / capacity > 0.5) holds on the exported gauges.
    eventually(
        Duration::from_secs(10),
        "the near-full alert's input",
        || async {
            let m = env.metrics().await;
            matches!(
                (gauge(&m, "paystream_dlq_depth"), gauge(&m, "paystream_dlq_capacity")),
                (Some(depth), Some(cap)) if cap == LIMIT as f64 && depth / cap > 0.5
            )
        },
    )
    .await;

    // The account's JetStream limits of nats/accounts.conf are in force.
    let account = admin.query_account().await.unwrap();
    assert_eq!(account.limits.max_storage, Some(16_000_000_000));
    assert_eq!(account.limits.max_streams, Some(8));
    assert!(account.reserved_storage <= 16_000_000_000);
    env.shutdown().await;
}
