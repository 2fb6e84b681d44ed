//! Refunds executed like charges: a cancellation accepted for a payment whose outcome is not in
//! yet is recorded on the payment (`cancel_requested_at_ms`, `cancel_reason`) and carried out
//! once it is charged; REFUNDING needs no column (it is a `state` value). One ALTER per column:
//! SQLite takes one change per ALTER TABLE.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Payments {
    Table,
    CancelRequestedAtMs,
    CancelReason,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Payments::Table)
                .add_column(big_integer_null(Payments::CancelRequestedAtMs))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Payments::Table)
                .add_column(text_null(Payments::CancelReason))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [Payments::CancelReason, Payments::CancelRequestedAtMs] {
            m.alter_table(
                Table::alter()
                    .table(Payments::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
