//! Cancellations, executed like charges. A cancellation of a SUCCESS payment first commits the
//! refund intent (REFUNDING, the cancellation kept on the payment) and only then asks the PSP to
//! refund, on its own task, with the payment_id as idempotency key; an answer that is lost leaves
//! the payment REFUNDING for the sweeper (ask the PSP by key, refund again with the same key),
//! never for the message's retry budget. A cancellation of a payment whose outcome is not in yet
//! (EXECUTING, UNKNOWN) is recorded on the payment and acknowledged: the refund intent commits
//! with the charge when it lands (`store::record_in`). Only a cancellation of a payment not
//! received yet waits (NAK with delay, `cancel_before_payment`), bounded by `max_deliver`.

use std::sync::Arc;

use paystream_common::consume::{Reply, Verdict};
use paystream_common::failpoint;
use paystream_common::ingress::CancelRequest;
use paystream_common::payment::{Cancellation, Payment};
use paystream_common::state::PaymentState;
use paystream_common::time::now_ms;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::Instrument;

use crate::outcome::{self, Decision};
use crate::pipeline::{Pipeline, Work};
use crate::psp::Psp;
use crate::store::{self, Recorded};

/// A cancellation as it came off the stream.
pub(crate) struct Cancel {
    pub req: CancelRequest,
    pub seq: u64,
    pub published_ms: i64,
}

pub(crate) async fn cancel<P: Psp>(
    pipe: &Arc<Pipeline<P>>,
    cancels: Vec<(usize, Cancel)>,
    replies: &mut [Option<Reply>],
) {
    let accepted: Vec<_> = cancels
        .iter()
        .map(|(_, c)| (c.req.clone(), c.published_ms))
        .collect();
    let decisions =
        match store::accept_cancellations(&pipe.db, &accepted, pipe.execution_lease).await {
            Ok(d) => d,
            Err(e) => {
                for (i, _) in &cancels {
                    replies[*i] = Some(
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
    failpoint::hit("payment.after_refund_intent");
    let mut refunds = Vec::new();
    for ((i, c), decision) in cancels.into_iter().zip(decisions) {
        let id = c.req.payment_id;
        replies[i] = Some(match decision {
            // Never refunded from a guess: dead-lettered with the row named, for a person.
            Err(corrupt) => Verdict::Term {
                label: "payment_id",
                reason: format!("payment_id: {corrupt}"),
            }
            .into(),
            Ok(Cancellation::Refund(_)) => {
                refunds.push((i, c));
                continue;
            }
            Ok(Cancellation::AlreadyCancelled | Cancellation::RefundUnderWay) => {
                Verdict::Ack.into()
            }
            Ok(Cancellation::Defer(state)) => {
                tracing::info!(payment_id = %id, state = state.as_str(), "cancellation recorded on the payment; carried out once it is charged");
                Verdict::Ack.into()
            }
            Ok(Cancellation::NotReceived) => Verdict::Retry {
                label: "cancel_before_payment",
                error: format!("payment {id} not received yet"),
            }
            .into(),
            Ok(Cancellation::OtherBuyer) => Verdict::Term {
                label: "buyer_id",
                reason: format!("buyer_id: payment {id} belongs to another buyer"),
            }
            .into(),
            Ok(Cancellation::EndedFailure) => Verdict::Term {
                label: "payment_id",
                reason: format!("payment_id: payment {id} ended FAILURE; nothing to cancel"),
            }
            .into(),
        });
    }
    if refunds.is_empty() {
        return;
    }
    // The intents are committed; the rows now hold the cancellations' reasons and times.
    let ids: Vec<_> = refunds.iter().map(|(_, c)| c.req.payment_id).collect();
    let rows = store::load(&pipe.db, &ids).await.unwrap_or_default();
    for (i, c) in refunds {
        replies[i] = Some(match rows.get(&c.req.payment_id) {
            Some(Ok(p)) if p.state == PaymentState::Refunding => {
                start_refund(pipe, p.clone(), &c).await
            }
            // Unreadable now, or already moved on: the intent is durable and leased; the
            // sweeper refunds it when the lease runs out.
            _ => Verdict::Ack.into(),
        });
    }
}

/// Starts the refund of a REFUNDING payment on its own task; its message waits for the PSP's
/// first answer. If this instance is already working on the payment, the intent is enough.
async fn start_refund<P: Psp>(pipe: &Arc<Pipeline<P>>, p: Payment, c: &Cancel) -> Reply {
    let (tx, rx) = oneshot::channel();
    if !pipe.flights.start(p.payment_id, Work::Refund, vec![tx]) {
        return Verdict::Ack.into();
    }
    let slot = pipe.acquire_slot().await;
    let span = tracing::info_span!("refund", payment_id = %p.payment_id, buyer_id = %p.buyer_id, stream_seq = c.seq);
    tokio::spawn(refund(pipe.clone(), p, slot).instrument(span));
    Reply::Later(rx)
}

/// One refund call and its outcome. The cancellation is acknowledged whatever the answer, except
/// a refusal (dead-lettered with the PSP's reason, the payment back to SUCCESS): from the intent
/// on, finishing the refund is the sweeper's if this call does not.
async fn refund<P: Psp>(pipe: Arc<Pipeline<P>>, p: Payment, slot: OwnedSemaphorePermit) {
    let id = p.payment_id;
    let verdict = async {
        let call = crate::attempts::Call::start("refund", "cancel");
        let Some(answer) = pipe.call(|| pipe.psp.refund(id, p.amount)).await else {
            return Verdict::Ack;
        };
        drop(slot);
        failpoint::hit("payment.after_refund_psp");
        let change = match outcome::of_refund(&p, answer, "cancel") {
            Decision::Record(change) => change,
            Decision::ConfigError(error) => {
                tracing::error!(%error, "PSP refused our configuration; the sweeper refunds later");
                return Verdict::Ack;
            }
            Decision::NotProcessed(_) => return Verdict::Ack,
        };
        let declined = change.last_error.clone().filter(|_| {
            change.trigger == paystream_common::state::Trigger::RefundDeclined
        });
        let change = if change.trigger == paystream_common::state::Trigger::Indeterminate {
            tracing::warn!(error = ?change.last_error, "PSP refund outcome unknown; the sweeper will resolve it");
            paystream_common::payment::Change {
                retry_at_ms: Some(
                    now_ms() + i64::try_from(pipe.execution_lease.as_millis()).unwrap_or(i64::MAX),
                ),
                ..change
            }
        } else {
            change
        };
        let attempt = call.ended(&change);
        match (pipe.recorder.record_with(change, Some(attempt)).await, declined) {
            (Ok(Recorded::Applied(PaymentState::Success)), Some(reason)) => Verdict::Term {
                label: "refund_refused",
                reason: format!("payment_id: PSP refused the refund of {id}: {reason}"),
            },
            (Ok(_), _) => Verdict::Ack,
            (Err(error), _) => {
                tracing::warn!(%error, "recording the refund failed; the sweeper finishes it");
                Verdict::Ack
            }
        }
    }
    .await;
    pipe.flights.land(&id, &verdict);
}
