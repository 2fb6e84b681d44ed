//! The reconciler: compares the PSP's settlement file of a day with our payments, corrects what
//! it can through the payment domain, and reports the rest.
//!
//! A run flows: `file` (the file onto local disk, then line by line) → `common::settlement`
//! (parse) → `store::stage` (duplicates) → `classify` (the pure core) → `store::apply_fixes`
//! (corrections as payment state changes + outbox events, keyed for idempotency) →
//! `store::unmatched` (our payments the file lacks) → `report`. `schedule` runs it nightly.
//!
//! Architecture Invariant: corrects only through `paystream_payment::store::record_in` (the
//! state machine, history and outbox of the payment domain); never writes wallet or ledger tables.

pub mod classify;
pub mod entity;
pub mod file;
pub mod report;
pub mod run;
pub mod schedule;
pub mod store;

use jiff::civil::Date;
pub use run::Reconciler;

#[derive(Debug, thiserror::Error)]
pub enum ReconError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("payment store: {0}")]
    Store(#[from] paystream_payment::store::StoreError),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    #[error("fetching the settlement file: {0}")]
    Fetch(String),
    #[error("another run holds the lease on {0}; try again when it has finished")]
    Busy(String),
    #[error("lost the lease on {0} (the run took longer than the lease); nothing more corrected")]
    LeaseLost(String),
    #[error(
        "no settlement file for {0}: give --file, drop it in PAYSTREAM_RECON_DROP_DIR, or set PAYSTREAM_PSP_URL"
    )]
    NoSource(String),
    #[error("date: {0}")]
    BadDate(String),
    #[error("{0}")]
    BadInput(String),
    #[error("report: {0}")]
    Report(String),
    #[error("no reconciliation report for {0}")]
    NoReport(String),
}

/// Parses exactly `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<Date, ReconError> {
    let bad = || ReconError::BadDate(format!("expected YYYY-MM-DD, got {text:?}"));
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err(bad());
    }
    Date::strptime("%Y-%m-%d", text).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert!(super::parse_date("2026-11-30").is_ok());
        for bad in ["2026-02-30", "2026-1-01", "yesterday", "", "2026-11-30x"] {
            assert!(super::parse_date(bad).is_err(), "{bad}");
        }
    }
}
