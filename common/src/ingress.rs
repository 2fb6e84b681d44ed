//! The ingress contract: what a client publishes on `payments.request.<buyer>` and
//! `payments.cancel.<buyer>`. `decode_command` returns either a valid command or a `Rejection`
//! naming the field, which becomes the dead-letter reason. It never panics, whatever the bytes.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::codec::{self, Format};
use crate::ids::{BuyerId, MerchantId, PaymentId};
use crate::money::{Amount, Currency};
use crate::text::bounded;

/// Bounds on client metadata, so one payment cannot bloat every table and event downstream.
pub const METADATA_ENTRIES_MAX: usize = 32;
pub const METADATA_KEY_CHARS_MAX: usize = 64;
pub const METADATA_VALUE_CHARS_MAX: usize = 256;
pub const REASON_CHARS_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRequest {
    pub payment_id: PaymentId,
    pub buyer_id: BuyerId,
    pub merchant_id: MerchantId,
    pub amount: Amount,
    pub currency: Currency,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelRequest {
    pub payment_id: PaymentId,
    pub buyer_id: BuyerId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Pay(PaymentRequest),
    Cancel(CancelRequest),
}

impl Command {
    pub fn payment_id(&self) -> PaymentId {
        match self {
            Command::Pay(p) => p.payment_id,
            Command::Cancel(c) => c.payment_id,
        }
    }
    pub fn buyer_id(&self) -> &BuyerId {
        match self {
            Command::Pay(p) => &p.buyer_id,
            Command::Cancel(c) => &c.buyer_id,
        }
    }
}

/// Why a message was refused: the field and what is wrong with it. Permanent: retrying the same
/// bytes cannot succeed, so the message is terminated at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub field: &'static str,
    pub reason: String,
}

impl Rejection {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Which ingress subject a message came in on, from its subject in publish form
/// (`payments.request.b-1`) or in the stream's stored, partitioned form (`payments.request.7.b-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressKind {
    Request,
    Cancel,
}

impl IngressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressKind::Request => "request",
            IngressKind::Cancel => "cancel",
        }
    }
}

pub fn parse_subject(subject: &str) -> Result<(IngressKind, &str), Rejection> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let kind = match tokens.as_slice() {
        ["payments", "request", .., _] if tokens.len() <= 4 => IngressKind::Request,
        ["payments", "cancel", .., _] if tokens.len() <= 4 => IngressKind::Cancel,
        _ => {
            return Err(Rejection::new(
                "subject",
                format!("{} is not an ingress subject", bounded(subject, 128)),
            ));
        }
    };
    Ok((kind, tokens[tokens.len() - 1]))
}

/// Decodes and validates one ingress message.
pub fn decode_command(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<(Command, Format), Rejection> {
    let (kind, subject_buyer) = parse_subject(subject)?;
    let format = codec::detect(content_type, payload)
        .map_err(|e| Rejection::new("payload", e.to_string()))?;
    let value: Value =
        codec::decode(format, payload).map_err(|e| Rejection::new("payload", e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(Rejection::new("payload", "must be a map/object"));
    };
    let fields = Fields(&map);
    let payment_id = fields.payment_id()?;
    let buyer_id = fields.token("buyer_id", BuyerId::parse)?;
    if buyer_id.as_str() != subject_buyer {
        return Err(Rejection::new(
            "buyer_id",
            format!(
                "subject token {} ≠ body {}",
                bounded(subject_buyer, 64),
                buyer_id.as_str()
            ),
        ));
    }
    let command = match kind {
        IngressKind::Request => Command::Pay(PaymentRequest {
            payment_id,
            buyer_id,
            merchant_id: fields.token("merchant_id", MerchantId::parse)?,
            amount: fields.amount()?,
            currency: fields.currency()?,
            metadata: fields.metadata()?,
        }),
        IngressKind::Cancel => Command::Cancel(CancelRequest {
            payment_id,
            buyer_id,
            reason: fields.reason()?,
        }),
    };
    Ok((command, format))
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn required(&self, field: &'static str) -> Result<&Value, Rejection> {
        match self.0.get(field) {
            None | Some(Value::Null) => Err(Rejection::new(field, "missing")),
            Some(v) => Ok(v),
        }
    }

    fn string(&self, field: &'static str) -> Result<&str, Rejection> {
        self.required(field)?
            .as_str()
            .ok_or_else(|| Rejection::new(field, "must be a string"))
    }

    fn payment_id(&self) -> Result<PaymentId, Rejection> {
        let s = self.string("payment_id")?;
        PaymentId::parse(s).map_err(|e| Rejection::new("payment_id", e.to_string()))
    }

    fn token<T, E: fmt::Display>(
        &self,
        field: &'static str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<T, Rejection> {
        let s = self.string(field)?;
        parse(s).map_err(|e| Rejection::new(field, e.to_string()))
    }

    fn amount(&self) -> Result<Amount, Rejection> {
        let range = crate::money::MoneyError::AmountOutOfRange.to_string();
        self.required("amount")?
            .as_i64()
            .and_then(|v| Amount::new(v).ok())
            .ok_or_else(|| Rejection::new("amount", range))
    }

    fn currency(&self) -> Result<Currency, Rejection> {
        let s = self.string("currency")?;
        Currency::parse(s).map_err(|e| Rejection::new("currency", e.to_string()))
    }

    fn metadata(&self) -> Result<BTreeMap<String, String>, Rejection> {
        let Some(v) = self.0.get("metadata").filter(|v| !v.is_null()) else {
            return Ok(BTreeMap::new());
        };
        let map = v
            .as_object()
            .ok_or_else(|| Rejection::new("metadata", "must be a map of strings"))?;
        if map.len() > METADATA_ENTRIES_MAX {
            return Err(Rejection::new(
                "metadata",
                format!("at most {METADATA_ENTRIES_MAX} entries"),
            ));
        }
        map.iter()
            .map(|(k, v)| {
                let v = v.as_str().ok_or_else(|| {
                    Rejection::new("metadata", format!("{}: must be a string", bounded(k, 64)))
                })?;
                if k.chars().count() > METADATA_KEY_CHARS_MAX
                    || v.chars().count() > METADATA_VALUE_CHARS_MAX
                {
                    return Err(Rejection::new(
                        "metadata",
                        format!(
                            "keys at most {METADATA_KEY_CHARS_MAX} and values at most \
                             {METADATA_VALUE_CHARS_MAX} characters"
                        ),
                    ));
                }
                Ok((k.clone(), v.to_owned()))
            })
            .collect()
    }

    fn reason(&self) -> Result<Option<String>, Rejection> {
        match self.0.get("reason") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= REASON_CHARS_MAX => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(Rejection::new(
                "reason",
                format!("at most {REASON_CHARS_MAX} characters"),
            )),
            Some(_) => Err(Rejection::new("reason", "must be a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: &str = "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01";

    fn json(amount: &str) -> Vec<u8> {
        format!(
            r#"{{"payment_id":"{PID}","buyer_id":"b-1","merchant_id":"m-1","amount":{amount},"currency":"USD"}}"#
        )
        .into_bytes()
    }

    fn reject(subject: &str, payload: &[u8]) -> String {
        decode_command(subject, None, payload)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_json_and_msgpack_decode_alike() {
        let (a, fa) = decode_command("payments.request.3.b-1", None, &json("100")).unwrap();
        let Command::Pay(p) = &a else {
            panic!("not a payment")
        };
        let mp = codec::to_msgpack(p);
        let (b, fb) = decode_command("payments.request.b-1", None, &mp).unwrap();
        assert_eq!(a, b);
        assert_eq!((fa, fb), (Format::Json, Format::MsgPack));
    }

    #[test]
    fn rejections_name_the_field() {
        let s = "payments.request.b-1";
        for bad in ["1.5", "-3", "0", "\"100\"", "1000000000001", "1e3"] {
            assert_eq!(
                reject(s, &json(bad)),
                "amount: must be an integer in 1..=10^12",
                "{bad}"
            );
        }
        assert_eq!(
            reject("payments.request.b-2", &json("1")),
            "buyer_id: subject token b-2 ≠ body b-1"
        );
        let bad_cur = String::from_utf8(json("1")).unwrap().replace("USD", "XYZ");
        assert!(reject(s, bad_cur.as_bytes()).starts_with("currency:"));
        let bad_id = String::from_utf8(json("1")).unwrap().replace(PID, "x");
        assert_eq!(reject(s, bad_id.as_bytes()), "payment_id: must be a UUID");
        assert!(reject(s, b"garbage").starts_with("payload:"));
        assert!(reject(s, b"{not json").starts_with("payload: invalid JSON"));
        assert!(reject("payments.refund.b-1", &json("1")).starts_with("subject:"));
    }

    #[test]
    fn cancel_decodes() {
        let body = format!(r#"{{"payment_id":"{PID}","buyer_id":"b-1","reason":"dup"}}"#);
        let (c, _) = decode_command("payments.cancel.0.b-1", None, body.as_bytes()).unwrap();
        assert!(matches!(
            c,
            Command::Cancel(CancelRequest {
                reason: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut mp = vec![0x91u8; 60_000]; // 60,000 nested one-element arrays, under the size bound
        mp.push(0x01);
        assert!(decode_command("payments.request.b-1", Some("application/msgpack"), &mp).is_err());
        let json = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(decode_command("payments.request.b-1", None, json.as_bytes()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_command("payments.request.b-1", None, &bytes);
            let _ = decode_command("payments.cancel.b-1", Some("application/msgpack"), &bytes);
        }
    }
}
