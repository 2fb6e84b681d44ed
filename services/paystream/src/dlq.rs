//! Dead letters: what the server captured in DEAD_LETTERS (one MAX_DELIVERIES or MSG_TERMINATED
//! advisory per dead message), resolved to the original message in its source stream, with the
//! reason (the `+TERM` reason, or the last error the consumer recorded). Redrive republishes the
//! original for reprocessing; purge drops the entry. Both remove the DEAD_LETTERS entry only after
//! their work is done, and both are audited. The original stays in its source stream.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use paystream_common::failures;
use paystream_common::publish::{OrderedPublisher, Outgoing};
use paystream_common::streams::{DEAD_LETTERS, PAYMENT_EVENTS, service_of};
use paystream_common::time::{now_ms, rfc3339_ms};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::audit;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead letter {0} not found")]
    NotFound(u64),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

fn nats_err(e: impl std::fmt::Display) -> DlqError {
    DlqError::Nats(e.to_string())
}

/// The advisory as the server publishes it.
#[derive(Debug, Deserialize)]
pub(crate) struct Advisory {
    #[serde(rename = "type")]
    pub kind: String,
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    #[serde(default)]
    pub deliveries: u64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// DEAD_LETTERS sequence.
    pub id: u64,
    pub stream: String,
    /// The service whose consumer gave up (`wallet`), whichever partition's durable it was.
    pub consumer: String,
    /// The durable consumer itself (`wallet-p3`).
    pub durable: String,
    pub stream_seq: u64,
    /// The original's subject as stored (partitioned form); empty if it has aged out.
    pub subject: String,
    pub deliveries: u64,
    pub reason: String,
    pub at: String,
    /// `terminated` or `max_deliveries`.
    pub kind: String,
    /// Further DEAD_LETTERS entries for the same message at the same consumer (a server restart
    /// can repeat an advisory). Listed once; redrive and purge take them all.
    pub duplicates: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub delivered: i64,
    pub error: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub entry: DeadLetter,
    pub headers: BTreeMap<String, Vec<String>>,
    /// Decoded: a JSON value (from JSON or MessagePack), or the raw text when undecodable.
    pub payload: serde_json::Value,
    /// Every failed delivery the consumer recorded, oldest first.
    pub attempts: Vec<Attempt>,
}

struct Original {
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

async fn original(js: &jetstream::Context, stream: &str, seq: u64) -> Option<Original> {
    let s = js.get_stream(stream).await.ok()?;
    let m = s.get_raw_message(seq).await.ok()?;
    Some(Original {
        subject: m.subject.to_string(),
        headers: m.headers,
        payload: m.payload,
    })
}

async fn entry(
    js: &jetstream::Context,
    db: Option<&DatabaseConnection>,
    id: u64,
) -> Result<Option<(DeadLetter, Option<Original>)>, DlqError> {
    let dlq = js.get_stream(DEAD_LETTERS).await.map_err(nats_err)?;
    let Ok(m) = dlq.get_raw_message(id).await else {
        return Ok(None);
    };
    let Ok(a) = serde_json::from_slice::<Advisory>(&m.payload) else {
        return Ok(None);
    };
    let orig = original(js, &a.stream, a.stream_seq).await;
    let terminated = a.kind.ends_with(".terminated");
    let reason = reason(&a, db).await?;
    let entry = DeadLetter {
        id,
        stream: a.stream,
        consumer: service_of(&a.consumer).to_owned(),
        durable: a.consumer,
        stream_seq: a.stream_seq,
        subject: orig.as_ref().map(|o| o.subject.clone()).unwrap_or_default(),
        deliveries: a.deliveries,
        reason,
        at: a.timestamp.unwrap_or_default(),
        duplicates: Vec::new(),
        kind: if terminated {
            "terminated"
        } else {
            "max_deliveries"
        }
        .into(),
    };
    Ok(Some((entry, orig)))
}

/// Why a message was dead-lettered: the `+TERM` reason, or the last error its consumer recorded.
pub(crate) async fn reason(
    a: &Advisory,
    db: Option<&DatabaseConnection>,
) -> Result<String, DlqError> {
    Ok(match (&a.reason, db) {
        (Some(r), _) if !r.is_empty() => r.clone(),
        (_, Some(db)) => failures::attempts(db, &a.stream, service_of(&a.consumer), a.stream_seq)
            .await?
            .last()
            .map(|f| format!("max deliveries reached; last error: {}", f.error))
            .unwrap_or_else(|| "max deliveries reached; no error recorded".into()),
        (_, None) => "max deliveries reached".into(),
    })
}

/// One dead letter as the index holds it, with what `show` adds; `None` if it is gone.
pub async fn entry_of(
    js: &jetstream::Context,
    db: &DatabaseConnection,
    id: u64,
) -> Result<Option<DeadLetter>, DlqError> {
    Ok(entry(js, Some(db), id).await?.map(|(e, _)| e))
}

/// Every dead letter, oldest first, optionally of one consumer.
pub async fn list(
    js: &jetstream::Context,
    db: Option<&DatabaseConnection>,
    consumer: Option<&str>,
) -> Result<Vec<DeadLetter>, DlqError> {
    let info = js
        .get_stream(DEAD_LETTERS)
        .await
        .map_err(nats_err)?
        .get_info()
        .await
        .map_err(nats_err)?;
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    let mut first: std::collections::HashMap<(String, u64, String), usize> = Default::default();
    for id in info.state.first_sequence..=info.state.last_sequence {
        if let Some((e, _)) = entry(js, db, id).await?
            && consumer.is_none_or(|c| c == e.consumer)
        {
            let key = (e.stream.clone(), e.stream_seq, e.consumer.clone());
            match first.get(&key) {
                Some(&at) => out[at].duplicates.push(id),
                None => {
                    first.insert(key, out.len());
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}

pub async fn show(
    js: &jetstream::Context,
    db: Option<&DatabaseConnection>,
    id: u64,
) -> Result<Detail, DlqError> {
    let (entry, orig) = entry(js, db, id).await?.ok_or(DlqError::NotFound(id))?;
    let attempts = match db {
        Some(db) => failures::attempts(db, &entry.stream, &entry.consumer, entry.stream_seq)
            .await?
            .into_iter()
            .map(|f| Attempt {
                delivered: f.delivered,
                error: f.error,
                at: rfc3339_ms(f.at_ms),
            })
            .collect(),
        None => Vec::new(),
    };
    let (headers, payload) = match &orig {
        Some(o) => (
            header_map(&o.headers),
            decode_payload(&o.headers, &o.payload),
        ),
        None => (
            BTreeMap::new(),
            serde_json::Value::String("(original no longer in its stream)".into()),
        ),
    };
    Ok(Detail {
        entry,
        headers,
        payload,
        attempts,
    })
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    h.iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

fn decode_payload(h: &HeaderMap, payload: &[u8]) -> serde_json::Value {
    use paystream_common::codec;
    let ct = h.get("Content-Type").map(|v| v.as_str());
    codec::detect(ct, payload)
        .ok()
        .and_then(|format| codec::decode::<serde_json::Value>(format, payload).ok())
        .unwrap_or_else(|| serde_json::Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// The subject to republish on: the stored form without its partition token
/// (`payments.request.7.b-1` → `payments.request.b-1`), so the server partitions it again.
pub fn publish_subject(stored: &str) -> String {
    let tokens: Vec<&str> = stored.split('.').collect();
    if tokens.len() == 4 && tokens[0] == "payments" {
        format!("{}.{}.{}", tokens[0], tokens[1], tokens[3])
    } else {
        stored.to_owned()
    }
}

/// Which entries an operator action takes: listed ids, or all (of one consumer).
pub enum Selection {
    Ids(Vec<u64>),
    All { consumer: Option<String> },
}

async fn select(
    js: &jetstream::Context,
    db: &DatabaseConnection,
    sel: &Selection,
) -> Result<Vec<u64>, DlqError> {
    Ok(match sel {
        Selection::Ids(ids) => ids.clone(),
        Selection::All { consumer } => list(js, Some(db), consumer.as_deref())
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect(),
    })
}

/// Republishes each original for reprocessing, then removes its entry. Effects stay exactly-once:
/// consumers de-duplicate by payment_id / event_id. Returns how many were redriven.
pub async fn redrive(
    js: &jetstream::Context,
    db: &DatabaseConnection,
    sel: &Selection,
    actor: &str,
) -> Result<u64, DlqError> {
    let dlq = js.get_stream(DEAD_LETTERS).await.map_err(nats_err)?;
    let mut events = OrderedPublisher::new(js.clone());
    let mut n = 0;
    for id in select(js, db, sel).await? {
        let started_ms = now_ms();
        let target = format!("{DEAD_LETTERS}/{id}");
        let (e, orig) = match entry(js, Some(db), id).await? {
            Some((e, Some(orig))) => (e, orig),
            Some((e, None)) => {
                // The original aged out of its stream: nothing to republish. Reported, kept.
                let why = format!(
                    "not redriven: {}/{} is no longer in its stream",
                    e.stream, e.stream_seq
                );
                audit::record(db, actor, "dlq.redrive", &target, &why).await?;
                tracing::warn!(dead_letter = id, "{why}");
                continue;
            }
            None => {
                audit::record(db, actor, "dlq.redrive", &target, "not found").await?;
                return Err(DlqError::NotFound(id));
            }
        };
        let mut headers = HeaderMap::new();
        for (k, vs) in orig.headers.iter() {
            let name = k.to_string();
            if name.starts_with("Nats-") {
                continue;
            }
            for v in vs {
                headers.append(name.as_str(), v.as_str());
            }
        }
        headers.insert(
            "Paystream-Redriven-From",
            format!("{}/{}", e.stream, e.stream_seq).as_str(),
        );
        let subject = publish_subject(&orig.subject);
        let msg_id = format!("redrive-{}-{}-{id}", e.stream, e.stream_seq);
        let ack = if e.stream == PAYMENT_EVENTS {
            // An event is republished like any producer's: conditioned on the buyer's last
            // sequence, so it takes its place in the buyer's order.
            let buyer = subject.rsplit('.').next().unwrap_or_default().to_owned();
            let item = Outgoing {
                buyer,
                subject,
                msg_id,
                payload: orig.payload.clone(),
                headers,
            };
            events
                .publish(std::slice::from_ref(&item))
                .await
                .pop()
                .expect("one result per item")
                .map_err(nats_err)?
        } else {
            let msg = PublishMessage::build()
                .payload(orig.payload.clone())
                .headers(headers)
                .message_id(msg_id);
            js.send_publish(subject, msg)
                .await
                .map_err(nats_err)?
                .await
                .map_err(nats_err)?
        };
        // Audited before the entry goes, so no redrive is ever unrecorded.
        audit::record(
            db,
            actor,
            "dlq.redrive",
            &format!(
                "{target} ({}/{} for {})",
                e.stream, e.stream_seq, e.consumer
            ),
            &format!("republished as {}/{}", ack.stream, ack.sequence),
        )
        .await?;
        let removed: Vec<u64> = std::iter::once(id)
            .chain(duplicates_of(js, db, &e).await?)
            .collect();
        for dup in &removed {
            dlq.delete_message(*dup).await.map_err(nats_err)?;
        }
        crate::dlq_index::mark_removed(db, &removed, "redrive", actor, started_ms).await?;
        tracing::info!(dead_letter = id, stream = %e.stream, stream_seq = e.stream_seq, new_seq = ack.sequence, actor, "dead letter redriven");
        n += 1;
    }
    Ok(n)
}

/// Removes entries from DEAD_LETTERS (the originals stay in their streams). Audited.
pub async fn purge(
    js: &jetstream::Context,
    db: &DatabaseConnection,
    sel: &Selection,
    actor: &str,
) -> Result<u64, DlqError> {
    let dlq = js.get_stream(DEAD_LETTERS).await.map_err(nats_err)?;
    let mut n = 0;
    for id in select(js, db, sel).await? {
        let Some((e, _)) = entry(js, Some(db), id).await? else {
            return Err(DlqError::NotFound(id));
        };
        audit::record(
            db,
            actor,
            "dlq.purge",
            &format!(
                "{DEAD_LETTERS}/{id} ({}/{} for {})",
                e.stream, e.stream_seq, e.consumer
            ),
            &format!(
                "purged at {}; reason was: {}",
                rfc3339_ms(now_ms()),
                e.reason
            ),
        )
        .await?;
        let removed: Vec<u64> = std::iter::once(id)
            .chain(duplicates_of(js, db, &e).await?)
            .collect();
        for dup in &removed {
            dlq.delete_message(*dup).await.map_err(nats_err)?;
        }
        crate::dlq_index::mark_removed(db, &removed, "purge", actor, now_ms()).await?;
        n += 1;
    }
    Ok(n)
}

/// Other entries for the same message at the same consumer as `e`.
async fn duplicates_of(
    js: &jetstream::Context,
    db: &DatabaseConnection,
    e: &DeadLetter,
) -> Result<Vec<u64>, DlqError> {
    Ok(list(js, Some(db), Some(&e.consumer))
        .await?
        .into_iter()
        .filter(|x| x.stream == e.stream && x.stream_seq == e.stream_seq)
        .flat_map(|x| std::iter::once(x.id).chain(x.duplicates))
        .filter(|id| *id != e.id)
        .collect())
}

pub fn list_table(entries: &[DeadLetter]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.consumer.clone(),
                format!("{}/{}", e.stream, e.stream_seq),
                e.subject.clone(),
                e.deliveries.to_string(),
                paystream_common::text::bounded(&e.reason, 80),
            ]
        })
        .collect();
    crate::output::capped_table(
        &[
            "ID",
            "CONSUMER",
            "ORIGINAL",
            "SUBJECT",
            "DELIVERIES",
            "REASON",
        ],
        &rows,
        rows.len(),
        "(see `dlq list --json`)",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn publish_subjects_drop_the_partition() {
        assert_eq!(
            super::publish_subject("payments.request.7.b-1"),
            "payments.request.b-1"
        );
        assert_eq!(
            super::publish_subject("payments.events.0.b-1"),
            "payments.events.b-1"
        );
        assert_eq!(super::publish_subject("other.x"), "other.x");
    }
}
