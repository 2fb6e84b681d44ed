//! The decoders under fuzzing, compiled from `common`'s own source files (by path), so the fuzz
//! build needs only their few dependencies — not NATS, the database or HTTP, which would make
//! every instrumented build take many minutes. The code fuzzed is exactly the code shipped.

#[path = "../../common/src/codec.rs"]
pub mod codec;
#[path = "../../common/src/events.rs"]
pub mod events;
#[path = "../../common/src/ids.rs"]
pub mod ids;
#[path = "../../common/src/ingress.rs"]
pub mod ingress;
#[path = "../../common/src/money.rs"]
pub mod money;
#[path = "../../common/src/settlement.rs"]
pub mod settlement;
#[path = "../../common/src/text.rs"]
pub mod text;

use ingress::Command;

/// The subjects an ingress message may arrive on (one byte of the input picks one), including
/// malformed ones.
pub const SUBJECTS: [&str; 6] = [
    "payments.request.b-1",
    "payments.cancel.b-1",
    "payments.request.7.b-1",
    "payments.request",
    "payments.request.b-1.x.y",
    "other.subject",
];

/// Runs the ingress decoder and checks what it accepted is valid: the properties the rest of
/// paystream relies on after decoding (no panic is the first one).
pub fn check_ingress(subject: &str, content_type: Option<&str>, payload: &[u8]) {
    match ingress::decode_command(subject, content_type, payload) {
        Ok((Command::Pay(p), _)) => {
            assert!((1..=money::AMOUNT_MINOR_MAX).contains(&p.amount.minor()));
            assert!(subject.ends_with(p.buyer_id.as_str()));
        }
        Ok((Command::Cancel(c), _)) => assert!(subject.ends_with(c.buyer_id.as_str())),
        Err(rejection) => {
            // A reason reaches logs and dead letters: bounded and free of control characters.
            let text = rejection.to_string();
            assert!(text.chars().count() <= 1024, "unbounded reason: {text:?}");
            assert!(!text.chars().any(char::is_control), "unescaped reason: {text:?}");
        }
    }
}
