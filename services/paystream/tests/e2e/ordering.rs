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

/// Three producers publish the same buyers' events at once (what two relays do while the lease
/// moves, or a redrive racing a relay): every publish is conditioned on the buyer's last
/// sequence, conflicts are retried on the new sequence, and a repeat of an event that already
/// landed is recognised by its Nats-Msg-Id. Every event is stored once, each buyer's events form
/// one chain, in the order every producer asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_keep_one_chain() {
    use paystream_common::publish::{HEADER_PREVIOUS, OrderedPublisher, Outgoing};
    let server = paystream_testkit::TestNats::start(false).await;
    let cfg = paystream_common::config::Config::load_from([
        "paystream",
        &format!("--nats-url={}", server.url()),
    ])
    .unwrap();
    let js = nats::jetstream(nats::connect(&cfg.client, "test", false).await.unwrap());
    paystream_common::streams::ensure_streams(&js, &cfg)
        .await
        .unwrap();
    let items: Vec<Outgoing> = (0..200)
        .map(|i| Outgoing {
            buyer: format!("cp-b{}", i % 5),
            subject: format!("payments.events.cp-b{}", i % 5),
            msg_id: format!("event-{i}"),
            payload: format!("{i}").into(),
            headers: async_nats::HeaderMap::new(),
        })
        .collect();
    let producers = (0..3).map(|p| {
        let (js, items) = (js.clone(), items.clone());
        tokio::spawn(async move {
            let mut publisher = OrderedPublisher::new(js);
            let mut duplicates = 0;
            // Rounds of different sizes per producer, so they overlap at different points.
            for chunk in items.chunks(7 + 5 * p) {
                let mut todo = chunk.to_vec();
                while !todo.is_empty() {
                    let results = publisher.publish(&todo).await;
                    let mut again = Vec::new();
                    for (item, r) in todo.iter().zip(results) {
                        match r {
                            Ok(ack) => duplicates += usize::from(ack.duplicate),
                            Err(_) => again.push(item.clone()),
                        }
                    }
                    todo = again;
                }
            }
            duplicates
        })
    });
    let duplicates: usize = futures::future::join_all(producers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    let stream = js.get_stream("PAYMENT_EVENTS").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    assert_eq!(last, 200, "every event stored exactly once");
    let mut previous: std::collections::HashMap<String, (u64, usize)> = Default::default();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let claimed: u64 = m
            .headers
            .get(HEADER_PREVIOUS)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        let (prev_seq, prev_i) = previous
            .insert(m.subject.to_string(), (seq, i))
            .map_or((0, None), |(s, i)| (s, Some(i)));
        assert_eq!(claimed, prev_seq, "event {seq} names its predecessor");
        assert!(
            prev_i.is_none_or(|p| p + 5 == i),
            "{}: event {i} follows event {prev_i:?}: the order every producer asked for",
            m.subject
        );
    }
    assert!(
        duplicates > 0,
        "the producers did overlap (their repeats were recognised)"
    );
}

/// A cancellation whose payment never arrives waits, bounded by the retry policy, then is
/// dead-lettered with the reason it waited for.
async fn orphan_cancellation(backend: Backend) {
    let Some(env) = Env::start(backend, &["--backoff=100ms,200ms", "--max-deliver=4"]).await else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let orphan = PaymentId::new_random();
    let body = serde_json::json!({"payment_id": orphan.to_string(), "buyer_id": "b-orphan"});
    js.publish("payments.cancel.b-orphan", body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let db = env.db();
    eventually(
        Duration::from_secs(20),
        "the orphan cancellation is dead-lettered",
        || async {
            paystream::dlq::list(&js, Some(db), Some("payment"))
                .await
                .unwrap()
                .iter()
                .any(|e| e.deliveries == 4 && e.reason.contains(&orphan.to_string()))
        },
    )
    .await;
    let entries = paystream::dlq::list(&js, Some(db), Some("payment"))
        .await
        .unwrap();
    assert!(
        entries[0].reason.contains("not received yet")
            && entries[0].durable.starts_with("payment-p"),
        "{entries:?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_cancellation_sqlite() {
    orphan_cancellation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_cancellation_postgres() {
    orphan_cancellation(Backend::Postgres).await;
}
