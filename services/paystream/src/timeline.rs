//! One payment's whole life on one time axis (`paystream timeline`, `paystream.timeline`, the
//! console's payment page): the request (stream and sequence), each state with its cause, each
//! PSP attempt (outcome, latency), each event (version, sequence) and when wallet and ledger
//! applied it, failed deliveries, dead letters and their redrive or purge, reconciliation rows,
//! corrections and resolutions. Read from the tables that recorded each fact; nothing is inferred.

use std::collections::BTreeMap;

use paystream_common::apply::applied;
use paystream_common::failures::failure;
use paystream_common::ids::PaymentId;
use paystream_common::streams::{PAYMENT_EVENTS, PAYMENTS};
use paystream_common::time::rfc3339_ms;
use paystream_payment::entity::outbox;
use paystream_reconciler::entity::{correction, row, run};
use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect};
use serde::Serialize;
use serde_json::{Value, json};

use crate::queries::QueryError;

/// Most facts of one kind read for one payment (a payment with hundreds of attempts fits).
const PER_KIND_MAX: u64 = 5_000;
/// Entries per page by default, and at most.
pub const PAGE_DEFAULT: usize = 200;
pub const PAGE_MAX: usize = 1_000;

#[derive(Debug, Serialize)]
pub struct Timeline {
    pub payment_id: String,
    pub state: String,
    pub buyer_id: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: String,
    pub request: Request,
    /// Entries in time order (this page of them).
    pub entries: Vec<Entry>,
    /// All entries, of which `entries` are `offset..offset + entries.len()`.
    pub total: usize,
    pub offset: usize,
}

#[derive(Debug, Serialize)]
pub struct Request {
    pub stream: String,
    pub seq: i64,
    pub at: String,
}

/// One fact at one time.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub at: String,
    #[serde(skip)]
    pub at_ms: i64,
    /// `request`, `state`, `psp_attempt`, `event`, `applied`, `delivery_failed`, `dead_letter`,
    /// `redrive`, `purge`, `recon_row`, `correction`, `resolution`.
    pub kind: &'static str,
    /// One line for people.
    pub summary: String,
    pub fields: Value,
}

fn entry(at_ms: i64, kind: &'static str, summary: String, fields: Value) -> Entry {
    Entry {
        at: rfc3339_ms(at_ms),
        at_ms,
        kind,
        summary,
        fields,
    }
}

/// The timeline of `payment_id`, entries `offset..offset + limit`.
pub async fn timeline(
    db: &DatabaseConnection,
    payment_id: &str,
    offset: usize,
    limit: usize,
) -> Result<Timeline, QueryError> {
    let id = PaymentId::parse(payment_id)
        .map_err(|e| QueryError::BadInput(format!("payment_id: {e}")))?;
    let (row, history) = paystream_payment::store::status(db, id)
        .await?
        .ok_or_else(|| QueryError::NotFound(id.to_string()))?;
    let pid = row.payment_id.clone();
    let mut entries = vec![entry(
        row.requested_at_ms,
        "request",
        format!(
            "requested: {} {} from {} to {} ({PAYMENTS} seq {})",
            row.amount, row.currency, row.buyer_id, row.merchant_id, row.request_seq
        ),
        json!({"stream": PAYMENTS, "seq": row.request_seq}),
    )];
    for h in history {
        entries.push(entry(
            h.at_ms,
            "state",
            format!("{}: {}", h.state, h.cause),
            json!({"state": h.state, "cause": h.cause}),
        ));
    }
    for a in paystream_payment::attempts::of_payment(db, &pid, 0, PER_KIND_MAX).await? {
        entries.push(entry(
            a.at_ms,
            "psp_attempt",
            format!(
                "PSP {} ({}) {} in {} ms",
                a.kind, a.via, a.outcome, a.latency_ms
            ),
            json!({"kind": a.kind, "via": a.via, "outcome": a.outcome, "latency_ms": a.latency_ms, "detail": a.detail}),
        ));
    }
    let events = outbox::Entity::find()
        .filter(outbox::Column::PaymentId.eq(pid.as_str()))
        .order_by_asc(outbox::Column::Version)
        .limit(PER_KIND_MAX)
        .all(db)
        .await?;
    let mut event_seqs = Vec::new();
    let mut event_of: BTreeMap<String, (String, i32)> = BTreeMap::new();
    for e in &events {
        event_of.insert(e.event_id.clone(), (e.kind.clone(), e.version));
        event_seqs.extend(e.stream_seq);
        entries.push(entry(
            e.created_at_ms,
            "event",
            format!(
                "event {} v{} committed{}",
                e.kind,
                e.version,
                match (e.published_at_ms, e.stream_seq) {
                    (Some(at), Some(seq)) =>
                        format!(", published {} as {PAYMENT_EVENTS} seq {seq}", rfc3339_ms(at)),
                    _ => ", not published yet".into(),
                }
            ),
            json!({"event_id": e.event_id, "event": e.kind, "version": e.version, "stream": PAYMENT_EVENTS,
                   "seq": e.stream_seq, "published_at": e.published_at_ms.map(rfc3339_ms)}),
        ));
    }
    for a in applied::Entity::find()
        .filter(applied::Column::PaymentId.eq(pid.as_str()))
        .limit(PER_KIND_MAX)
        .all(db)
        .await?
    {
        let (kind, version) = event_of
            .get(&a.event_id)
            .cloned()
            .unwrap_or_else(|| ("?".into(), a.version));
        entries.push(entry(
            a.applied_at_ms,
            "applied",
            format!("{} applied {kind} v{version}", a.consumer),
            json!({"consumer": a.consumer, "event_id": a.event_id, "version": version, "seq": a.stream_seq}),
        ));
    }
    let messages = [
        (PAYMENTS, vec![row.request_seq]),
        (PAYMENT_EVENTS, event_seqs),
    ];
    for (stream, seqs) in &messages {
        failures_and_dead_letters(db, stream, seqs, &mut entries).await?;
    }
    recon(db, &pid, &mut entries).await?;
    // Stable: facts with the same millisecond keep the order they were read in (cause first).
    entries.sort_by_key(|e| e.at_ms);
    let total = entries.len();
    let offset = offset.min(total);
    let limit = limit.clamp(1, PAGE_MAX);
    let entries: Vec<Entry> = entries.into_iter().skip(offset).take(limit).collect();
    Ok(Timeline {
        payment_id: pid,
        state: row.state,
        buyer_id: row.buyer_id,
        merchant_id: row.merchant_id,
        amount: row.amount,
        currency: row.currency,
        request: Request {
            stream: PAYMENTS.into(),
            seq: row.request_seq,
            at: rfc3339_ms(row.requested_at_ms),
        },
        entries,
        total,
        offset,
    })
}

async fn failures_and_dead_letters(
    db: &DatabaseConnection,
    stream: &str,
    seqs: &[i64],
    entries: &mut Vec<Entry>,
) -> Result<(), DbErr> {
    if seqs.is_empty() {
        return Ok(());
    }
    for f in failure::Entity::find()
        .filter(failure::Column::Stream.eq(stream))
        .filter(failure::Column::StreamSeq.is_in(seqs.iter().copied()))
        .order_by_asc(failure::Column::Id)
        .limit(PER_KIND_MAX)
        .all(db)
        .await?
    {
        entries.push(entry(
            f.at_ms,
            "delivery_failed",
            format!(
                "{} failed delivery {} of {stream} seq {}: {}",
                f.consumer, f.delivered, f.stream_seq, f.error
            ),
            json!({"consumer": f.consumer, "stream": stream, "seq": f.stream_seq, "delivered": f.delivered, "error": f.error}),
        ));
    }
    for d in crate::dlq_index::of_messages(db, stream, seqs).await? {
        entries.push(entry(
            d.at_ms,
            "dead_letter",
            format!(
                "dead-lettered by {} after {} deliveries ({}): {}",
                d.consumer, d.deliveries, d.kind, d.reason
            ),
            json!({"id": d.id, "consumer": d.consumer, "stream": d.stream, "seq": d.stream_seq,
                   "kind": d.kind, "reason": d.reason, "removed": d.removal}),
        ));
        if let (Some(at), Some(how)) = (d.removed_at_ms, d.removal.as_deref()) {
            let by = d.removed_by.clone().unwrap_or_default();
            let (kind, verb) = if how == "redrive" {
                ("redrive", "redriven")
            } else {
                ("purge", "purged")
            };
            entries.push(entry(
                at,
                kind,
                format!("dead letter {} {verb} by {by}", d.id),
                json!({"id": d.id, "by": by}),
            ));
        }
    }
    Ok(())
}

async fn recon(
    db: &DatabaseConnection,
    payment_id: &str,
    entries: &mut Vec<Entry>,
) -> Result<(), DbErr> {
    let rows = row::Entity::find()
        .filter(row::Column::PaymentId.eq(payment_id))
        .order_by_asc(row::Column::Id)
        .limit(PER_KIND_MAX)
        .all(db)
        .await?;
    let run_ids: Vec<String> = rows.iter().map(|r| r.run_id.clone()).collect();
    let runs: BTreeMap<String, run::Model> = run::Entity::find()
        .filter(run::Column::RunId.is_in(run_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.run_id.clone(), r))
        .collect();
    for r in rows {
        let Some(run) = runs.get(&r.run_id) else {
            continue;
        };
        let at = run.finished_at_ms.unwrap_or(run.started_at_ms);
        entries.push(entry(
            at,
            "recon_row",
            format!(
                "reconciliation of {} (run {}): line {} {} {}{}",
                run.date,
                r.run_id,
                r.line,
                r.class,
                r.detail,
                r.correction
                    .as_deref()
                    .map(|c| format!(" [correction {c}]"))
                    .unwrap_or_default()
            ),
            json!({"date": run.date, "run_id": r.run_id, "line": r.line, "class": r.class,
                   "amount": r.amount_minor, "our_amount": r.our_amount_minor, "correction": r.correction}),
        ));
        if r.correction.is_none() {
            for res in crate::recon_resolve::of_date(db, &run.date).await? {
                let same = if res.line > 0 {
                    res.line == r.line
                } else {
                    res.payment_id == payment_id && r.line == 0
                };
                if same {
                    entries.push(entry(
                        res.at_ms,
                        "resolution",
                        format!("resolved by {}: {}", res.actor, res.note),
                        json!({"date": res.date, "line": res.line, "by": res.actor, "note": res.note}),
                    ));
                }
            }
        }
    }
    for c in correction::Entity::find()
        .filter(correction::Column::PaymentId.eq(payment_id))
        .order_by_asc(correction::Column::Id)
        .limit(PER_KIND_MAX)
        .all(db)
        .await?
    {
        entries.push(entry(
            c.at_ms,
            "correction",
            format!(
                "corrected ({}) by run {} line {}: published {}{}",
                c.class,
                c.run_id,
                c.line,
                c.events,
                if c.delta_minor != 0 {
                    format!(", delta {}", c.delta_minor)
                } else {
                    String::new()
                }
            ),
            json!({"class": c.class, "run_id": c.run_id, "line": c.line, "events": c.events, "delta_minor": c.delta_minor}),
        ));
    }
    Ok(())
}

/// The readable form of a timeline's JSON (as `paystream.timeline` answers it).
pub fn table_of(t: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = format!(
        "payment  {}\nbuyer    {}\nmerchant {}\namount   {} {}\nstate    {}\nrequest  {} seq {} at {}\n\n",
        text(&t["payment_id"]),
        text(&t["buyer_id"]),
        text(&t["merchant_id"]),
        text(&t["amount"]),
        text(&t["currency"]),
        text(&t["state"]),
        text(&t["request"]["stream"]),
        text(&t["request"]["seq"]),
        text(&t["request"]["at"]),
    );
    let entries = t["entries"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| vec![text(&e["at"]), text(&e["kind"]), text(&e["summary"])])
        .collect();
    out.push_str(&crate::output::table(&["AT", "KIND", "WHAT"], &rows));
    let (offset, total) = (
        t["offset"].as_u64().unwrap_or(0),
        t["total"].as_u64().unwrap_or(0),
    );
    if offset + (entries.len() as u64) < total || offset > 0 {
        out.push_str(&format!(
            "(entries {}..{} of {total}; --offset and --limit page)\n",
            offset + 1,
            offset + entries.len() as u64
        ));
    }
    out
}
