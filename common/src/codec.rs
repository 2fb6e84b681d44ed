//! Wire formats. Clients publish JSON (`nats pub`) or MessagePack (paystream's own producers, named
//! maps via `rmp_serde::to_vec_named`). A `Content-Type` header wins; without it the first byte
//! decides. Both decode into the same types.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest payload accepted on any paystream subject (DESIGN § Security).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Deepest nesting a MessagePack payload may have (JSON has serde_json's own limit of 128).
pub const NESTING_DEPTH_MAX: usize = 32;

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::MsgPack => "msgpack",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("larger than {PAYLOAD_BYTES_MAX} bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("empty")]
    Empty,
    #[error("unsupported content type {0}")]
    ContentType(String),
    #[error("neither a JSON object nor a MessagePack map")]
    Unrecognised,
    #[error("invalid {format}: {detail}")]
    Syntax {
        format: &'static str,
        detail: String,
    },
}

/// Picks the format from the header, or sniffs the first significant byte.
pub fn detect(content_type: Option<&str>, payload: &[u8]) -> Result<Format, CodecError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(CodecError::TooLarge(payload.len()));
    }
    if let Some(ct) = content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        return match essence.to_ascii_lowercase().as_str() {
            CONTENT_TYPE_JSON => Ok(Format::Json),
            CONTENT_TYPE_MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(Format::MsgPack)
            }
            _ => Err(CodecError::ContentType(crate::text::bounded(essence, 64))),
        };
    }
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(Format::Json),
        // fixmap (0x80..=0x8f), map16 (0xde), map32 (0xdf)
        Some(0x80..=0x8f | 0xde | 0xdf) => Ok(Format::MsgPack),
        Some(_) => Err(CodecError::Unrecognised),
    }
}

/// Decodes into any type; the first error is reported as syntax, not as a panic.
pub fn decode<T: DeserializeOwned>(format: Format, payload: &[u8]) -> Result<T, CodecError> {
    match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| CodecError::Syntax {
            format: "JSON",
            detail: crate::text::bounded(&e.to_string(), 200),
        }),
        Format::MsgPack => {
            // rmp-serde's default depth (1024) lets 60 KB of nested arrays overflow the stack:
            // paystream's payloads are three levels deep at most.
            let mut de = rmp_serde::Deserializer::from_read_ref(payload);
            de.set_max_depth(NESTING_DEPTH_MAX);
            T::deserialize(&mut de).map_err(|e| CodecError::Syntax {
                format: "MessagePack",
                detail: crate::text::bounded(&e.to_string(), 200),
            })
        }
    }
}

/// MessagePack with field names, the form paystream's own producers publish.
pub fn to_msgpack<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and integers into a Vec cannot fail.
    rmp_serde::to_vec_named(value).expect("msgpack encoding of a plain struct")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_then_sniff() {
        assert_eq!(
            detect(Some("application/json; charset=utf-8"), b"\x81"),
            Ok(Format::Json)
        );
        assert_eq!(
            detect(Some("application/msgpack"), b"{"),
            Ok(Format::MsgPack)
        );
        assert!(matches!(
            detect(Some("text/plain"), b"{}"),
            Err(CodecError::ContentType(_))
        ));
        assert_eq!(detect(None, b"  {\"a\":1}"), Ok(Format::Json));
        assert_eq!(detect(None, b"\x81\xa1a\x01"), Ok(Format::MsgPack));
        assert_eq!(detect(None, b"[1]"), Err(CodecError::Unrecognised));
        assert_eq!(detect(None, b"   "), Err(CodecError::Empty));
        let big = vec![b' '; PAYLOAD_BYTES_MAX + 1];
        assert!(matches!(detect(None, &big), Err(CodecError::TooLarge(_))));
    }
}
