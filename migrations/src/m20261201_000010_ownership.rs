//! Scale-out: which instances of each service are alive (`members`, for partition ownership),
//! named leases (one active outbox relay among the payment instances), and the stream sequence
//! of every applied event (so the order in which a consumer applied a buyer's events can be
//! checked against the stream's order).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Members {
    Table,
    Service,
    InstanceId,
    StartedMs,
    HeartbeatMs,
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Name,
    Owner,
    UntilMs,
}

#[derive(DeriveIden)]
enum AppliedEvents {
    Table,
    StreamSeq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Members::Table)
                .if_not_exists()
                .col(string(Members::Service))
                .col(string(Members::InstanceId))
                .col(big_integer(Members::StartedMs))
                .col(big_integer(Members::HeartbeatMs))
                .primary_key(
                    Index::create()
                        .col(Members::Service)
                        .col(Members::InstanceId),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Leases::Table)
                .if_not_exists()
                .col(string(Leases::Name).primary_key())
                .col(string(Leases::Owner))
                .col(big_integer(Leases::UntilMs))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(AppliedEvents::Table)
                .add_column(big_integer_null(AppliedEvents::StreamSeq))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(AppliedEvents::Table)
                .drop_column(AppliedEvents::StreamSeq)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(Leases::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Members::Table).to_owned())
            .await
    }
}
