//! The payment state machine, as one pure function. Only the payment service applies it; every
//! transition it allows is listed here and nowhere else.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentState {
    NotStarted,
    Executing,
    Success,
    Failure,
    Unknown,
    /// A cancellation of a SUCCESS payment is being carried out: the refund intent, written
    /// before the PSP is asked to refund (as EXECUTING is before a charge).
    Refunding,
    Cancelled,
}

impl PaymentState {
    pub const ALL: [PaymentState; 7] = [
        PaymentState::NotStarted,
        PaymentState::Executing,
        PaymentState::Success,
        PaymentState::Failure,
        PaymentState::Unknown,
        PaymentState::Refunding,
        PaymentState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::NotStarted => "NOT_STARTED",
            PaymentState::Executing => "EXECUTING",
            PaymentState::Success => "SUCCESS",
            PaymentState::Failure => "FAILURE",
            PaymentState::Unknown => "UNKNOWN",
            PaymentState::Refunding => "REFUNDING",
            PaymentState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The PSP's answer to the charge is settled: no executor will charge this payment again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PaymentState::Success
                | PaymentState::Failure
                | PaymentState::Refunding
                | PaymentState::Cancelled
        )
    }

    /// The merchant holds this payment's money (its `succeeded` event is out, no `cancelled`
    /// yet): SUCCESS, and REFUNDING until the PSP has refunded.
    pub fn holds_money(self) -> bool {
        matches!(self, PaymentState::Success | PaymentState::Refunding)
    }
}

/// What happened to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A charge attempt is about to be sent to the PSP (first try, or a retry with the same key).
    Execute,
    /// The PSP charged it.
    Charged,
    /// The PSP declined it.
    Declined,
    /// The PSP's answer is unknown: timeout, connection reset, 5xx after sending.
    Indeterminate,
    /// A cancellation of a charged payment: the refund intent, recorded before the PSP is asked.
    RefundStart,
    /// The PSP refunded it.
    Refunded,
    /// The PSP refused the refund: the payment stays charged.
    RefundDeclined,
    /// Reconciliation: the settlement file shows the charge.
    SettledCharge,
    /// Reconciliation: the settlement file shows a refund.
    SettledRefund,
    /// Reconciliation: the settlement file shows a different amount; the state stays.
    SettledAmount,
}

impl Trigger {
    pub const ALL: [Trigger; 10] = [
        Trigger::Execute,
        Trigger::Charged,
        Trigger::Declined,
        Trigger::Indeterminate,
        Trigger::RefundStart,
        Trigger::Refunded,
        Trigger::RefundDeclined,
        Trigger::SettledCharge,
        Trigger::SettledRefund,
        Trigger::SettledAmount,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from:?} --{trigger:?}-->")]
pub struct IllegalTransition {
    pub from: PaymentState,
    pub trigger: Trigger,
}

/// The one place that decides which transitions exist.
pub fn transition(from: PaymentState, trigger: Trigger) -> Result<PaymentState, IllegalTransition> {
    use PaymentState::*;
    use Trigger::*;
    let to = match (from, trigger) {
        (NotStarted | Executing | Unknown, Execute) => {
            if from == Unknown {
                Unknown
            } else {
                Executing
            }
        }
        (Executing | Unknown, Charged) => Success,
        (Executing | Unknown, Declined) => Failure,
        (Executing | Unknown, Indeterminate) => Unknown,
        // A refund whose answer is lost stays REFUNDING: the sweeper asks the PSP by key.
        (Refunding, Indeterminate) => Refunding,
        (Success, RefundStart) => Refunding,
        (Refunding, Refunded) => Cancelled,
        (Refunding, RefundDeclined) => Success,
        (NotStarted | Executing | Unknown | Failure, SettledCharge) => Success,
        (Success | Refunding, SettledRefund) => Cancelled,
        (Success | Refunding | Cancelled, SettledAmount) => from,
        _ => return Err(IllegalTransition { from, trigger }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for s in PaymentState::ALL {
            assert_eq!(PaymentState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn happy_paths() {
        use PaymentState::*;
        let run = |ts: &[Trigger]| ts.iter().try_fold(NotStarted, |s, t| transition(s, *t));
        assert_eq!(run(&[Trigger::Execute, Trigger::Charged]), Ok(Success));
        assert_eq!(run(&[Trigger::Execute, Trigger::Declined]), Ok(Failure));
        assert_eq!(
            run(&[
                Trigger::Execute,
                Trigger::Indeterminate,
                Trigger::Execute,
                Trigger::Charged
            ]),
            Ok(Success)
        );
        assert_eq!(
            run(&[
                Trigger::Execute,
                Trigger::Charged,
                Trigger::RefundStart,
                Trigger::Indeterminate,
                Trigger::Refunded
            ]),
            Ok(Cancelled)
        );
        assert_eq!(
            run(&[
                Trigger::Execute,
                Trigger::Charged,
                Trigger::RefundStart,
                Trigger::RefundDeclined
            ]),
            Ok(Success)
        );
        assert!(
            run(&[Trigger::Execute, Trigger::Charged, Trigger::Refunded]).is_err(),
            "no refund without REFUNDING first"
        );
        assert!(
            run(&[Trigger::Charged]).is_err(),
            "no charge without EXECUTING first"
        );
        assert!(run(&[Trigger::Execute, Trigger::Declined, Trigger::Refunded]).is_err());
    }

    proptest! {
        /// Whatever arrives: a final payment is never executed again, money only moves
        /// NOT_STARTED → … → SUCCESS via EXECUTING/UNKNOWN (or a settlement row), and a refund only
        /// follows a success.
        #[test]
        fn no_sequence_reaches_an_illegal_state(seq in proptest::collection::vec(0usize..10, 0..40)) {
            let mut state = PaymentState::NotStarted;
            let mut executed = false;
            for i in seq {
                let trigger = Trigger::ALL[i];
                match transition(state, trigger) {
                    Ok(next) => {
                        if trigger == Trigger::Execute {
                            prop_assert!(!state.is_final());
                            executed = true;
                        }
                        // (A declined refund goes back to SUCCESS: the charge stood all along.)
                        if next == PaymentState::Success && !state.holds_money() {
                            prop_assert!(executed || trigger == Trigger::SettledCharge);
                        }
                        if next == PaymentState::Cancelled && state != PaymentState::Cancelled {
                            // The PSP refunds only after the intent is written; a settlement
                            // file's refund row may also cancel a SUCCESS directly.
                            prop_assert!(
                                state == PaymentState::Refunding
                                    || (state == PaymentState::Success
                                        && trigger == Trigger::SettledRefund)
                            );
                        }
                        if next == PaymentState::Refunding && state != PaymentState::Refunding {
                            prop_assert_eq!(state, PaymentState::Success);
                        }
                        if trigger == Trigger::Refunded {
                            prop_assert_eq!(state, PaymentState::Refunding);
                        }
                        if trigger == Trigger::SettledAmount {
                            prop_assert_eq!(next, state, "an amount correction keeps the state");
                        }
                        prop_assert!(next != PaymentState::NotStarted);
                        state = next;
                    }
                    Err(e) => prop_assert_eq!(e.from, state),
                }
            }
        }
    }
}
