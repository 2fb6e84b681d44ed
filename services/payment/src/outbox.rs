//! The outbox relay: publishes committed events to PAYMENT_EVENTS in commit order, with
//! `Nats-Msg-Id` = event_id so that a re-publish after a crash is a no-op at the stream, then marks
//! them published. An event is committed with its state change, so none is lost between the
//! database and the stream.
//!
//! Several payment-service instances share one outbox: a lease (`ownership::try_lease`) lets one
//! relay publish at a time, and every publish is conditioned on the buyer's last stream sequence
//! (`paystream_common::publish`), so even two relays that overlap while the lease moves cannot
//! reorder a buyer's events: the stream's sequence is the one order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use metrics::{counter, gauge};
use paystream_common::codec::CONTENT_TYPE_MSGPACK;
use paystream_common::events::HEADER_EVENT_TYPE;
use paystream_common::ownership;
use paystream_common::publish::{OrderedPublisher, Outgoing};
use paystream_common::shutdown::Shutdown;
use paystream_common::telemetry::names;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;

use crate::store;

/// Events taken per round; bounded so one round's acks fit the publish window.
const ROUND_EVENTS_MAX: u64 = 512;
/// How often an idle relay refreshes `paystream_outbox_backlog` (a busy one: 5× less often).
const BACKLOG_GAUGE_EVERY: Duration = Duration::from_secs(1);
/// The lease one relay holds while it publishes.
const LEASE: &str = "outbox-relay";

pub async fn run(
    db: DatabaseConnection,
    js: jetstream::Context,
    wake: Arc<Notify>,
    lease_ttl: Duration,
    mut shutdown: Shutdown,
) {
    let me = ownership::instance_id();
    let mut publisher = OrderedPublisher::new(js);
    let mut leased_until: Option<Instant> = None;
    let mut backlog_counted: Option<Instant> = None;
    loop {
        // Renewed at a third of its TTL: a relay that cannot renew stops publishing well before
        // another may take over.
        let holds = match leased_until {
            Some(t) if Instant::now() + lease_ttl * 2 / 3 < t => true,
            _ => match ownership::try_lease(&db, LEASE, &me, lease_ttl).await {
                Ok(true) => {
                    if leased_until.is_none() {
                        tracing::info!(relay = %me, "outbox relay lease taken");
                    }
                    leased_until = Some(Instant::now() + lease_ttl);
                    true
                }
                Ok(false) => {
                    leased_until = None;
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay lease unavailable");
                    leased_until = None;
                    false
                }
            },
        };
        gauge!(names::OUTBOX_RELAY_ACTIVE).set(if holds { 1.0 } else { 0.0 });
        let published = if holds {
            match relay_round(&db, &mut publisher).await {
                Ok(n) => n,
                Err(e) => {
                    counter!(names::OUTBOX_PUBLISH_ERRORS).increment(1);
                    tracing::warn!(error = %e, "outbox relay round failed; retrying");
                    0
                }
            }
        } else {
            0
        };
        // Busy or idle: while the relay drains a backlog is when the gauge matters. Less often
        // while busy: the count reads every unpublished row's index entry.
        let every = if published > 0 {
            BACKLOG_GAUGE_EVERY * 5
        } else {
            BACKLOG_GAUGE_EVERY
        };
        if backlog_counted.is_none_or(|t| t.elapsed() >= every) {
            backlog_counted = Some(Instant::now());
            if let Ok(n) = store::outbox_backlog(&db).await {
                gauge!(names::OUTBOX_BACKLOG).set(n as f64);
            }
        }
        if published > 0 {
            continue;
        }
        if shutdown.is_fired() {
            break;
        }
        // Events committed by other instances' intakes do not wake this relay: it polls.
        let idle = if holds {
            Duration::from_millis(100)
        } else {
            lease_ttl / 4
        };
        tokio::select! {
            () = wake.notified() => {},
            () = tokio::time::sleep(idle) => {},
            () = shutdown.wait() => {},
        }
    }
    if leased_until.is_some() {
        let _ = ownership::release_lease(&db, LEASE, &me).await;
    }
    gauge!(names::OUTBOX_RELAY_ACTIVE).set(0.0);
    tracing::info!("outbox relay stopped");
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Publish(#[from] paystream_common::publish::PublishError),
}

/// Publishes one round (buyers concurrently, each buyer's events in commit order) and records
/// what JetStream acknowledged. Returns how many events were acknowledged.
async fn relay_round(
    db: &DatabaseConnection,
    publisher: &mut OrderedPublisher,
) -> Result<usize, RelayError> {
    let rows = store::outbox_pending(db, ROUND_EVENTS_MAX).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let items: Vec<Outgoing> = rows
        .iter()
        .map(|row| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", CONTENT_TYPE_MSGPACK);
            headers.insert(HEADER_EVENT_TYPE, row.kind.as_str());
            Outgoing {
                buyer: row.buyer_id.clone(),
                subject: row.subject.clone(),
                msg_id: row.event_id.clone(),
                payload: row.payload.clone().into(),
                headers,
            }
        })
        .collect();
    let results = publisher.publish(&items).await;
    // A buyer's acknowledged events are a prefix of its pending ones; only those are marked. The
    // rest are published again next round (a repeat is de-duplicated by Nats-Msg-Id).
    let mut acked = Vec::with_capacity(rows.len());
    let mut first_error = None;
    for (row, result) in rows.iter().zip(results) {
        match result {
            Ok(a) => {
                counter!(names::OUTBOX_PUBLISHED, "type" => row.kind.clone()).increment(1);
                tracing::debug!(payment_id = %row.payment_id, buyer_id = %row.buyer_id, stream_seq = a.sequence, event = %row.kind, duplicate = a.duplicate, "event published");
                acked.push((row.id, a.sequence));
            }
            Err(e) => {
                if !e.is_transient() {
                    tracing::warn!(payment_id = %row.payment_id, error = %e, "event publish not acknowledged");
                }
                first_error.get_or_insert(e);
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
