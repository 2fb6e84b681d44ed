//! Event order at the consumers: a `cancelled` (version 2) that reaches PAYMENT_EVENTS before the
//! `succeeded` (version 1) it cancels — what two racing producers could do — is requeued by both
//! wallet and ledger, never applied first, and applied right after its completion.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use paystream_common::codec::CONTENT_TYPE_MSGPACK;
use paystream_common::events::{self, EventKind, PaymentEvent};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::money::Currency;
use paystream_common::nats;
use paystream_testkit::Backend;

use crate::helpers::{Env, eventually, scalar};

fn event(payment_id: PaymentId, kind: EventKind, version: u32) -> PaymentEvent {
    PaymentEvent {
        event_id: uuid::Uuid::new_v4(),
        kind,
        payment_id,
        buyer_id: BuyerId::parse("b-order").unwrap(),
        merchant_id: MerchantId::parse("m-order").unwrap(),
        amount: 500,
        currency: Currency::parse("USD").unwrap(),
        version,
        occurred_at: "2026-11-25T00:00:00.000Z".into(),
        psp_reference: Some("ch_x".into()),
        reason: None,
        requested_at_ms: None,
        delta_minor: None,
        stream_seq: None,
    }
}

async fn early_cancellation(backend: Backend) {
    let Some(env) = Env::start(
        backend,
        &["--backoff=300ms,600ms,900ms", "--max-deliver=30"],
    )
    .await
    else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let pid = PaymentId::new_random();
    let succeeded = event(pid, EventKind::Succeeded, 1);
    let cancelled = event(pid, EventKind::Cancelled, 2);
    let publish = |e: &PaymentEvent| {
        let msg = PublishMessage::build()
            .payload(e.encode().into())
            .message_id(e.event_id.to_string())
            .header("Content-Type", CONTENT_TYPE_MSGPACK);
        js.send_publish(events::subject(&e.buyer_id), msg)
    };
    publish(&cancelled).await.unwrap().await.unwrap();
    let db = env.db();
    let applied = format!("SELECT COUNT(*) FROM applied_events WHERE payment_id = '{pid}'");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        scalar(db, &applied).await,
        0,
        "the cancellation waits for its completion"
    );
    publish(&succeeded).await.unwrap().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "both events applied by wallet and ledger",
        || async { scalar(db, &applied).await == 4 },
    )
    .await;
    for consumer in ["wallet", "ledger"] {
        let order = scalar(
            db,
            &format!(
                "SELECT COUNT(*) FROM applied_events a JOIN applied_events b ON a.payment_id = b.payment_id \
                 AND a.consumer = b.consumer WHERE a.consumer = '{consumer}' AND a.payment_id = '{pid}' \
                 AND a.version = 1 AND b.version = 2 AND a.applied_at_ms <= b.applied_at_ms"
            ),
        )
        .await;
        assert_eq!(order, 1, "{consumer} applied version 1 before version 2");
    }
    let b = paystream::queries::balance(db, "m-order").await.unwrap();
    assert_eq!(b.balances.get("USD"), Some(&0), "credited then debited");
    assert!(paystream::queries::ledger_check(db).await.unwrap().ok);
    let metrics = env.metrics().await;
    let retried = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"paystream_consumer_retries_total{consumer="wallet",reason="out_of_order"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "the early cancellation was requeued: {retried}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_cancellation_sqlite() {
    early_cancellation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_cancellation_postgres() {
    early_cancellation(Backend::Postgres).await;
}
