//! Dead-letter support: every failed delivery attempt (so `dlq show` can tell why a message that
//! exhausted `max_deliver` died, which the server's advisory does not say), and the audit trail of
//! operator actions.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ConsumerFailures {
    Table,
    Id,
    Consumer,
    Stream,
    StreamSeq,
    Delivered,
    Error,
    AtMs,
}

#[derive(DeriveIden)]
enum Audit {
    Table,
    Id,
    AtMs,
    Actor,
    Action,
    Target,
    Result,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ConsumerFailures::Table)
                .if_not_exists()
                .col(big_pk_auto(ConsumerFailures::Id))
                .col(string(ConsumerFailures::Consumer))
                .col(string(ConsumerFailures::Stream))
                .col(big_integer(ConsumerFailures::StreamSeq))
                .col(big_integer(ConsumerFailures::Delivered))
                .col(text(ConsumerFailures::Error))
                .col(big_integer(ConsumerFailures::AtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("consumer_failures_message")
                .table(ConsumerFailures::Table)
                .col(ConsumerFailures::Stream)
                .col(ConsumerFailures::StreamSeq)
                .col(ConsumerFailures::Consumer)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Audit::Table)
                .if_not_exists()
                .col(big_pk_auto(Audit::Id))
                .col(big_integer(Audit::AtMs))
                .col(string(Audit::Actor))
                .col(string(Audit::Action))
                .col(text(Audit::Target))
                .col(text(Audit::Result))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Audit::Table).if_exists().to_owned())
            .await?;
        m.drop_table(
            Table::drop()
                .table(ConsumerFailures::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
