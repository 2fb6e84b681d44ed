//! Payments (state, history, outbox), wallet (balances), ledger (entries) and the events each
//! PAYMENT_EVENTS consumer applied.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Payments {
    Table,
    PaymentId,
    BuyerId,
    MerchantId,
    Amount,
    Currency,
    State,
    Version,
    Attempts,
    Metadata,
    RequestSeq,
    RequestedAtMs,
    PspReference,
    DeclineCode,
    LastError,
    NextAttemptAtMs,
    LeaseUntilMs,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum PaymentHistory {
    Table,
    Id,
    PaymentId,
    State,
    Cause,
    AtMs,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    PaymentId,
    BuyerId,
    Kind,
    Version,
    Subject,
    Payload,
    CreatedAtMs,
    PublishedAtMs,
    StreamSeq,
}

#[derive(DeriveIden)]
enum WalletBalances {
    Table,
    MerchantId,
    Currency,
    Balance,
    UpdatedAtMs,
}

/// Events applied, per consumer: the de-duplication record every PAYMENT_EVENTS consumer writes in
/// the same transaction as its effect.
#[derive(DeriveIden)]
enum AppliedEvents {
    Table,
    Consumer,
    EventId,
    PaymentId,
    Version,
    AppliedAtMs,
}

#[derive(DeriveIden)]
enum LedgerEntries {
    Table,
    Id,
    EventId,
    PaymentId,
    Account,
    Currency,
    Debit,
    Credit,
    AtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Payments::Table)
                .if_not_exists()
                .col(string(Payments::PaymentId).primary_key())
                .col(string(Payments::BuyerId))
                .col(string(Payments::MerchantId))
                .col(big_integer(Payments::Amount))
                .col(string(Payments::Currency))
                .col(string(Payments::State))
                .col(integer(Payments::Version))
                .col(integer(Payments::Attempts))
                .col(text(Payments::Metadata))
                .col(big_integer(Payments::RequestSeq))
                .col(big_integer(Payments::RequestedAtMs))
                .col(string_null(Payments::PspReference))
                .col(string_null(Payments::DeclineCode))
                .col(text_null(Payments::LastError))
                .col(big_integer_null(Payments::NextAttemptAtMs))
                .col(big_integer_null(Payments::LeaseUntilMs))
                .col(big_integer(Payments::CreatedAtMs))
                .col(big_integer(Payments::UpdatedAtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("payments_state_updated")
                .table(Payments::Table)
                .col(Payments::State)
                .col(Payments::UpdatedAtMs)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PaymentHistory::Table)
                .if_not_exists()
                .col(big_pk_auto(PaymentHistory::Id))
                .col(string(PaymentHistory::PaymentId))
                .col(string(PaymentHistory::State))
                .col(text(PaymentHistory::Cause))
                .col(big_integer(PaymentHistory::AtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("payment_history_payment")
                .table(PaymentHistory::Table)
                .col(PaymentHistory::PaymentId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Outbox::Table)
                .if_not_exists()
                .col(big_pk_auto(Outbox::Id))
                .col(string_uniq(Outbox::EventId))
                .col(string(Outbox::PaymentId))
                .col(string(Outbox::BuyerId))
                .col(string(Outbox::Kind))
                .col(integer(Outbox::Version))
                .col(string(Outbox::Subject))
                .col(blob(Outbox::Payload))
                .col(big_integer(Outbox::CreatedAtMs))
                .col(big_integer_null(Outbox::PublishedAtMs))
                .col(big_integer_null(Outbox::StreamSeq))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("outbox_payment_version")
                .table(Outbox::Table)
                .col(Outbox::PaymentId)
                .col(Outbox::Version)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("outbox_unpublished")
                .table(Outbox::Table)
                .col(Outbox::PublishedAtMs)
                .col(Outbox::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WalletBalances::Table)
                .if_not_exists()
                .col(string(WalletBalances::MerchantId))
                .col(string(WalletBalances::Currency))
                .col(big_integer(WalletBalances::Balance))
                .col(big_integer(WalletBalances::UpdatedAtMs))
                .primary_key(
                    Index::create()
                        .col(WalletBalances::MerchantId)
                        .col(WalletBalances::Currency),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AppliedEvents::Table)
                .if_not_exists()
                .col(string(AppliedEvents::Consumer))
                .col(string(AppliedEvents::EventId))
                .col(string(AppliedEvents::PaymentId))
                .col(integer(AppliedEvents::Version))
                .col(big_integer(AppliedEvents::AppliedAtMs))
                .primary_key(
                    Index::create()
                        .col(AppliedEvents::Consumer)
                        .col(AppliedEvents::EventId),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("applied_events_payment")
                .table(AppliedEvents::Table)
                .col(AppliedEvents::Consumer)
                .col(AppliedEvents::PaymentId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(LedgerEntries::Table)
                .if_not_exists()
                .col(big_pk_auto(LedgerEntries::Id))
                .col(string(LedgerEntries::EventId))
                .col(string(LedgerEntries::PaymentId))
                .col(string(LedgerEntries::Account))
                .col(string(LedgerEntries::Currency))
                .col(big_integer(LedgerEntries::Debit))
                .col(big_integer(LedgerEntries::Credit))
                .col(big_integer(LedgerEntries::AtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("ledger_entries_account")
                .table(LedgerEntries::Table)
                .col(LedgerEntries::Account)
                .col(LedgerEntries::Currency)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            LedgerEntries::Table.into_iden(),
            AppliedEvents::Table.into_iden(),
            WalletBalances::Table.into_iden(),
            Outbox::Table.into_iden(),
            PaymentHistory::Table.into_iden(),
            Payments::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
