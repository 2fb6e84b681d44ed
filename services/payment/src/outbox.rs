//! The outbox relay: publishes committed events to PAYMENT_EVENTS in commit order, with
//! `Nats-Msg-Id` = event_id so that a re-publish after a crash is a no-op at the stream, then marks
//! them published. An event is committed with its state change, so none is lost between the
//! database and the stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use metrics::{counter, gauge};
use paystream_common::codec::CONTENT_TYPE_MSGPACK;
use paystream_common::events::HEADER_EVENT_TYPE;
use paystream_common::shutdown::Shutdown;
use paystream_common::telemetry::names;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;

use crate::store;

/// Events taken per round; bounded so one round's acks fit the publish window.
const ROUND_EVENTS_MAX: u64 = 512;

pub async fn run(
    db: DatabaseConnection,
    js: jetstream::Context,
    wake: Arc<Notify>,
    mut shutdown: Shutdown,
) {
    loop {
        let published = match relay_round(&db, &js).await {
            Ok(n) => n,
            Err(e) => {
                counter!(names::OUTBOX_PUBLISH_ERRORS).increment(1);
                tracing::warn!(error = %e, "outbox relay round failed; retrying");
                0
            }
        };
        if published > 0 {
            continue;
        }
        if shutdown.is_fired() {
            break;
        }
        if let Ok(n) = store::outbox_backlog(&db).await {
            gauge!(names::OUTBOX_BACKLOG).set(n as f64);
        }
        tokio::select! {
            () = wake.notified() => {},
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
            () = shutdown.wait() => {},
        }
    }
    tracing::info!("outbox relay stopped");
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("publish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Publishes one round, pipelined, and records the acknowledged prefix. Returns how many events
/// were acknowledged.
async fn relay_round(
    db: &DatabaseConnection,
    js: &jetstream::Context,
) -> Result<usize, RelayError> {
    let rows = store::outbox_pending(db, ROUND_EVENTS_MAX).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut pending = Vec::with_capacity(rows.len());
    for row in &rows {
        let msg = PublishMessage::build()
            .payload(row.payload.clone().into())
            .message_id(&row.event_id)
            .header("Content-Type", CONTENT_TYPE_MSGPACK)
            .header(HEADER_EVENT_TYPE, row.kind.as_str());
        match js.send_publish(row.subject.clone(), msg).await {
            Ok(ack) => pending.push(ack),
            Err(e) => {
                tracing::warn!(error = %e, "publishing an event failed");
                break;
            }
        }
    }
    // Only the acknowledged prefix is marked: the rest is published again next round (a repeat is
    // de-duplicated by Nats-Msg-Id).
    let mut acked = Vec::with_capacity(pending.len());
    let mut first_error = None;
    for (row, ack) in rows.iter().zip(pending) {
        match ack.await {
            Ok(a) => {
                counter!(names::OUTBOX_PUBLISHED, "type" => row.kind.clone()).increment(1);
                tracing::debug!(payment_id = %row.payment_id, buyer_id = %row.buyer_id, stream_seq = a.sequence, event = %row.kind, duplicate = a.duplicate, "event published");
                acked.push((row.id, a.sequence));
            }
            Err(e) => {
                if e.kind() != PublishErrorKind::StreamNotFound {
                    tracing::warn!(error = %e, "event publish not acknowledged");
                }
                first_error = Some(e);
                break;
            }
        }
    }
    let n = acked.len();
    paystream_common::failpoint::hit("outbox.after_publish");
    if n > 0 {
        store::mark_published(db, &acked).await?;
    }
    match first_error {
        Some(e) if n == 0 => Err(e.into()),
        _ => Ok(n),
    }
}
