//! Parsing of what clients send: the `Idempotency-Key` header and the JSON bodies of charges and
//! refunds. Handlers only ever see values that passed these checks.

use std::collections::HashMap;
use std::fmt;

use axum::http::HeaderMap;
use serde::Deserialize;

use crate::script::Script;

/// Longest accepted idempotency key, in characters.
pub(crate) const KEY_LEN_MAX: usize = 255;
/// Largest accepted amount in minor units (10^12).
pub(crate) const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000;
/// Longest accepted merchant id, in characters.
const MERCHANT_ID_LEN_MAX: usize = 255;

/// Why a request was refused with 400; the text goes back to the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadRequest(pub(crate) String);

/// A valid idempotency key: the payment id, 1..=255 printable characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Reads the key from the `Idempotency-Key` header.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Self, BadRequest> {
        let value = headers
            .get("idempotency-key")
            .ok_or_else(|| BadRequest("missing Idempotency-Key header".into()))?;
        let text = value
            .to_str()
            .map_err(|_| BadRequest("Idempotency-Key must be printable ASCII".into()))?;
        Self::parse(text)
    }

    /// Checks the length bound of a key from any source.
    pub(crate) fn parse(text: &str) -> Result<Self, BadRequest> {
        let chars = text.chars().count();
        if chars == 0 || chars > KEY_LEN_MAX {
            return Err(BadRequest(format!(
                "Idempotency-Key must be 1..={KEY_LEN_MAX} characters, got {chars}"
            )));
        }
        Ok(Self(text.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid `POST /v1/payments` body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChargeRequest {
    /// 1..=10^12 minor units.
    pub(crate) amount_minor: i64,
    /// Three uppercase ASCII letters.
    pub(crate) currency: String,
    /// 1..=255 characters.
    pub(crate) merchant_id: String,
    /// The test card named by `metadata.sim`, if any.
    pub(crate) script: Option<Script>,
}

/// The wire shape of a charge; unknown fields are ignored, as a real PSP would.
#[derive(Deserialize)]
struct ChargeBody {
    amount: i64,
    currency: String,
    merchant_id: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

impl ChargeRequest {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, BadRequest> {
        let body: ChargeBody = serde_json::from_slice(body)
            .map_err(|e| BadRequest(format!("malformed payment body: {e}")))?;
        let amount_minor = parse_amount(body.amount)?;
        let currency = body.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(BadRequest(format!(
                "currency must be three uppercase letters, got {currency:?}"
            )));
        }
        let merchant_chars = body.merchant_id.chars().count();
        if merchant_chars == 0 || merchant_chars > MERCHANT_ID_LEN_MAX {
            return Err(BadRequest(format!(
                "merchant_id must be 1..={MERCHANT_ID_LEN_MAX} characters, got {merchant_chars}"
            )));
        }
        let script = match body.metadata.as_ref().and_then(|m| m.get("sim")) {
            None => None,
            Some(name) => Some(Script::parse(name).ok_or_else(|| {
                BadRequest(format!(
                    "unknown metadata.sim {name:?}; expected one of {}",
                    Script::NAMES
                ))
            })?),
        };
        Ok(Self {
            amount_minor,
            currency,
            merchant_id: body.merchant_id,
            script,
        })
    }
}

/// A valid `POST /v1/refunds` body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RefundRequest {
    /// 1..=10^12 minor units; checked against the charge by the store.
    pub(crate) amount_minor: i64,
}

/// The wire shape of a refund.
#[derive(Deserialize)]
struct RefundBody {
    payment_id: String,
    amount: i64,
}

impl RefundRequest {
    /// Parses the body of the refund whose idempotency key is `key`. One refund per payment:
    /// the key must be the payment id named in the body.
    pub(crate) fn parse(key: &IdempotencyKey, body: &[u8]) -> Result<Self, BadRequest> {
        let body: RefundBody = serde_json::from_slice(body)
            .map_err(|e| BadRequest(format!("malformed refund body: {e}")))?;
        if body.payment_id != key.as_str() {
            return Err(BadRequest(
                "Idempotency-Key of a refund must equal its payment_id".into(),
            ));
        }
        Ok(Self {
            amount_minor: parse_amount(body.amount)?,
        })
    }
}

fn parse_amount(amount: i64) -> Result<i64, BadRequest> {
    if (1..=AMOUNT_MINOR_MAX).contains(&amount) {
        Ok(amount)
    } else {
        Err(BadRequest(format!(
            "amount must be 1..={AMOUNT_MINOR_MAX} minor units, got {amount}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_length_is_bounded() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(KEY_LEN_MAX)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(KEY_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn charge_parses_with_and_without_metadata() {
        let plain = br#"{"amount": 100, "currency": "USD", "merchant_id": "m-1"}"#;
        let parsed = ChargeRequest::parse(plain).unwrap();
        assert_eq!(parsed.amount_minor, 100);
        assert_eq!(parsed.script, None);
        let scripted = br#"{"amount": 1, "currency": "EUR", "merchant_id": "m",
                            "metadata": {"sim": "decline", "x": "y"}}"#;
        assert_eq!(
            ChargeRequest::parse(scripted).unwrap().script,
            Some(Script::Decline)
        );
    }

    #[test]
    fn charge_rejects_bad_fields() {
        let bodies: [&[u8]; 7] = [
            b"not json",
            br#"{"amount": 0, "currency": "USD", "merchant_id": "m"}"#,
            br#"{"amount": 1000000000001, "currency": "USD", "merchant_id": "m"}"#,
            br#"{"amount": 1.5, "currency": "USD", "merchant_id": "m"}"#,
            br#"{"amount": 1, "currency": "usd", "merchant_id": "m"}"#,
            br#"{"amount": 1, "currency": "USD", "merchant_id": ""}"#,
            br#"{"amount": 1, "currency": "USD", "merchant_id": "m", "metadata": {"sim": "nope"}}"#,
        ];
        for body in bodies {
            assert!(
                ChargeRequest::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn refund_key_must_name_the_payment() {
        let key = IdempotencyKey::parse("p-1").unwrap();
        let body = br#"{"payment_id": "p-1", "amount": 5}"#;
        assert_eq!(
            RefundRequest::parse(&key, body),
            Ok(RefundRequest { amount_minor: 5 })
        );
        let other = br#"{"payment_id": "p-2", "amount": 5}"#;
        assert!(RefundRequest::parse(&key, other).is_err());
    }
}
