//! The sweeper: resolves payments whose outcome is not known. Every `PAYSTREAM_SWEEP_INTERVAL` it
//! takes the payments stuck in EXECUTING past `PAYSTREAM_EXECUTING_TIMEOUT` (the process died
//! mid-call) and the UNKNOWN ones that are due, asks the PSP what it knows of each key and adopts
//! the answer, or charges again with the same key when the PSP never saw it. REFUNDING payments
//! that are due (a refund intent whose call died or whose answer was lost, or a cancellation
//! recorded before the charge) are resolved the same way: asked about by key, refunded again
//! with the same key when the PSP has not refunded. Attempts are bounded
//! (`PAYSTREAM_SWEEP_MAX_ATTEMPTS`) with exponential backoff; what stays unresolved is counted in
//! `paystream_sweeper_exhausted` (an alert) and retried only every 10 minutes from then on, for
//! reconciliation or a person to settle; it is never dropped. A lease keeps two sweepers, and a
//! sweeper and the intake, off the same payment.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use paystream_common::consume::Verdict;
use paystream_common::ids::PaymentId;
use paystream_common::payment::{Change, Payment};
use paystream_common::shutdown::Shutdown;
use paystream_common::state::{PaymentState, Trigger};
use paystream_common::telemetry::names;
use paystream_common::time::now_ms;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::breaker::State;
use crate::entity::payment;
use crate::outcome::{self, Decision};
use crate::pipeline::{Pipeline, Work};
use crate::psp::{ChargeRequest, Lookup, Psp, PspOutcome};
use crate::store;

/// Payments taken per sweep.
const SWEEP_BATCH_MAX: u64 = 256;
/// Longest wait between two attempts on one payment.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct SweeperConfig {
    pub interval: Duration,
    pub executing_timeout: Duration,
    pub attempts_max: i32,
    /// How long a claim holds: longer than one lookup plus one charge can take.
    pub lease: Duration,
}

/// Delay before attempt `attempts + 1`: the interval doubled per attempt up to 32 times the
/// interval, and never above `RETRY_DELAY_MAX`.
pub fn retry_delay(interval: Duration, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 5)).unwrap_or(5);
    interval
        .saturating_mul(2u32.saturating_pow(exp))
        .min(RETRY_DELAY_MAX)
}

pub async fn run<P: Psp>(
    pipe: Arc<Pipeline<P>>,
    cfg: SweeperConfig,
    outbox: Arc<Notify>,
    mut shutdown: Shutdown,
) {
    let db = pipe.db.clone();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        match sweep(&pipe, &cfg).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(resolved_or_retried = n, "sweep done");
                outbox.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed; next interval retries"),
        }
        if let Ok((unknown, exhausted)) = store::unresolved_counts(&db, cfg.attempts_max).await {
            gauge!(names::PAYMENTS_UNKNOWN).set(unknown as f64);
            gauge!(names::SWEEPER_EXHAUSTED).set(exhausted as f64);
        }
        if let Ok(oldest) = store::oldest_unknown_created_ms(&db).await {
            let age_ms = oldest.map_or(0, |at| now_ms().saturating_sub(at).max(0));
            gauge!(names::PAYMENTS_UNKNOWN_OLDEST).set(age_ms as f64 / 1000.0);
        }
    }
    tracing::info!("sweeper stopped");
}

/// One sweep; returns how many payments got a recorded change. Each payment is resolved on its
/// own (through the pipeline's slots and gate) and its outcome committed as soon as it is in.
pub async fn sweep<P: Psp>(
    pipe: &Arc<Pipeline<P>>,
    cfg: &SweeperConfig,
) -> Result<usize, store::StoreError> {
    if pipe.gate.state() == State::Open {
        // The PSP is browning out: asking it about payments would only make more unknowns.
        return Ok(0);
    }
    let db = &pipe.db;
    let now = now_ms();
    let timeout_ms = i64::try_from(cfg.executing_timeout.as_millis()).unwrap_or(i64::MAX);
    let candidates = store::sweep_candidates(db, now, now - timeout_ms, SWEEP_BATCH_MAX).await?;
    // What this instance is charging or refunding right now is not stuck.
    let candidates: Vec<payment::Model> = candidates
        .into_iter()
        .filter(|c| PaymentId::parse(&c.payment_id).map_or(true, |id| !pipe.flights.contains(&id)))
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let lease_ms = i64::try_from(cfg.lease.as_millis()).unwrap_or(i64::MAX);
    let ids: Vec<String> = candidates.iter().map(|c| c.payment_id.clone()).collect();
    let held = store::claim(db, &ids, now, now + lease_ms).await?;
    let mut payments = Vec::with_capacity(held.len());
    for row in candidates.iter().filter(|c| held.contains(&c.payment_id)) {
        match store::parse_row(row) {
            Ok(p) => payments.push(p),
            // Named and counted (an alert), and left leased: tried again when the lease runs
            // out, not at every sweep, and never charged from a guess.
            Err(corrupt) => {
                tracing::error!(error = %corrupt, "sweeper skips a corrupt payment row")
            }
        }
    }

    let resolved = futures::future::join_all(payments.into_iter().map(|p| {
        let span = tracing::info_span!("sweep", payment_id = %p.payment_id, buyer_id = %p.buyer_id, stream_seq = p.request_seq, attempt = p.attempts + 1, state = p.state.as_str());
        resolve_one(pipe, cfg, p).instrument(span)
    }))
    .await;
    let mut released = Vec::new();
    let mut recorded = 0;
    for r in resolved {
        match r {
            Resolved::Recorded => recorded += 1,
            Resolved::Released(id) => released.push(id.to_string()),
            Resolved::Failed(e) => {
                tracing::warn!(error = %e, "sweeper could not record an outcome; the next sweep retries")
            }
        }
    }
    if !released.is_empty() {
        store::release(db, &released).await?;
    }
    Ok(recorded)
}

/// What became of one swept payment.
enum Resolved {
    Recorded,
    /// Nothing recorded (the PSP refused our configuration, or it is under way elsewhere here):
    /// the lease is given back.
    Released(PaymentId),
    Failed(String),
}

async fn resolve_one<P: Psp>(
    pipe: &Arc<Pipeline<P>>,
    cfg: &SweeperConfig,
    payment: Payment,
) -> Resolved {
    let payment_id = payment.payment_id;
    if !pipe.flights.start(payment_id, Work::Sweep, Vec::new()) {
        return Resolved::Released(payment_id);
    }
    let slot = pipe.acquire_slot().await;
    let call = crate::attempts::Call::start("sweep", "sweeper");
    let decision = resolve(pipe, &payment).await;
    drop(slot);
    let result = match decision {
        None => Resolved::Released(payment_id),
        Some(Decision::Record(change)) => {
            let label = match change.trigger {
                Trigger::Charged => "success",
                Trigger::Declined => "failure",
                Trigger::Refunded => "refunded",
                Trigger::RefundDeclined => "refund_declined",
                _ => "unknown",
            };
            counter!(names::SWEEPER_ATTEMPTS, "outcome" => label).increment(1);
            let attempt = i32::try_from(payment.attempts.saturating_add(1)).unwrap_or(i32::MAX);
            let retry_at_ms = (change.trigger == Trigger::Indeterminate).then(|| {
                // Past the bound, the payment is not abandoned: it moves to a slow lane
                // (every 10 minutes) and `paystream_sweeper_exhausted` alerts.
                let delay = if attempt >= cfg.attempts_max {
                    RETRY_DELAY_MAX
                } else {
                    retry_delay(cfg.interval, attempt)
                };
                now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
            });
            let change = Change {
                attempted: true,
                retry_at_ms,
                ..change
            };
            let attempt = call.ended(&change);
            match pipe.recorder.record_with(change, Some(attempt)).await {
                Ok(_) => Resolved::Recorded,
                Err(e) => Resolved::Failed(e),
            }
        }
        Some(Decision::ConfigError(error)) => {
            counter!(names::SWEEPER_ATTEMPTS, "outcome" => "config_error").increment(1);
            tracing::error!(%error, "PSP refused our configuration");
            Resolved::Released(payment_id)
        }
        Some(Decision::NotProcessed(_)) => Resolved::Released(payment_id),
    };
    pipe.flights.land(&payment_id, &Verdict::Ack);
    result
}

/// Asks the PSP about one payment and decides; charges again (same key) if the PSP never saw it.
/// `None`: shut down before an answer.
async fn resolve<P: Psp>(pipe: &Pipeline<P>, payment: &Payment) -> Option<Decision> {
    if payment.state == PaymentState::Refunding {
        return resolve_refund(pipe, payment).await;
    }
    let payment_id = payment.payment_id;
    let decision = match pipe.call(|| pipe.psp.lookup(payment_id)).await? {
        Lookup::Known(p) => outcome::of_lookup(payment_id, p),
        Lookup::ConfigError { error } => Decision::ConfigError(error),
        Lookup::RateLimited { .. } => Decision::NotProcessed("PSP rate-limited the lookup".into()),
        Lookup::Indeterminate { error } => outcome::of_charge(
            payment_id,
            PspOutcome::Indeterminate { error },
            "sweeper (PSP lookup)",
        ),
        Lookup::NotFound => {
            let charge = ChargeRequest {
                payment_id,
                amount: payment.amount,
                currency: payment.currency,
                merchant_id: &payment.merchant_id,
                metadata: &payment.metadata,
            };
            tracing::info!("PSP never received the charge: executing again with the same key");
            let answer = pipe.call(|| pipe.psp.charge(&charge)).await?;
            outcome::of_charge(payment_id, answer, "sweeper (re-executed)")
        }
    };
    Some(decision)
}

/// Asks the PSP about a REFUNDING payment's refund and adopts it, or refunds again with the same
/// key (never a second refund) when the PSP has not refunded. `None`: shut down before an answer.
async fn resolve_refund<P: Psp>(pipe: &Pipeline<P>, payment: &Payment) -> Option<Decision> {
    let payment_id = payment.payment_id;
    let refunded = match pipe.call(|| pipe.psp.lookup(payment_id)).await? {
        Lookup::Known(known) => outcome::of_refund_lookup(payment, &known),
        Lookup::NotFound => None,
        Lookup::ConfigError { error } => Some(Decision::ConfigError(error)),
        Lookup::RateLimited { .. } => {
            Some(Decision::NotProcessed("PSP rate-limited the lookup".into()))
        }
        Lookup::Indeterminate { error } => Some(outcome::of_refund(
            payment,
            PspOutcome::Indeterminate { error },
            "sweeper (PSP lookup)",
        )),
    };
    if refunded.is_some() {
        return refunded;
    }
    tracing::info!("PSP has not refunded: refunding again with the same key");
    let answer = pipe
        .call(|| pipe.psp.refund(payment_id, payment.amount))
        .await?;
    Some(outcome::of_refund(
        payment,
        answer,
        "sweeper (refunded again)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let i = Duration::from_secs(5);
        assert_eq!(retry_delay(i, 0), Duration::from_secs(5));
        assert_eq!(retry_delay(i, 1), Duration::from_secs(10));
        assert_eq!(retry_delay(i, 3), Duration::from_secs(40));
        assert_eq!(retry_delay(i, 30), Duration::from_secs(160));
        assert_eq!(retry_delay(Duration::from_secs(60), 30), RETRY_DELAY_MAX);
    }
}
