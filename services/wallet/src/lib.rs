//! The wallet service: consumes PAYMENT_EVENTS (durable consumer `wallet`) and keeps each
//! merchant's balance per currency: `succeeded` credits, `cancelled` debits, `adjusted` applies its
//! signed difference. Each event is applied once: its event_id is recorded in the same
//! transaction as the balance change.
//!
//! Architecture Invariant: only this crate writes balances.

pub mod entity;
pub mod store;

use paystream_common::apply::{ApplyEvents, Claim};
use paystream_common::events::PaymentEvent;
use sea_orm::{DatabaseConnection, DbErr};

pub const CONSUMER: &str = "wallet";

/// The wallet's event applier.
pub struct Wallet {
    pub db: DatabaseConnection,
}

impl ApplyEvents for Wallet {
    const CONSUMER: &'static str = CONSUMER;
    const FAILPOINT: &'static str = "wallet.after_commit";

    async fn apply(&self, events: &[&PaymentEvent]) -> Result<Vec<Claim>, DbErr> {
        store::apply(&self.db, events).await
    }
}
