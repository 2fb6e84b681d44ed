//! Every SQL statement of the wallet.

use std::collections::BTreeMap;

use paystream_common::apply::{self, Claim};
use paystream_common::db::begin_write;
use paystream_common::events::PaymentEvent;
use paystream_common::time::now_ms;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set};

use crate::entity::balance;

/// Applies the events not applied before, in one transaction. Returns, per event, whether it was
/// applied now (false: a duplicate).
pub async fn apply(db: &DatabaseConnection, events: &[&PaymentEvent]) -> Result<Vec<Claim>, DbErr> {
    let txn = begin_write(db).await?;
    let fresh = apply::claim_fresh(&txn, crate::CONSUMER, events).await?;
    let now = now_ms();
    let mut deltas: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (e, _) in events
        .iter()
        .zip(&fresh)
        .filter(|(_, c)| **c == Claim::Fresh)
    {
        *deltas
            .entry((e.merchant_id.to_string(), e.currency.to_string()))
            .or_default() += e.merchant_delta_minor();
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
    Ok(fresh)
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
