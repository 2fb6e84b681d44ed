//! The endpoints the operator console reads and acts through, beside `api`'s: `paystream.timeline`
//! and `paystream.recon.resolve` (DESIGN.md), and the console's read-only pages under
//! `paystream.console.>` (overview, dead-letter pages, reconciliation runs and rows, finding
//! payments, audit pages). Each page is keyset-paged and bounded, so it answers in constant time
//! however many dead letters or reconciliation rows there are.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::service::Group;
use paystream_common::shutdown::Shutdown;
use paystream_common::time::{now_ms, rfc3339_ms};
use paystream_payment::entity::payment;
use paystream_payment::gate::Gate;
use paystream_reconciler::entity::{row, run};
use paystream_reconciler::report::ReportRow;
use paystream_reconciler::store::{self as recon_store, Rows};
use sea_orm::entity::prelude::*;
use sea_orm::{DatabaseConnection, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::api::{ApiError, body, json, serve, serve_operator};

/// Most rows any page answers.
pub const PAGE_MAX: u64 = 500;

fn page_size(asked: Option<u64>) -> u64 {
    asked.unwrap_or(100).clamp(1, PAGE_MAX)
}

fn db_err(e: DbErr) -> ApiError {
    ApiError {
        code: 500,
        status: format!("database: {e}"),
    }
}

#[derive(Deserialize)]
struct TimelineQuery {
    payment_id: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    #[serde(flatten)]
    filter: crate::dlq_index::Filter,
    before: Option<i64>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct RunsQuery {
    /// Runs of days before this one (`YYYY-MM-DD`).
    before: Option<String>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct RowsQuery {
    date: String,
    after: Option<i64>,
    limit: Option<u64>,
    /// `manual` (default) or `all`.
    which: Option<String>,
}

#[derive(Deserialize)]
struct FindQuery {
    payment_id: Option<String>,
    buyer_id: Option<String>,
    merchant_id: Option<String>,
    /// Payments created before this (unix ms).
    before_ms: Option<i64>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct AuditQuery {
    before: Option<i64>,
    limit: Option<u64>,
}

#[derive(Serialize)]
pub struct Overview {
    pub payments_by_state: BTreeMap<String, u64>,
    /// Payments that reached a final state in the last hour.
    pub completed_last_hour: u64,
    pub unknown: u64,
    pub unknown_oldest_age_seconds: Option<i64>,
    pub dead_letters_by_consumer: BTreeMap<String, i64>,
    pub latest_recon: Option<RunSummary>,
    /// `closed`, `half_open`, `open`; `unknown` when the payment service runs in another process.
    pub psp_circuit: String,
}

#[derive(Serialize)]
pub struct RunSummary {
    pub date: String,
    pub run_id: String,
    pub status: String,
    pub started_at: String,
    pub counts: BTreeMap<String, u64>,
    pub manual_review_total: u64,
}

/// A manual-review row beside our record of its payment.
#[derive(Serialize)]
struct RowWithOurs {
    id: i64,
    #[serde(flatten)]
    row: ReportRow,
    our_state: Option<String>,
    our_amount_now: Option<i64>,
}

pub async fn start(
    root: &Group,
    client: async_nats::Client,
    db: DatabaseConnection,
    js: async_nats::jetstream::Context,
    gate: Option<Arc<Gate>>,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<(), async_nats::Error> {
    let d = db.clone();
    tasks.spawn(serve(
        root.endpoint("timeline").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move {
                let q: TimelineQuery = body(&p)?;
                let limit = q.limit.unwrap_or(crate::timeline::PAGE_DEFAULT);
                json(&crate::timeline::timeline(&d, &q.payment_id, q.offset, limit).await?)
            }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve_operator(
        root.group("recon").endpoint("resolve").await?,
        crate::recon_resolve::AUDIT_ACTION,
        client,
        db.clone(),
        shutdown.clone(),
        move |p, actor| {
            let d = d.clone();
            async move {
                let q: crate::recon_resolve::Resolve = body(&p)?;
                json(&crate::recon_resolve::resolve(&d, &q, &actor).await?)
            }
        },
    ));
    let console = root.group("console");
    let d = db.clone();
    tasks.spawn(serve(
        console.endpoint("overview").await?,
        shutdown.clone(),
        move |_| {
            let (d, g) = (d.clone(), gate.clone());
            async move { json(&overview(&d, g.as_deref()).await.map_err(db_err)?) }
        },
    ));
    let (d, j) = (db.clone(), js);
    tasks.spawn(serve(
        console.endpoint("dead_letters").await?,
        shutdown.clone(),
        move |p| {
            let (d, j) = (d.clone(), j.clone());
            async move {
                let q: DeadLetterQuery = body(&p)?;
                let limit = page_size(q.limit);
                let rows = crate::dlq_index::page(&d, &q.filter, q.before, limit)
                    .await
                    .map_err(db_err)?;
                let next = (rows.len() as u64 == limit)
                    .then(|| rows.last().map(|r| r.id))
                    .flatten();
                let mut entries = Vec::with_capacity(rows.len());
                for r in rows {
                    // DEAD_LETTERS is the truth: an entry gone from it is not listed.
                    if let Some(e) =
                        crate::dlq::entry_of(&j, &d, u64::try_from(r.id).unwrap_or(0)).await?
                    {
                        entries.push(e);
                    }
                }
                json(&serde_json::json!({"entries": entries, "next_before": next}))
            }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve(
        console.endpoint("recon_runs").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move {
                let q: RunsQuery = body(&p)?;
                json(&runs(&d, q.before.as_deref(), page_size(q.limit)).await?)
            }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve(
        console.endpoint("recon_rows").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move { json(&recon_rows(&d, body(&p)?).await?) }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve(
        console.endpoint("find").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move { json(&find(&d, body(&p)?).await.map_err(db_err)?) }
        },
    ));
    tasks.spawn(serve(
        console.endpoint("audit").await?,
        shutdown,
        move |p| {
            let d = db.clone();
            async move {
                let q: AuditQuery = body(&p)?;
                json(
                    &crate::audit::page(&d, q.before, page_size(q.limit))
                        .await
                        .map_err(db_err)?,
                )
            }
        },
    ));
    Ok(())
}

async fn overview(db: &DatabaseConnection, gate: Option<&Gate>) -> Result<Overview, DbErr> {
    let by_state: Vec<(String, i64)> = payment::Entity::find()
        .select_only()
        .column(payment::Column::State)
        .column_as(payment::Column::PaymentId.count(), "n")
        .group_by(payment::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    let hour_ago = now_ms() - 3_600_000;
    let completed_last_hour = payment::Entity::find()
        .filter(payment::Column::State.is_in(["SUCCESS", "FAILURE", "CANCELLED"]))
        .filter(payment::Column::UpdatedAtMs.gte(hour_ago))
        .count(db)
        .await?;
    let unknown = by_state
        .iter()
        .find(|(s, _)| s == "UNKNOWN")
        .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
    let oldest = paystream_payment::store::oldest_unknown_created_ms(db).await?;
    let latest = run::Entity::find()
        .filter(run::Column::Report.is_not_null())
        .order_by_desc(run::Column::Date)
        .order_by_desc(run::Column::StartedAtMs)
        .one(db)
        .await?;
    Ok(Overview {
        payments_by_state: by_state
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect(),
        completed_last_hour,
        unknown,
        unknown_oldest_age_seconds: oldest.map(|t| (now_ms() - t) / 1000),
        dead_letters_by_consumer: crate::dlq_index::counts(db).await?.into_iter().collect(),
        latest_recon: latest.and_then(summary),
        psp_circuit: gate.map_or("unknown", |g| g.state().as_str()).to_owned(),
    })
}

fn summary(r: run::Model) -> Option<RunSummary> {
    let report: paystream_reconciler::report::Report =
        serde_json::from_str(r.report.as_deref()?).ok()?;
    Some(RunSummary {
        date: r.date,
        run_id: r.run_id,
        status: r.status,
        started_at: rfc3339_ms(r.started_at_ms),
        counts: report.counts,
        manual_review_total: report.manual_review_total,
    })
}

/// The newest run of each day, newest day first.
async fn runs(
    db: &DatabaseConnection,
    before: Option<&str>,
    limit: u64,
) -> Result<Vec<RunSummary>, ApiError> {
    let mut q = run::Entity::find().filter(run::Column::Report.is_not_null());
    if let Some(b) = before {
        q = q.filter(run::Column::Date.lt(b));
    }
    // A day may have several runs: read a few more than asked and keep each day's newest.
    let all = q
        .order_by_desc(run::Column::Date)
        .order_by_desc(run::Column::StartedAtMs)
        .limit(limit * 4)
        .all(db)
        .await
        .map_err(db_err)?;
    let mut out: Vec<RunSummary> = Vec::new();
    for r in all {
        if out.last().is_some_and(|l| l.date == r.date) {
            continue;
        }
        if out.len() as u64 == limit {
            break;
        }
        out.extend(summary(r));
    }
    Ok(out)
}

async fn recon_rows(db: &DatabaseConnection, q: RowsQuery) -> Result<serde_json::Value, ApiError> {
    let day = paystream_reconciler::parse_date(&q.date)?.to_string();
    let latest = run::Entity::find()
        .filter(run::Column::Date.eq(day.as_str()))
        .filter(run::Column::Report.is_not_null())
        .order_by_desc(run::Column::StartedAtMs)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError {
            code: 404,
            status: format!("no reconciliation report for {day}"),
        })?;
    let which = match q.which.as_deref() {
        None | Some("manual") => Rows::Manual,
        Some("all") => Rows::All,
        Some(other) => {
            return Err(ApiError {
                code: 400,
                status: format!("which: {other:?} is neither \"manual\" nor \"all\""),
            });
        }
    };
    let limit = page_size(q.limit);
    let rows: Vec<row::Model> =
        recon_store::rows_page(db, &latest.run_id, q.after.unwrap_or(0), limit, which)
            .await
            .map_err(db_err)?;
    let next = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let ids: Vec<String> = rows.iter().map(|r| r.payment_id.clone()).collect();
    let ours: BTreeMap<String, payment::Model> = payment::Entity::find()
        .filter(payment::Column::PaymentId.is_in(ids))
        .all(db)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|p| (p.payment_id.clone(), p))
        .collect();
    let mut listed: Vec<ReportRow> = rows.iter().cloned().map(ReportRow::from).collect();
    crate::recon_resolve::merge_rows(db, &day, &mut listed)
        .await
        .map_err(db_err)?;
    let out: Vec<RowWithOurs> = rows
        .iter()
        .zip(listed)
        .map(|(r, row)| {
            let p = ours.get(&r.payment_id);
            RowWithOurs {
                id: r.id,
                row,
                our_state: p.map(|p| p.state.clone()),
                our_amount_now: p.map(|p| p.amount),
            }
        })
        .collect();
    Ok(serde_json::json!({
        "date": day,
        "run_id": latest.run_id,
        "rows": out,
        "next_after": next,
    }))
}

#[derive(Serialize)]
struct Found {
    payment_id: String,
    buyer_id: String,
    merchant_id: String,
    amount: i64,
    currency: String,
    state: String,
    created_at: String,
    created_at_ms: i64,
}

async fn find(db: &DatabaseConnection, q: FindQuery) -> Result<Vec<Found>, DbErr> {
    let mut query = payment::Entity::find();
    if let Some(p) = q.payment_id.as_deref().filter(|s| !s.is_empty()) {
        query = query.filter(payment::Column::PaymentId.eq(p.trim()));
    } else if let Some(b) = q.buyer_id.as_deref().filter(|s| !s.is_empty()) {
        query = query.filter(payment::Column::BuyerId.eq(b.trim()));
    } else if let Some(m) = q.merchant_id.as_deref().filter(|s| !s.is_empty()) {
        query = query.filter(payment::Column::MerchantId.eq(m.trim()));
    } else {
        return Ok(Vec::new());
    }
    if let Some(b) = q.before_ms {
        query = query.filter(payment::Column::CreatedAtMs.lt(b));
    }
    Ok(query
        .order_by_desc(payment::Column::CreatedAtMs)
        .limit(page_size(q.limit))
        .all(db)
        .await?
        .into_iter()
        .map(|p| Found {
            created_at: rfc3339_ms(p.created_at_ms),
            created_at_ms: p.created_at_ms,
            payment_id: p.payment_id,
            buyer_id: p.buyer_id,
            merchant_id: p.merchant_id,
            amount: p.amount,
            currency: p.currency,
            state: p.state,
        })
        .collect())
}
