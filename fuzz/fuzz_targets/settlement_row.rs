//! The settlement-file row parser (what reconciliation trusts): any line either parses into a
//! valid row or is refused with its line number; never a panic. Also the header check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paystream_fuzz::{money::AMOUNT_MINOR_MAX, settlement};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = settlement::check_header(text);
    match settlement::parse_row(7, text) {
        Ok(row) => {
            assert_eq!(row.line, 7);
            assert!((1..=AMOUNT_MINOR_MAX).contains(&row.amount.minor()));
            assert!(row.psp_reference.chars().count() <= settlement::REFERENCE_CHARS_MAX);
        }
        Err(e) => assert_eq!(e.line, 7),
    }
});
