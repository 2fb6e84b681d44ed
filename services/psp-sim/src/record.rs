//! The simulator's vocabulary for what its store remembers: a payment's stored answer, money
//! movements, and the outcomes of trying to charge or refund. No SQL here, no HTTP.

use serde::Serialize;

use crate::error::SimError;

/// The only decline code the simulator gives.
pub(crate) const DECLINE_CODE: &str = "card_declined";

/// The final status of a payment, as answered to every POST of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChargeStatus {
    /// Money moved: there is a charge movement.
    Succeeded,
    /// No money moved; the answer carries [`DECLINE_CODE`].
    Declined,
}

impl ChargeStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, SimError> {
        match text {
            "succeeded" => Ok(Self::Succeeded),
            "declined" => Ok(Self::Declined),
            other => Err(SimError::Corrupt(format!("payment status {other:?}"))),
        }
    }
}

/// Which way money moved; also the `type` column of settlement files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MovementKind {
    /// Buyer to PSP, when a payment succeeds.
    Charge,
    /// PSP back to buyer, at most once per payment.
    Refund,
}

impl MovementKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, SimError> {
        match text {
            "charge" => Ok(Self::Charge),
            "refund" => Ok(Self::Refund),
            other => Err(SimError::Corrupt(format!("movement kind {other:?}"))),
        }
    }
}

/// The stored answer to a payment POST, replayed to every later POST of the same key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ChargeAnswer {
    /// `ch_<uuid>`, also for declined payments.
    pub(crate) psp_reference: String,
    /// Decided once, when the key is first processed, and never changed.
    pub(crate) status: ChargeStatus,
    /// Present only when declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decline_code: Option<String>,
}

/// What a payment POST did to the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChargeOutcome {
    /// First time this key was seen: recorded, and charged unless declined.
    Created(ChargeAnswer),
    /// The key was already recorded with the same request: nothing changed.
    Replayed(ChargeAnswer),
    /// The key was already recorded with a different amount, currency or merchant.
    KeyReused,
}

/// What a refund POST did to the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefundOutcome {
    /// Money moved back; holds the new `re_<uuid>` reference.
    Created(String),
    /// This payment was already refunded with the same amount; holds that reference.
    Replayed(String),
    /// No payment was ever recorded under this key.
    NotCharged,
    /// The payment was declined, so there is nothing to refund.
    Declined,
    /// The refund asks for more than was charged.
    ExceedsCharge,
    /// The payment was already refunded with a different amount.
    KeyReused,
}

/// Everything the store knows about one key, for `GET /v1/payments/{key}`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PaymentRecord {
    /// What every POST of the key is answered.
    pub(crate) answer: ChargeAnswer,
    /// The request as first received; later POSTs must match it.
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) merchant_id: String,
    /// Charge movements of the key, counted from the movements table rather than derived
    /// from the status, so a double charge would show.
    pub(crate) charge_count: i64,
    /// Refund movements of the key, counted the same way.
    pub(crate) refund_count: i64,
    /// The `re_…` reference of the refund, once there is one.
    pub(crate) refund_reference: Option<String>,
    /// When the key was first processed (and charged, if it succeeded).
    pub(crate) created_at_ms: i64,
}

/// One settled movement, a row of a settlement file before drift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Store order, the tie-breaker between rows settled in the same millisecond.
    pub(crate) seq: i64,
    /// `ch_…` or `re_…`; also the input of this row's drift.
    pub(crate) psp_reference: String,
    pub(crate) payment_id: String,
    pub(crate) merchant_id: String,
    pub(crate) kind: MovementKind,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    /// When the simulator recorded the movement; decides the file's day and row order.
    pub(crate) settled_at_ms: i64,
}
