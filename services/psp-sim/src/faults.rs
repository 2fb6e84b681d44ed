//! Random fault injection: one roll of the dice per request decides whether it meets an error,
//! a timeout or a lost answer, and whether a new payment is declined; the same dice draw each
//! request's latency when it is log-normal. Seeded dice make a run reproducible when requests
//! arrive in the same order.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::SimConfig;
use crate::latency::Latency;

/// A fault the simulator inflicts on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer 500 without processing.
    Error,
    /// Process nothing, answer nothing: hold the request, then 504.
    Timeout,
    /// Process, then drop the answer: hold the request, then 504.
    LostResponse,
}

/// What one roll decided for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Roll {
    /// The fault met before processing (error first, then timeout), if any.
    pub(crate) before: Option<Fault>,
    /// Whether the answer is dropped after processing.
    pub(crate) lose_answer: bool,
    /// Whether the payment is declined if this request creates it.
    pub(crate) decline: bool,
}

/// The random fault source shared by all requests.
pub(crate) struct Dice {
    /// Guarded by a plain mutex: a roll is a few nanoseconds and never awaits.
    rng: Mutex<StdRng>,
    /// Share of requests answered 500 (validated to 0.0–1.0, like every rate here).
    error_rate: f64,
    /// Share of requests neither processed nor answered.
    timeout_rate: f64,
    /// Share of processed requests whose answer is dropped.
    lost_response_rate: f64,
    /// Share of new payments declined.
    decline_rate: f64,
    /// The latency added to each `/v1` answer.
    latency: Latency,
}

impl Dice {
    pub(crate) fn new(cfg: &SimConfig) -> Self {
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            rng: Mutex::new(rng),
            error_rate: cfg.error_rate,
            timeout_rate: cfg.timeout_rate,
            lost_response_rate: cfg.lost_response_rate,
            decline_rate: cfg.decline_rate,
            latency: Latency::new(cfg.latency_ms, cfg.latency_p99_ms),
        }
    }

    /// This request's latency in milliseconds; a fixed latency draws nothing, so it leaves the
    /// sequence of fault rolls as it was.
    pub(crate) fn latency_ms(&self) -> u64 {
        if let Latency::Fixed { ms } = self.latency {
            return ms;
        }
        self.latency.sample_ms(&mut *self.lock())
    }

    /// The generator; a panic while holding it cannot leave it half-updated in a way that
    /// matters for fault injection, so a poisoned lock is simply reused.
    fn lock(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Draws every decision for one request, always four draws in the same order so a seeded
    /// run stays reproducible.
    pub(crate) fn roll(&self) -> Roll {
        let mut rng = self.lock();
        let error = rng.random::<f64>() < self.error_rate;
        let timeout = rng.random::<f64>() < self.timeout_rate;
        let lose_answer = rng.random::<f64>() < self.lost_response_rate;
        let decline = rng.random::<f64>() < self.decline_rate;
        let before = if error {
            Some(Fault::Error)
        } else if timeout {
            Some(Fault::Timeout)
        } else {
            None
        };
        Roll {
            before,
            lose_answer,
            decline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dice(rates: [f64; 4], seed: u64) -> Dice {
        Dice::new(&SimConfig {
            error_rate: rates[0],
            timeout_rate: rates[1],
            lost_response_rate: rates[2],
            decline_rate: rates[3],
            seed: Some(seed),
            ..SimConfig::default()
        })
    }

    #[test]
    fn zero_rates_never_fault() {
        let dice = dice([0.0; 4], 7);
        for _ in 0..1000 {
            assert_eq!(dice.roll(), Roll::default());
        }
    }

    #[test]
    fn full_rates_always_fault_and_error_wins() {
        let dice = dice([1.0; 4], 7);
        let roll = dice.roll();
        assert_eq!(roll.before, Some(Fault::Error));
        assert!(roll.lose_answer && roll.decline);
    }

    #[test]
    fn same_seed_same_rolls() {
        let a = dice([0.5; 4], 42);
        let b = dice([0.5; 4], 42);
        for _ in 0..100 {
            assert_eq!(a.roll(), b.roll());
        }
    }
}
