//! Settlement-file drift, for reconciliation tests: which rows go missing, change amount or
//! appear twice, and which invented rows are added. Every decision is a pure function of the
//! row's `psp_reference` (or of the day and index, for invented rows) and a fixed salt — never
//! of the fault dice — so fetching the same day twice yields the same file, across restarts.

use jiff::civil::Date;
use uuid::{Builder, Uuid};

use crate::config::Drift;

/// Mixed into every hash, so drift decisions are unrelated to any other use of the references.
const SALT: &[u8] = b"paystream-psp-sim/drift/v1";
/// Largest amount change drift applies, in minor units (the change is 1..=this).
const AMOUNT_DELTA_MINOR_MAX: u64 = 100;
/// Merchant of every invented row.
pub(crate) const UNKNOWN_MERCHANT_ID: &str = "m-unknown";

/// What drift does to one real row. Public so reconciliation tests can know, row by row, what
/// the simulator did to its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowDrift {
    /// The row is left out of the file.
    pub missing: bool,
    /// Added to the row's amount; 0 when the amount is left alone.
    pub amount_delta_minor: i64,
    /// The row is written twice.
    pub duplicate: bool,
}

/// Decides the drift of the row with `psp_reference`.
pub fn row_drift(drift: &Drift, psp_reference: &str) -> RowDrift {
    let reference = psp_reference.as_bytes();
    let missing = unit(hash(&[b"missing", reference])) < drift.missing_rate;
    let amount_delta_minor = if unit(hash(&[b"amount", reference])) < drift.amount_rate {
        let delta = 1 + hash(&[b"amount-delta", reference]) % AMOUNT_DELTA_MINOR_MAX;
        i64::try_from(delta).expect("a delta of at most 100 fits in i64")
    } else {
        0
    };
    let duplicate = unit(hash(&[b"duplicate", reference])) < drift.duplicate_rate;
    RowDrift {
        missing,
        amount_delta_minor,
        duplicate,
    }
}

/// A charge row for a payment the simulator never received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnknownRow {
    pub(crate) psp_reference: String,
    /// A UUID, like the payment ids paystream generates, but never sent to the simulator.
    pub(crate) payment_id: String,
    /// 100..=10_000 minor units.
    pub(crate) amount_minor: i64,
}

/// The `index`-th invented row of `date`.
pub(crate) fn unknown_row(date: Date, index: u32) -> UnknownRow {
    let day = date.to_string();
    let index = index.to_le_bytes();
    let id = |label: &[u8]| {
        let high = hash(&[label, b"high", day.as_bytes(), &index]);
        let low = hash(&[label, b"low", day.as_bytes(), &index]);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&high.to_le_bytes());
        bytes[8..].copy_from_slice(&low.to_le_bytes());
        Builder::from_random_bytes(bytes).into_uuid()
    };
    let reference: Uuid = id(b"reference");
    let amount = 100 + hash(&[b"unknown-amount", day.as_bytes(), &index]) % 9_901;
    UnknownRow {
        psp_reference: format!("ch_{}", reference.simple()),
        payment_id: id(b"payment").hyphenated().to_string(),
        amount_minor: i64::try_from(amount).expect("an amount of at most 10_000 fits in i64"),
    }
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finaliser to spread the bits) of the salt
/// and `parts`. Stable across builds and Rust versions, unlike `std`'s hasher.
fn hash(parts: &[&[u8]]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for part in std::iter::once(SALT).chain(parts.iter().copied()) {
        for &byte in part.iter().chain(&[0xff]) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Maps a hash to [0, 1) using its top 53 bits, the precision of an f64.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn references(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ch_{i:032x}")).collect()
    }

    #[test]
    fn no_drift_by_default() {
        for reference in references(1000) {
            assert_eq!(
                row_drift(&Drift::default(), &reference),
                RowDrift::default()
            );
        }
    }

    #[test]
    fn full_rates_hit_every_row() {
        let drift = Drift {
            missing_rate: 1.0,
            amount_rate: 1.0,
            duplicate_rate: 1.0,
            unknown_rows: 0,
        };
        for reference in references(1000) {
            let row = row_drift(&drift, &reference);
            assert!(row.missing && row.duplicate);
            assert!((1..=100).contains(&row.amount_delta_minor));
        }
    }

    #[test]
    fn rates_are_roughly_honoured_and_decisions_repeat() {
        let drift = Drift {
            missing_rate: 0.1,
            ..Drift::default()
        };
        let refs = references(10_000);
        let missing = refs.iter().filter(|r| row_drift(&drift, r).missing).count();
        assert!((800..1200).contains(&missing), "{missing}");
        for r in &refs {
            assert_eq!(row_drift(&drift, r), row_drift(&drift, r));
        }
    }

    #[test]
    fn unknown_rows_are_stable_and_distinct() {
        let day = jiff::civil::date(2026, 11, 25);
        assert_eq!(unknown_row(day, 3), unknown_row(day, 3));
        assert_ne!(unknown_row(day, 3), unknown_row(day, 4));
        assert_ne!(unknown_row(day, 3), unknown_row(day.tomorrow().unwrap(), 3));
        let row = unknown_row(day, 0);
        assert!(row.payment_id.parse::<Uuid>().is_ok());
        assert!(row.psp_reference.starts_with("ch_") && row.psp_reference.len() == 35);
        assert!((100..=10_000).contains(&row.amount_minor));
    }

    #[test]
    fn hash_is_pinned() {
        // A changed hash would silently change every settlement file already fetched.
        // The value was computed independently of this code.
        assert_eq!(hash(&[b"missing", b"ch_0"]), 0x708e_14b1_7c6c_bf46);
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
    }
}
