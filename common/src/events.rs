//! Facts published on PAYMENT_EVENTS. Only paystream publishes them; wallet and ledger apply each
//! one exactly once, de-duplicating by `event_id` in the same transaction as the effect.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{self, CodecError};
use crate::ids::{BuyerId, MerchantId, PaymentId};
use crate::money::Currency;

/// Publish subject of a buyer's events. The stream stores it as
/// `payments.events.<partition>.<buyer>` (server-side `{{partition}}` transform).
pub fn subject(buyer: &BuyerId) -> String {
    format!("payments.events.{buyer}")
}

/// Header that carries the event type, so tools can filter without decoding the body.
pub const HEADER_EVENT_TYPE: &str = "Paystream-Event-Type";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The PSP charged the payment: wallet credits, ledger posts clearing → merchant.
    Succeeded,
    /// The PSP declined: no money moved; recorded so consumers see every payment's outcome.
    Failed,
    /// A succeeded payment was refunded: wallet debits, ledger reverses.
    Cancelled,
    /// Reconciliation corrected the amount: applies `delta_minor`.
    Adjusted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::Adjusted => "adjusted",
        }
    }
    pub const ALL: [EventKind; 4] = [
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Cancelled,
        EventKind::Adjusted,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    #[serde(with = "crate::ids::uuid_string")]
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub payment_id: PaymentId,
    pub buyer_id: BuyerId,
    pub merchant_id: MerchantId,
    /// The payment's amount in minor units (for `adjusted`, the corrected amount).
    pub amount: i64,
    pub currency: Currency,
    /// Per payment: 1 for the outcome, then 2, 3, … for each later event.
    pub version: u32,
    /// RFC 3339 UTC.
    pub occurred_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psp_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the command that caused this event was stored in PAYMENTS (unix ms), so consumers
    /// can measure end-to-end latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at_ms: Option<i64>,
    /// Signed change to apply, for `adjusted` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_minor: Option<i64>,
    /// Where a consumer read it: its PAYMENT_EVENTS sequence. Never on the wire.
    #[serde(skip)]
    pub stream_seq: Option<u64>,
}

impl PaymentEvent {
    /// The signed amount this event moves into the merchant's balance.
    pub fn merchant_delta_minor(&self) -> i64 {
        match self.kind {
            EventKind::Succeeded => self.amount,
            EventKind::Failed => 0,
            EventKind::Cancelled => -self.amount,
            EventKind::Adjusted => self.delta_minor.unwrap_or(0),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::to_msgpack(self)
    }

    pub fn decode(content_type: Option<&str>, payload: &[u8]) -> Result<Self, CodecError> {
        let format = codec::detect(content_type, payload)?;
        let event: Self = codec::decode(format, payload)?;
        let bad = |detail: &str| CodecError::Syntax {
            format: format.as_str(),
            detail: detail.into(),
        };
        let in_range = |v: i64| {
            (-crate::money::AMOUNT_MINOR_MAX..=crate::money::AMOUNT_MINOR_MAX).contains(&v)
        };
        if event.kind == EventKind::Adjusted && event.delta_minor.is_none() {
            return Err(bad("adjusted event without delta_minor"));
        }
        if !(1..=crate::money::AMOUNT_MINOR_MAX).contains(&event.amount)
            || !event.delta_minor.is_none_or(in_range)
        {
            return Err(bad("amount or delta_minor out of range"));
        }
        if event.version == 0 {
            return Err(bad("version must be ≥ 1"));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_json_compat() {
        let e = PaymentEvent {
            event_id: Uuid::new_v4(),
            kind: EventKind::Succeeded,
            payment_id: PaymentId::new_random(),
            buyer_id: BuyerId::parse("b-1").unwrap(),
            merchant_id: MerchantId::parse("m-1").unwrap(),
            amount: 1234,
            currency: Currency::parse("USD").unwrap(),
            version: 1,
            occurred_at: "2026-11-25T00:00:00Z".into(),
            psp_reference: Some("ch_1".into()),
            reason: None,
            requested_at_ms: Some(1),
            delta_minor: None,
            stream_seq: None,
        };
        assert_eq!(PaymentEvent::decode(None, &e.encode()).unwrap(), e);
        let as_value: serde_json::Value = rmp_serde::from_slice(&e.encode()).unwrap();
        assert_eq!(
            as_value["event_id"],
            e.event_id.to_string(),
            "ids are strings in MessagePack too"
        );
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(PaymentEvent::decode(None, &json).unwrap(), e);
        assert_eq!(e.merchant_delta_minor(), 1234);
        assert!(PaymentEvent::decode(None, b"\x81\xa1a\x01").is_err());
        let overflow = PaymentEvent {
            amount: i64::MIN,
            ..e.clone()
        };
        assert!(
            PaymentEvent::decode(None, &overflow.encode()).is_err(),
            "no arithmetic on forged amounts"
        );
        let v0 = PaymentEvent { version: 0, ..e };
        assert!(PaymentEvent::decode(None, &v0.encode()).is_err());
    }
}
