//! The shared shape of every PAYMENT_EVENTS consumer (wallet, ledger): decode the batch, apply the
//! events in one transaction that also records their event_ids (so a redelivery is recognised and
//! skipped), then ack. An undecodable event is terminated with its reason; a database failure
//! retries the batch with backoff.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_nats::jetstream::{self, Message};
use metrics::{counter, histogram};
use sea_orm::DbErr;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::consume::{self, Handler, LoopConfig, Reply, Verdict};
use crate::events::PaymentEvent;
use crate::shutdown::Shutdown;
use crate::streams::TopologyError;
use crate::telemetry::{Readiness, names};
use crate::time::now_ms;

/// The de-duplication record of every PAYMENT_EVENTS consumer.
///
/// Architecture Invariant: a row is written in the same transaction as the effect it guards.
pub mod applied {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "applied_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub payment_id: String,
        pub version: i32,
        pub applied_at_ms: i64,
        /// The PAYMENT_EVENTS sequence it was applied from (checks of applied vs stream order).
        pub stream_seq: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// What a consumer may do with one event, decided in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Apply it now (its de-duplication row is written).
    Fresh,
    /// Applied before (or earlier in this batch): ack without effect.
    Seen,
    /// Version n arrived before version n−1 of the same payment was applied here (a cancellation
    /// before its completion): requeue it, never apply it out of order.
    Early,
    /// A different event with a version this consumer already applied: two facts claim the same
    /// place in the payment's history. Never applied; dead-lettered for a person to look at.
    Conflict,
}

/// Inside the caller's transaction: decides each event's `Claim` and records the fresh ones. A
/// payment's events are taken in version order, so a batch holding versions 2 and 1 applies
/// both. The caller applies exactly the `Fresh` ones and commits both together.
pub async fn claim_fresh<C: sea_orm::ConnectionTrait>(
    txn: &C,
    consumer: &str,
    events: &[&PaymentEvent],
) -> Result<Vec<Claim>, DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, Set};
    use std::collections::{HashMap, HashSet};
    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let payments: HashSet<String> = events.iter().map(|e| e.payment_id.to_string()).collect();
    let mut seen: HashSet<String> = applied::Entity::find()
        .select_only()
        .column(applied::Column::EventId)
        .filter(applied::Column::Consumer.eq(consumer))
        .filter(applied::Column::EventId.is_in(ids.clone()))
        .into_tuple::<String>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let mut applied_version: HashMap<String, i32> = HashMap::new();
    for (payment_id, version) in applied::Entity::find()
        .select_only()
        .column(applied::Column::PaymentId)
        .column(applied::Column::Version)
        .filter(applied::Column::Consumer.eq(consumer))
        .filter(applied::Column::PaymentId.is_in(payments))
        .into_tuple::<(String, i32)>()
        .all(txn)
        .await?
    {
        let v = applied_version.entry(payment_id).or_insert(0);
        *v = (*v).max(version);
    }
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].payment_id, events[i].version));
    let now = now_ms();
    let mut rows = Vec::new();
    let mut claims = vec![Claim::Seen; events.len()];
    for i in order {
        let (e, id) = (events[i], &ids[i]);
        if seen.contains(id) {
            continue;
        }
        let version = i32::try_from(e.version).unwrap_or(i32::MAX);
        let have = applied_version.entry(e.payment_id.to_string()).or_insert(0);
        if version > *have + 1 {
            claims[i] = Claim::Early;
            continue;
        }
        if version <= *have {
            claims[i] = Claim::Conflict;
            continue;
        }
        seen.insert(id.clone());
        *have = (*have).max(version);
        claims[i] = Claim::Fresh;
        rows.push(applied::ActiveModel {
            consumer: Set(consumer.to_owned()),
            event_id: Set(id.clone()),
            payment_id: Set(e.payment_id.to_string()),
            version: Set(version),
            applied_at_ms: Set(now),
            stream_seq: Set(e.stream_seq.and_then(|s| i64::try_from(s).ok())),
        });
    }
    if !rows.is_empty() {
        applied::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(claims)
}

/// What a service does with a batch of decoded events.
pub trait ApplyEvents: Send + Sync + 'static {
    /// Durable consumer name, also the metric label.
    const CONSUMER: &'static str;
    /// Crash point after the batch is committed, before it is acked.
    const FAILPOINT: &'static str;

    /// Applies the events that `claim_fresh` finds fresh, atomically with their de-duplication
    /// records. Returns each event's claim.
    fn apply(
        &self,
        events: &[&PaymentEvent],
    ) -> impl Future<Output = Result<Vec<Claim>, DbErr>> + Send;
}

/// Decodes a batch of PAYMENT_EVENTS messages. Undecodable ones get a `Term` verdict at their
/// index (an event nobody can read would fail forever); the rest are returned with their index.
pub fn decode_events(batch: &[Message]) -> (Vec<(usize, PaymentEvent)>, Vec<Option<Verdict>>) {
    let mut verdicts = vec![None; batch.len()];
    let mut events = Vec::with_capacity(batch.len());
    for (i, m) in batch.iter().enumerate() {
        let content_type = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str());
        match PaymentEvent::decode(content_type, &m.payload) {
            Ok(mut e) => {
                e.stream_seq = m.info().ok().map(|info| info.stream_sequence);
                events.push((i, e))
            }
            Err(e) => {
                verdicts[i] = Some(Verdict::Term {
                    label: "event",
                    reason: format!("event: {e}"),
                })
            }
        }
    }
    (events, verdicts)
}

struct EventHandler<A>(A);

impl<A: ApplyEvents> EventHandler<A> {
    /// Counts and acks what one successful apply reported.
    fn applied(
        &self,
        events: &[&(usize, PaymentEvent)],
        applied: Vec<Claim>,
        verdicts: &mut [Option<Verdict>],
    ) {
        assert_eq!(applied.len(), events.len(), "one answer per event");
        crate::failpoint::hit(A::FAILPOINT);
        let now = now_ms();
        for ((i, e), claim) in events.iter().map(|p| (&p.0, &p.1)).zip(applied) {
            if claim == Claim::Conflict {
                verdicts[*i] = Some(Verdict::Term {
                    label: "event",
                    reason: format!(
                        "event: {} {} claims version {} of payment {}, already applied by another event",
                        e.kind.as_str(),
                        e.event_id,
                        e.version,
                        e.payment_id
                    ),
                });
                continue;
            }
            if claim == Claim::Early {
                verdicts[*i] = Some(Verdict::Retry {
                    label: "out_of_order",
                    error: format!(
                        "{} version {} arrived before version {}",
                        e.kind.as_str(),
                        e.version,
                        e.version - 1
                    ),
                });
                continue;
            }
            if claim == Claim::Fresh {
                counter!(names::EVENTS_APPLIED, "consumer" => A::CONSUMER, "type" => e.kind.as_str()).increment(1);
                if let Some(t) = e.requested_at_ms {
                    histogram!(names::PAYMENT_E2E, "consumer" => A::CONSUMER)
                        .record((now - t).max(0) as f64 / 1000.0);
                }
                tracing::debug!(consumer = A::CONSUMER, payment_id = %e.payment_id, buyer_id = %e.buyer_id, event = e.kind.as_str(), version = e.version, "event applied");
            } else {
                counter!(names::EVENTS_DUPLICATE, "consumer" => A::CONSUMER).increment(1);
            }
            verdicts[*i] = Some(Verdict::Ack);
        }
    }
}

impl<A: ApplyEvents> Handler for EventHandler<A> {
    async fn handle(&self, batch: &[Message]) -> Vec<Reply> {
        let (events, mut verdicts) = decode_events(batch);
        let all: Vec<&(usize, PaymentEvent)> = events.iter().collect();
        let refs: Vec<&PaymentEvent> = events.iter().map(|(_, e)| e).collect();
        match self.0.apply(&refs).await {
            Ok(applied) => self.applied(&all, applied, &mut verdicts),
            Err(err) if events.len() > 1 && !crate::db::is_transient(&err) => {
                // One bad event must not hold back the batch: apply each in its own transaction,
                // so only the failing ones are retried.
                tracing::warn!(consumer = A::CONSUMER, error = %err, "batch failed; applying its events one by one");
                for one in &all {
                    match self.0.apply(&[&one.1]).await {
                        Ok(applied) => self.applied(&[*one], applied, &mut verdicts),
                        Err(e) => {
                            verdicts[one.0] = Some(Verdict::Retry {
                                label: "database",
                                error: e.to_string(),
                            })
                        }
                    }
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
            .map(|v| v.expect("every event has a verdict").into())
            .collect()
    }
}

/// Creates the durable consumer and starts its loop into `tasks`.
pub async fn start<A: ApplyEvents>(
    cfg: &Config,
    js: &jetstream::Context,
    db: sea_orm::DatabaseConnection,
    applier: A,
    readiness: &Readiness,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<(), TopologyError> {
    let source = consume::Source::partitioned(js, cfg, A::CONSUMER, db.clone()).await?;
    let loop_cfg = LoopConfig::new(A::CONSUMER, cfg, Some(db));
    let ready: Arc<AtomicBool> = readiness.component(&format!("{} consumer", A::CONSUMER));
    tasks.spawn(consume::run(
        source,
        loop_cfg,
        EventHandler(applier),
        shutdown,
        ready,
    ));
    Ok(())
}
