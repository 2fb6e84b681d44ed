//! The wallet service: consumes PAYMENT_EVENTS (durable consumer `wallet`) and keeps each
//! merchant's balance per currency: `succeeded` credits, `cancelled` debits, `adjusted` applies its
//! signed difference. Each event is applied once: its event_id is recorded in the same
//! transaction as the balance change.
//!
//! Architecture Invariant: only this crate writes balances.

pub mod entity;
pub mod store;

use async_nats::jetstream::{self, Message};
use metrics::counter;
use paystream_common::config::Config;
use paystream_common::consume::{self, Handler, LoopConfig, Verdict, decode_events};
use paystream_common::shutdown::Shutdown;
use paystream_common::streams::{self, TopologyError};
use paystream_common::telemetry::{Readiness, names};
use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;

pub const CONSUMER: &str = "wallet";

struct Apply {
    db: DatabaseConnection,
}

impl Handler for Apply {
    async fn handle(&self, batch: &[Message]) -> Vec<Verdict> {
        let (events, mut verdicts) = decode_events(batch);
        let refs: Vec<_> = events.iter().map(|(_, e)| e).collect();
        match store::apply(&self.db, &refs).await {
            Ok(applied) => {
                for ((i, e), fresh) in events.iter().zip(applied) {
                    if fresh {
                        counter!(names::EVENTS_APPLIED, "consumer" => CONSUMER, "type" => e.kind.as_str()).increment(1);
                        tracing::debug!(payment_id = %e.payment_id, buyer_id = %e.buyer_id, event = e.kind.as_str(), "wallet applied event");
                    } else {
                        counter!(names::EVENTS_DUPLICATE, "consumer" => CONSUMER).increment(1);
                    }
                    verdicts[*i] = Some(Verdict::Ack);
                }
            }
            Err(err) => {
                for (i, _) in &events {
                    verdicts[*i] = Some(Verdict::Retry {
                        label: "database",
                        error: err.to_string(),
                    });
                }
            }
        }
        verdicts
            .into_iter()
            .map(|v| v.expect("every event has a verdict"))
            .collect()
    }
}

/// Starts the wallet's consumer loop into `tasks`.
pub async fn start(
    cfg: &Config,
    db: DatabaseConnection,
    js: jetstream::Context,
    readiness: &Readiness,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<(), TopologyError> {
    let consumer = streams::ensure_consumer(&js, cfg, CONSUMER).await?;
    let loop_cfg = LoopConfig {
        name: CONSUMER,
        batch_max: usize::from(cfg.batch_max),
        backoff: cfg.backoff.clone(),
        progress_every: streams::progress_interval(cfg),
    };
    let ready = readiness.component("wallet consumer");
    tasks.spawn(consume::run(
        consumer,
        loop_cfg,
        Apply { db },
        shutdown,
        ready,
    ));
    Ok(())
}
