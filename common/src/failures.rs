//! Failed delivery attempts, recorded by the consumer loop when it NAKs a message. The server's
//! MAX_DELIVERIES advisory carries no reason; this table is where `dlq show` finds the last error,
//! and the delivery times show the retry schedule being kept.
//!
//! Architecture Invariant: only the consumer loop writes `consumer_failures`.

use sea_orm::entity::prelude::*;
use sea_orm::{DatabaseConnection, QueryOrder, Set};

pub mod failure {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "consumer_failures")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub consumer: String,
        pub stream: String,
        pub stream_seq: i64,
        /// Which delivery failed (1-based).
        pub delivered: i64,
        pub error: String,
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// Appends one failed attempt, made at `at_ms` (when the consumer gave the message back, not when
/// this row is written: the write may lag behind on a loaded database).
pub async fn record(
    db: &DatabaseConnection,
    consumer: &str,
    stream: &str,
    stream_seq: u64,
    delivered: i64,
    error: &str,
    at_ms: i64,
) -> Result<(), DbErr> {
    failure::Entity::insert(failure::ActiveModel {
        consumer: Set(consumer.to_owned()),
        stream: Set(stream.to_owned()),
        stream_seq: Set(i64::try_from(stream_seq).unwrap_or(i64::MAX)),
        delivered: Set(delivered),
        error: Set(crate::text::bounded(error, 1000)),
        at_ms: Set(at_ms),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// Every failed attempt of one message at one consumer, oldest first.
pub async fn attempts(
    db: &DatabaseConnection,
    stream: &str,
    consumer: &str,
    stream_seq: u64,
) -> Result<Vec<failure::Model>, DbErr> {
    failure::Entity::find()
        .filter(failure::Column::Stream.eq(stream))
        .filter(failure::Column::Consumer.eq(consumer))
        .filter(failure::Column::StreamSeq.eq(i64::try_from(stream_seq).unwrap_or(i64::MAX)))
        .order_by_asc(failure::Column::Id)
        .all(db)
        .await
}
