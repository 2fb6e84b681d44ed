//! The ledger service: consumes PAYMENT_EVENTS (durable consumer `ledger`) and posts each event as
//! a balanced set of double entries (`posting`). Corrections post new entries; nothing is edited.
//! Each event is posted once: its event_id is recorded in the same transaction as its entries.
//!
//! Architecture Invariant: only this crate writes ledger entries; Σ debits = Σ credits per
//! currency is asserted for every posting before commit.

pub mod balance_watch;
pub mod check;
pub mod entity;
pub mod posting;
pub mod store;

use paystream_common::apply::{ApplyEvents, Claim};
use paystream_common::events::PaymentEvent;
use sea_orm::{DatabaseConnection, DbErr};

pub const CONSUMER: &str = "ledger";

/// The ledger's event applier.
pub struct Ledger {
    pub db: DatabaseConnection,
}

impl ApplyEvents for Ledger {
    const CONSUMER: &'static str = CONSUMER;
    const FAILPOINT: &'static str = "ledger.after_commit";

    async fn apply(&self, events: &[&PaymentEvent]) -> Result<Vec<Claim>, DbErr> {
        store::post(&self.db, events).await
    }
}
