//! The pure core: what one settlement row means against our record of its payment, and what to
//! do about it. No I/O; `run` feeds it rows and records, then carries out its verdicts.

use paystream_common::settlement::{RowKind, SettlementRow};
use paystream_common::state::PaymentState;
use serde::Serialize;

/// DESIGN.md's reconciliation classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Matched,
    MissingInternal,
    MissingExternal,
    AmountMismatch,
    StatusMismatch,
    DuplicateExternal,
    UnknownPayment,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Matched,
        Class::MissingInternal,
        Class::MissingExternal,
        Class::AmountMismatch,
        Class::StatusMismatch,
        Class::DuplicateExternal,
        Class::UnknownPayment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Matched => "matched",
            Class::MissingInternal => "missing_internal",
            Class::MissingExternal => "missing_external",
            Class::AmountMismatch => "amount_mismatch",
            Class::StatusMismatch => "status_mismatch",
            Class::DuplicateExternal => "duplicate_external",
            Class::UnknownPayment => "unknown_payment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Classes whose rows reconciliation may correct on its own (when the verdict says how).
    pub fn auto_correctable(self) -> bool {
        matches!(
            self,
            Class::MissingInternal | Class::AmountMismatch | Class::StatusMismatch
        )
    }
}

/// Our record of a payment, as far as reconciliation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    pub state: PaymentState,
    pub amount_minor: i64,
    pub currency: String,
}

/// What to do about a row: the events to publish, through the payment domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to correct (matched), or nothing we may correct (manual review).
    None,
    /// `succeeded` (SettledCharge), then `adjusted` by `delta_minor` if non-zero.
    Succeed { delta_minor: i64 },
    /// `cancelled` (SettledRefund), then `adjusted` by `delta_minor` if non-zero.
    Cancel { delta_minor: i64 },
    /// `adjusted` by `delta_minor` (never zero).
    Adjust { delta_minor: i64 },
}

/// The class of a row, what to do, and why, in words for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    pub action: Action,
    pub detail: String,
}

fn verdict(class: Class, action: Action, detail: impl Into<String>) -> Verdict {
    Verdict {
        class,
        action,
        detail: detail.into(),
    }
}

/// Classifies one row. `duplicate`: an earlier row of the file has the same `psp_reference` or
/// the same (`payment_id`, `type`); `ours`: our record of the row's payment, if we have one.
/// The PSP is the truth for money that moved: corrections bring us to the file's amount.
pub fn classify(row: &SettlementRow, duplicate: bool, ours: Option<&Ours>) -> Verdict {
    use PaymentState::*;
    if duplicate {
        return verdict(
            Class::DuplicateExternal,
            Action::None,
            "an earlier row has the same psp_reference or (payment_id, type)",
        );
    }
    let Some(ours) = ours else {
        return verdict(
            Class::UnknownPayment,
            Action::None,
            "paystream never received this payment_id",
        );
    };
    let theirs = row.amount.minor();
    if ours.currency != row.currency.as_str() {
        return verdict(
            Class::AmountMismatch,
            Action::None,
            format!(
                "currency differs: ours {}, file {}; not corrected automatically",
                ours.currency, row.currency
            ),
        );
    }
    // Positive: the merchant is owed more than we credited.
    let charge_delta = theirs - ours.amount_minor;
    let refund_delta = ours.amount_minor - theirs;
    match (row.kind, ours.state) {
        (RowKind::Charge, NotStarted | Executing | Unknown | Failure) => verdict(
            Class::MissingInternal,
            Action::Succeed {
                delta_minor: charge_delta,
            },
            format!(
                "PSP settled the charge; we hold {}{}",
                ours.state.as_str(),
                amount_note(charge_delta, ours.amount_minor, theirs)
            ),
        ),
        (RowKind::Charge, Success | Refunding | Cancelled) | (RowKind::Refund, Cancelled) => {
            let delta = if row.kind == RowKind::Charge {
                charge_delta
            } else {
                refund_delta
            };
            if delta == 0 {
                verdict(Class::Matched, Action::None, "")
            } else {
                verdict(
                    Class::AmountMismatch,
                    Action::Adjust { delta_minor: delta },
                    format!(
                        "{} amount: ours {}, file {}",
                        row.kind.as_str(),
                        ours.amount_minor,
                        theirs
                    ),
                )
            }
        }
        (RowKind::Refund, Success | Refunding) => verdict(
            Class::StatusMismatch,
            Action::Cancel {
                delta_minor: refund_delta,
            },
            format!(
                "PSP settled a refund; we hold {}{}",
                ours.state.as_str(),
                amount_note(refund_delta, ours.amount_minor, theirs)
            ),
        ),
        (RowKind::Refund, NotStarted | Executing | Unknown | Failure) => verdict(
            Class::StatusMismatch,
            Action::None,
            format!(
                "PSP settled a refund of a payment we hold as {}; not corrected automatically",
                ours.state.as_str()
            ),
        ),
    }
}

fn amount_note(delta: i64, ours: i64, theirs: i64) -> String {
    if delta == 0 {
        String::new()
    } else {
        format!(" (amount: ours {ours}, file {theirs})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_common::ids::{MerchantId, PaymentId};
    use paystream_common::money::{Amount, Currency};
    use proptest::prelude::*;

    fn row(kind: RowKind, amount: i64) -> SettlementRow {
        SettlementRow {
            line: 2,
            psp_reference: "ch_1".into(),
            payment_id: PaymentId::new_random(),
            merchant_id: MerchantId::parse("m-1").unwrap(),
            kind,
            amount: Amount::new(amount).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            settled_at_ms: 0,
        }
    }

    fn ours(state: PaymentState, amount: i64) -> Ours {
        Ours {
            state,
            amount_minor: amount,
            currency: "USD".into(),
        }
    }

    #[test]
    fn design_table() {
        use PaymentState::*;
        use RowKind::*;
        let c = |kind, state: Option<PaymentState>, ours_amount, file_amount| {
            let o = state.map(|s| ours(s, ours_amount));
            let v = classify(&row(kind, file_amount), false, o.as_ref());
            (v.class, v.action)
        };
        assert_eq!(
            c(Charge, Some(Success), 100, 100),
            (Class::Matched, Action::None)
        );
        assert_eq!(
            c(Refund, Some(Cancelled), 100, 100),
            (Class::Matched, Action::None)
        );
        assert_eq!(
            c(Charge, Some(Cancelled), 100, 100),
            (Class::Matched, Action::None)
        );
        for s in [NotStarted, Executing, Unknown, Failure] {
            assert_eq!(
                c(Charge, Some(s), 100, 100),
                (Class::MissingInternal, Action::Succeed { delta_minor: 0 })
            );
            assert_eq!(
                c(Refund, Some(s), 100, 100),
                (Class::StatusMismatch, Action::None)
            );
        }
        assert_eq!(
            c(Charge, Some(Unknown), 100, 130),
            (Class::MissingInternal, Action::Succeed { delta_minor: 30 })
        );
        assert_eq!(
            c(Charge, Some(Success), 100, 130),
            (Class::AmountMismatch, Action::Adjust { delta_minor: 30 })
        );
        assert_eq!(
            c(Refund, Some(Cancelled), 100, 130),
            (Class::AmountMismatch, Action::Adjust { delta_minor: -30 })
        );
        assert_eq!(
            c(Refund, Some(Success), 100, 100),
            (Class::StatusMismatch, Action::Cancel { delta_minor: 0 })
        );
        assert_eq!(
            c(Refund, Some(Success), 100, 101),
            (Class::StatusMismatch, Action::Cancel { delta_minor: -1 })
        );
        assert_eq!(
            c(Charge, None, 0, 100),
            (Class::UnknownPayment, Action::None)
        );
        let eur = Ours {
            currency: "EUR".into(),
            ..ours(Success, 100)
        };
        let v = classify(&row(Charge, 100), false, Some(&eur));
        assert_eq!((v.class, v.action), (Class::AmountMismatch, Action::None));
        let v = classify(&row(Charge, 100), true, Some(&ours(Success, 100)));
        assert_eq!(
            (v.class, v.action),
            (Class::DuplicateExternal, Action::None)
        );
    }

    #[test]
    fn names_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::parse(c.as_str()), Some(c));
        }
        assert_eq!(
            Class::ALL.map(Class::as_str),
            paystream_common::telemetry::RECON_CLASSES,
            "the metric catalogue pre-registers every class"
        );
        let auto: Vec<&str> = Class::ALL
            .into_iter()
            .filter(|c| c.auto_correctable())
            .map(Class::as_str)
            .collect();
        assert_eq!(auto, paystream_common::telemetry::RECON_CORRECTABLE_CLASSES);
    }

    fn any_state() -> impl Strategy<Value = PaymentState> {
        proptest::sample::select(PaymentState::ALL.to_vec())
    }

    proptest! {
        /// Whatever the row and record: corrections only in auto-correctable classes; after the
        /// correction the merchant holds exactly what the PSP moved for this row; a correction
        /// never starts from a state the state machine refuses.
        #[test]
        fn corrections_bring_us_to_the_file(
            refund in any::<bool>(),
            state in proptest::option::of(any_state()),
            ours_amount in 1i64..1_000_000,
            file_amount in 1i64..1_000_000,
            duplicate in any::<bool>(),
        ) {
            use paystream_common::state::{transition, Trigger};
            let kind = if refund { RowKind::Refund } else { RowKind::Charge };
            let o = state.map(|s| ours(s, ours_amount));
            let v = classify(&row(kind, file_amount), duplicate, o.as_ref());
            if v.action != Action::None {
                prop_assert!(v.class.auto_correctable());
                prop_assert!(!duplicate);
            }
            if duplicate {
                prop_assert_eq!(v.class, Class::DuplicateExternal);
            }
            // Merchant money from this payment before and after, against what the row says.
            let state = state.unwrap_or(PaymentState::NotStarted);
            let held = |s: PaymentState| if s.holds_money() { ours_amount } else { 0 };
            match v.action {
                Action::None => {}
                Action::Succeed { delta_minor } => {
                    prop_assert!(transition(state, Trigger::SettledCharge).is_ok());
                    prop_assert_eq!(ours_amount + delta_minor, file_amount);
                }
                Action::Cancel { delta_minor } => {
                    prop_assert!(transition(state, Trigger::SettledRefund).is_ok());
                    prop_assert_eq!(held(state) - ours_amount + delta_minor, ours_amount - file_amount);
                }
                Action::Adjust { delta_minor } => {
                    prop_assert!(delta_minor != 0);
                    prop_assert!(transition(state, Trigger::SettledAmount).is_ok());
                    let moved = if refund { -file_amount } else { file_amount };
                    let recorded = if refund { -ours_amount } else { ours_amount };
                    prop_assert_eq!(recorded + delta_minor, moved);
                }
            }
            if v.class == Class::Matched {
                prop_assert_eq!(ours_amount, file_amount);
            }
        }
    }
}
