//! Executing payment requests: record EXECUTING, call the PSP with the payment_id as idempotency
//! key (concurrently, bounded), then record the outcome and its event in one transaction.

use std::collections::HashMap;

use futures::StreamExt;
use paystream_common::consume::Verdict;
use paystream_common::failpoint;
use paystream_common::state::Trigger;
use paystream_common::time::now_ms;
use tracing::Instrument;

use crate::intake::Intake;
use crate::outcome::{self, Decision};
use crate::psp::{ChargeRequest, Psp, PspOutcome};
use crate::store::{self, Change, Plan, Recorded, Requested};

/// Handles the payment requests of one batch; fills `verdicts` at their indexes.
pub(crate) async fn pay<P: Psp>(
    ctx: &Intake<P>,
    pays: Vec<(usize, Requested)>,
    verdicts: &mut [Option<Verdict>],
) {
    // The same payment_id may appear several times in a batch (a client retrying): the first
    // occurrence leads and the others follow its verdict.
    let mut leaders: Vec<Requested> = Vec::new();
    let mut leader_index: Vec<Vec<usize>> = Vec::new();
    let mut position: HashMap<_, usize> = HashMap::new();
    for (i, r) in pays {
        let req = &r.req;
        match position.get(&req.payment_id) {
            Some(&p) if leaders[p].req == *req => leader_index[p].push(i),
            Some(_) => {
                verdicts[i] = Some(Verdict::Term {
                    label: "payment_id",
                    reason: format!(
                        "payment_id: {} is already used by a different request",
                        req.payment_id
                    ),
                });
            }
            None => {
                position.insert(req.payment_id, leaders.len());
                leaders.push(r);
                leader_index.push(vec![i]);
            }
        }
    }
    let leader_verdicts = execute(ctx, &leaders).await;
    for (indexes, verdict) in leader_index.into_iter().zip(leader_verdicts) {
        for i in indexes {
            verdicts[i] = Some(verdict.clone());
        }
    }
}

fn retry_all(n: usize, label: &'static str, error: &impl std::fmt::Display) -> Vec<Verdict> {
    vec![
        Verdict::Retry {
            label,
            error: error.to_string()
        };
        n
    ]
}

async fn execute<P: Psp>(ctx: &Intake<P>, leaders: &[Requested]) -> Vec<Verdict> {
    let plans = match store::begin_execution(&ctx.db, leaders, ctx.execution_lease).await {
        Ok(p) => p,
        Err(e) => return retry_all(leaders.len(), "database", &e),
    };
    failpoint::hit("payment.after_executing");
    let mut verdicts: Vec<Option<Verdict>> = vec![None; leaders.len()];
    let mut to_call = Vec::new();
    for (pos, plan) in plans.into_iter().enumerate() {
        match plan {
            Plan::Execute { attempt } => to_call.push((pos, attempt)),
            Plan::Done(state) => {
                tracing::debug!(payment_id = %leaders[pos].req.payment_id, state = state.as_str(), "duplicate request acknowledged");
                verdicts[pos] = Some(Verdict::Ack);
            }
            Plan::Conflict(reason) => {
                verdicts[pos] = Some(Verdict::Term {
                    label: "payment_id",
                    reason,
                })
            }
        }
    }
    let outcomes: Vec<(usize, PspOutcome)> = futures::stream::iter(to_call)
        .map(|(pos, attempt)| {
            let Requested { req, seq, .. } = &leaders[pos];
            let span = tracing::info_span!("charge", payment_id = %req.payment_id, buyer_id = %req.buyer_id, stream_seq = seq, attempt);
            async move {
                let charge = ChargeRequest {
                    payment_id: req.payment_id,
                    amount: req.amount.minor(),
                    currency: req.currency,
                    merchant_id: &req.merchant_id,
                    metadata: &req.metadata,
                };
                (pos, ctx.psp.charge(&charge).await)
            }
            .instrument(span)
        })
        .buffer_unordered(ctx.psp_concurrency.max(1))
        .collect()
        .await;

    failpoint::hit("payment.after_psp");
    let mut changes = Vec::new();
    let mut change_pos = Vec::new();
    for (pos, outcome) in outcomes {
        let req = &leaders[pos].req;
        match outcome::of_charge(req.payment_id, outcome, "intake") {
            Decision::Record(change) => {
                let change = if change.trigger == Trigger::Indeterminate {
                    tracing::warn!(payment_id = %req.payment_id, buyer_id = %req.buyer_id, error = ?change.last_error, "PSP outcome unknown; the sweeper will resolve it");
                    Change {
                        // The PSP may still be working on the call we gave up on.
                        retry_at_ms: Some(
                            now_ms()
                                + i64::try_from(ctx.execution_lease.as_millis())
                                    .unwrap_or(i64::MAX),
                        ),
                        ..change
                    }
                } else {
                    change
                };
                changes.push(change);
                change_pos.push(pos);
            }
            Decision::ConfigError(error) => {
                // Not the payment's fault: it stays EXECUTING and the request is retried.
                tracing::error!(payment_id = %req.payment_id, %error, "PSP refused our credentials");
                verdicts[pos] = Some(Verdict::Retry {
                    label: "psp_config",
                    error,
                });
            }
        }
    }
    match store::record(&ctx.db, &changes).await {
        Ok(results) => {
            failpoint::hit("payment.after_record");
            for (pos, result) in change_pos.into_iter().zip(results) {
                if let Recorded::Applied(state) = result {
                    tracing::debug!(payment_id = %leaders[pos].req.payment_id, state = state.as_str(), "payment recorded");
                }
                verdicts[pos] = Some(Verdict::Ack);
            }
        }
        Err(e) => {
            for pos in change_pos {
                verdicts[pos] = Some(Verdict::Retry {
                    label: "database",
                    error: e.to_string(),
                });
            }
        }
    }
    verdicts
        .into_iter()
        .map(|v| v.expect("every leader has a verdict"))
        .collect()
}
