//! One reconciliation run of one day: under the day's lease, read the file in chunks, classify,
//! correct, list our payments the file lacks, report. Memory is bounded by the chunk size and
//! the report's lists, whatever the file's length.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use metrics::{counter, gauge, histogram};
use paystream_common::events::EventKind;
use paystream_common::ids::PaymentId;
use paystream_common::payment::Change;
use paystream_common::settlement::{self, RowError, RowKind, SettlementRow};
use paystream_common::state::Trigger;
use paystream_common::telemetry::names;
use paystream_common::time::{now_ms, rfc3339_ms};
use paystream_payment::store as payments;
use sea_orm::{DatabaseConnection, Set};
use uuid::Uuid;

use crate::ReconError;
use crate::classify::{self, Action, Class, Ours};
use crate::entity::row;
use crate::file::{self, Line};
use crate::report::{self, REPORT_ERRORS_MAX, Report};
use crate::store::{self, Fix, Fixed, Staged};

/// Rows classified and corrected per batch (one staging insert, one payment lookup, one
/// correction transaction each).
pub const CHUNK_ROWS: usize = 1_000;
/// How long a run's lease on its day lasts without renewal (renewed every chunk).
const LEASE: std::time::Duration = std::time::Duration::from_secs(120);

/// What a run needs: the database, and where files come from and reports go.
#[derive(Clone)]
pub struct Reconciler {
    pub db: DatabaseConnection,
    pub http: reqwest::Client,
    /// The PSP to fetch settlement files from, if any.
    pub psp_url: Option<String>,
    pub psp_api_key: Option<String>,
    /// Downloads go to `<data_dir>/recon/files`, reports to `<data_dir>/recon/<date>/`.
    pub data_dir: PathBuf,
    /// Where operators drop `<YYYY-MM-DD>.csv` files.
    pub drop_dir: Option<PathBuf>,
}

/// Running totals of a run: bounded by the number of classes and currencies.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<Class, u64>,
    corrections: BTreeMap<Class, u64>,
    already: u64,
    skipped: u64,
    manual: u64,
    amounts: BTreeMap<String, BTreeMap<String, i64>>,
    errors: Vec<RowError>,
    errors_total: u64,
    lines_read: u64,
}

impl Tally {
    fn error(&mut self, e: RowError) {
        tracing::warn!(line = e.line, error = %e.error, "settlement line not parseable");
        self.errors_total += 1;
        if self.errors.len() < REPORT_ERRORS_MAX {
            self.errors.push(e);
        }
    }

    fn count(&mut self, class: Class, currency: &str, amount_minor: i64) {
        *self.counts.entry(class).or_default() += 1;
        let per = self.amounts.entry(currency.to_owned()).or_default();
        let sum = per.entry(class.as_str().to_owned()).or_default();
        *sum = sum.saturating_add(amount_minor);
    }
}

/// One day's bounds in unix ms, `[start, end)`, UTC (settlement days are UTC days).
fn day_bounds(date: Date) -> Result<(i64, i64), ReconError> {
    let start = |d: Date| {
        d.to_zoned_datetime(TimeZone::UTC)
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| ReconError::BadDate(e.to_string()))
    };
    let next = date
        .tomorrow()
        .map_err(|e| ReconError::BadDate(e.to_string()))?;
    Ok((start(date)?, start(next)?))
}

fn line_i64(line: u64) -> i64 {
    i64::try_from(line).unwrap_or(i64::MAX)
}

impl Reconciler {
    /// Reconciles `date` now (an operator's request): always runs, under the lease.
    pub async fn run(&self, date: Date, file: Option<PathBuf>) -> Result<Report, ReconError> {
        self.leased(date, file, false)
            .await?
            .ok_or_else(|| ReconError::Report("run skipped".into()))
    }

    /// Reconciles `date` unless a run of it completed (checked under the lease): the scheduler's
    /// entry, so several instances reconcile a day once.
    pub async fn run_once(&self, date: Date) -> Result<Option<Report>, ReconError> {
        self.leased(date, None, true).await
    }

    #[tracing::instrument(skip(self, file), fields(%date))]
    async fn leased(
        &self,
        date: Date,
        file: Option<PathBuf>,
        unless_done: bool,
    ) -> Result<Option<Report>, ReconError> {
        let day = date.to_string();
        let run_id = Uuid::new_v4().to_string();
        if !store::lease_acquire(&self.db, &day, &run_id, LEASE).await? {
            return Err(ReconError::Busy(day));
        }
        if unless_done && store::completed(&self.db, &day).await? {
            store::lease_release(&self.db, &day, &run_id).await?;
            return Ok(None);
        }
        let started = Instant::now();
        let started_ms = now_ms();
        store::abandon_stale(&self.db, &day, &run_id).await?;
        store::run_start(&self.db, &run_id, &day, "").await?;
        let result = self.reconcile(date, &run_id, started_ms, file).await;
        let elapsed = started.elapsed().as_secs_f64();
        histogram!(names::RECON_DURATION).record(elapsed);
        let finished = match result {
            Ok(mut report) => {
                report.duration_seconds = elapsed;
                let written = report::write_files(
                    &self.db,
                    &mut report,
                    &self.data_dir.join("recon").join(&day),
                )
                .await;
                match written.and_then(|()| {
                    serde_json::to_string(&report).map_err(|e| ReconError::Report(e.to_string()))
                }) {
                    Ok(json) => {
                        store::run_finish(&self.db, &run_id, Some(&json), None).await?;
                        Ok(report)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = store::unstage(&self.db, &run_id).await {
            tracing::warn!(error = %e, "could not clear the run's staged rows");
        }
        store::lease_release(&self.db, &day, &run_id).await?;
        match finished {
            Ok(report) => {
                counter!(names::RECON_RUNS, "outcome" => "ok").increment(1);
                gauge!(names::RECON_LAST_RUN).set(now_ms() as f64 / 1000.0);
                gauge!(names::RECON_MANUAL_REVIEW).set(report.manual_review_total as f64);
                tracing::info!(
                    run_id,
                    corrections = report.corrections,
                    manual_review = report.manual_review_total,
                    errors = report.errors_total,
                    lines = report.lines_read,
                    seconds = elapsed,
                    "reconciliation done"
                );
                Ok(Some(report))
            }
            Err(e) => {
                counter!(names::RECON_RUNS, "outcome" => "failed").increment(1);
                tracing::error!(run_id, error = %e, "reconciliation failed");
                store::run_finish(&self.db, &run_id, None, Some(&e.to_string())).await?;
                Err(e)
            }
        }
    }

    /// Finds the day's file: the operator's, the drop directory's, or the PSP's (downloaded).
    async fn obtain(&self, day: &str, file: Option<PathBuf>) -> Result<PathBuf, ReconError> {
        if let Some(path) = file {
            return Ok(path);
        }
        if let Some(path) = file::dropped(self.drop_dir.as_deref(), day) {
            return Ok(path);
        }
        let Some(url) = &self.psp_url else {
            return Err(ReconError::NoSource(day.to_owned()));
        };
        file::download(
            &self.http,
            url,
            self.psp_api_key.as_deref(),
            day,
            &self.data_dir.join("recon").join("files"),
        )
        .await
    }

    async fn reconcile(
        &self,
        date: Date,
        run_id: &str,
        started_ms: i64,
        file: Option<PathBuf>,
    ) -> Result<Report, ReconError> {
        let day = date.to_string();
        let bounds = day_bounds(date)?;
        let path = self.obtain(&day, file).await?;
        let source = path.display().to_string();
        store::run_source(&self.db, run_id, &source).await?;
        let handle = tokio::fs::File::open(&path).await?;
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, handle);
        let mut buf = Vec::new();
        let mut tally = Tally::default();
        let mut chunk: Vec<SettlementRow> = Vec::with_capacity(CHUNK_ROWS);
        let mut line_no: u64 = 0;
        let mut lease_renewed_ms = now_ms();
        while let Some(line) = file::next_line(&mut reader, &mut buf).await? {
            line_no += 1;
            let text = match line {
                Line::Text(t) => t,
                Line::TooLong => {
                    tally.error(RowError::new(
                        line_no,
                        format!("line longer than {} bytes", settlement::LINE_BYTES_MAX),
                    ));
                    continue;
                }
                Line::NotUtf8 => {
                    tally.error(RowError::new(line_no, "not UTF-8 text"));
                    continue;
                }
            };
            if line_no == 1 {
                if let Err(e) = settlement::check_header(&text) {
                    tally.error(e);
                }
                continue;
            }
            tally.lines_read += 1;
            if text.is_empty() {
                tally.error(RowError::new(line_no, "empty line"));
                continue;
            }
            match settlement::parse_row(line_no, &text) {
                Ok(row) if row.settled_at_ms < bounds.0 || row.settled_at_ms >= bounds.1 => {
                    tally.error(RowError::new(
                        line_no,
                        format!(
                            "settled_at: {} is not on {day} (UTC)",
                            rfc3339_ms(row.settled_at_ms)
                        ),
                    ));
                }
                Ok(row) => chunk.push(row),
                Err(e) => tally.error(e),
            }
            if chunk.len() == CHUNK_ROWS {
                self.chunk(&day, run_id, &mut chunk, &mut tally).await?;
                self.renew(&day, run_id, &mut lease_renewed_ms).await?;
            }
        }
        if line_no == 0 {
            tally.error(RowError::new(1, "empty file: no header"));
        }
        self.chunk(&day, run_id, &mut chunk, &mut tally).await?;
        store::analyze_staging(&self.db).await?;
        self.unmatched(run_id, bounds, &mut tally).await?;
        let manual_review = report::listed(&self.db, run_id, store::Rows::Manual).await?;
        let corrected = report::listed(&self.db, run_id, store::Rows::Corrected).await?;
        for class in Class::ALL {
            let n = tally.counts.get(&class).copied().unwrap_or(0);
            counter!(names::RECON_ROWS, "class" => class.as_str()).increment(n);
        }
        for (class, n) in &tally.corrections {
            counter!(names::RECON_CORRECTIONS, "class" => class.as_str()).increment(*n);
        }
        counter!(names::RECON_ROW_ERRORS).increment(tally.errors_total);
        Ok(Report {
            date: day,
            run_id: run_id.to_owned(),
            counts: Class::ALL
                .into_iter()
                .map(|c| {
                    (
                        c.as_str().to_owned(),
                        tally.counts.get(&c).copied().unwrap_or(0),
                    )
                })
                .collect(),
            corrections: tally.corrections.values().sum(),
            manual_review,
            errors: tally.errors,
            manual_review_total: tally.manual,
            errors_total: tally.errors_total,
            corrections_already_applied: tally.already,
            corrections_skipped: tally.skipped,
            corrected,
            amounts_by_currency: tally.amounts,
            lines_read: tally.lines_read,
            source,
            started_at: rfc3339_ms(started_ms),
            finished_at: rfc3339_ms(now_ms()),
            duration_seconds: 0.0,
            files: report::ReportFiles::default(),
        })
    }

    async fn renew(&self, day: &str, run_id: &str, renewed_ms: &mut i64) -> Result<(), ReconError> {
        let now = now_ms();
        let quarter_ms = i64::try_from(LEASE.as_millis() / 4).unwrap_or(i64::MAX);
        if now - *renewed_ms < quarter_ms {
            return Ok(());
        }
        if !store::lease_acquire(&self.db, day, run_id, LEASE).await? {
            return Err(ReconError::LeaseLost(day.to_owned()));
        }
        *renewed_ms = now;
        Ok(())
    }

    /// Classifies and corrects one chunk of rows, records the rows that did not match.
    async fn chunk(
        &self,
        day: &str,
        run_id: &str,
        chunk: &mut Vec<SettlementRow>,
        tally: &mut Tally,
    ) -> Result<(), ReconError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let staged: Vec<Staged> = chunk
            .iter()
            .map(|r| Staged {
                line: r.line,
                psp_reference: r.psp_reference.clone(),
                payment_id: r.payment_id.to_string(),
                kind: r.kind,
            })
            .collect();
        let duplicates = store::stage(&self.db, run_id, &staged).await?;
        let refs: Vec<String> = chunk.iter().map(|r| r.psp_reference.clone()).collect();
        let priors = store::priors(&self.db, &refs).await?;
        let mut ids: Vec<PaymentId> = chunk.iter().map(|r| r.payment_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let ours: HashMap<String, Ours> = payments::load(&self.db, &ids)
            .await?
            .into_iter()
            .map(|(id, p)| {
                let p = p?;
                Ok((
                    id.to_string(),
                    Ours {
                        state: p.state,
                        amount_minor: p.amount.minor(),
                        currency: p.currency.to_string(),
                    },
                ))
            })
            .collect::<Result<_, payments::StoreError>>()?;
        // (row, class, our amount, correction, detail) per row, and the fixes to apply.
        let mut judged = Vec::with_capacity(chunk.len());
        let mut fixes = Vec::new();
        for row in chunk.iter() {
            let id = row.payment_id.to_string();
            let dup = duplicates.contains(&row.line);
            let our = ours.get(&id);
            let our_amount = our.map(|o| o.amount_minor);
            if !dup && let Some(p) = priors.get(&row.psp_reference) {
                let detail = format!("corrected by run {} (line {})", p.run_id, p.line);
                judged.push((row, p.class, our_amount, Some("already_applied"), detail));
                continue;
            }
            let v = classify::classify(row, dup, our);
            if let Some(fix) = fix_for(day, run_id, row, &v) {
                fixes.push(fix);
            }
            judged.push((row, v.class, our_amount, None, v.detail));
        }
        let fixed = if fixes.is_empty() {
            Vec::new()
        } else {
            store::apply_fixes(&self.db, day, run_id, &fixes).await?
        };
        let outcome: HashMap<&str, Fixed> = fixes
            .iter()
            .map(|f| f.psp_reference.as_str())
            .zip(fixed)
            .collect();
        let mut records = Vec::new();
        for (row, class, our_amount, mut correction, mut detail) in judged {
            tally.count(class, row.currency.as_str(), row.amount.minor());
            if correction.is_none()
                && class.auto_correctable()
                && let Some(f) = outcome.get(row.psp_reference.as_str())
            {
                correction = Some(match f {
                    Fixed::Applied => {
                        *tally.corrections.entry(class).or_default() += 1;
                        "applied"
                    }
                    Fixed::AlreadyApplied => "already_applied",
                    Fixed::Skipped(s) => {
                        detail =
                            format!("{detail}; not corrected: the payment is now {}", s.as_str());
                        "skipped"
                    }
                });
            }
            match correction {
                Some("already_applied") => tally.already += 1,
                Some("skipped") => {
                    tally.skipped += 1;
                    tally.manual += 1;
                }
                None if class != Class::Matched => tally.manual += 1,
                _ => {}
            }
            if class == Class::Matched {
                continue;
            }
            records.push(row::ActiveModel {
                run_id: Set(run_id.to_owned()),
                line: Set(line_i64(row.line)),
                class: Set(class.as_str().to_owned()),
                psp_reference: Set(Some(row.psp_reference.clone())),
                payment_id: Set(row.payment_id.to_string()),
                kind: Set(row.kind.as_str().to_owned()),
                amount_minor: Set(Some(row.amount.minor())),
                our_amount_minor: Set(our_amount),
                currency: Set(row.currency.to_string()),
                correction: Set(correction.map(str::to_owned)),
                detail: Set(paystream_common::text::bounded(&detail, 500)),
                ..Default::default()
            });
        }
        store::insert_rows(&self.db, records).await?;
        chunk.clear();
        Ok(())
    }

    /// Our charges and refunds of the day that the file has no row for: `missing_external`.
    async fn unmatched(
        &self,
        run_id: &str,
        bounds: (i64, i64),
        tally: &mut Tally,
    ) -> Result<(), ReconError> {
        for kind in [RowKind::Charge, RowKind::Refund] {
            let mut after = String::new();
            loop {
                let page =
                    store::unmatched(&self.db, run_id, kind, bounds, &after, CHUNK_ROWS as u64)
                        .await?;
                let Some(last) = page.last() else { break };
                after = last.payment_id.clone();
                let mut records = Vec::with_capacity(page.len());
                for u in page {
                    tally.count(Class::MissingExternal, &u.currency, u.amount_minor);
                    tally.manual += 1;
                    records.push(row::ActiveModel {
                        run_id: Set(run_id.to_owned()),
                        line: Set(0),
                        class: Set(Class::MissingExternal.as_str().to_owned()),
                        psp_reference: Set(u.psp_reference),
                        payment_id: Set(u.payment_id),
                        kind: Set(kind.as_str().to_owned()),
                        amount_minor: Set(None),
                        our_amount_minor: Set(Some(u.amount_minor)),
                        currency: Set(u.currency),
                        correction: Set(None),
                        detail: Set(format!(
                            "we hold this {} as settled on the day; the file has no row for it",
                            kind.as_str()
                        )),
                        ..Default::default()
                    });
                }
                store::insert_rows(&self.db, records).await?;
            }
        }
        Ok(())
    }
}

/// The payment changes that carry out a verdict's action, if it has one.
fn fix_for(day: &str, run_id: &str, row: &SettlementRow, v: &classify::Verdict) -> Option<Fix> {
    let cause = |what: &str| {
        format!(
            "reconciliation {day} run {run_id} line {}: {what} ({})",
            row.line, row.psp_reference
        )
    };
    let adjust = |delta_minor: i64| Change {
        event: Some(EventKind::Adjusted),
        event_amount: Some(row.amount.minor()),
        delta_minor: Some(delta_minor),
        reason: Some(format!("settlement amount {}", row.amount.minor())),
        ..Change::new(
            row.payment_id,
            Trigger::SettledAmount,
            cause(&format!("amount adjusted by {delta_minor}")),
        )
    };
    let (first, delta) = match v.action {
        Action::None => return None,
        Action::Succeed { delta_minor } => (
            Change {
                event: Some(EventKind::Succeeded),
                psp_reference: Some(row.psp_reference.clone()),
                ..Change::new(
                    row.payment_id,
                    Trigger::SettledCharge,
                    cause("PSP settled the charge"),
                )
            },
            delta_minor,
        ),
        Action::Cancel { delta_minor } => (
            Change {
                event: Some(EventKind::Cancelled),
                reason: Some("refund settled by the PSP".into()),
                ..Change::new(
                    row.payment_id,
                    Trigger::SettledRefund,
                    cause("PSP settled a refund"),
                )
            },
            delta_minor,
        ),
        Action::Adjust { delta_minor } => (adjust(delta_minor), 0),
    };
    let mut changes = vec![first];
    if delta != 0 {
        changes.push(adjust(delta));
    }
    let delta_minor = match v.action {
        Action::Adjust { delta_minor } => delta_minor,
        _ => delta,
    };
    Some(Fix {
        class: v.class,
        psp_reference: row.psp_reference.clone(),
        payment_id: row.payment_id.to_string(),
        line: row.line,
        changes,
        delta_minor,
    })
}
