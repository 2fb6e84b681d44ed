//! Cancellations: a SUCCESS payment is refunded at the PSP (same idempotency key, so never twice)
//! and becomes CANCELLED with a `cancelled` event. A payment still in flight, or not received yet,
//! makes the cancellation wait (NAK with delay); a payment that failed cannot be cancelled.

use futures::StreamExt;
use paystream_common::consume::Verdict;
use paystream_common::events::EventKind;
use paystream_common::ingress::CancelRequest;
use paystream_common::money::Amount;
use paystream_common::state::{PaymentState, Trigger};
use tracing::Instrument;

use crate::intake::Intake;
use crate::psp::{Psp, PspOutcome};
use crate::store::{self, Change, Recorded};

pub(crate) async fn cancel<P: Psp>(
    ctx: &Intake<P>,
    cancels: Vec<(usize, CancelRequest, u64, i64)>,
    verdicts: &mut [Option<Verdict>],
) {
    let ids: Vec<_> = cancels.iter().map(|(_, c, _, _)| c.payment_id).collect();
    let rows = match store::load(&ctx.db, &ids).await {
        Ok(r) => r,
        Err(e) => {
            for (i, _, _, _) in &cancels {
                verdicts[*i] = Some(Verdict::Retry {
                    label: "database",
                    error: e.to_string(),
                });
            }
            return;
        }
    };
    let mut refunds = Vec::new();
    for (i, c, seq, published_ms) in cancels {
        let Some(row) = rows.get(&c.payment_id.to_string()) else {
            verdicts[i] = Some(Verdict::Retry {
                label: "cancel_before_payment",
                error: format!("payment {} not received yet", c.payment_id),
            });
            continue;
        };
        if row.buyer_id != c.buyer_id.as_str() {
            verdicts[i] = Some(Verdict::Term {
                label: "buyer_id",
                reason: format!(
                    "buyer_id: payment {} belongs to another buyer",
                    c.payment_id
                ),
            });
            continue;
        }
        match store::state_of(row) {
            Ok(PaymentState::Success) => match Amount::new(row.amount) {
                Ok(amount) => refunds.push((i, c, seq, published_ms, amount)),
                Err(e) => {
                    verdicts[i] = Some(Verdict::Term {
                        label: "amount",
                        reason: format!("amount: {e}"),
                    })
                }
            },
            Ok(PaymentState::Cancelled) => verdicts[i] = Some(Verdict::Ack),
            Ok(PaymentState::Failure) => {
                verdicts[i] = Some(Verdict::Term {
                    label: "payment_id",
                    reason: format!(
                        "payment_id: payment {} ended FAILURE; nothing to cancel",
                        c.payment_id
                    ),
                });
            }
            Ok(state) => {
                verdicts[i] = Some(Verdict::Retry {
                    label: "payment_in_flight",
                    error: format!(
                        "payment {} is {}; the cancellation waits for its outcome",
                        c.payment_id,
                        state.as_str()
                    ),
                });
            }
            Err(e) => {
                verdicts[i] = Some(Verdict::Term {
                    label: "database",
                    reason: e.to_string(),
                })
            }
        }
    }
    let outcomes: Vec<_> = futures::stream::iter(refunds)
        .map(|(i, c, seq, published_ms, amount)| {
            let span = tracing::info_span!("refund", payment_id = %c.payment_id, buyer_id = %c.buyer_id, stream_seq = seq);
            async move {
                let outcome = ctx.psp.refund(c.payment_id, amount).await;
                (i, c, published_ms, outcome)
            }
            .instrument(span)
        })
        .buffer_unordered(ctx.psp_concurrency.max(1))
        .collect()
        .await;
    let mut changes = Vec::new();
    let mut change_idx = Vec::new();
    for (i, c, published_ms, outcome) in outcomes {
        match outcome {
            PspOutcome::Succeeded { psp_reference } => {
                changes.push(Change {
                    event: Some(EventKind::Cancelled),
                    reason: Some(c.reason.unwrap_or_else(|| "cancelled".into())),
                    requested_at_ms: Some(published_ms),
                    ..Change::new(
                        c.payment_id,
                        Trigger::Refunded,
                        format!("PSP refunded ({psp_reference})"),
                    )
                });
                change_idx.push(i);
            }
            PspOutcome::Indeterminate { error } => {
                verdicts[i] = Some(Verdict::Retry {
                    label: "psp_unknown",
                    error,
                });
            }
            PspOutcome::ConfigError { error } => {
                verdicts[i] = Some(Verdict::Retry {
                    label: "psp_config",
                    error,
                });
            }
            PspOutcome::Declined { code, .. } => {
                verdicts[i] = Some(Verdict::Term {
                    label: "refund_refused",
                    reason: format!(
                        "payment_id: PSP refused the refund of {}: {code}",
                        c.payment_id
                    ),
                });
            }
        }
    }
    match store::record(&ctx.db, &changes).await {
        Ok(results) => {
            for (i, r) in change_idx.into_iter().zip(results) {
                verdicts[i] = Some(match r {
                    Recorded::Applied(_) | Recorded::Skipped(PaymentState::Cancelled) => {
                        Verdict::Ack
                    }
                    other => Verdict::Term {
                        label: "payment_id",
                        reason: format!(
                            "payment_id: refunded at the PSP but not recordable here ({other:?})"
                        ),
                    },
                });
            }
        }
        Err(e) => {
            for i in change_idx {
                verdicts[i] = Some(Verdict::Retry {
                    label: "database",
                    error: e.to_string(),
                });
            }
        }
    }
}
