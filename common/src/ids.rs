//! Identifiers that cross service boundaries. Each can only hold a valid value: parse once at the
//! edge, and the rest of the code cannot receive a malformed id.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why an identifier was refused; the caller adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be a UUID")]
    NotUuid,
    #[error("must match [A-Za-z0-9_-]{{1,64}}")]
    BadToken,
}

/// The payment's identity end to end, and its idempotency key at the PSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentId(Uuid);

impl PaymentId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid)
    }
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for PaymentId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Serialised as the hyphenated string in JSON and MessagePack alike (DESIGN: `payment_id` as its
/// string form), never as uuid's 16-byte array.
impl Serialize for PaymentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for PaymentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serialises a UUID as its hyphenated string in every format (uuid's own impl writes 16 raw bytes
/// to MessagePack), so events read the same in `nats sub`, `dlq show` and JSON tools.
pub mod uuid_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(u: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&u.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Uuid::parse_str(&s).map_err(serde::de::Error::custom)
    }
}

/// A `[A-Za-z0-9_-]{1,64}` token: safe as a NATS subject token, a metric-free log field and a
/// database key.
fn check_token(s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(IdError::BadToken) }
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_token(s).map(|()| Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// The buyer: the partition key of every subject, so a buyer's messages stay in order.
    BuyerId
);
token_id!(
    /// The merchant whose wallet and ledger account a payment credits.
    MerchantId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(BuyerId::parse("b-42_X").is_ok());
        assert_eq!(BuyerId::parse(""), Err(IdError::BadToken));
        assert_eq!(BuyerId::parse("a.b"), Err(IdError::BadToken));
        assert_eq!(BuyerId::parse("a*"), Err(IdError::BadToken));
        assert_eq!(MerchantId::parse(&"m".repeat(65)), Err(IdError::BadToken));
        assert!(MerchantId::parse(&"m".repeat(64)).is_ok());
    }

    #[test]
    fn payment_id_is_a_string_on_the_wire() {
        let id = PaymentId::parse("6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01").unwrap();
        let mp = rmp_serde::to_vec_named(&id).unwrap();
        let back: String = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!(back, id.to_string());
        assert_eq!(PaymentId::parse("nope"), Err(IdError::NotUuid));
    }
}
