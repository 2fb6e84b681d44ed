//! The database schema, as sea-orm migrations that run unchanged on SQLite and PostgreSQL.
//! `paystream migrate` applies them, and so does every service at start-up.
//!
//! Architecture Invariant: each table has one owning service (see ARCHITECTURE.md); a migration
//! never edits posted ledger entries.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_init;
mod m20261125_000002_dead_letters;
mod m20261201_000010_ownership;
mod m20261201_000020_reconciliation;
mod m20261202_000030_console;
mod m20261203_000040_refunds;
mod m20261204_000050_pending_dead_letters;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_init::Migration),
            Box::new(m20261125_000002_dead_letters::Migration),
            Box::new(m20261201_000010_ownership::Migration),
            Box::new(m20261201_000020_reconciliation::Migration),
            Box::new(m20261202_000030_console::Migration),
            Box::new(m20261203_000040_refunds::Migration),
            Box::new(m20261204_000050_pending_dead_letters::Migration),
        ]
    }
}
