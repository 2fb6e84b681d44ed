//! `GET /v1/settlements/{YYYY-MM-DD}`: the settlement file of one UTC day, as CSV.
//!
//! One row per settling charge and refund recorded that day, ordered by `settled_at`, with the
//! configured drift applied. The file is streamed page by page from the store, so a day of a
//! million rows never sits in memory. When `drift.unknown_rows` is set, that many invented
//! charge rows are appended to every day that has at least one real row (a quiet day stays
//! empty); they settle in the day's last millisecond, so the file stays ordered.

use std::fmt::Write;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::Simulator;
use crate::clock::rfc3339;
use crate::drift::{UNKNOWN_MERCHANT_ID, row_drift, unknown_row};
use crate::error::SimError;
use crate::http::{bad_request, tagged};
use crate::record::{MovementKind, Settled};
use crate::request::BadRequest;
use crate::store::Cursor;
use crate::telemetry::Outcome;

/// First line of every file; tools outside the code rely on these column names.
pub(crate) const HEADER: &str =
    "psp_reference,payment_id,merchant_id,type,amount,currency,settled_at\n";
/// Rows read from the store per chunk of the response.
const PAGE_ROWS: u32 = 1_000;
/// Currency of invented rows.
const UNKNOWN_CURRENCY: &str = "USD";

/// A UTC day and its bounds in unix milliseconds, `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Day {
    /// Names the day in invented rows' ids.
    date: Date,
    /// First millisecond of the day.
    start_ms: i64,
    /// First millisecond of the next day.
    end_ms: i64,
}

impl Day {
    /// Parses exactly `YYYY-MM-DD`.
    fn parse(text: &str) -> Result<Self, BadRequest> {
        let bad = || BadRequest(format!("settlement date must be YYYY-MM-DD, got {text:?}"));
        let shaped = text.len() == 10
            && text.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            });
        if !shaped {
            return Err(bad());
        }
        let date = Date::strptime("%Y-%m-%d", text).map_err(|_| bad())?;
        let start_of = |date: Date| {
            date.to_zoned_datetime(TimeZone::UTC)
                .map(|at| at.timestamp().as_millisecond())
                .map_err(|_| bad())
        };
        let start_ms = start_of(date)?;
        let end_ms = start_of(date.tomorrow().map_err(|_| bad())?)?;
        Ok(Self {
            date,
            start_ms,
            end_ms,
        })
    }
}

pub(crate) async fn get_settlement(
    State(sim): State<Simulator>,
    date: Result<Path<String>, PathRejection>,
) -> Response {
    let day = match date {
        Ok(Path(text)) => Day::parse(&text),
        Err(rejection) => Err(BadRequest(rejection.body_text())),
    };
    let day = match day {
        Ok(day) => day,
        Err(reason) => return bad_request(&reason),
    };
    let walk = Walk {
        sim,
        day,
        phase: Phase::Header,
        real_rows: 0,
    };
    let body = Body::from_stream(futures::stream::try_unfold(walk, Walk::next_chunk));
    tagged(
        Outcome::Succeeded,
        ([(CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response(),
    )
}

/// Where the file stream is.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Nothing written yet.
    Header,
    /// Reading real rows after this cursor.
    Rows(Cursor),
    /// Writing invented rows from this index on.
    Unknown(u32),
    /// The file is complete.
    Done,
}

/// The state of one file being streamed.
struct Walk {
    /// The store to page through and the drift to apply.
    sim: Simulator,
    day: Day,
    phase: Phase,
    /// Real rows read so far, before drift: decides whether invented rows are added.
    real_rows: u64,
}

impl Walk {
    /// Produces the next non-empty chunk of the file, or `None` at its end.
    async fn next_chunk(mut self) -> Result<Option<(String, Self)>, SimError> {
        loop {
            let chunk = match self.step().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(None),
                Err(err) => {
                    tracing::error!(error = %err, date = %self.day.date, "settlement file aborted");
                    return Err(err);
                }
            };
            if !chunk.is_empty() {
                return Ok(Some((chunk, self)));
            }
        }
    }

    /// Advances one phase or page; the chunk may be empty (a page drift removed entirely).
    async fn step(&mut self) -> Result<Option<String>, SimError> {
        let shared = &self.sim.shared;
        let mut chunk = String::new();
        match self.phase {
            Phase::Header => {
                chunk.push_str(HEADER);
                self.phase = Phase::Rows(Cursor::start(self.day.start_ms));
            }
            Phase::Rows(cursor) => {
                let page = shared
                    .store
                    .settled_page(cursor, self.day.end_ms, PAGE_ROWS)
                    .await?;
                self.real_rows += page.len() as u64;
                for row in &page {
                    push_settled(&mut chunk, &shared.cfg.drift, row)?;
                }
                self.phase = match page.last() {
                    Some(last) if page.len() == PAGE_ROWS as usize => Phase::Rows(Cursor {
                        settled_at_ms: last.settled_at_ms,
                        seq: last.seq,
                    }),
                    _ => Phase::Unknown(0),
                };
            }
            Phase::Unknown(from) => {
                let total = if self.real_rows > 0 {
                    shared.cfg.drift.unknown_rows
                } else {
                    0
                };
                let to = total.min(from.saturating_add(PAGE_ROWS));
                let settled_at = rfc3339(self.day.end_ms - 1)?;
                for index in from..to {
                    let row = unknown_row(self.day.date, index);
                    push_row(
                        &mut chunk,
                        &CsvRow {
                            psp_reference: &row.psp_reference,
                            payment_id: &row.payment_id,
                            merchant_id: UNKNOWN_MERCHANT_ID,
                            kind: MovementKind::Charge,
                            amount_minor: row.amount_minor,
                            currency: UNKNOWN_CURRENCY,
                            settled_at: &settled_at,
                        },
                    );
                }
                self.phase = if to < total {
                    Phase::Unknown(to)
                } else {
                    Phase::Done
                };
            }
            Phase::Done => return Ok(None),
        }
        Ok(Some(chunk))
    }
}

/// Writes one real row with its drift: left out, amount changed, and/or written twice.
fn push_settled(out: &mut String, drift: &crate::Drift, row: &Settled) -> Result<(), SimError> {
    let drifted = row_drift(drift, &row.psp_reference);
    if drifted.missing {
        return Ok(());
    }
    let settled_at = rfc3339(row.settled_at_ms)?;
    let csv = CsvRow {
        psp_reference: &row.psp_reference,
        payment_id: &row.payment_id,
        merchant_id: &row.merchant_id,
        kind: row.kind,
        amount_minor: row.amount_minor + drifted.amount_delta_minor,
        currency: &row.currency,
        settled_at: &settled_at,
    };
    push_row(out, &csv);
    if drifted.duplicate {
        push_row(out, &csv);
    }
    Ok(())
}

/// One line of the file, in column order.
struct CsvRow<'a> {
    psp_reference: &'a str,
    payment_id: &'a str,
    merchant_id: &'a str,
    kind: MovementKind,
    amount_minor: i64,
    currency: &'a str,
    settled_at: &'a str,
}

fn push_row(out: &mut String, row: &CsvRow<'_>) {
    push_field(out, row.psp_reference);
    out.push(',');
    push_field(out, row.payment_id);
    out.push(',');
    push_field(out, row.merchant_id);
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        ",{},{},{},{}",
        row.kind.as_str(),
        row.amount_minor,
        row.currency,
        row.settled_at
    );
}

/// Writes a field, quoted per RFC 4180 when it holds a comma, quote or line break.
fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_parses_strictly() {
        let day = Day::parse("2026-11-25").unwrap();
        assert_eq!(day.end_ms - day.start_ms, 86_400_000);
        assert_eq!(rfc3339(day.start_ms).unwrap(), "2026-11-25T00:00:00.000Z");
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "20261125",
            "2026-1-25",
            "yesterday",
            "",
        ] {
            assert!(Day::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut out = String::new();
        push_row(
            &mut out,
            &CsvRow {
                psp_reference: "ch_1",
                payment_id: "p,1",
                merchant_id: "m\"x",
                kind: MovementKind::Refund,
                amount_minor: 42,
                currency: "USD",
                settled_at: "2026-11-25T13:01:02.123Z",
            },
        );
        assert_eq!(
            out,
            "ch_1,\"p,1\",\"m\"\"x\",refund,42,USD,2026-11-25T13:01:02.123Z\n"
        );
    }
}
