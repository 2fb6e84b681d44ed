//! `paystream recon run|report` and their NATS endpoints: the same functions, so the CLI's
//! `--json` and `paystream.recon.*` answer the same JSON. A run is written to the audit trail
//! (who, when, which day, what came of it) before it reports.

use paystream_common::config::Config;
use paystream_reconciler::report::Report;
use paystream_reconciler::{ReconError, Reconciler, parse_date, store};
use sea_orm::DatabaseConnection;

/// The audit action of a run.
pub const AUDIT_ACTION: &str = "recon.run";

/// A reconciler for this configuration; `psp_url` is the PSP in force (the simulator that `up`
/// started, `PAYSTREAM_PSP_URL`, or else the simulator's address, `https://` when it is given a
/// certificate).
pub fn reconciler(cfg: &Config, db: DatabaseConnection, psp_url: Option<String>) -> Reconciler {
    let mut http = reqwest::Client::builder().connect_timeout(cfg.psp_connect_timeout);
    if let Some(ca) = &cfg.psp_ca {
        match paystream_payment::psp::extra_roots(ca) {
            Ok(roots) => http = http.tls_certs_merge(roots),
            // The payment service refuses to start on it; a reconciler alone says so and goes on
            // (a drop directory needs no download).
            Err(e) => {
                tracing::error!(error = %e, "settlement downloads will not trust PAYSTREAM_PSP_CA")
            }
        }
    }
    Reconciler {
        db,
        http: http.build().unwrap_or_default(),
        psp_url: psp_url.or_else(|| cfg.psp_url.clone()).or_else(|| {
            let scheme = if cfg.psp_sim_tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            Some(format!("{scheme}://{}", cfg.psp_sim_addr))
        }),
        psp_api_key: cfg.psp_api_key.as_ref().map(|s| s.0.clone()),
        data_dir: cfg.client.data_dir.clone(),
        drop_dir: cfg.recon_drop_dir.clone(),
    }
}

/// Reconciles `date` now (from `file` if given) and audits it as `actor`.
pub async fn run(
    rec: &Reconciler,
    date: &str,
    file: Option<&str>,
    actor: &str,
) -> Result<Report, ReconError> {
    let target = match file {
        Some(f) => format!("{date} (file {f})"),
        None => date.to_owned(),
    };
    let result = match parse_date(date) {
        Ok(day) => rec.run(day, file.map(Into::into)).await,
        Err(e) => Err(e),
    };
    let outcome = match &result {
        Ok(r) => format!(
            "ok: run {}, {} corrections, {} for manual review, {} unparseable lines",
            r.run_id, r.corrections, r.manual_review_total, r.errors_total
        ),
        Err(e) => format!("failed: {e}"),
    };
    crate::audit::record(&rec.db, actor, AUDIT_ACTION, &target, &outcome).await?;
    result
}

/// The report of the newest run of `date` that has one.
pub async fn report(db: &DatabaseConnection, date: &str) -> Result<Report, ReconError> {
    let day = parse_date(date)?.to_string();
    let json = store::latest_report(db, &day)
        .await?
        .ok_or_else(|| ReconError::NoReport(day.clone()))?;
    let mut report: Report = serde_json::from_str(&json)
        .map_err(|e| ReconError::Report(format!("stored report: {e}")))?;
    crate::recon_resolve::merge(db, &mut report).await?;
    Ok(report)
}

/// A readable summary for people.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "reconciliation of {} (run {})\nsource: {}\nlines read: {}, corrections: {} (already applied earlier: {}), manual review: {}, unparseable lines: {}\n\n",
        r.date,
        r.run_id,
        r.source,
        r.lines_read,
        r.corrections,
        r.corrections_already_applied,
        r.manual_review_total,
        r.errors_total
    );
    let counts: Vec<Vec<String>> = r
        .counts
        .iter()
        .map(|(class, n)| vec![class.clone(), n.to_string()])
        .collect();
    out.push_str(&crate::output::table(&["CLASS", "ROWS"], &counts));
    if !r.manual_review.is_empty() {
        out.push_str("\nmanual review:\n");
        let rows: Vec<Vec<String>> = r
            .manual_review
            .iter()
            .map(|m| {
                let num = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
                vec![
                    num(m.line),
                    m.class.clone(),
                    m.payment_id.clone(),
                    m.kind.clone(),
                    num(m.amount),
                    num(m.our_amount),
                    m.currency.clone(),
                    m.detail.clone(),
                    m.resolution
                        .as_ref()
                        .map(|r| format!("{} at {}: {}", r.by, r.at, r.note))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&crate::output::capped_table(
            &[
                "LINE", "CLASS", "PAYMENT", "TYPE", "FILE", "OURS", "CUR", "DETAIL", "RESOLVED",
            ],
            &rows,
            usize::try_from(r.manual_review_total).unwrap_or(usize::MAX),
            "(see the report file)",
        ));
    }
    if !r.errors.is_empty() {
        out.push_str("\nunparseable lines:\n");
        for e in r.errors.iter().take(crate::output::TABLE_ROWS_MAX) {
            out.push_str(&format!("  line {}: {}\n", e.line, e.error));
        }
        let total = usize::try_from(r.errors_total).unwrap_or(usize::MAX);
        let hidden = total.max(r.errors.len()) - r.errors.len().min(crate::output::TABLE_ROWS_MAX);
        if hidden > 0 {
            out.push_str(&format!("  … {hidden} more (see the report file)\n"));
        }
    }
    out.push_str(&format!(
        "\nreport files: {}\n              {}\n",
        r.files.json, r.files.csv
    ));
    if let Some(f) = &r.files.resolutions {
        out.push_str(&format!("              {f}\n"));
    }
    out
}
