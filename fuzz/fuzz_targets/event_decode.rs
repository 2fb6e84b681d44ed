//! The PAYMENT_EVENTS decoder (what wallet and ledger trust): JSON or MessagePack, declared or
//! sniffed. What it accepts has amounts in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paystream_fuzz::{events::PaymentEvent, money::AMOUNT_MINOR_MAX};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let content_type = match pick % 3 {
        0 => Some("application/json"),
        1 => Some("application/msgpack"),
        _ => None,
    };
    if let Ok(event) = PaymentEvent::decode(content_type, payload) {
        assert!((1..=AMOUNT_MINOR_MAX).contains(&event.amount));
        assert!(event.merchant_delta_minor().abs() <= AMOUNT_MINOR_MAX);
        let again = PaymentEvent::decode(None, &event.encode()).expect("what we encode decodes");
        assert_eq!(again.event_id, event.event_id);
    }
});
