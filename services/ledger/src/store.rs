//! Every SQL statement of the ledger.

use std::collections::BTreeMap;

use paystream_common::apply::{self, Claim};
use paystream_common::db::begin_write;
use paystream_common::events::PaymentEvent;
use paystream_common::time::now_ms;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set,
    Statement,
};

use crate::entity::entry;
use crate::posting;

/// Posts the events not posted before, in one transaction. Returns, per event, whether it was
/// posted now (false: a duplicate).
pub async fn post(db: &DatabaseConnection, events: &[&PaymentEvent]) -> Result<Vec<Claim>, DbErr> {
    let txn = begin_write(db).await?;
    let fresh = apply::claim_fresh(&txn, crate::CONSUMER, events).await?;
    let now = now_ms();
    let mut rows = Vec::new();
    for (e, _) in events
        .iter()
        .zip(&fresh)
        .filter(|(_, c)| **c == Claim::Fresh)
    {
        let posting = posting::entries(e);
        assert!(
            posting::is_balanced(&posting),
            "Σ debits = Σ credits before commit"
        );
        rows.extend(posting.into_iter().map(|p| entry::ActiveModel {
            event_id: Set(e.event_id.to_string()),
            payment_id: Set(e.payment_id.to_string()),
            account: Set(p.account),
            currency: Set(p.currency),
            debit: Set(p.debit_minor),
            credit: Set(p.credit_minor),
            at_ms: Set(now),
            ..Default::default()
        }));
    }
    if !rows.is_empty() {
        entry::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(fresh)
}

/// Σ debits and Σ credits per currency over the whole ledger.
pub async fn totals_by_currency(
    db: &DatabaseConnection,
) -> Result<BTreeMap<String, (i64, i64)>, DbErr> {
    let sql = "SELECT currency, CAST(SUM(debit) AS BIGINT) AS d, CAST(SUM(credit) AS BIGINT) AS c \
               FROM ledger_entries GROUP BY currency";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String>("", "currency")?,
                (r.try_get::<i64>("", "d")?, r.try_get::<i64>("", "c")?),
            ))
        })
        .collect()
}

/// Each merchant account's balance (credits − debits) per currency, keyed by merchant id.
pub async fn merchant_balances(
    db: &DatabaseConnection,
) -> Result<BTreeMap<(String, String), i64>, DbErr> {
    let sql = "SELECT account, currency, CAST(SUM(credit) - SUM(debit) AS BIGINT) AS b \
               FROM ledger_entries WHERE account LIKE 'merchant:%' GROUP BY account, currency";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|r| {
            let account: String = r.try_get("", "account")?;
            let merchant = account.trim_start_matches("merchant:").to_owned();
            Ok(((merchant, r.try_get("", "currency")?), r.try_get("", "b")?))
        })
        .collect()
}

/// Entries posted for one payment, oldest first.
pub async fn entries_of(
    db: &DatabaseConnection,
    payment_id: &str,
) -> Result<Vec<entry::Model>, DbErr> {
    entry::Entity::find()
        .filter(entry::Column::PaymentId.eq(payment_id))
        .all(db)
        .await
}
