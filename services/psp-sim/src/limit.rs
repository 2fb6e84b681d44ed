//! The request-rate limit (`PAYSTREAM_PSP_SIM_RATE_LIMIT`): a token bucket holding one second's
//! worth of requests and refilled at the rate, kept in the GCRA form — one "theoretical arrival
//! time" instead of a token count — so admitting or refusing is a comparison, in exact integers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const NANOS_PER_S: u128 = 1_000_000_000;

/// The limiter's state. Time is counted in "rate-nanoseconds" (nanoseconds × rate), so that one
/// request's share of a second is exactly [`NANOS_PER_S`] whatever the rate.
#[derive(Clone, Debug)]
pub(crate) struct Gcra {
    /// Requests per second, at least 1.
    rate_per_s: u128,
    /// How far the theoretical arrival time may run ahead of now: the bucket's depth less one
    /// request, i.e. (rate − 1) requests' worth of time.
    burst: u128,
    /// When the bucket would be full again if no request came (rate-nanoseconds since start).
    tat: u128,
}

impl Gcra {
    /// A full bucket of `rate_per_s` requests, refilled at `rate_per_s` per second.
    pub(crate) fn per_second(rate_per_s: u32) -> Self {
        assert!(rate_per_s >= 1, "validated: a rate limit admits something");
        let rate_per_s = u128::from(rate_per_s);
        Self {
            rate_per_s,
            burst: (rate_per_s - 1) * NANOS_PER_S,
            tat: 0,
        }
    }

    /// Admits a request arriving `now` after the limiter's start, or answers how long until one
    /// would be admitted (never more than a second).
    pub(crate) fn admit(&mut self, now: Duration) -> Result<(), Duration> {
        let now = now.as_nanos() * self.rate_per_s;
        let tat = self.tat.max(now);
        let ahead = tat - now;
        if ahead > self.burst {
            let wait_ns = (ahead - self.burst).div_ceil(self.rate_per_s);
            let wait = Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX));
            assert!(
                wait <= Duration::from_secs(1),
                "one request's share at most"
            );
            return Err(wait);
        }
        self.tat = tat + NANOS_PER_S;
        Ok(())
    }
}

/// The limiter all requests share.
pub(crate) struct RateLimit {
    /// The configured rate, for the 429's message.
    pub(crate) rate_per_s: u32,
    /// When the limiter was made; `Gcra` counts time from here.
    started: Instant,
    /// Guarded by a plain mutex: an admission is a few integer operations and never awaits.
    gcra: Mutex<Gcra>,
}

impl RateLimit {
    pub(crate) fn per_second(rate_per_s: u32) -> Self {
        Self {
            rate_per_s,
            started: Instant::now(),
            gcra: Mutex::new(Gcra::per_second(rate_per_s)),
        }
    }

    /// Admits the current request, or says how long until one would be admitted.
    pub(crate) fn admit(&self) -> Result<(), Duration> {
        // An admission cannot panic half-way through its update, so a poisoned lock is reused.
        let mut gcra = self
            .gcra
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        gcra.admit(self.started.elapsed())
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_s(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{prop_assert, proptest};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_admits_one_second_of_requests_at_once() {
        let mut gcra = Gcra::per_second(10);
        for _ in 0..10 {
            assert_eq!(gcra.admit(ms(0)), Ok(()));
        }
        assert_eq!(gcra.admit(ms(0)), Err(ms(100)));
        assert_eq!(gcra.admit(ms(60)), Err(ms(40)));
        assert_eq!(gcra.admit(ms(100)), Ok(()));
        assert_eq!(gcra.admit(ms(100)), Err(ms(100)));
    }

    #[test]
    fn requests_at_the_rate_are_all_admitted() {
        let mut gcra = Gcra::per_second(4);
        for i in 0..100 {
            assert_eq!(gcra.admit(ms(250 * i)), Ok(()), "request {i}");
        }
    }

    #[test]
    fn a_rate_of_one_admits_one_per_second() {
        let mut gcra = Gcra::per_second(1);
        assert_eq!(gcra.admit(ms(0)), Ok(()));
        assert_eq!(gcra.admit(ms(999)), Err(ms(1)));
        assert_eq!(gcra.admit(ms(1_000)), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(ms(1)), 1);
        assert_eq!(retry_after_s(ms(1_000)), 1);
        assert_eq!(retry_after_s(ms(1_001)), 2);
    }

    proptest! {
        /// Whatever the arrivals: no window of time admits more than the bucket plus what
        /// refills in it (rate + rate × window), a refused request would be admitted after the
        /// wait it was told, and that wait is at most a second.
        #[test]
        fn never_above_the_rate_and_the_wait_is_honest(
            rate in 1u32..=50,
            gaps_us in proptest::collection::vec(0u64..200_000, 1..300),
        ) {
            let mut gcra = Gcra::per_second(rate);
            let mut now = Duration::ZERO;
            let mut admitted = Vec::new();
            for gap in gaps_us {
                now += Duration::from_micros(gap);
                let before = gcra.clone();
                match gcra.admit(now) {
                    Ok(()) => admitted.push(now),
                    Err(wait) => {
                        prop_assert!(wait <= Duration::from_secs(1));
                        prop_assert!(before.clone().admit(now + wait).is_ok());
                    }
                }
            }
            let rate = u128::from(rate);
            for (i, first) in admitted.iter().enumerate() {
                for (j, last) in admitted.iter().enumerate().skip(i) {
                    let window_ns = (*last - *first).as_nanos();
                    let allowed = rate + rate * window_ns / NANOS_PER_S;
                    prop_assert!((j - i + 1) as u128 <= allowed, "{} in {window_ns} ns", j - i + 1);
                }
            }
        }
    }
}
