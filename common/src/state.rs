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
    Cancelled,
}

impl PaymentState {
    pub const ALL: [PaymentState; 6] = [
        PaymentState::NotStarted,
        PaymentState::Executing,
        PaymentState::Success,
        PaymentState::Failure,
        PaymentState::Unknown,
        PaymentState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::NotStarted => "NOT_STARTED",
            PaymentState::Executing => "EXECUTING",
            PaymentState::Success => "SUCCESS",
            PaymentState::Failure => "FAILURE",
            PaymentState::Unknown => "UNKNOWN",
            PaymentState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The PSP's answer is settled: no executor will call the PSP for this payment again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PaymentState::Success | PaymentState::Failure | PaymentState::Cancelled
        )
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
    /// The PSP refunded it.
    Refunded,
    /// Reconciliation: the settlement file shows the charge.
    SettledCharge,
    /// Reconciliation: the settlement file shows a refund.
    SettledRefund,
    /// Reconciliation: the settlement file shows a different amount; the state stays.
    SettledAmount,
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
        (Success, Refunded) => Cancelled,
        (NotStarted | Executing | Unknown | Failure, SettledCharge) => Success,
        (Success, SettledRefund) => Cancelled,
        (Success | Cancelled, SettledAmount) => from,
        _ => return Err(IllegalTransition { from, trigger }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRIGGERS: [Trigger; 8] = [
        Trigger::Execute,
        Trigger::Charged,
        Trigger::Declined,
        Trigger::Indeterminate,
        Trigger::Refunded,
        Trigger::SettledCharge,
        Trigger::SettledRefund,
        Trigger::SettledAmount,
    ];

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
            run(&[Trigger::Execute, Trigger::Charged, Trigger::Refunded]),
            Ok(Cancelled)
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
        fn no_sequence_reaches_an_illegal_state(seq in proptest::collection::vec(0usize..8, 0..40)) {
            let mut state = PaymentState::NotStarted;
            let mut executed = false;
            for i in seq {
                let trigger = TRIGGERS[i];
                match transition(state, trigger) {
                    Ok(next) => {
                        if trigger == Trigger::Execute {
                            prop_assert!(!state.is_final());
                            executed = true;
                        }
                        if next == PaymentState::Success && state != PaymentState::Success {
                            prop_assert!(executed || trigger == Trigger::SettledCharge);
                        }
                        if next == PaymentState::Cancelled && state != PaymentState::Cancelled {
                            prop_assert_eq!(state, PaymentState::Success);
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
