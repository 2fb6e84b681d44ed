//! `paystream.recon.resolve` (`{"date", "line", "note"}`; `"payment_id"` instead of `line` for
//! one of our payments the file lacks): an operator closes a manual-review row with a note. The
//! resolution is audited, stored (`recon_resolutions`), shown by `recon report` (each row's
//! `resolution`: who, when, why) and written next to the report files: the JSON report is
//! rewritten with it and `<run_id>.resolutions.csv` lists every resolution of the day.

use std::collections::HashMap;

use paystream_common::time::{now_ms, rfc3339_ms};
use paystream_reconciler::report::{Report, ReportRow, Resolution, csv_line};
use paystream_reconciler::{ReconError, parse_date};
use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, Set};
use serde::Deserialize;

/// The audit action.
pub const AUDIT_ACTION: &str = "recon.resolve";
/// Longest note kept.
const NOTE_CHARS_MAX: usize = 2000;

pub mod resolution {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_resolutions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub date: String,
        /// The file line; 0 for a payment the file lacks.
        pub line: i64,
        pub payment_id: String,
        pub run_id: String,
        pub actor: String,
        pub note: String,
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Debug, Deserialize)]
pub struct Resolve {
    pub date: String,
    pub line: Option<i64>,
    pub payment_id: Option<String>,
    pub note: String,
}

/// Resolves one manual-review row of `date`'s latest report as `actor` (audited either way);
/// returns the report with the resolution in place.
pub async fn resolve(
    db: &DatabaseConnection,
    req: &Resolve,
    actor: &str,
) -> Result<Report, ReconError> {
    let target = format!(
        "{} line {}{}",
        req.date,
        req.line.unwrap_or(0),
        req.payment_id
            .as_deref()
            .map(|p| format!(" payment {p}"))
            .unwrap_or_default()
    );
    let result = resolve_unaudited(db, req, actor).await;
    let outcome = match &result {
        Ok(_) => format!(
            "resolved: {}",
            paystream_common::text::bounded(&req.note, 200)
        ),
        Err(e) => format!("failed: {e}"),
    };
    crate::audit::record(db, actor, AUDIT_ACTION, &target, &outcome).await?;
    result
}

async fn resolve_unaudited(
    db: &DatabaseConnection,
    req: &Resolve,
    actor: &str,
) -> Result<Report, ReconError> {
    let day = parse_date(&req.date)?.to_string();
    let note = req.note.trim();
    if note.is_empty() {
        return Err(ReconError::BadInput(
            "note: say why the row is resolved".into(),
        ));
    }
    let mut report = crate::recon::report(db, &day).await?;
    let line = req.line.filter(|l| *l > 0);
    let row = report.manual_review.iter().find(|r| match line {
        Some(l) => r.line == Some(l),
        None => r.line.is_none() && Some(r.payment_id.as_str()) == req.payment_id.as_deref(),
    });
    let Some(row) = row else {
        return Err(ReconError::NoReport(format!(
            "{day}: no manual-review row at {}",
            line.map_or_else(
                || format!("payment {}", req.payment_id.as_deref().unwrap_or("?")),
                |l| format!("line {l}")
            )
        )));
    };
    let payment_id = if line.is_some() {
        String::new()
    } else {
        row.payment_id.clone()
    };
    let at_ms = now_ms();
    resolution::Entity::insert(resolution::ActiveModel {
        date: Set(day.clone()),
        line: Set(line.unwrap_or(0)),
        payment_id: Set(payment_id),
        run_id: Set(report.run_id.clone()),
        actor: Set(paystream_common::text::bounded(actor, 128)),
        note: Set(paystream_common::text::bounded(note, NOTE_CHARS_MAX)),
        at_ms: Set(at_ms),
        ..Default::default()
    })
    .on_conflict(
        sea_orm::sea_query::OnConflict::columns([
            resolution::Column::Date,
            resolution::Column::Line,
            resolution::Column::PaymentId,
        ])
        .update_columns([
            resolution::Column::Actor,
            resolution::Column::Note,
            resolution::Column::AtMs,
            resolution::Column::RunId,
        ])
        .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    merge(db, &mut report).await?;
    write_files(db, &mut report).await?;
    Ok(report)
}

/// Every resolution of `date`, oldest first.
pub async fn of_date(
    db: &DatabaseConnection,
    date: &str,
) -> Result<Vec<resolution::Model>, sea_orm::DbErr> {
    resolution::Entity::find()
        .filter(resolution::Column::Date.eq(date))
        .order_by_asc(resolution::Column::Id)
        .all(db)
        .await
}

/// Resolutions of a payment (rows the file lacked, keyed by payment) on any day.
pub async fn of_payment(
    db: &DatabaseConnection,
    payment_id: &str,
) -> Result<Vec<resolution::Model>, sea_orm::DbErr> {
    resolution::Entity::find()
        .filter(resolution::Column::PaymentId.eq(payment_id))
        .order_by_asc(resolution::Column::Id)
        .all(db)
        .await
}

/// Puts each stored resolution of the report's day on its manual-review row.
pub async fn merge(db: &DatabaseConnection, report: &mut Report) -> Result<(), sea_orm::DbErr> {
    if merge_rows(db, &report.date, &mut report.manual_review).await?
        && let Some(dir) = std::path::Path::new(&report.files.json).parent()
        && !report.files.json.is_empty()
    {
        let csv = dir.join(format!("{}.resolutions.csv", report.run_id));
        report.files.resolutions = Some(csv.display().to_string());
    }
    Ok(())
}

/// Puts each stored resolution of `date` on its row among `rows`; whether the day has any.
pub async fn merge_rows(
    db: &DatabaseConnection,
    date: &str,
    rows: &mut [ReportRow],
) -> Result<bool, sea_orm::DbErr> {
    let by_key: HashMap<(i64, String), resolution::Model> = of_date(db, date)
        .await?
        .into_iter()
        .map(|r| ((r.line, r.payment_id.clone()), r))
        .collect();
    for row in rows.iter_mut() {
        let key = match row.line {
            Some(l) => (l, String::new()),
            None => (0, row.payment_id.clone()),
        };
        if let Some(r) = by_key.get(&key) {
            row.resolution = Some(Resolution {
                by: r.actor.clone(),
                at: rfc3339_ms(r.at_ms),
                note: r.note.clone(),
            });
        }
    }
    Ok(!by_key.is_empty())
}

/// Rewrites the report's JSON file with the resolutions and writes `<run_id>.resolutions.csv`
/// beside it (when the report files are on this host).
async fn write_files(db: &DatabaseConnection, report: &mut Report) -> Result<(), ReconError> {
    let Some(dir) = std::path::Path::new(&report.files.json).parent() else {
        return Ok(());
    };
    if report.files.json.is_empty() || !dir.is_dir() {
        return Ok(());
    }
    let csv_path = dir.join(format!("{}.resolutions.csv", report.run_id));
    let mut csv = String::from("date,line,payment_id,resolved_by,resolved_at,note\n");
    for r in of_date(db, &report.date).await? {
        let cells = [
            r.date,
            if r.line > 0 {
                r.line.to_string()
            } else {
                String::new()
            },
            r.payment_id,
            r.actor,
            rfc3339_ms(r.at_ms),
            r.note,
        ];
        csv_line(&mut csv, &cells);
    }
    tokio::fs::write(&csv_path, csv).await?;
    report.files.resolutions = Some(csv_path.display().to_string());
    let json = serde_json::to_vec_pretty(report).map_err(|e| ReconError::Report(e.to_string()))?;
    tokio::fs::write(&report.files.json, json).await?;
    Ok(())
}
