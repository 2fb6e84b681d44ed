//! Reconciliation: runs, the rows that did not match, corrections keyed so that a day reconciled
//! twice corrects nothing twice, and a per-run staging table of file rows (so
//! duplicates and missing rows are found by queries, not by holding a whole file in memory).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ReconRuns {
    Table,
    RunId,
    Date,
    Status,
    Source,
    StartedAtMs,
    FinishedAtMs,
    Report,
    Error,
}

#[derive(DeriveIden)]
enum ReconRows {
    Table,
    Id,
    RunId,
    Line,
    Class,
    PspReference,
    PaymentId,
    Kind,
    AmountMinor,
    OurAmountMinor,
    Currency,
    Correction,
    Detail,
}

#[derive(DeriveIden)]
enum ReconCorrections {
    Table,
    Id,
    Class,
    PspReference,
    PaymentId,
    Date,
    RunId,
    Line,
    Events,
    DeltaMinor,
    AtMs,
}

/// Read by reconciliation to find our settled payments of a day.
#[derive(DeriveIden)]
enum Payments {
    Table,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum ReconFileRows {
    Table,
    Id,
    RunId,
    Line,
    PspReference,
    PaymentId,
    Kind,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ReconRuns::Table)
                .if_not_exists()
                .col(string(ReconRuns::RunId).primary_key())
                .col(string(ReconRuns::Date))
                .col(string(ReconRuns::Status))
                .col(text(ReconRuns::Source))
                .col(big_integer(ReconRuns::StartedAtMs))
                .col(big_integer_null(ReconRuns::FinishedAtMs))
                .col(text_null(ReconRuns::Report))
                .col(text_null(ReconRuns::Error))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("recon_runs_by_date")
                .table(ReconRuns::Table)
                .col(ReconRuns::Date)
                .col(ReconRuns::StartedAtMs)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ReconRows::Table)
                .if_not_exists()
                .col(big_pk_auto(ReconRows::Id))
                .col(string(ReconRows::RunId))
                .col(big_integer(ReconRows::Line))
                .col(string(ReconRows::Class))
                .col(string_null(ReconRows::PspReference))
                .col(string(ReconRows::PaymentId))
                .col(string(ReconRows::Kind))
                .col(big_integer_null(ReconRows::AmountMinor))
                .col(big_integer_null(ReconRows::OurAmountMinor))
                .col(string(ReconRows::Currency))
                .col(string_null(ReconRows::Correction))
                .col(text(ReconRows::Detail))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("recon_rows_by_run")
                .table(ReconRows::Table)
                .col(ReconRows::RunId)
                .col(ReconRows::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ReconCorrections::Table)
                .if_not_exists()
                .col(big_pk_auto(ReconCorrections::Id))
                .col(string(ReconCorrections::Class))
                .col(string(ReconCorrections::PspReference))
                .col(string(ReconCorrections::PaymentId))
                .col(string(ReconCorrections::Date))
                .col(string(ReconCorrections::RunId))
                .col(big_integer(ReconCorrections::Line))
                .col(string(ReconCorrections::Events))
                .col(big_integer(ReconCorrections::DeltaMinor))
                .col(big_integer(ReconCorrections::AtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .unique()
                .name("recon_corrections_key")
                .table(ReconCorrections::Table)
                .col(ReconCorrections::PspReference)
                .col(ReconCorrections::Class)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ReconFileRows::Table)
                .if_not_exists()
                .col(big_pk_auto(ReconFileRows::Id))
                .col(string(ReconFileRows::RunId))
                .col(big_integer(ReconFileRows::Line))
                .col(string(ReconFileRows::PspReference))
                .col(string(ReconFileRows::PaymentId))
                .col(string(ReconFileRows::Kind))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .unique()
                .name("recon_file_rows_reference")
                .table(ReconFileRows::Table)
                .col(ReconFileRows::RunId)
                .col(ReconFileRows::PspReference)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .unique()
                .name("recon_file_rows_payment")
                .table(ReconFileRows::Table)
                .col(ReconFileRows::RunId)
                .col(ReconFileRows::PaymentId)
                .col(ReconFileRows::Kind)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("payments_created")
                .table(Payments::Table)
                .col(Payments::CreatedAtMs)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .if_exists()
                .name("payments_created")
                .table(Payments::Table)
                .to_owned(),
        )
        .await?;
        for t in [
            ReconFileRows::Table.into_iden(),
            ReconCorrections::Table.into_iden(),
            ReconRows::Table.into_iden(),
            ReconRuns::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
