//! What the operator console and `paystream timeline` need that was not stored yet: each PSP
//! attempt of a payment (kind, outcome, latency), an index of DEAD_LETTERS (which message, why,
//! when, and whether an operator redrove or purged it: pages of 100,000 entries are read from
//! it, and a payment's dead letters found by stream sequence), who resolved a manual-review
//! reconciliation row and why, and indexes to find payments by buyer or merchant.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PspAttempts {
    Table,
    Id,
    PaymentId,
    Kind,
    Via,
    Outcome,
    Detail,
    LatencyMs,
    AtMs,
}

#[derive(DeriveIden)]
enum DeadLetterIndex {
    Table,
    Id,
    Stream,
    StreamSeq,
    Consumer,
    Durable,
    Kind,
    Reason,
    Deliveries,
    AtMs,
    RemovedAtMs,
    RemovedBy,
    Removal,
}

#[derive(DeriveIden)]
enum ReconResolutions {
    Table,
    Id,
    Date,
    Line,
    PaymentId,
    RunId,
    Actor,
    Note,
    AtMs,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    BuyerId,
    MerchantId,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum ReconRows {
    Table,
    PaymentId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(PspAttempts::Table)
                .if_not_exists()
                .col(big_pk_auto(PspAttempts::Id))
                .col(string(PspAttempts::PaymentId))
                .col(string(PspAttempts::Kind))
                .col(string(PspAttempts::Via))
                .col(string(PspAttempts::Outcome))
                .col(text(PspAttempts::Detail))
                .col(big_integer(PspAttempts::LatencyMs))
                .col(big_integer(PspAttempts::AtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("psp_attempts_payment")
                .table(PspAttempts::Table)
                .col(PspAttempts::PaymentId)
                .col(PspAttempts::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(DeadLetterIndex::Table)
                .if_not_exists()
                // The DEAD_LETTERS sequence.
                .col(big_integer(DeadLetterIndex::Id).primary_key())
                .col(string(DeadLetterIndex::Stream))
                .col(big_integer(DeadLetterIndex::StreamSeq))
                .col(string(DeadLetterIndex::Consumer))
                .col(string(DeadLetterIndex::Durable))
                .col(string(DeadLetterIndex::Kind))
                .col(text(DeadLetterIndex::Reason))
                .col(big_integer(DeadLetterIndex::Deliveries))
                .col(big_integer(DeadLetterIndex::AtMs))
                .col(big_integer_null(DeadLetterIndex::RemovedAtMs))
                .col(string_null(DeadLetterIndex::RemovedBy))
                // `redrive` or `purge`.
                .col(string_null(DeadLetterIndex::Removal))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("dead_letter_index_message")
                .table(DeadLetterIndex::Table)
                .col(DeadLetterIndex::Stream)
                .col(DeadLetterIndex::StreamSeq)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("dead_letter_index_consumer")
                .table(DeadLetterIndex::Table)
                .col(DeadLetterIndex::Consumer)
                .col(DeadLetterIndex::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ReconResolutions::Table)
                .if_not_exists()
                .col(big_pk_auto(ReconResolutions::Id))
                .col(string(ReconResolutions::Date))
                // The file line; 0 for one of our payments the file lacks (then `payment_id`).
                .col(big_integer(ReconResolutions::Line))
                .col(string(ReconResolutions::PaymentId))
                .col(string(ReconResolutions::RunId))
                .col(string(ReconResolutions::Actor))
                .col(text(ReconResolutions::Note))
                .col(big_integer(ReconResolutions::AtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("recon_resolutions_row")
                .table(ReconResolutions::Table)
                .col(ReconResolutions::Date)
                .col(ReconResolutions::Line)
                .col(ReconResolutions::PaymentId)
                .unique()
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("payments_buyer", Payments::BuyerId),
            ("payments_merchant", Payments::MerchantId),
        ] {
            m.create_index(
                Index::create()
                    .if_not_exists()
                    .name(name)
                    .table(Payments::Table)
                    .col(col)
                    .col(Payments::CreatedAtMs)
                    .to_owned(),
            )
            .await?;
        }
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("recon_rows_payment")
                .table(ReconRows::Table)
                .col(ReconRows::PaymentId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("recon_rows_payment", "recon_rows"),
            ("payments_merchant", "payments"),
            ("payments_buyer", "payments"),
        ] {
            m.drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
                .await?;
        }
        m.drop_table(
            Table::drop()
                .table(ReconResolutions::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.drop_table(
            Table::drop()
                .table(DeadLetterIndex::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.drop_table(
            Table::drop()
                .table(PspAttempts::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
