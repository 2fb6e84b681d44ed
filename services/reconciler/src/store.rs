//! Every SQL statement of the reconciler. Its own tables (runs, rows, corrections, staging), the
//! per-day lease (through `common::ownership`) and two reads of the payment tables (our settled payments of a day); corrections to
//! payments go through `paystream_payment::store::record_in`, in the same transaction as the
//! correction's key.

use std::collections::{HashMap, HashSet};

use paystream_common::db::begin_write;
use paystream_common::ownership;
use paystream_common::payment::Change;
use paystream_common::settlement::RowKind;
use paystream_common::state::PaymentState;
use paystream_common::time::now_ms;
use paystream_payment::store::{self as payments, Recorded, StoreError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement, Value,
};

use crate::classify::Class;
use crate::entity::{correction, file_row, row, run};

/// The name of the lease on reconciling `date` (in `common::ownership`'s `leases`).
fn lease_name(date: &str) -> String {
    format!("recon:{date}")
}

/// Takes (or renews) the lease on reconciling `date` for `holder` until `ttl` from now, unless
/// another run holds an unexpired one. Returns whether `holder` now holds it.
pub async fn lease_acquire(
    db: &DatabaseConnection,
    date: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<bool, DbErr> {
    ownership::try_lease(db, &lease_name(date), holder, ttl).await
}

pub async fn lease_release(db: &DatabaseConnection, date: &str, holder: &str) -> Result<(), DbErr> {
    ownership::release_lease(db, &lease_name(date), holder).await
}

pub async fn run_start(
    db: &DatabaseConnection,
    run_id: &str,
    date: &str,
    source: &str,
) -> Result<(), DbErr> {
    run::Entity::insert(run::ActiveModel {
        run_id: Set(run_id.to_owned()),
        date: Set(date.to_owned()),
        status: Set("running".into()),
        source: Set(source.to_owned()),
        started_at_ms: Set(now_ms()),
        finished_at_ms: Set(None),
        report: Set(None),
        error: Set(None),
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// Marks runs of `date` left `running` by a process that ended mid-run as failed, and drops
/// their staged rows. Called under the day's lease, so none of them is still running.
pub async fn abandon_stale(db: &DatabaseConnection, date: &str, run_id: &str) -> Result<(), DbErr> {
    let stale: Vec<String> = run::Entity::find()
        .filter(run::Column::Date.eq(date))
        .filter(run::Column::Status.eq("running"))
        .filter(run::Column::RunId.ne(run_id))
        .all(db)
        .await?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    for id in &stale {
        unstage(db, id).await?;
        run_finish(db, id, None, Some("abandoned: the process ended mid-run")).await?;
    }
    Ok(())
}

pub async fn run_source(db: &DatabaseConnection, run_id: &str, source: &str) -> Result<(), DbErr> {
    run::Entity::update_many()
        .col_expr(run::Column::Source, Expr::value(source))
        .filter(run::Column::RunId.eq(run_id))
        .exec(db)
        .await
        .map(|_| ())
}

pub async fn run_finish(
    db: &DatabaseConnection,
    run_id: &str,
    report: Option<&str>,
    error: Option<&str>,
) -> Result<(), DbErr> {
    let status = if error.is_none() { "ok" } else { "failed" };
    run::Entity::update_many()
        .col_expr(run::Column::Status, Expr::value(status))
        .col_expr(run::Column::FinishedAtMs, Expr::value(now_ms()))
        .col_expr(run::Column::Report, Expr::value(report.map(str::to_owned)))
        .col_expr(run::Column::Error, Expr::value(error.map(str::to_owned)))
        .filter(run::Column::RunId.eq(run_id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Whether a run of `date` completed (the scheduler then leaves the day alone).
pub async fn completed(db: &DatabaseConnection, date: &str) -> Result<bool, DbErr> {
    Ok(run::Entity::find()
        .filter(run::Column::Date.eq(date))
        .filter(run::Column::Status.eq("ok"))
        .one(db)
        .await?
        .is_some())
}

/// The newest run of `date` that has a report.
pub async fn latest_report(db: &DatabaseConnection, date: &str) -> Result<Option<String>, DbErr> {
    Ok(run::Entity::find()
        .filter(run::Column::Date.eq(date))
        .filter(run::Column::Report.is_not_null())
        .order_by_desc(run::Column::StartedAtMs)
        .one(db)
        .await?
        .and_then(|r| r.report))
}

/// Runs of `date`, oldest first.
pub async fn runs(db: &DatabaseConnection, date: &str) -> Result<Vec<run::Model>, DbErr> {
    run::Entity::find()
        .filter(run::Column::Date.eq(date))
        .order_by_asc(run::Column::StartedAtMs)
        .all(db)
        .await
}

/// A parsed row's identity, for staging.
#[derive(Debug, Clone)]
pub struct Staged {
    pub line: u64,
    pub psp_reference: String,
    pub payment_id: String,
    pub kind: RowKind,
}

/// Stages a chunk of rows and returns the lines that repeat an earlier row of this run (same
/// `psp_reference`, or same `payment_id` and `type`). Only first occurrences are staged.
pub async fn stage(
    db: &DatabaseConnection,
    run_id: &str,
    chunk: &[Staged],
) -> Result<HashSet<u64>, DbErr> {
    let refs: Vec<String> = chunk.iter().map(|s| s.psp_reference.clone()).collect();
    let ids: Vec<String> = chunk.iter().map(|s| s.payment_id.clone()).collect();
    // Two lookups, each on its own unique index (an OR of both would scan the run's rows).
    let mut earlier = file_row::Entity::find()
        .filter(file_row::Column::RunId.eq(run_id))
        .filter(file_row::Column::PspReference.is_in(refs))
        .all(db)
        .await?;
    earlier.extend(
        file_row::Entity::find()
            .filter(file_row::Column::RunId.eq(run_id))
            .filter(file_row::Column::PaymentId.is_in(ids))
            .all(db)
            .await?,
    );
    let mut seen_refs: HashSet<String> = earlier.iter().map(|r| r.psp_reference.clone()).collect();
    let mut seen_ids: HashSet<(String, String)> = earlier
        .into_iter()
        .map(|r| (r.payment_id, r.kind))
        .collect();
    let mut duplicates = HashSet::new();
    let mut fresh = Vec::with_capacity(chunk.len());
    for s in chunk {
        let key = (s.payment_id.clone(), s.kind.as_str().to_owned());
        if seen_refs.contains(&s.psp_reference) || seen_ids.contains(&key) {
            duplicates.insert(s.line);
            continue;
        }
        seen_refs.insert(s.psp_reference.clone());
        seen_ids.insert(key);
        fresh.push(file_row::ActiveModel {
            run_id: Set(run_id.to_owned()),
            line: Set(line_i64(s.line)),
            psp_reference: Set(s.psp_reference.clone()),
            payment_id: Set(s.payment_id.clone()),
            kind: Set(s.kind.as_str().to_owned()),
            ..Default::default()
        });
    }
    if !fresh.is_empty() {
        file_row::Entity::insert_many(fresh)
            .exec_without_returning(db)
            .await?;
    }
    Ok(duplicates)
}

pub async fn unstage(db: &DatabaseConnection, run_id: &str) -> Result<(), DbErr> {
    file_row::Entity::delete_many()
        .filter(file_row::Column::RunId.eq(run_id))
        .exec(db)
        .await
        .map(|_| ())
}

fn line_i64(line: u64) -> i64 {
    i64::try_from(line).unwrap_or(i64::MAX)
}

/// An earlier correction of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prior {
    pub class: Class,
    pub run_id: String,
    pub line: i64,
}

/// Earlier corrections of these references, by reference.
pub async fn priors(
    db: &impl ConnectionTrait,
    refs: &[String],
) -> Result<HashMap<String, Prior>, DbErr> {
    if refs.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(correction::Entity::find()
        .filter(correction::Column::PspReference.is_in(refs.iter().cloned()))
        .all(db)
        .await?
        .into_iter()
        .filter_map(|c| {
            Some((
                c.psp_reference,
                Prior {
                    class: Class::parse(&c.class)?,
                    run_id: c.run_id,
                    line: c.line,
                },
            ))
        })
        .collect())
}

/// One row to correct: its key and the payment changes that correct it.
#[derive(Debug, Clone)]
pub struct Fix {
    pub class: Class,
    pub psp_reference: String,
    pub payment_id: String,
    pub line: u64,
    /// First the state change (or the adjustment), then an adjustment if any.
    pub changes: Vec<Change>,
    pub delta_minor: i64,
}

/// What became of a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixed {
    Applied,
    /// Corrected before (another run, or a concurrent one under an expired lease).
    AlreadyApplied,
    /// The payment moved on since it was read (e.g. the sweeper resolved it): not corrected.
    Skipped(PaymentState),
}

/// Applies fixes in one transaction: each fix's changes go through the payment domain (state
/// machine, history, outbox event with the next version) and its key is inserted with them, so
/// a fix is either applied and keyed, or neither.
pub async fn apply_fixes(
    db: &DatabaseConnection,
    date: &str,
    run_id: &str,
    fixes: &[Fix],
) -> Result<Vec<Fixed>, StoreError> {
    let txn = begin_write(db).await?;
    let refs: Vec<String> = fixes.iter().map(|f| f.psp_reference.clone()).collect();
    let done = priors(&txn, &refs).await?;
    let todo: Vec<&Fix> = fixes
        .iter()
        .filter(|f| !done.contains_key(&f.psp_reference))
        .collect();
    let changes: Vec<Change> = todo.iter().flat_map(|f| f.changes.clone()).collect();
    let recorded = payments::record_in(&txn, &changes).await?;
    let mut by_fix = HashMap::new();
    let mut keys = Vec::new();
    let now = now_ms();
    let mut at = 0;
    for f in &todo {
        let first = recorded.get(at).cloned().unwrap_or(Recorded::Missing);
        at += f.changes.len();
        let outcome = match first {
            Recorded::Applied(_) => {
                let events: Vec<&str> = f
                    .changes
                    .iter()
                    .filter_map(|c| c.event.map(|e| e.as_str()))
                    .collect();
                keys.push(correction::ActiveModel {
                    class: Set(f.class.as_str().to_owned()),
                    psp_reference: Set(f.psp_reference.clone()),
                    payment_id: Set(f.payment_id.clone()),
                    date: Set(date.to_owned()),
                    run_id: Set(run_id.to_owned()),
                    line: Set(line_i64(f.line)),
                    events: Set(events.join("+")),
                    delta_minor: Set(f.delta_minor),
                    at_ms: Set(now),
                    ..Default::default()
                });
                Fixed::Applied
            }
            Recorded::Skipped(s) => Fixed::Skipped(s),
            Recorded::Missing => Fixed::Skipped(PaymentState::NotStarted),
        };
        by_fix.insert(f.psp_reference.clone(), outcome);
    }
    if !keys.is_empty() {
        correction::Entity::insert_many(keys)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    payments::count_transitions(&recorded);
    Ok(fixes
        .iter()
        .map(|f| {
            by_fix
                .remove(&f.psp_reference)
                .unwrap_or(Fixed::AlreadyApplied)
        })
        .collect())
}

pub async fn insert_rows(
    db: &DatabaseConnection,
    rows: Vec<row::ActiveModel>,
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    row::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Which of a run's rows to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    All,
    /// No automatic correction: manual review.
    Manual,
    /// Corrected, by this run or an earlier one.
    Corrected,
}

/// A run's rows after `after_id`, in id order (file order, then the payments the file lacks).
pub async fn rows_page(
    db: &DatabaseConnection,
    run_id: &str,
    after_id: i64,
    limit: u64,
    which: Rows,
) -> Result<Vec<row::Model>, DbErr> {
    let mut q = row::Entity::find()
        .filter(row::Column::RunId.eq(run_id))
        .filter(row::Column::Id.gt(after_id));
    match which {
        Rows::All => {}
        Rows::Manual => {
            q = q.filter(
                Condition::any()
                    .add(row::Column::Correction.is_null())
                    .add(row::Column::Correction.eq("skipped")),
            );
        }
        Rows::Corrected => {
            q = q.filter(row::Column::Correction.is_in(["applied", "already_applied"]));
        }
    }
    q.order_by_asc(row::Column::Id).limit(limit).all(db).await
}

/// Refreshes the planner's statistics of the staging table after a run staged its rows
/// (PostgreSQL): with the statistics of an empty table it scanned the staging table once per
/// payment in `unmatched` (1.5 s for 2,000 payments, growing quadratically).
pub async fn analyze_staging(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        db.execute_unprepared("ANALYZE recon_file_rows").await?;
    }
    Ok(())
}

/// One of our payments that moved money on the day, with no row for that movement in the file.
#[derive(Debug, Clone)]
pub struct Unmatched {
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub psp_reference: Option<String>,
}

/// Our charges (SUCCESS or CANCELLED, created that day) or refunds (CANCELLED that day) with no
/// staged row of that type, after `after` in payment_id order.
pub async fn unmatched(
    db: &DatabaseConnection,
    run_id: &str,
    kind: RowKind,
    day_ms: (i64, i64),
    after: &str,
    limit: u64,
) -> Result<Vec<Unmatched>, DbErr> {
    let backend = db.get_database_backend();
    let when = match kind {
        RowKind::Charge => {
            "p.state IN ('SUCCESS', 'CANCELLED') AND p.created_at_ms >= ? AND p.created_at_ms < ?"
        }
        RowKind::Refund => {
            "p.state = 'CANCELLED' AND (SELECT MIN(h.at_ms) FROM payment_history h \
             WHERE h.payment_id = p.payment_id AND h.state = 'CANCELLED') >= ? \
             AND (SELECT MIN(h.at_ms) FROM payment_history h \
             WHERE h.payment_id = p.payment_id AND h.state = 'CANCELLED') < ?"
        }
    };
    let sql = format!(
        "SELECT p.payment_id, p.amount, p.currency, p.psp_reference FROM payments p \
         WHERE {when} AND p.payment_id > ? AND NOT EXISTS (SELECT 1 FROM recon_file_rows f \
         WHERE f.run_id = ? AND f.payment_id = p.payment_id AND f.kind = ?) \
         ORDER BY p.payment_id LIMIT {limit}"
    );
    let values: Vec<Value> = vec![
        day_ms.0.into(),
        day_ms.1.into(),
        after.into(),
        run_id.into(),
        kind.as_str().into(),
    ];
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            numbered(backend, &sql),
            values,
        ))
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Unmatched {
                payment_id: r.try_get_by_index(0)?,
                amount_minor: r.try_get_by_index(1)?,
                currency: r.try_get_by_index(2)?,
                psp_reference: r.try_get_by_index(3)?,
            })
        })
        .collect()
}

/// `?` placeholders as the backend wants them (`$1`, `$2`, … on PostgreSQL).
fn numbered(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders() {
        use sea_orm::DbBackend;
        assert_eq!(
            super::numbered(DbBackend::Postgres, "a = ? AND b > ?"),
            "a = $1 AND b > $2"
        );
        assert_eq!(super::numbered(DbBackend::Sqlite, "a = ?"), "a = ?");
    }
}
