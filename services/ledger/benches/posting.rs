//! Ledger posting rules, the pure core of every ledger transaction: the balanced entries of an
//! event and the balance assertion. `cargo bench -p paystream-ledger`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paystream_common::events::{EventKind, PaymentEvent};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::money::Currency;
use paystream_ledger::posting;

fn event(kind: EventKind, delta: Option<i64>) -> PaymentEvent {
    PaymentEvent {
        event_id: uuid::Uuid::new_v4(),
        kind,
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-42").unwrap(),
        merchant_id: MerchantId::parse("m-7").unwrap(),
        amount: 1250,
        currency: Currency::parse("USD").unwrap(),
        version: 1,
        occurred_at: "2026-12-01T00:00:00.000Z".into(),
        psp_reference: None,
        reason: None,
        requested_at_ms: None,
        delta_minor: delta,
        stream_seq: None,
    }
}

fn post(c: &mut Criterion) {
    let mut g = c.benchmark_group("posting");
    g.throughput(Throughput::Elements(1));
    for (name, e) in [
        ("succeeded", event(EventKind::Succeeded, None)),
        ("cancelled", event(EventKind::Cancelled, None)),
        ("adjusted", event(EventKind::Adjusted, Some(-75))),
    ] {
        g.bench_function(format!("entries+balanced {name}"), |b| {
            b.iter(|| {
                let entries = posting::entries(black_box(&e));
                assert!(posting::is_balanced(&entries));
                entries
            })
        });
    }
    let batch: Vec<PaymentEvent> = (0..256)
        .map(|_| event(EventKind::Succeeded, None))
        .collect();
    g.throughput(Throughput::Elements(256));
    g.bench_function("a batch of 256", |b| {
        b.iter(|| {
            batch
                .iter()
                .map(|e| posting::entries(black_box(e)))
                .filter(|es| posting::is_balanced(es))
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, post);
criterion_main!(benches);
