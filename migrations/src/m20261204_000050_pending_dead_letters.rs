//! Dead letters recorded by the consumer that gave up, before its `+TERM` (or with the failure of
//! a message's last delivery), so one whose advisory was lost (DEAD_LETTERS had no leader) is
//! republished by the dlq service. Keyed by the message at its durable consumer: a repeated
//! termination of the same message is one row.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PendingDeadLetters {
    Table,
    Stream,
    Durable,
    StreamSeq,
    Subject,
    Kind,
    Deliveries,
    Reason,
    AtMs,
    LandedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(PendingDeadLetters::Table)
                .if_not_exists()
                .col(string(PendingDeadLetters::Stream))
                .col(string(PendingDeadLetters::Durable))
                .col(big_integer(PendingDeadLetters::StreamSeq))
                .col(text(PendingDeadLetters::Subject))
                .col(string(PendingDeadLetters::Kind))
                .col(big_integer(PendingDeadLetters::Deliveries))
                .col(text(PendingDeadLetters::Reason))
                .col(big_integer(PendingDeadLetters::AtMs))
                .col(big_integer_null(PendingDeadLetters::LandedAtMs))
                .primary_key(
                    Index::create()
                        .col(PendingDeadLetters::Stream)
                        .col(PendingDeadLetters::Durable)
                        .col(PendingDeadLetters::StreamSeq),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("pending_dead_letters_waiting")
                .table(PendingDeadLetters::Table)
                .col(PendingDeadLetters::LandedAtMs)
                .col(PendingDeadLetters::AtMs)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(PendingDeadLetters::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
