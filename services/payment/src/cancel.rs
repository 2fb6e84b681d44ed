//! Cancellations: a SUCCESS payment is refunded at the PSP (same idempotency key, so never twice)
//! and becomes CANCELLED with a `cancelled` event. Each refund runs on its own task like a charge.
//! A cancellation of a payment whose charge is under way in this instance waits for that charge to
//! land, then is decided; one of a payment elsewhere in flight, or not received yet, waits (NAK
//! with delay); a payment that failed cannot be cancelled.

use std::sync::Arc;

use paystream_common::consume::{Reply, Verdict};
use paystream_common::events::EventKind;
use paystream_common::ingress::CancelRequest;
use paystream_common::money::Amount;
use paystream_common::payment::{Cancellation, Change, Payment, cancellation};
use paystream_common::state::{PaymentState, Trigger};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::Instrument;

use crate::pipeline::{Join, Pipeline, Work};
use crate::psp::{Psp, PspOutcome};
use crate::store::{self, CorruptRow, Recorded};

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
    let mut now = Vec::new();
    for (i, c) in cancels {
        match pipe.flights.join(c.req.payment_id, None) {
            // Its charge (or another refund of it) is under way here: decide once it lands.
            Join::Joined(landed) => {
                let (tx, rx) = oneshot::channel();
                replies[i] = Some(Reply::Later(rx));
                let pipe = pipe.clone();
                tokio::spawn(async move {
                    let _ = landed.await;
                    let verdict = decide_one(&pipe, c).await;
                    let _ = tx.send(verdict);
                });
            }
            Join::None | Join::Different => now.push((i, c)),
        }
    }
    if now.is_empty() {
        return;
    }
    let ids: Vec<_> = now.iter().map(|(_, c)| c.req.payment_id).collect();
    let rows = match store::load(&pipe.db, &ids).await {
        Ok(r) => r,
        Err(e) => {
            for (i, _) in &now {
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
    for (i, c) in now {
        let row = rows.get(&c.req.payment_id);
        replies[i] = Some(match decide(row, &c.req) {
            Err(verdict) => verdict.into(),
            Ok(amount) => start_refund(pipe, c, amount).await,
        });
    }
}

/// Decides one cancellation from its payment's row now (after its charge landed).
async fn decide_one<P: Psp>(pipe: &Arc<Pipeline<P>>, c: Cancel) -> Verdict {
    let rows = match store::load(&pipe.db, &[c.req.payment_id]).await {
        Ok(r) => r,
        Err(e) => {
            return Verdict::Retry {
                label: "database",
                error: e.to_string(),
            };
        }
    };
    match decide(rows.get(&c.req.payment_id), &c.req) {
        Err(verdict) => verdict,
        Ok(amount) => match start_refund(pipe, c, amount).await {
            Reply::Now(v) => v,
            Reply::Later(rx) => rx.await.unwrap_or_else(|_| Verdict::Retry {
                label: "abandoned",
                error: "the refund was abandoned (shutdown)".into(),
            }),
        },
    }
}

/// What a cancellation of the payment in `row` comes to (`payment::cancellation` decides): the
/// amount to refund, or a verdict.
fn decide(row: Option<&Result<Payment, CorruptRow>>, c: &CancelRequest) -> Result<Amount, Verdict> {
    let payment = match row {
        None => None,
        Some(Ok(p)) => Some(p),
        // Never refunded from a guess: dead-lettered with the row named, for a person.
        Some(Err(corrupt)) => {
            return Err(Verdict::Term {
                label: "payment_id",
                reason: format!("payment_id: {corrupt}"),
            });
        }
    };
    match cancellation(payment, c) {
        Cancellation::Refund(amount) => Ok(amount),
        Cancellation::AlreadyCancelled => Err(Verdict::Ack),
        Cancellation::NotReceived => Err(Verdict::Retry {
            label: "cancel_before_payment",
            error: format!("payment {} not received yet", c.payment_id),
        }),
        Cancellation::OtherBuyer => Err(Verdict::Term {
            label: "buyer_id",
            reason: format!(
                "buyer_id: payment {} belongs to another buyer",
                c.payment_id
            ),
        }),
        Cancellation::EndedFailure => Err(Verdict::Term {
            label: "payment_id",
            reason: format!(
                "payment_id: payment {} ended FAILURE; nothing to cancel",
                c.payment_id
            ),
        }),
        Cancellation::InFlight(state) => Err(Verdict::Retry {
            label: "payment_in_flight",
            error: format!(
                "payment {} is {}; the cancellation waits for its outcome",
                c.payment_id,
                state.as_str()
            ),
        }),
    }
}

/// Starts the refund of a cancellation on its own task (or joins one under way for the payment).
async fn start_refund<P: Psp>(pipe: &Arc<Pipeline<P>>, c: Cancel, amount: Amount) -> Reply {
    let (tx, rx) = oneshot::channel();
    let id = c.req.payment_id;
    if !pipe.flights.start(id, Work::Refund, vec![tx]) {
        return match pipe.flights.join(id, None) {
            Join::Joined(rx) => Reply::Later(rx),
            // It landed in between: decide again from the row on redelivery.
            Join::None | Join::Different => Verdict::Retry {
                label: "payment_in_flight",
                error: format!("payment {id} had work under way; deciding again"),
            }
            .into(),
        };
    }
    let slot = pipe.acquire_slot().await;
    tokio::spawn(refund(pipe.clone(), c, amount, slot));
    Reply::Later(rx)
}

async fn refund<P: Psp>(
    pipe: Arc<Pipeline<P>>,
    c: Cancel,
    amount: Amount,
    slot: OwnedSemaphorePermit,
) {
    let id = c.req.payment_id;
    let span = tracing::info_span!("refund", payment_id = %id, buyer_id = %c.req.buyer_id, stream_seq = c.seq);
    let verdict = async {
        let call = crate::attempts::Call::start("refund", "cancel");
        let Some(answer) = pipe.call(|| pipe.psp.refund(id, amount)).await else {
            return Verdict::Retry {
                label: "abandoned",
                error: "shut down before the PSP refunded".into(),
            };
        };
        drop(slot);
        match answer {
            PspOutcome::Succeeded { psp_reference } => {
                let change = Change {
                    event: Some(EventKind::Cancelled),
                    reason: Some(c.req.reason.clone().unwrap_or_else(|| "cancelled".into())),
                    requested_at_ms: Some(c.published_ms),
                    ..Change::new(
                        id,
                        Trigger::Refunded,
                        format!("PSP refunded ({psp_reference})"),
                    )
                };
                let attempt = call.ended(&change);
                match pipe.recorder.record_with(change, Some(attempt)).await {
                    Ok(Recorded::Applied(_) | Recorded::Skipped(PaymentState::Cancelled)) => {
                        Verdict::Ack
                    }
                    Ok(other) => Verdict::Term {
                        label: "payment_id",
                        reason: format!(
                            "payment_id: refunded at the PSP but not recordable here ({other:?})"
                        ),
                    },
                    Err(error) => Verdict::Retry {
                        label: "database",
                        error,
                    },
                }
            }
            PspOutcome::Indeterminate { error } => Verdict::Retry {
                label: "psp_unknown",
                error,
            },
            PspOutcome::ConfigError { error } => Verdict::Retry {
                label: "psp_config",
                error,
            },
            PspOutcome::RateLimited { .. } => Verdict::Retry {
                label: "psp_rate_limited",
                error: "PSP rate-limited the refund".into(),
            },
            PspOutcome::Declined { code, .. } => Verdict::Term {
                label: "refund_refused",
                reason: format!("payment_id: PSP refused the refund of {id}: {code}"),
            },
        }
    }
    .instrument(span)
    .await;
    pipe.flights.land(&id, &verdict);
}
