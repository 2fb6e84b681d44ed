//! The ledger service: consumes PAYMENT_EVENTS (durable consumer `ledger`) and posts each event as
//! a balanced set of double entries (`posting`). Corrections post new entries; nothing is edited.
//! Each event is posted once: its event_id is recorded in the same transaction as its entries.
//!
//! Architecture Invariant: only this crate writes ledger entries; Σ debits = Σ credits per
//! currency is asserted for every posting before commit.

pub mod check;
pub mod entity;
pub mod posting;
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

pub const CONSUMER: &str = "ledger";

struct Post {
    db: DatabaseConnection,
}

impl Handler for Post {
    async fn handle(&self, batch: &[Message]) -> Vec<Verdict> {
        let (events, mut verdicts) = decode_events(batch);
        let refs: Vec<_> = events.iter().map(|(_, e)| e).collect();
        match store::post(&self.db, &refs).await {
            Ok(posted) => {
                for ((i, e), fresh) in events.iter().zip(posted) {
                    if fresh {
                        counter!(names::EVENTS_APPLIED, "consumer" => CONSUMER, "type" => e.kind.as_str()).increment(1);
                        tracing::debug!(payment_id = %e.payment_id, buyer_id = %e.buyer_id, event = e.kind.as_str(), "ledger posted event");
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

/// Starts the ledger's consumer loop into `tasks`.
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
    let ready = readiness.component("ledger consumer");
    tasks.spawn(consume::run(
        consumer,
        loop_cfg,
        Post { db },
        shutdown,
        ready,
    ));
    Ok(())
}
