//! The report of a run: counts and rows per class, corrections, amounts by currency, unparseable
//! lines. Stored with the run (what `recon report` prints) and written as JSON and CSV files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use paystream_common::settlement::RowError;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::ReconError;
use crate::entity::row;
use crate::store;

/// Rows listed in the JSON report per list (the CSV file has them all).
pub const REPORT_ROWS_MAX: usize = 10_000;
/// Unparseable lines listed in the report (all are counted).
pub const REPORT_ERRORS_MAX: usize = 10_000;

/// DESIGN.md's `recon run|report --json` object (`date`, `run_id`, `counts`, `corrections`,
/// `manual_review`, `errors`), plus details.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub run_id: String,
    /// Rows per class, every class present.
    pub counts: BTreeMap<String, u64>,
    /// Rows corrected by this run.
    pub corrections: u64,
    /// Rows no automatic action settles, oldest line first (at most `REPORT_ROWS_MAX`).
    pub manual_review: Vec<ReportRow>,
    /// Lines that could not be parsed (at most `REPORT_ERRORS_MAX`).
    pub errors: Vec<RowError>,
    pub manual_review_total: u64,
    pub errors_total: u64,
    /// Rows corrected earlier (by another run): not corrected again.
    pub corrections_already_applied: u64,
    /// Rows whose payment moved on between reading and correcting: listed for manual review.
    pub corrections_skipped: u64,
    /// Rows corrected by this run or earlier ones (at most `REPORT_ROWS_MAX`).
    pub corrected: Vec<ReportRow>,
    /// Per currency and class: Σ amounts in minor units (the file's; ours for missing_external).
    pub amounts_by_currency: BTreeMap<String, BTreeMap<String, i64>>,
    /// Data lines read (header excluded).
    pub lines_read: u64,
    pub source: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_seconds: f64,
    pub files: ReportFiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportFiles {
    pub json: String,
    pub csv: String,
    /// `<run_id>.resolutions.csv`: the manual-review rows operators resolved, once there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolutions: Option<String>,
}

/// One row of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRow {
    /// File line; none for our payments the file lacks.
    pub line: Option<i64>,
    pub class: String,
    pub psp_reference: Option<String>,
    pub payment_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: Option<i64>,
    pub our_amount: Option<i64>,
    pub currency: String,
    /// `applied`, `already_applied`, `skipped`, or none.
    pub correction: Option<String>,
    pub detail: String,
    /// A manual-review row an operator resolved (`paystream.recon.resolve`): who, when, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

/// Who resolved a manual-review row, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub by: String,
    pub at: String,
    pub note: String,
}

impl From<row::Model> for ReportRow {
    fn from(r: row::Model) -> Self {
        Self {
            line: (r.line > 0).then_some(r.line),
            class: r.class,
            psp_reference: r.psp_reference,
            payment_id: r.payment_id,
            kind: r.kind,
            amount: r.amount_minor,
            our_amount: r.our_amount_minor,
            currency: r.currency,
            correction: r.correction,
            detail: r.detail,
            resolution: None,
        }
    }
}

const PAGE: u64 = 1_000;

/// The first `REPORT_ROWS_MAX` rows of a run of one kind.
pub async fn listed(
    db: &DatabaseConnection,
    run_id: &str,
    which: store::Rows,
) -> Result<Vec<ReportRow>, ReconError> {
    let mut out = Vec::new();
    let mut after = 0;
    while out.len() < REPORT_ROWS_MAX {
        let page = store::rows_page(db, run_id, after, PAGE, which).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let room = REPORT_ROWS_MAX - out.len();
        out.extend(page.into_iter().take(room).map(ReportRow::from));
    }
    Ok(out)
}

fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// One CSV record of `cells`, newline included.
pub fn csv_line(out: &mut String, cells: &[String]) {
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, c);
    }
    out.push('\n');
}

/// Writes `<dir>/<run_id>.json` and `<dir>/<run_id>.csv` (every non-matched row, page by page).
pub async fn write_files(
    db: &DatabaseConnection,
    report: &mut Report,
    dir: &Path,
) -> Result<(), ReconError> {
    tokio::fs::create_dir_all(dir).await?;
    let csv_path: PathBuf = dir.join(format!("{}.csv", report.run_id));
    let json_path: PathBuf = dir.join(format!("{}.json", report.run_id));
    report.files = ReportFiles {
        json: json_path.display().to_string(),
        csv: csv_path.display().to_string(),
        resolutions: None,
    };
    let mut csv = tokio::io::BufWriter::new(tokio::fs::File::create(&csv_path).await?);
    csv.write_all(
        b"line,class,psp_reference,payment_id,type,amount,our_amount,currency,correction,detail\n",
    )
    .await?;
    let mut after = 0;
    loop {
        let page = store::rows_page(db, &report.run_id, after, PAGE, store::Rows::All).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let mut text = String::new();
        for r in page {
            let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            let cells = [
                if r.line > 0 {
                    r.line.to_string()
                } else {
                    String::new()
                },
                r.class,
                r.psp_reference.unwrap_or_default(),
                r.payment_id,
                r.kind,
                opt(r.amount_minor),
                opt(r.our_amount_minor),
                r.currency,
                r.correction.unwrap_or_default(),
                r.detail,
            ];
            csv_line(&mut text, &cells);
        }
        csv.write_all(text.as_bytes()).await?;
    }
    csv.flush().await?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| ReconError::Report(e.to_string()))?;
    tokio::fs::write(&json_path, json).await?;
    Ok(())
}
