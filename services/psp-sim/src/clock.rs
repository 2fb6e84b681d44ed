//! Time as the simulator stores and prints it: unix milliseconds in the store, RFC 3339 UTC
//! with millisecond precision (`2026-11-25T13:01:02.123Z`) on the wire.

use jiff::Timestamp;

use crate::error::SimError;

/// Wall-clock time in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Prints stored unix milliseconds as RFC 3339 UTC, always with three fractional digits.
pub(crate) fn rfc3339(ms: i64) -> Result<String, SimError> {
    let at = Timestamp::from_millisecond(ms)
        .map_err(|e| SimError::Corrupt(format!("timestamp {ms} ms: {e}")))?;
    Ok(format!("{at:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_milliseconds_always() {
        assert_eq!(
            rfc3339(1_795_611_662_123).unwrap(),
            "2026-11-25T13:01:02.123Z"
        );
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00.000Z");
    }
}
