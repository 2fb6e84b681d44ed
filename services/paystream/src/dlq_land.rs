//! Dead letters that must land (part of the dlq service, beside `dlq_watch`): every few seconds,
//! each entry of `pending_dead_letters` (recorded by the consumer that gave up, before its
//! `+TERM`) that is older than a grace period and still unmarked is looked up in the dead-letter
//! index. Found (its advisory arrived, or an earlier republish did, or an operator has already
//! redriven or purged it): marked landed. Not found once the dlq consumer's ack floor has reached
//! what DEAD_LETTERS held after the grace period: its advisory was lost (DEAD_LETTERS had no leader when the server sent
//! it), so it is republished in the advisory's form and subject with `Nats-Msg-Id`
//! `dead-letter-<stream>-<durable>-<seq>` (a retry or a second dlq instance is stored once within
//! the stream's 2-minute duplicate window), then marked landed. The advisory stays the primary
//! feed; this is the safety net. `paystream_dead_letters_waiting` counts unmarked entries.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use metrics::gauge;
use paystream_common::pending_dead_letters::{self as pending, pending::Model as Pending};
use paystream_common::shutdown::Shutdown;
use paystream_common::streams::DEAD_LETTERS;
use paystream_common::telemetry::names;
use paystream_common::time::now_ms;
use sea_orm::DatabaseConnection;

/// How old an entry must be before its advisory counts as lost: the advisory is sent at the
/// `+TERM` (or the next pull after a last delivery) and indexed within a second or two.
const GRACE: Duration = Duration::from_secs(5);
const EVERY: Duration = Duration::from_secs(2);
const BATCH: u64 = 200;

pub async fn run(db: DatabaseConnection, js: jetstream::Context, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        if let Err(e) = round(&db, &js).await {
            tracing::warn!(error = %e, "landing dead letters failed; retrying");
        }
        if let Ok(n) = pending::count_waiting(&db).await {
            gauge!(names::DEAD_LETTERS_WAITING).set(n as f64);
        }
    }
}

async fn round(db: &DatabaseConnection, js: &jetstream::Context) -> Result<(), String> {
    let cutoff = now_ms() - i64::try_from(GRACE.as_millis()).unwrap_or(5_000);
    let waiting = pending::waiting(db, cutoff, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    if waiting.is_empty() {
        return Ok(());
    }
    let mut missing = Vec::new();
    for row in waiting {
        if indexed(db, &row).await? {
            pending::mark_landed(db, &row.stream, &row.durable, row.stream_seq, now_ms())
                .await
                .map_err(|e| e.to_string())?;
        } else {
            missing.push(row);
        }
    }
    if missing.is_empty() || !index_complete(js).await? {
        // The index may still be behind DEAD_LETTERS: look again next round.
        return Ok(());
    }
    // The index was complete after these were recorded, so these advisories never landed.
    for row in missing {
        // Looked up again: indexed between the first look and the consumer's check.
        if indexed(db, &row).await? {
            pending::mark_landed(db, &row.stream, &row.durable, row.stream_seq, now_ms())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        republish(js, &row).await?;
        tracing::warn!(stream = %row.stream, consumer = %row.durable, stream_seq = row.stream_seq, kind = %row.kind, "dead letter's advisory was lost; republished");
        pending::mark_landed(db, &row.stream, &row.durable, row.stream_seq, now_ms())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the dead-letter index holds this message at this durable consumer.
async fn indexed(db: &DatabaseConnection, row: &Pending) -> Result<bool, String> {
    let rows = crate::dlq_index::of_messages(db, &row.stream, &[row.stream_seq])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().any(|r| r.durable == row.durable))
}

/// Whether the dlq consumer has indexed everything DEAD_LETTERS held a moment ago (now, after
/// the waiting entries' cutoff): its ack floor has reached the stream's last sequence read first
/// (it acks only after the index write). Holds under a steady flow of dead letters too, unlike
/// "nothing pending". Unknown (no leader, no answer) counts as no.
async fn index_complete(js: &jetstream::Context) -> Result<bool, String> {
    let stream = js
        .get_stream(DEAD_LETTERS)
        .await
        .map_err(|e| e.to_string())?;
    let last = stream.cached_info().state.last_sequence;
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(crate::dlq_watch::CONSUMER)
        .await
        .map_err(|e| e.to_string())?;
    let info = consumer.info().await.map_err(|e| e.to_string())?;
    Ok(info.ack_floor.stream_sequence >= last)
}

async fn republish(js: &jetstream::Context, row: &Pending) -> Result<(), String> {
    let body = serde_json::to_vec(&pending::advisory(row)).map_err(|e| e.to_string())?;
    js.send_publish(
        pending::advisory_subject(&row.kind, &row.stream, &row.durable),
        PublishMessage::build()
            .payload(body.into())
            .message_id(pending::msg_id(&row.stream, &row.durable, row.stream_seq)),
    )
    .await
    .map_err(|e| e.to_string())?
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}
