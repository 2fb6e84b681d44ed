//! An index of DEAD_LETTERS in the database, written by the dlq service as each advisory arrives
//! and marked when an operator redrives or purges the entry. DEAD_LETTERS stays the truth (an
//! entry is always read back from it); the index is how a page of 100,000 entries is found
//! (filtered by consumer, reason and time, keyset-paged by id) and how a payment's dead letters
//! are found by the stream sequences of its request and events.
//!
//! Architecture Invariant: only `dlq_watch` inserts rows; only `dlq::redrive|purge` mark them.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::Expr;
use sea_orm::{Condition, QueryOrder, QuerySelect, Set};

pub mod indexed {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dead_letter_index")]
    pub struct Model {
        /// The DEAD_LETTERS sequence.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub stream: String,
        pub stream_seq: i64,
        /// The service whose consumer gave up (`wallet`).
        pub consumer: String,
        pub durable: String,
        pub kind: String,
        pub reason: String,
        pub deliveries: i64,
        pub at_ms: i64,
        pub removed_at_ms: Option<i64>,
        pub removed_by: Option<String>,
        /// `redrive` or `purge`.
        pub removal: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// Records entries (again: an advisory redelivered to the watch is written once).
pub async fn record(db: &DatabaseConnection, rows: Vec<indexed::Model>) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let active = rows.into_iter().map(|row| indexed::ActiveModel {
        id: Set(row.id),
        stream: Set(row.stream),
        stream_seq: Set(row.stream_seq),
        consumer: Set(row.consumer),
        durable: Set(row.durable),
        kind: Set(row.kind),
        reason: Set(paystream_common::text::bounded(&row.reason, 1000)),
        deliveries: Set(row.deliveries),
        at_ms: Set(row.at_ms),
        removed_at_ms: Set(None),
        removed_by: Set(None),
        removal: Set(None),
    });
    indexed::Entity::insert_many(active)
        .on_conflict_do_nothing()
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Marks entries removed by an operator action (`redrive` or `purge`) that began at `at_ms` (a
/// redrive's time is before its republish, so a timeline shows it before what it caused).
pub async fn mark_removed(
    db: &DatabaseConnection,
    ids: &[u64],
    removal: &str,
    actor: &str,
    at_ms: i64,
) -> Result<(), DbErr> {
    let ids: Vec<i64> = ids.iter().filter_map(|i| i64::try_from(*i).ok()).collect();
    indexed::Entity::update_many()
        .col_expr(indexed::Column::RemovedAtMs, Expr::value(at_ms))
        .col_expr(indexed::Column::RemovedBy, Expr::value(actor))
        .col_expr(indexed::Column::Removal, Expr::value(removal))
        .filter(indexed::Column::Id.is_in(ids))
        .exec(db)
        .await
        .map(|_| ())
}

/// What a page of the dead-letter list is filtered by.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Filter {
    pub consumer: Option<String>,
    /// A substring of the reason.
    pub reason: Option<String>,
    /// Dead-lettered at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Dead-lettered before (unix ms).
    pub until_ms: Option<i64>,
}

/// Entries still in DEAD_LETTERS matching `filter`, newest first, with ids below `before`.
pub async fn page(
    db: &DatabaseConnection,
    filter: &Filter,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<indexed::Model>, DbErr> {
    let mut cond = Condition::all().add(indexed::Column::RemovedAtMs.is_null());
    if let Some(c) = filter.consumer.as_deref().filter(|c| !c.is_empty()) {
        cond = cond.add(indexed::Column::Consumer.eq(c));
    }
    if let Some(r) = filter.reason.as_deref().filter(|r| !r.is_empty()) {
        cond = cond.add(indexed::Column::Reason.contains(r));
    }
    if let Some(t) = filter.since_ms {
        cond = cond.add(indexed::Column::AtMs.gte(t));
    }
    if let Some(t) = filter.until_ms {
        cond = cond.add(indexed::Column::AtMs.lt(t));
    }
    if let Some(b) = before {
        cond = cond.add(indexed::Column::Id.lt(b));
    }
    indexed::Entity::find()
        .filter(cond)
        .order_by_desc(indexed::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// Entries still in DEAD_LETTERS, per consumer.
pub async fn counts(db: &DatabaseConnection) -> Result<Vec<(String, i64)>, DbErr> {
    indexed::Entity::find()
        .select_only()
        .column(indexed::Column::Consumer)
        .column_as(indexed::Column::Id.count(), "n")
        .filter(indexed::Column::RemovedAtMs.is_null())
        .group_by(indexed::Column::Consumer)
        .into_tuple()
        .all(db)
        .await
}

/// Every entry (removed or not) for these messages of `stream`.
pub async fn of_messages(
    db: &DatabaseConnection,
    stream: &str,
    seqs: &[i64],
) -> Result<Vec<indexed::Model>, DbErr> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    indexed::Entity::find()
        .filter(indexed::Column::Stream.eq(stream))
        .filter(indexed::Column::StreamSeq.is_in(seqs.iter().copied()))
        .order_by_asc(indexed::Column::Id)
        .all(db)
        .await
}
