//! The payment domain's decisions, as pure functions beside `state`: a stored payment as typed
//! values (`Payment`), what a payment request means for it (`plan`), what a cancellation comes
//! to (`cancellation`, `refund_intent`, `deferred_refund`, `refunded`), and what a change does to it — its next state, its version and the event
//! it publishes (`Change`, `apply`). `paystream_payment::store` keeps only the SQL around them:
//! it loads rows, parses them into `Payment`s, calls these, and writes what they return.
//!
//! Architecture Invariant: nothing here touches a database, NATS, a clock or a random source;
//! time and event ids come in as arguments.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::events::{self, EventKind, PaymentEvent};
use crate::ids::{BuyerId, MerchantId, PaymentId};
use crate::ingress::{CancelRequest, PaymentRequest};
use crate::money::{Amount, Currency};
use crate::state::{IllegalTransition, PaymentState, Trigger, transition};
use crate::time::rfc3339_ms;

/// A stored payment, parsed once from its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: PaymentId,
    pub buyer_id: BuyerId,
    pub merchant_id: MerchantId,
    pub amount: Amount,
    pub currency: Currency,
    pub state: PaymentState,
    /// The version of the last event this payment published; 0 before its outcome.
    pub version: u32,
    /// PSP attempts so far (charges and status lookups that could charge).
    pub attempts: u32,
    pub metadata: BTreeMap<String, String>,
    pub psp_reference: Option<String>,
    /// Its request's PAYMENTS stream sequence.
    pub request_seq: u64,
    /// When JetStream stored its request (unix ms).
    pub requested_at_ms: i64,
    /// A cancellation accepted for it, carried out once it is charged (and kept as the reason
    /// and time of its `cancelled` event).
    pub cancel: Option<CancelIntent>,
}

/// A cancellation recorded on its payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelIntent {
    /// The client's reason, if it gave one.
    pub reason: Option<String>,
    /// When JetStream stored the cancellation (unix ms).
    pub requested_at_ms: i64,
}

impl Payment {
    /// Whether `req` is this payment (a redelivery or a client's retry), not another one reusing
    /// its id.
    pub fn is_same_as(&self, req: &PaymentRequest) -> bool {
        self.buyer_id == req.buyer_id
            && self.merchant_id == req.merchant_id
            && self.amount == req.amount
            && self.currency == req.currency
    }
}

/// A payment request as it came off the stream.
#[derive(Debug, Clone)]
pub struct Requested {
    pub req: PaymentRequest,
    /// PAYMENTS stream sequence.
    pub seq: u64,
    /// When JetStream stored it (unix ms).
    pub published_ms: i64,
}

impl Requested {
    /// The payment this request creates: EXECUTING at attempt 1 (written before the PSP call).
    pub fn new_payment(&self) -> Payment {
        Payment {
            payment_id: self.req.payment_id,
            buyer_id: self.req.buyer_id.clone(),
            merchant_id: self.req.merchant_id.clone(),
            amount: self.req.amount,
            currency: self.req.currency,
            state: PaymentState::Executing,
            version: 0,
            attempts: 1,
            metadata: self.req.metadata.clone(),
            psp_reference: None,
            request_seq: self.seq,
            requested_at_ms: self.published_ms,
            cancel: None,
        }
    }
}

/// What to do with a payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Write EXECUTING, then call the PSP: attempt n, the same idempotency key every time.
    Execute {
        attempt: u32,
        /// The history rows to write with it, oldest first.
        history: Vec<(PaymentState, String)>,
    },
    /// Already past execution: nothing to do but acknowledge.
    Done(PaymentState),
    /// The payment_id is taken by a different payment.
    Conflict(String),
}

/// What a payment request means for the payment stored under its id, if any.
pub fn plan(existing: Option<&Payment>, r: &Requested) -> Result<Plan, IllegalTransition> {
    let Some(p) = existing else {
        let executing = transition(PaymentState::NotStarted, Trigger::Execute)?;
        return Ok(Plan::Execute {
            attempt: 1,
            history: vec![
                (
                    PaymentState::NotStarted,
                    format!("request received (PAYMENTS seq {})", r.seq),
                ),
                (executing, "charge attempt 1".into()),
            ],
        });
    };
    if !p.is_same_as(&r.req) {
        return Ok(Plan::Conflict(format!(
            "payment_id: {} is already a payment of {} {} from {} to {}",
            p.payment_id,
            p.amount.minor(),
            p.currency,
            p.buyer_id,
            p.merchant_id
        )));
    }
    match p.state {
        PaymentState::NotStarted | PaymentState::Executing => {
            // A redelivery after a crash between "EXECUTING written" and the outcome: the PSP is
            // asked again with the same key, which cannot charge twice.
            let attempt = p.attempts.saturating_add(1);
            let to = transition(p.state, Trigger::Execute)?;
            Ok(Plan::Execute {
                attempt,
                history: vec![(
                    to,
                    format!("charge attempt {attempt} (request redelivered)"),
                )],
            })
        }
        other => Ok(Plan::Done(other)),
    }
}

/// What a cancellation of a payment comes to, given the payment now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancellation {
    /// Write REFUNDING (`refund_intent`) in the same transaction, then refund at the PSP.
    Refund(Amount),
    /// Already cancelled: nothing to do.
    AlreadyCancelled,
    /// Its refund intent is recorded already (REFUNDING): the refund is under way or the
    /// sweeper's; nothing more to do.
    RefundUnderWay,
    /// The payment request has not been recorded yet: wait for it (bounded by the message's
    /// deliveries, counted in `paystream_consumer_retries_total{reason="cancel_before_payment"}`).
    NotReceived,
    /// The charge's outcome is not known yet: record the cancellation on the payment
    /// (`CancelIntent`), carried out when the outcome is in (`deferred_refund`). Waiting uses
    /// up no delivery.
    Defer(PaymentState),
    /// The payment belongs to another buyer.
    OtherBuyer,
    /// The payment ended FAILURE: nothing was charged.
    EndedFailure,
}

/// A cancellation is always decided after the completion it cancels: a payment whose outcome is
/// not in keeps the cancellation on itself until it is.
pub fn cancellation(payment: Option<&Payment>, c: &CancelRequest) -> Cancellation {
    let Some(p) = payment else {
        return Cancellation::NotReceived;
    };
    if p.buyer_id != c.buyer_id {
        return Cancellation::OtherBuyer;
    }
    match p.state {
        PaymentState::Success => Cancellation::Refund(p.amount),
        PaymentState::Refunding => Cancellation::RefundUnderWay,
        PaymentState::Cancelled => Cancellation::AlreadyCancelled,
        PaymentState::Failure => Cancellation::EndedFailure,
        state @ (PaymentState::NotStarted | PaymentState::Executing | PaymentState::Unknown) => {
            Cancellation::Defer(state)
        }
    }
}

/// The refund intent of a SUCCESS payment: SUCCESS → REFUNDING, written (with the cancellation
/// kept on the payment as its `CancelIntent`) before the PSP is asked to refund. No event: wallet and ledger hear of the refund once the PSP
/// has made it.
pub fn refund_intent(payment: &Payment, cause: String) -> Change {
    debug_assert_eq!(payment.state, PaymentState::Success);
    Change::new(payment.payment_id, Trigger::RefundStart, cause)
}

/// The refund owed by a cancellation recorded earlier, once `by` (the change just applied) has
/// brought the payment's outcome: a payment charged (`Charged`, or a settlement row's
/// `SettledCharge`) with a `CancelIntent` is refunded; one that ends FAILURE has nothing to
/// refund; one still without an outcome keeps waiting. A refund the PSP declined (back to SUCCESS)
/// is not tried again on its own: a new cancellation asks for it.
pub fn deferred_refund(payment: &Payment, by: Trigger) -> Option<Change> {
    let charged = matches!(by, Trigger::Charged | Trigger::SettledCharge);
    (charged && payment.state == PaymentState::Success && payment.cancel.is_some()).then(|| {
        refund_intent(
            payment,
            "refund intent (cancellation recorded before the outcome)".into(),
        )
    })
}

/// The PSP refunded a REFUNDING payment: CANCELLED with a `cancelled` event, carrying the
/// cancellation's reason and time.
pub fn refunded(payment: &Payment, psp_reference: &str, via: &str) -> Change {
    let cancel = payment.cancel.as_ref();
    Change {
        event: Some(EventKind::Cancelled),
        reason: Some(
            cancel
                .and_then(|c| c.reason.clone())
                .unwrap_or_else(|| "cancelled".into()),
        ),
        requested_at_ms: cancel.map(|c| c.requested_at_ms),
        ..Change::new(
            payment.payment_id,
            Trigger::Refunded,
            format!("{via}: PSP refunded ({psp_reference})"),
        )
    }
}

/// One state change to record, with what the PSP said.
#[derive(Debug, Clone)]
pub struct Change {
    pub payment_id: PaymentId,
    pub trigger: Trigger,
    pub cause: String,
    pub psp_reference: Option<String>,
    pub decline_code: Option<String>,
    pub last_error: Option<String>,
    /// The event this change publishes, if any.
    pub event: Option<EventKind>,
    pub reason: Option<String>,
    /// When the command behind this change was stored (unix ms); `None`: the payment request's.
    pub requested_at_ms: Option<i64>,
    /// This change is a new PSP attempt (counts against the sweeper's bound).
    pub attempted: bool,
    /// UNKNOWN: when the sweeper may try again.
    pub retry_at_ms: Option<i64>,
    /// The event's `amount` when it is not the payment's (`adjusted`: the corrected amount).
    pub event_amount: Option<i64>,
    /// `adjusted` only: the signed change to the merchant's balance.
    pub delta_minor: Option<i64>,
}

impl Change {
    pub fn new(payment_id: PaymentId, trigger: Trigger, cause: String) -> Self {
        Self {
            payment_id,
            trigger,
            cause,
            psp_reference: None,
            decline_code: None,
            last_error: None,
            event: None,
            reason: None,
            requested_at_ms: None,
            attempted: false,
            retry_at_ms: None,
            event_amount: None,
            delta_minor: None,
        }
    }
}

/// What `apply` did to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub to: PaymentState,
    /// The event to publish (through the outbox, in the change's transaction), if any.
    pub event: Option<PaymentEvent>,
}

/// Applies `change` to `payment` through the state machine: its next state, and the event it
/// publishes with the payment's next version (versions run 1, 2, 3, … with no gap: only a change
/// that publishes takes one). A change the state machine refuses leaves the payment untouched.
/// `event_id` is asked for only when there is an event; `now_ms` stamps it.
pub fn apply(
    payment: &mut Payment,
    change: &Change,
    event_id: impl FnOnce() -> Uuid,
    now_ms: i64,
) -> Result<Applied, IllegalTransition> {
    debug_assert_eq!(payment.payment_id, change.payment_id);
    let to = transition(payment.state, change.trigger)?;
    if change.psp_reference.is_some() {
        payment.psp_reference.clone_from(&change.psp_reference);
    }
    let event = change.event.map(|kind| {
        payment.version = payment
            .version
            .checked_add(1)
            .expect("a payment publishes fewer than 2^32 events");
        PaymentEvent {
            event_id: event_id(),
            kind,
            payment_id: payment.payment_id,
            buyer_id: payment.buyer_id.clone(),
            merchant_id: payment.merchant_id.clone(),
            amount: change.event_amount.unwrap_or(payment.amount.minor()),
            currency: payment.currency,
            version: payment.version,
            occurred_at: rfc3339_ms(now_ms),
            psp_reference: payment.psp_reference.clone(),
            reason: change.reason.clone(),
            requested_at_ms: Some(change.requested_at_ms.unwrap_or(payment.requested_at_ms)),
            delta_minor: change.delta_minor,
            stream_seq: None,
        }
    });
    payment.state = to;
    payment.attempts = payment.attempts.saturating_add(u32::from(change.attempted));
    Ok(Applied { to, event })
}

/// The subject an event of `payment` is published on.
pub fn event_subject(payment: &Payment) -> String {
    events::subject(&payment.buyer_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requested() -> Requested {
        Requested {
            req: PaymentRequest {
                payment_id: PaymentId::new_random(),
                buyer_id: BuyerId::parse("b-1").unwrap(),
                merchant_id: MerchantId::parse("m-1").unwrap(),
                amount: Amount::new(1250).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
                metadata: BTreeMap::new(),
            },
            seq: 7,
            published_ms: 1_000,
        }
    }

    #[test]
    fn a_new_request_executes_attempt_one_after_not_started() {
        let r = requested();
        let Ok(Plan::Execute { attempt, history }) = plan(None, &r) else {
            panic!("a new payment is executed");
        };
        assert_eq!(attempt, 1);
        assert_eq!(
            history.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [PaymentState::NotStarted, PaymentState::Executing]
        );
        assert!(history[0].1.contains("seq 7"), "{history:?}");
        let p = r.new_payment();
        assert_eq!(
            (p.state, p.version, p.attempts),
            (PaymentState::Executing, 0, 1)
        );
    }

    #[test]
    fn a_redelivery_executes_again_and_a_final_payment_is_done() {
        let r = requested();
        let mut p = r.new_payment();
        assert!(matches!(
            plan(Some(&p), &r),
            Ok(Plan::Execute { attempt: 2, .. })
        ));
        p.state = PaymentState::Unknown;
        assert_eq!(
            plan(Some(&p), &r),
            Ok(Plan::Done(PaymentState::Unknown)),
            "UNKNOWN is the sweeper's"
        );
        p.state = PaymentState::Success;
        assert_eq!(plan(Some(&p), &r), Ok(Plan::Done(PaymentState::Success)));
    }

    #[test]
    fn another_payment_under_the_same_id_conflicts() {
        let r = requested();
        let p = r.new_payment();
        let mut other = r.clone();
        other.req.amount = Amount::new(1251).unwrap();
        let Ok(Plan::Conflict(reason)) = plan(Some(&p), &other) else {
            panic!("a different amount is another payment");
        };
        assert!(reason.starts_with("payment_id: "), "{reason}");
        assert!(reason.contains("1250 EUR"), "{reason}");
    }

    #[test]
    fn cancellations_wait_for_the_outcome_and_refund_a_success_only() {
        let r = requested();
        let mut p = r.new_payment();
        let c = CancelRequest {
            payment_id: p.payment_id,
            buyer_id: p.buyer_id.clone(),
            reason: None,
        };
        assert_eq!(cancellation(None, &c), Cancellation::NotReceived);
        assert_eq!(
            cancellation(Some(&p), &c),
            Cancellation::Defer(PaymentState::Executing)
        );
        p.state = PaymentState::Unknown;
        assert_eq!(
            cancellation(Some(&p), &c),
            Cancellation::Defer(PaymentState::Unknown)
        );
        p.state = PaymentState::Success;
        assert_eq!(cancellation(Some(&p), &c), Cancellation::Refund(p.amount));
        p.state = PaymentState::Refunding;
        assert_eq!(cancellation(Some(&p), &c), Cancellation::RefundUnderWay);
        p.state = PaymentState::Failure;
        assert_eq!(cancellation(Some(&p), &c), Cancellation::EndedFailure);
        p.state = PaymentState::Cancelled;
        assert_eq!(cancellation(Some(&p), &c), Cancellation::AlreadyCancelled);
        let stranger = CancelRequest {
            buyer_id: BuyerId::parse("b-2").unwrap(),
            ..c
        };
        assert_eq!(cancellation(Some(&p), &stranger), Cancellation::OtherBuyer);
    }

    #[test]
    fn the_outcome_event_carries_the_payment_and_version_one() {
        let mut p = requested().new_payment();
        let change = Change {
            psp_reference: Some("psp-1".into()),
            event: Some(EventKind::Succeeded),
            ..Change::new(p.payment_id, Trigger::Charged, "charged".into())
        };
        let id = Uuid::now_v7();
        let applied = apply(&mut p, &change, || id, 2_000).unwrap();
        let e = applied.event.unwrap();
        assert_eq!(applied.to, PaymentState::Success);
        assert_eq!((e.event_id, e.version, e.amount), (id, 1, 1250));
        assert_eq!(e.psp_reference.as_deref(), Some("psp-1"));
        assert_eq!(e.requested_at_ms, Some(1_000));
        assert_eq!(event_subject(&p), events::subject(&p.buyer_id));
        assert_eq!((p.state, p.version), (PaymentState::Success, 1));
    }

    #[test]
    fn a_refused_change_leaves_the_payment_untouched() {
        let mut p = requested().new_payment();
        p.state = PaymentState::Failure;
        let before = p.clone();
        let change = Change {
            event: Some(EventKind::Cancelled),
            psp_reference: Some("psp-9".into()),
            ..Change::new(p.payment_id, Trigger::Refunded, "refunded".into())
        };
        let mut asked = false;
        assert!(
            apply(
                &mut p,
                &change,
                || {
                    asked = true;
                    Uuid::nil()
                },
                0
            )
            .is_err()
        );
        assert_eq!(p, before);
        assert!(!asked, "no event id is taken for a refused change");
    }

    #[test]
    fn a_refund_carries_the_cancellation_recorded_on_the_payment() {
        let mut p = requested().new_payment();
        p.state = PaymentState::Success;
        p.cancel = Some(CancelIntent {
            reason: Some("buyer changed mind".into()),
            requested_at_ms: 5_000,
        });
        assert!(deferred_refund(&p, Trigger::RefundDeclined).is_none());
        let intent = deferred_refund(&p, Trigger::Charged)
            .expect("a charged payment with a cancellation refunds");
        apply(&mut p, &intent, Uuid::now_v7, 6_000).unwrap();
        assert_eq!(p.state, PaymentState::Refunding);
        let refund = refunded(&p, "re_1", "t");
        let applied = apply(&mut p, &refund, Uuid::now_v7, 7_000).unwrap();
        let e = applied.event.expect("a refund publishes `cancelled`");
        assert_eq!(applied.to, PaymentState::Cancelled);
        assert_eq!(e.kind, EventKind::Cancelled);
        assert_eq!(e.reason.as_deref(), Some("buyer changed mind"));
        assert_eq!(e.requested_at_ms, Some(5_000));
    }

    proptest! {
        /// A cancellation recorded on a payment is carried out exactly when its outcome is a
        /// charge, and the refund it owes always passes the state machine (into REFUNDING,
        /// never straight to CANCELLED: the PSP refunds only after the intent is durable).
        #[test]
        fn a_recorded_cancellation_refunds_only_a_charged_payment(
            state in proptest::sample::select(PaymentState::ALL.to_vec()),
            cancelled in any::<bool>(),
            by in 0usize..10,
        ) {
            let by = Trigger::ALL[by];
            let mut p = requested().new_payment();
            p.state = state;
            p.cancel = cancelled.then_some(CancelIntent { reason: None, requested_at_ms: 1 });
            let c = CancelRequest { payment_id: p.payment_id, buyer_id: p.buyer_id.clone(), reason: None };
            let charged = matches!(by, Trigger::Charged | Trigger::SettledCharge);
            match deferred_refund(&p, by) {
                Some(change) => {
                    prop_assert!(cancelled && charged && state == PaymentState::Success);
                    prop_assert_eq!(transition(state, change.trigger), Ok(PaymentState::Refunding));
                    prop_assert_eq!(cancellation(Some(&p), &c), Cancellation::Refund(p.amount));
                }
                None => prop_assert!(!cancelled || !charged || state != PaymentState::Success),
            }
            // What waits for an outcome is exactly what cannot be refunded or settled yet.
            let waits = matches!(cancellation(Some(&p), &c), Cancellation::Defer(_));
            prop_assert_eq!(waits, !state.is_final());
        }
    }

    proptest! {
        /// Whatever changes arrive, the events a payment publishes have versions 1, 2, 3, … with
        /// no gap and no repeat, each carries the payment's own ids, and an applied change always
        /// lands in the state the state machine names.
        #[test]
        fn versions_are_contiguous(seq in proptest::collection::vec((0usize..10, any::<bool>()), 0..60)) {
            let mut p = requested().new_payment();
            let mut published = Vec::new();
            for (t, publishes) in seq {
                let trigger = Trigger::ALL[t];
                let change = Change {
                    event: publishes.then_some(EventKind::Adjusted),
                    ..Change::new(p.payment_id, trigger, "x".into())
                };
                let from = p.state;
                match apply(&mut p, &change, Uuid::now_v7, 0) {
                    Ok(applied) => {
                        prop_assert_eq!(Ok(applied.to), transition(from, trigger));
                        prop_assert_eq!(applied.event.is_some(), publishes);
                        if let Some(e) = applied.event {
                            prop_assert_eq!(e.payment_id, p.payment_id);
                            prop_assert_eq!(&e.buyer_id, &p.buyer_id);
                            published.push(e.version);
                        }
                    }
                    Err(_) => prop_assert_eq!(p.state, from),
                }
            }
            let expected: Vec<u32> = (1..=published.len() as u32).collect();
            prop_assert_eq!(published, expected);
        }
    }
}
