//! The PSP's settlement file: one CSV row per settled charge or refund of a UTC day (DESIGN.md,
//! "Settlement file and reconciliation"). Pure parsing, no I/O: `parse_row` turns one line into a
//! valid `SettlementRow` or a `RowError` naming the line and the field, and never panics on any
//! input (a fuzz target can call it directly).

use crate::ids::{MerchantId, PaymentId};
use crate::money::{Amount, Currency};

/// The first line of every settlement file, without its line break.
pub const HEADER: &str = "psp_reference,payment_id,merchant_id,type,amount,currency,settled_at";
/// Longest line accepted, in bytes: a real row is under 200; anything longer is garbage.
pub const LINE_BYTES_MAX: usize = 4096;
/// Longest `psp_reference` accepted.
pub const REFERENCE_CHARS_MAX: usize = 128;

/// Which way money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKind {
    Charge,
    Refund,
}

impl RowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::Charge => "charge",
            RowKind::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "charge" => Some(RowKind::Charge),
            "refund" => Some(RowKind::Refund),
            _ => None,
        }
    }
}

/// One valid row of a settlement file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub psp_reference: String,
    pub payment_id: PaymentId,
    pub merchant_id: MerchantId,
    pub kind: RowKind,
    pub amount: Amount,
    pub currency: Currency,
    /// `settled_at` as unix milliseconds.
    pub settled_at_ms: i64,
}

/// A line that could not be parsed, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("line {line}: {error}")]
pub struct RowError {
    pub line: u64,
    pub error: String,
}

impl RowError {
    pub fn new(line: u64, error: impl Into<String>) -> Self {
        Self {
            line,
            error: error.into(),
        }
    }
}

/// Checks the header line (line 1).
pub fn check_header(text: &str) -> Result<(), RowError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text == HEADER {
        Ok(())
    } else {
        Err(RowError::new(
            1,
            format!(
                "header: expected {HEADER:?}, got {:?}",
                crate::text::bounded(text, 200)
            ),
        ))
    }
}

/// Splits one CSV line into fields (RFC 4180 quoting; a line break inside quotes is not allowed,
/// since files are read line by line).
fn fields(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(7);
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(',') => out.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        out.push(field);
                        return Ok(out);
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            out.push(field);
        }
        if out.len() > 7 {
            return Err("more than 7 fields".into());
        }
    }
}

/// Parses line `line` of a settlement file (not the header). Every field is checked; the error
/// names the first bad one.
pub fn parse_row(line: u64, text: &str) -> Result<SettlementRow, RowError> {
    let bad = |e: String| RowError::new(line, e);
    if text.len() > LINE_BYTES_MAX {
        return Err(bad(format!("line longer than {LINE_BYTES_MAX} bytes")));
    }
    let text = text.strip_suffix('\r').unwrap_or(text);
    let f = fields(text).map_err(bad)?;
    if f.len() != 7 {
        return Err(bad(format!("expected 7 fields, got {}", f.len())));
    }
    let shown = |s: &str| crate::text::bounded(s, 64);
    let psp_reference = f[0].clone();
    if psp_reference.is_empty()
        || psp_reference.chars().count() > REFERENCE_CHARS_MAX
        || psp_reference.chars().any(char::is_control)
    {
        return Err(bad(format!(
            "psp_reference: must be 1..={REFERENCE_CHARS_MAX} printable characters, got {:?}",
            shown(&psp_reference)
        )));
    }
    let payment_id =
        PaymentId::parse(&f[1]).map_err(|e| bad(format!("payment_id: {e}: {:?}", shown(&f[1]))))?;
    let merchant_id = MerchantId::parse(&f[2])
        .map_err(|e| bad(format!("merchant_id: {e}: {:?}", shown(&f[2]))))?;
    let kind = RowKind::parse(&f[3]).ok_or_else(|| {
        bad(format!(
            "type: must be charge or refund, got {:?}",
            shown(&f[3])
        ))
    })?;
    let amount = f[4]
        .parse::<i64>()
        .ok()
        .filter(|_| f[4].bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| Amount::new(v).ok())
        .ok_or_else(|| {
            bad(format!(
                "amount: must be an integer in 1..=10^12 (minor units), got {:?}",
                shown(&f[4])
            ))
        })?;
    let currency =
        Currency::parse(&f[5]).map_err(|e| bad(format!("currency: {e}: {:?}", shown(&f[5]))))?;
    let settled_at_ms = f[6]
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            bad(format!(
                "settled_at: must be RFC 3339 UTC, got {:?}",
                shown(&f[6])
            ))
        })?;
    Ok(SettlementRow {
        line,
        psp_reference,
        payment_id,
        merchant_id,
        kind,
        amount,
        currency,
        settled_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "4f5b2a4e-8c1d-4a51-9a55-0d1c2b3a4f5e";

    fn line(amount: &str, kind: &str) -> String {
        format!("ch_1,{ID},m-1,{kind},{amount},USD,2026-11-25T13:01:02.123Z")
    }

    #[test]
    fn a_good_row() {
        let row = parse_row(2, &line("1234", "charge")).unwrap();
        assert_eq!(row.line, 2);
        assert_eq!(row.kind, RowKind::Charge);
        assert_eq!(row.amount.minor(), 1234);
        assert_eq!(row.payment_id.to_string(), ID);
        assert_eq!(row.settled_at_ms, 1_795_611_662_123);
        assert!(parse_row(3, &(line("5", "refund") + "\r")).is_ok());
    }

    #[test]
    fn bad_fields_are_named_with_the_line() {
        let cases = [
            (line("12.50", "charge"), "amount"),
            (line("-5", "charge"), "amount"),
            (line("+5", "charge"), "amount"),
            (line("0", "charge"), "amount"),
            (line("1000000000001", "charge"), "amount"),
            (line("5", "chargeback"), "type"),
            (
                "ch_1,nope,m-1,charge,5,USD,2026-11-25T00:00:00Z".to_owned(),
                "payment_id",
            ),
            (
                format!("ch_1,{ID},m 1,charge,5,USD,2026-11-25T00:00:00Z"),
                "merchant_id",
            ),
            (
                format!("ch_1,{ID},m-1,charge,5,usd,2026-11-25T00:00:00Z"),
                "currency",
            ),
            (
                format!("ch_1,{ID},m-1,charge,5,USD,yesterday"),
                "settled_at",
            ),
            (
                format!(",{ID},m-1,charge,5,USD,2026-11-25T00:00:00Z"),
                "psp_reference",
            ),
            ("a,b,c".to_owned(), "7 fields"),
            ("\"unterminated,x".to_owned(), "unterminated"),
            ("x".repeat(LINE_BYTES_MAX + 1), "longer"),
        ];
        for (text, field) in cases {
            let e = parse_row(7, &text).unwrap_err();
            assert_eq!(e.line, 7);
            assert!(e.error.contains(field), "{text:?}: {}", e.error);
        }
    }

    #[test]
    fn quoted_fields() {
        assert_eq!(
            fields("\"a,b\",\"c\"\"d\",e").unwrap(),
            vec!["a,b", "c\"d", "e"]
        );
        assert!(fields("\"a\"b").is_err());
        assert_eq!(fields("").unwrap(), vec![""]);
    }

    #[test]
    fn header() {
        assert!(check_header(HEADER).is_ok());
        assert!(check_header(&format!("\u{feff}{HEADER}")).is_ok());
        let e = check_header("payment_id,amount").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.error.starts_with("header"));
    }

    proptest! {
        /// Any input gives a row or an error, never a panic; a row's values are in range.
        #[test]
        fn never_panics(text in ".{0,300}") {
            if let Ok(row) = parse_row(9, &text) {
                prop_assert!((1..=crate::money::AMOUNT_MINOR_MAX).contains(&row.amount.minor()));
            }
        }

        #[test]
        fn rows_round_trip(amount in 1i64..=1_000_000_000_000, refund in any::<bool>()) {
            let kind = if refund { "refund" } else { "charge" };
            let row = parse_row(2, &line(&amount.to_string(), kind)).unwrap();
            prop_assert_eq!(row.amount.minor(), amount);
            prop_assert_eq!(row.kind.as_str(), kind);
        }
    }
}
