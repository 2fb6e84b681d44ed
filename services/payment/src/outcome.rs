//! What a PSP answer to a charge or a refund means for the payment: the one mapping from
//! `PspOutcome` to a state change, shared by first execution, cancellation and the sweeper.

use paystream_common::events::EventKind;
use paystream_common::ids::PaymentId;
use paystream_common::state::Trigger;

use crate::psp::{PspOutcome, PspPayment};
use paystream_common::payment::{self, Change, Payment};

/// What to do with a charge answer.
#[derive(Debug, Clone)]
pub enum Decision {
    Record(Change),
    /// Our credentials were refused: record nothing against the payment.
    ConfigError(String),
    /// The PSP did not process the request (429): record nothing, try again later.
    NotProcessed(String),
}

/// `via` names who asked, for the history (`"intake"`, `"sweeper"`).
pub fn of_charge(payment_id: PaymentId, outcome: PspOutcome, via: &str) -> Decision {
    let change = match outcome {
        PspOutcome::Succeeded { psp_reference } => Change {
            psp_reference: Some(psp_reference.clone()),
            event: Some(EventKind::Succeeded),
            ..Change::new(
                payment_id,
                Trigger::Charged,
                format!("{via}: PSP charged ({psp_reference})"),
            )
        },
        PspOutcome::Declined {
            psp_reference,
            code,
        } => Change {
            psp_reference,
            decline_code: Some(code.clone()),
            event: Some(EventKind::Failed),
            reason: Some(code.clone()),
            ..Change::new(
                payment_id,
                Trigger::Declined,
                format!("{via}: PSP declined: {code}"),
            )
        },
        PspOutcome::Indeterminate { error } => Change {
            last_error: Some(error.clone()),
            ..Change::new(
                payment_id,
                Trigger::Indeterminate,
                format!("{via}: PSP outcome unknown: {error}"),
            )
        },
        PspOutcome::ConfigError { error } => return Decision::ConfigError(error),
        PspOutcome::RateLimited { retry_after } => {
            return Decision::NotProcessed(format!(
                "PSP rate-limited the call (Retry-After {retry_after:?})"
            ));
        }
    };
    Decision::Record(change)
}

/// What the PSP's record of a key (`GET /v1/payments/{key}`) means, when it has one.
pub fn of_lookup(payment_id: PaymentId, p: PspPayment) -> Decision {
    let outcome = match p.status.as_str() {
        "succeeded" => PspOutcome::Succeeded {
            psp_reference: p.psp_reference,
        },
        "declined" => PspOutcome::Declined {
            psp_reference: Some(p.psp_reference),
            code: p.decline_code.unwrap_or_else(|| "declined".into()),
        },
        other => PspOutcome::Indeterminate {
            error: format!("PSP reports status {other:?}"),
        },
    };
    of_charge(payment_id, outcome, "sweeper (PSP lookup)")
}

/// What a refund answer means for a REFUNDING payment: CANCELLED (with its `cancelled` event),
/// back to SUCCESS with the PSP's reason, or still REFUNDING for the sweeper to ask about.
pub fn of_refund(p: &Payment, outcome: PspOutcome, via: &str) -> Decision {
    let change = match outcome {
        PspOutcome::Succeeded { psp_reference } => payment::refunded(p, &psp_reference, via),
        PspOutcome::Declined { code, .. } => Change {
            last_error: Some(format!("refund declined: {code}")),
            ..Change::new(
                p.payment_id,
                Trigger::RefundDeclined,
                format!("{via}: PSP declined the refund: {code}"),
            )
        },
        PspOutcome::Indeterminate { error } => Change {
            last_error: Some(error.clone()),
            ..Change::new(
                p.payment_id,
                Trigger::Indeterminate,
                format!("{via}: PSP refund outcome unknown: {error}"),
            )
        },
        PspOutcome::ConfigError { error } => return Decision::ConfigError(error),
        PspOutcome::RateLimited { retry_after } => {
            return Decision::NotProcessed(format!(
                "PSP rate-limited the refund (Retry-After {retry_after:?})"
            ));
        }
    };
    Decision::Record(change)
}

/// What the PSP's record of a REFUNDING payment's key says of its refund: `Some` once the PSP
/// refunded it; `None`: not refunded (yet), so refunding again with the same key is safe.
pub fn of_refund_lookup(p: &Payment, known: &PspPayment) -> Option<Decision> {
    (known.refund_count > 0).then(|| {
        let reference = known
            .refund_reference
            .clone()
            .unwrap_or_else(|| known.psp_reference.clone());
        Decision::Record(payment::refunded(p, &reference, "sweeper (PSP lookup)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_triggers() {
        let id = PaymentId::new_random();
        let t = |o| match of_charge(id, o, "t") {
            Decision::Record(c) => Some((c.trigger, c.event)),
            Decision::ConfigError(_) | Decision::NotProcessed(_) => None,
        };
        assert_eq!(
            t(PspOutcome::Succeeded {
                psp_reference: "ch".into()
            }),
            Some((Trigger::Charged, Some(EventKind::Succeeded)))
        );
        assert_eq!(
            t(PspOutcome::Declined {
                psp_reference: None,
                code: "x".into()
            }),
            Some((Trigger::Declined, Some(EventKind::Failed)))
        );
        assert_eq!(
            t(PspOutcome::Indeterminate { error: "e".into() }),
            Some((Trigger::Indeterminate, None))
        );
        assert_eq!(t(PspOutcome::ConfigError { error: "e".into() }), None);
    }
}
