//! The audit trail of operator actions (who, when, what, result).
//!
//! Architecture Invariant: operator actions write here before they report success.

use paystream_common::time::now_ms;
use sea_orm::entity::prelude::*;
use sea_orm::{DatabaseConnection, Set};

pub mod entry {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub at_ms: i64,
        pub actor: String,
        pub action: String,
        pub target: String,
        pub result: String,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub async fn record(
    db: &DatabaseConnection,
    actor: &str,
    action: &str,
    target: &str,
    result: &str,
) -> Result<(), DbErr> {
    entry::Entity::insert(entry::ActiveModel {
        at_ms: Set(now_ms()),
        actor: Set(paystream_common::text::bounded(actor, 128)),
        action: Set(action.to_owned()),
        target: Set(paystream_common::text::bounded(target, 512)),
        result: Set(paystream_common::text::bounded(result, 1024)),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

pub async fn count(db: &DatabaseConnection, action: &str) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    entry::Entity::find()
        .filter(entry::Column::Action.eq(action))
        .count(db)
        .await
}

/// One audit row as `paystream audit --json` prints it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

/// The trail, oldest first (at most `limit` newest rows).
pub async fn list(db: &DatabaseConnection, limit: u64) -> Result<Vec<AuditEntry>, DbErr> {
    use sea_orm::{QueryOrder, QuerySelect};
    let mut rows = entry::Entity::find()
        .order_by_desc(entry::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    rows.reverse();
    Ok(rows
        .into_iter()
        .map(|r| AuditEntry {
            at: paystream_common::time::rfc3339_ms(r.at_ms),
            actor: r.actor,
            action: r.action,
            target: r.target,
            result: r.result,
        })
        .collect())
}

/// A page of the trail, newest first: rows with ids below `before`, and the cursor of the next.
pub async fn page(
    db: &DatabaseConnection,
    before: Option<i64>,
    limit: u64,
) -> Result<serde_json::Value, DbErr> {
    use sea_orm::{QueryOrder, QuerySelect};
    let mut q = entry::Entity::find();
    if let Some(b) = before {
        q = q.filter(entry::Column::Id.lt(b));
    }
    let rows = q
        .order_by_desc(entry::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    let next = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let entries: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({"id": r.id, "at": paystream_common::time::rfc3339_ms(r.at_ms),
                "actor": r.actor, "action": r.action, "target": r.target, "result": r.result})
        })
        .collect();
    Ok(serde_json::json!({"entries": entries, "next_before": next}))
}

pub fn table(entries: &[AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.result.clone(),
            ]
        })
        .collect();
    crate::output::capped_table(
        &["AT", "ACTOR", "ACTION", "TARGET", "RESULT"],
        &rows,
        rows.len(),
        "(see `audit --json`)",
    )
}
