//! The hot pure code of every message: decoding and validating ingress (JSON, as `nats pub`
//! sends it, and MessagePack, as paystream's producers do) and encoding/decoding events.
//! `cargo bench -p paystream-common`; figures in README ("Benchmark").

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paystream_common::codec;
use paystream_common::events::{EventKind, PaymentEvent};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::{PaymentRequest, decode_command};
use paystream_common::money::{Amount, Currency};

fn request() -> PaymentRequest {
    PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-42").unwrap(),
        merchant_id: MerchantId::parse("m-7").unwrap(),
        amount: Amount::new(1250).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: [("order".to_owned(), "o-991".to_owned())].into(),
    }
}

fn event() -> PaymentEvent {
    PaymentEvent {
        event_id: uuid::Uuid::new_v4(),
        kind: EventKind::Succeeded,
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-42").unwrap(),
        merchant_id: MerchantId::parse("m-7").unwrap(),
        amount: 1250,
        currency: Currency::parse("USD").unwrap(),
        version: 1,
        occurred_at: "2026-12-01T00:00:00.000Z".into(),
        psp_reference: Some("ch_0123456789".into()),
        reason: None,
        requested_at_ms: Some(1_796_000_000_000),
        delta_minor: None,
        stream_seq: None,
    }
}

fn ingress(c: &mut Criterion) {
    let r = request();
    let json = serde_json::to_vec(&r).unwrap();
    let msgpack = codec::to_msgpack(&r);
    let mut g = c.benchmark_group("ingress");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode+validate json", |b| {
        b.iter(|| {
            decode_command(
                black_box("payments.request.2.b-42"),
                Some("application/json"),
                black_box(&json),
            )
            .unwrap()
        })
    });
    g.bench_function("decode+validate msgpack", |b| {
        b.iter(|| {
            decode_command(
                black_box("payments.request.2.b-42"),
                Some("application/msgpack"),
                black_box(&msgpack),
            )
            .unwrap()
        })
    });
    g.bench_function("decode+validate json, sniffed", |b| {
        b.iter(|| decode_command(black_box("payments.request.2.b-42"), None, black_box(&json)))
    });
    g.bench_function("reject (float amount)", |b| {
        let bad = br#"{"payment_id":"6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01","buyer_id":"b-42","merchant_id":"m-7","amount":12.5,"currency":"USD"}"#;
        b.iter(|| decode_command(black_box("payments.request.2.b-42"), None, black_box(bad)))
    });
    g.finish();
}

fn events(c: &mut Criterion) {
    let e = event();
    let bytes = e.encode();
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode msgpack", |b| b.iter(|| black_box(&e).encode()));
    g.bench_function("decode+check msgpack", |b| {
        b.iter(|| PaymentEvent::decode(Some("application/msgpack"), black_box(&bytes)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, ingress, events);
criterion_main!(benches);
