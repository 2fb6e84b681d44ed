//! Every SQL statement of the wallet.

use std::collections::{BTreeMap, HashSet};

use paystream_common::db::begin_write;
use paystream_common::events::PaymentEvent;
use paystream_common::time::now_ms;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};

use crate::entity::{applied, balance};

/// Applies the events not applied before, in one transaction. Returns, per event, whether it was
/// applied now (false: a duplicate).
pub async fn apply(db: &DatabaseConnection, events: &[&PaymentEvent]) -> Result<Vec<bool>, DbErr> {
    let txn = begin_write(db).await?;
    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let mut seen: HashSet<String> = applied::Entity::find()
        .select_only()
        .column(applied::Column::EventId)
        .filter(applied::Column::EventId.is_in(ids.clone()))
        .into_tuple::<String>()
        .all(&txn)
        .await?
        .into_iter()
        .collect();
    let now = now_ms();
    let mut fresh = Vec::new();
    let mut deltas: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut result = Vec::with_capacity(events.len());
    for (e, id) in events.iter().zip(ids) {
        if !seen.insert(id.clone()) {
            result.push(false);
            continue;
        }
        *deltas
            .entry((e.merchant_id.to_string(), e.currency.to_string()))
            .or_default() += e.merchant_delta_minor();
        fresh.push(applied::ActiveModel {
            event_id: Set(id),
            payment_id: Set(e.payment_id.to_string()),
            applied_at_ms: Set(now),
        });
        result.push(true);
    }
    if !fresh.is_empty() {
        applied::Entity::insert_many(fresh)
            .exec_without_returning(&txn)
            .await?;
    }
    for ((merchant_id, currency), delta) in deltas {
        balance::Entity::insert(balance::ActiveModel {
            merchant_id: Set(merchant_id),
            currency: Set(currency),
            balance: Set(delta),
            updated_at_ms: Set(now),
        })
        .on_conflict(
            OnConflict::columns([balance::Column::MerchantId, balance::Column::Currency])
                .value(
                    balance::Column::Balance,
                    Expr::cust("wallet_balances.balance + excluded.balance"),
                )
                .value(
                    balance::Column::UpdatedAtMs,
                    Expr::cust("excluded.updated_at_ms"),
                )
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(result)
}

/// A merchant's balances by currency (empty for a merchant with no money yet).
pub async fn balances(
    db: &DatabaseConnection,
    merchant_id: &str,
) -> Result<BTreeMap<String, i64>, DbErr> {
    Ok(balance::Entity::find()
        .filter(balance::Column::MerchantId.eq(merchant_id))
        .all(db)
        .await?
        .into_iter()
        .map(|b| (b.currency, b.balance))
        .collect())
}

/// Every balance, keyed by (merchant, currency).
pub async fn all_balances(
    db: &DatabaseConnection,
) -> Result<BTreeMap<(String, String), i64>, DbErr> {
    Ok(balance::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|b| ((b.merchant_id, b.currency), b.balance))
        .collect())
}
