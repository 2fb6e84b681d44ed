//! Executing payment requests: record EXECUTING for the batch (one transaction, before any PSP
//! call), then give each payment its own task: a PSP call with the payment_id as idempotency key,
//! its outcome and event committed by the recorder as soon as it is in, and its message settled
//! then — one slow or hanging call holds back no other payment.

use std::collections::HashMap;
use std::sync::Arc;

use paystream_common::consume::{Reply, Verdict};
use paystream_common::failpoint;
use paystream_common::payment::{Change, Plan, Requested};
use paystream_common::state::Trigger;
use paystream_common::time::now_ms;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::Instrument;

use crate::attempts::Attempt;
use crate::outcome::{self, Decision};
use crate::pipeline::{Join, Pipeline, Work};
use crate::psp::{ChargeRequest, Psp};
use crate::store;

/// Handles the payment requests of one batch; fills `replies` at their indexes.
pub(crate) async fn pay<P: Psp>(
    pipe: &Arc<Pipeline<P>>,
    pays: Vec<(usize, Requested)>,
    replies: &mut [Option<Reply>],
) {
    // The same payment_id may appear several times in a batch (a client retrying), or be charged
    // by this instance already: a repeat follows the verdict of the work under way.
    let mut leaders: Vec<Requested> = Vec::new();
    let mut leader_index: Vec<Vec<usize>> = Vec::new();
    let mut position: HashMap<_, usize> = HashMap::new();
    for (i, r) in pays {
        let req = &r.req;
        match position.get(&req.payment_id) {
            Some(&p) if leaders[p].req == *req => leader_index[p].push(i),
            Some(_) => {
                replies[i] = Some(
                    Verdict::Term {
                        label: "payment_id",
                        reason: format!(
                            "payment_id: {} is already used by a different request",
                            req.payment_id
                        ),
                    }
                    .into(),
                );
            }
            None => match pipe.flights.join(req.payment_id, Some(req)) {
                Join::Joined(rx) => replies[i] = Some(Reply::Later(rx)),
                Join::None | Join::Different => {
                    position.insert(req.payment_id, leaders.len());
                    leaders.push(r);
                    leader_index.push(vec![i]);
                }
            },
        }
    }
    if leaders.is_empty() {
        return;
    }
    // A slot per payment before EXECUTING is written: what cannot be called now stays in the
    // stream, not EXECUTING in the database waiting for a slot.
    let mut slots = Vec::with_capacity(leaders.len());
    for _ in 0..leaders.len() {
        slots.push(pipe.acquire_slot().await);
    }
    let plans = match store::begin_execution(&pipe.db, &leaders, pipe.execution_lease).await {
        Ok(p) => p,
        Err(e) => {
            for i in leader_index.into_iter().flatten() {
                replies[i] = Some(
                    Verdict::Retry {
                        label: "database",
                        error: e.to_string(),
                    }
                    .into(),
                );
            }
            return;
        }
    };
    failpoint::hit("payment.after_executing");
    for ((requested, indexes), (plan, slot)) in leaders
        .into_iter()
        .zip(leader_index)
        .zip(plans.into_iter().zip(slots))
    {
        let now = match plan {
            Plan::Execute { attempt, .. } => {
                let mut waiters = Vec::with_capacity(indexes.len());
                let mut receivers = Vec::with_capacity(indexes.len());
                for _ in &indexes {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    receivers.push(rx);
                }
                let id = requested.req.payment_id;
                let work = Work::Charge(requested.req.clone());
                if pipe.flights.start(id, work, waiters) {
                    for (i, rx) in indexes.into_iter().zip(receivers) {
                        replies[i] = Some(Reply::Later(rx));
                    }
                    tokio::spawn(charge(pipe.clone(), requested, attempt, slot));
                    continue;
                }
                // The sweeper took it up since the check above: follow its work.
                for i in indexes {
                    replies[i] = Some(match pipe.flights.join(id, Some(&requested.req)) {
                        Join::Joined(rx) => Reply::Later(rx),
                        Join::None | Join::Different => Verdict::Retry {
                            label: "payment_in_flight",
                            error: format!("payment {id} had work under way; trying again"),
                        }
                        .into(),
                    });
                }
                continue;
            }
            Plan::Done(state) => {
                tracing::debug!(payment_id = %requested.req.payment_id, state = state.as_str(), "duplicate request acknowledged");
                Verdict::Ack
            }
            Plan::Conflict(reason) => Verdict::Term {
                label: "payment_id",
                reason,
            },
        };
        for i in indexes {
            replies[i] = Some(now.clone().into());
        }
    }
}

/// One payment's PSP call and outcome; lands the payment's flight with the message's verdict.
async fn charge<P: Psp>(
    pipe: Arc<Pipeline<P>>,
    requested: Requested,
    attempt: u32,
    slot: OwnedSemaphorePermit,
) {
    let Requested { req, seq, .. } = &requested;
    let span = tracing::info_span!("charge", payment_id = %req.payment_id, buyer_id = %req.buyer_id, stream_seq = seq, attempt);
    let verdict = async {
        let charge = ChargeRequest {
            payment_id: req.payment_id,
            amount: req.amount,
            currency: req.currency,
            merchant_id: &req.merchant_id,
            metadata: &req.metadata,
        };
        let call = crate::attempts::Call::start("charge", "intake");
        let Some(answer) = pipe.call(|| pipe.psp.charge(&charge)).await else {
            // Shut down before the PSP processed anything: the request comes back.
            return Verdict::Retry {
                label: "abandoned",
                error: "shut down before the PSP call".into(),
            };
        };
        drop(slot);
        failpoint::hit("payment.after_psp");
        match outcome::of_charge(req.payment_id, answer, "intake") {
            Decision::Record(change) => {
                let attempt = call.ended(&change);
                record(&pipe, change, attempt).await
            }
            Decision::ConfigError(error) => {
                // Not the payment's fault: it stays EXECUTING and the request is retried.
                tracing::error!(%error, "PSP refused our configuration");
                Verdict::Retry {
                    label: "psp_config",
                    error,
                }
            }
            Decision::NotProcessed(error) => Verdict::Retry {
                label: "psp_rate_limited",
                error,
            },
        }
    }
    .instrument(span)
    .await;
    pipe.flights.land(&req.payment_id, &verdict);
}

/// Commits a charge's outcome; the request is acknowledged once it is.
async fn record<P: Psp>(pipe: &Pipeline<P>, change: Change, attempt: Attempt) -> Verdict {
    let change = if change.trigger == Trigger::Indeterminate {
        tracing::warn!(error = ?change.last_error, "PSP outcome unknown; the sweeper will resolve it");
        Change {
            // The PSP may still be working on the call we gave up on.
            retry_at_ms: Some(
                now_ms() + i64::try_from(pipe.execution_lease.as_millis()).unwrap_or(i64::MAX),
            ),
            ..change
        }
    } else {
        change
    };
    match pipe.recorder.record_with(change, Some(attempt)).await {
        Ok(result) => {
            failpoint::hit("payment.after_record");
            tracing::debug!(?result, "payment recorded");
            Verdict::Ack
        }
        Err(error) => Verdict::Retry {
            label: "database",
            error,
        },
    }
}
