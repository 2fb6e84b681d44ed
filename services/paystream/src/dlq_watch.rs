//! The dlq service (`serve dlq`, part of `up`): follows DEAD_LETTERS with the durable consumer
//! `dlq`, logs and counts each dead letter as it arrives, and keeps the depth and operator-action
//! gauges current, and writes each entry into the database's dead-letter index (`dlq_index`). It
//! never removes entries: only an operator's redrive or purge does. Beside it, `dlq_land`
//! republishes any dead letter a consumer recorded whose advisory never reached DEAD_LETTERS.

use std::time::Duration;

use async_nats::jetstream::{self, Message};
use metrics::{counter, gauge};
use paystream_common::config::Config;
use paystream_common::consume::{self, Handler, LoopConfig, Reply, Verdict};
use paystream_common::shutdown::Shutdown;
use paystream_common::streams::{self, DEAD_LETTERS, TopologyError};
use paystream_common::telemetry::{Readiness, names};
use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;

pub const CONSUMER: &str = "dlq";

struct Watch {
    db: DatabaseConnection,
}

impl Handler for Watch {
    async fn handle(&self, batch: &[Message]) -> Vec<Reply> {
        let mut rows = Vec::with_capacity(batch.len());
        for m in batch {
            match serde_json::from_slice::<crate::dlq::Advisory>(&m.payload) {
                Ok(a) => {
                    let kind = if a.kind.ends_with(".terminated") {
                        "terminated"
                    } else {
                        "max_deliveries"
                    };
                    // The consumer label is bounded to paystream's own durable names.
                    let consumer =
                        telemetry_consumer(paystream_common::streams::service_of(&a.consumer));
                    counter!(names::DEAD_LETTERS, "consumer" => consumer, "kind" => kind)
                        .increment(1);
                    tracing::warn!(stream = %a.stream, consumer = %a.consumer, stream_seq = a.stream_seq, deliveries = a.deliveries, kind, reason = a.reason.as_deref().unwrap_or(""), "message dead-lettered");
                    match self.row(m, &a).await {
                        Ok(row) => rows.push(row),
                        Err(e) => return retry_all(batch, &e),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable advisory in DEAD_LETTERS"),
            }
        }
        // One statement for the batch; on failure the whole batch comes back and is indexed then.
        if let Err(e) = crate::dlq_index::record(&self.db, rows).await {
            tracing::warn!(error = %e, "indexing dead letters failed");
            return retry_all(batch, &e.to_string());
        }
        batch.iter().map(|_| Verdict::Ack.into()).collect()
    }
}

fn retry_all(batch: &[Message], error: &str) -> Vec<Reply> {
    batch
        .iter()
        .map(|_| {
            Verdict::Retry {
                label: "database",
                error: error.to_owned(),
            }
            .into()
        })
        .collect()
}

impl Watch {
    /// The index row of one advisory (its DEAD_LETTERS sequence is the id).
    async fn row(
        &self,
        m: &Message,
        a: &crate::dlq::Advisory,
    ) -> Result<crate::dlq_index::indexed::Model, String> {
        let info = m.info().map_err(|e| e.to_string())?;
        let reason = crate::dlq::reason(a, Some(&self.db))
            .await
            .map_err(|e| e.to_string())?;
        let at_ms = a
            .timestamp
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or_else(paystream_common::time::now_ms, |t| t.as_millisecond());
        Ok(crate::dlq_index::indexed::Model {
            id: i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
            stream: a.stream.clone(),
            stream_seq: i64::try_from(a.stream_seq).unwrap_or(i64::MAX),
            consumer: paystream_common::streams::service_of(&a.consumer).to_owned(),
            durable: a.consumer.clone(),
            kind: if a.kind.ends_with(".terminated") {
                "terminated"
            } else {
                "max_deliveries"
            }
            .to_owned(),
            reason,
            deliveries: i64::try_from(a.deliveries).unwrap_or(i64::MAX),
            at_ms,
            removed_at_ms: None,
            removed_by: None,
            removal: None,
        })
    }
}

fn telemetry_consumer(name: &str) -> &'static str {
    paystream_common::telemetry::CONSUMERS
        .iter()
        .find(|c| **c == name)
        .copied()
        .unwrap_or("other")
}

pub async fn start(
    cfg: &Config,
    db: DatabaseConnection,
    js: jetstream::Context,
    readiness: &Readiness,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<(), TopologyError> {
    let consumer = streams::ensure_consumer(&js, cfg, CONSUMER).await?;
    let loop_cfg = LoopConfig::new(CONSUMER, cfg, None);
    let ready = readiness.component("dlq consumer");
    tasks.spawn(consume::run(
        consume::Source::Single(consumer),
        loop_cfg,
        Watch { db: db.clone() },
        shutdown.clone(),
        ready,
    ));
    tasks.spawn(crate::dlq_land::run(
        db.clone(),
        js.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(gauges(db, js, shutdown));
    Ok(())
}

/// Depth of DEAD_LETTERS and the operator actions taken, every few seconds.
async fn gauges(db: DatabaseConnection, js: jetstream::Context, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        if let Ok(info) = js
            .get_stream(DEAD_LETTERS)
            .await
            .map(|s| s.cached_info().clone())
        {
            gauge!(names::DLQ_DEPTH).set(info.state.messages as f64);
            gauge!(names::DLQ_CAPACITY).set(info.config.max_messages.max(0) as f64);
        }
        if let Ok(n) = crate::audit::count(&db, "dlq.redrive").await {
            counter!(names::DLQ_REDRIVES).absolute(n);
        }
        if let Ok(n) = crate::audit::count(&db, "dlq.purge").await {
            counter!(names::DLQ_PURGES).absolute(n);
        }
    }
}
