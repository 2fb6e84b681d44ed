//! The adaptive rate limiter in front of the PSP: pure state, time passed in, so its rules can be
//! property-tested without a clock.
//!
//! Requests are paced by reservation (GCRA): each one takes the next free slot `1/rate` after the
//! previous, with a burst of a tenth of a second's worth; a caller is told how long to wait for its
//! slot, so waiters never stampede on one token. The rate follows the PSP's 429s by *measuring*
//! what it takes: a 429 opens a one-second window in which the answers it gives (not 429) are
//! counted; at its end the rate becomes that count (never more than it was). Once no 429 came for
//! `QUIET`, every `RAISE_EVERY` the rate creeps up by `RAISE`, so a PSP that raises its limit gets
//! the traffic back. It never exceeds the configured ceiling (`PAYSTREAM_PSP_RATE_LIMIT`). With no
//! ceiling and no 429 yet it does not pace at all.
//!
//! Why measure rather than cut by a fixed share (measured against a 40/s PSP, `e2e::real_psp`):
//! halving on a 429 and rising at once sent 3.6 requests per payment; cutting 15% for every second
//! that saw a 429 spiralled down to 8/s, because pacing right at a token bucket's rate still meets
//! the odd 429; and an estimate taken at the first 429 of a burst counted almost no answers yet
//! (a 429 comes back at once, a charge after its latency) and started at 1/s.

use std::time::{Duration, Instant};

/// Share of the rate added after `RAISE_EVERY` without a 429 (at least one request/s).
pub const RAISE: f64 = 0.05;
pub const RAISE_EVERY: Duration = Duration::from_millis(500);
/// No raise until this long after the last 429.
pub const QUIET: Duration = Duration::from_secs(2);
/// How long the answers after a 429 are counted to learn the PSP's rate.
pub const MEASURE_FOR: Duration = Duration::from_secs(1);
/// Slowest the limiter paces: one request per second still finds out when the PSP recovers.
pub const RATE_MIN: f64 = 1.0;
/// Without a ceiling, growth stops here (a million requests/s is unlimited in practice).
const RATE_MAX: f64 = 1_000_000.0;
/// Burst allowed after idling, as seconds of the current rate.
const BURST_S: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct Limiter {
    /// `PAYSTREAM_PSP_RATE_LIMIT`: never exceeded.
    ceiling: Option<f64>,
    /// Requests/s now; `None`: not pacing (no ceiling, no 429 measured yet).
    rate: Option<f64>,
    /// When the next request may go (GCRA's theoretical arrival time).
    next_free: Instant,
    last_429: Option<Instant>,
    last_raise: Instant,
    /// A window opened by a 429: since when, and the answers (not 429) counted in it.
    measuring: Option<(Instant, u32)>,
}

impl Limiter {
    pub fn new(ceiling: Option<f64>, now: Instant) -> Self {
        let ceiling = ceiling.map(|c| c.clamp(RATE_MIN, RATE_MAX));
        Self {
            ceiling,
            rate: ceiling,
            next_free: now,
            last_429: None,
            last_raise: now,
            measuring: None,
        }
    }

    /// Requests/s the limiter allows now (`None`: unpaced).
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Takes the next slot; returns how long the caller waits for it (zero: go now).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.settle(now);
        self.raise(now);
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let burst = Duration::from_secs_f64((BURST_S * rate).max(1.0) / rate);
        // A slot left unused while idle is not saved up beyond the burst.
        let earliest = now.checked_sub(burst).unwrap_or(now);
        let slot = self.next_free.max(earliest);
        self.next_free = slot + interval;
        slot.saturating_duration_since(now)
    }

    /// The PSP answered a request (not 429).
    pub fn accepted(&mut self, now: Instant) {
        self.settle(now);
        if let Some((_, n)) = &mut self.measuring {
            *n = n.saturating_add(1);
        }
    }

    /// The PSP answered 429: learn what it takes.
    pub fn rate_limited(&mut self, now: Instant) {
        self.settle(now);
        self.last_429 = Some(now);
        if self.measuring.is_none() {
            self.measuring = Some((now, 0));
        }
    }

    /// Ends a measuring window that is over: the rate becomes what the PSP took in it.
    fn settle(&mut self, now: Instant) {
        let Some((since, answered)) = self.measuring else {
            return;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed < MEASURE_FOR {
            return;
        }
        // Every call settles a window that is over before it counts, so all `answered` came
        // within the window.
        let took = f64::from(answered) / MEASURE_FOR.as_secs_f64();
        let cap = self
            .rate
            .unwrap_or(RATE_MAX)
            .min(self.ceiling.unwrap_or(RATE_MAX));
        self.rate = Some(took.min(cap).max(RATE_MIN));
        self.measuring = None;
        self.last_raise = now;
    }

    fn raise(&mut self, now: Instant) {
        let Some(rate) = self.rate else { return };
        if self.measuring.is_some() || self.last_429.is_some_and(|at| now < at + QUIET) {
            return;
        }
        let since = now.saturating_duration_since(self.last_raise);
        if since < RAISE_EVERY {
            return;
        }
        let steps = (since.as_secs_f64() / RAISE_EVERY.as_secs_f64()).floor();
        let mut r = rate;
        for _ in 0..(steps as u32).min(64) {
            r += (r * RAISE).max(1.0);
        }
        self.rate = Some(r.min(self.ceiling.unwrap_or(RATE_MAX)));
        self.last_raise = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sends requests at the given offsets (ms) and returns when each was let through.
    fn run(l: &mut Limiter, t0: Instant, at_ms: &[u64]) -> Vec<Instant> {
        at_ms
            .iter()
            .map(|ms| {
                let now = t0 + Duration::from_millis(*ms);
                now + l.reserve(now)
            })
            .collect()
    }

    proptest! {
        /// Whatever the arrivals and 429s, no one-second window sees more requests than the
        /// ceiling plus the burst.
        #[test]
        fn never_exceeds_the_ceiling(
            ceiling in 1u32..300,
            mut arrivals in proptest::collection::vec(0u64..5_000, 1..600),
            cuts in proptest::collection::vec(0u64..5_000, 0..20),
        ) {
            arrivals.sort_unstable();
            let t0 = Instant::now();
            let mut l = Limiter::new(Some(f64::from(ceiling)), t0);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut sent = Vec::new();
            for ms in &arrivals {
                let now = t0 + Duration::from_millis(*ms);
                while cuts.first().is_some_and(|c| *c <= *ms) {
                    l.rate_limited(t0 + Duration::from_millis(cuts.remove(0)));
                }
                sent.push(now + l.reserve(now));
                prop_assert!(l.rate().unwrap() <= f64::from(ceiling) + 1e-9);
            }
            sent.sort_unstable();
            let burst = (0.1 * f64::from(ceiling)).max(1.0).ceil() as usize;
            for (i, start) in sent.iter().enumerate() {
                let in_window = sent[i..].iter().take_while(|t| **t < *start + Duration::from_secs(1)).count();
                prop_assert!(in_window <= ceiling as usize + burst + 1, "{in_window} in one second, ceiling {ceiling}");
            }
        }

        /// A 429 followed by fewer answers than the rate lowers it to what was answered (down to
        /// the floor), never raises it; quiet time raises it back, never past the ceiling.
        #[test]
        fn learns_the_psps_rate_and_recovers(
            ceiling in 5u32..1000,
            answered in 0u32..2000,
            quiet_ms in 3_100u64..60_000,
        ) {
            let t0 = Instant::now();
            let mut l = Limiter::new(Some(f64::from(ceiling)), t0);
            let before = l.rate().unwrap();
            l.rate_limited(t0);
            for i in 0..answered {
                l.accepted(t0 + Duration::from_micros(u64::from(i) * 400));
            }
            l.reserve(t0 + Duration::from_secs(1));
            let learned = l.rate().unwrap();
            prop_assert!(learned <= before);
            prop_assert!(learned >= RATE_MIN);
            prop_assert!((learned - f64::from(answered).clamp(RATE_MIN, before)).abs() < 1.0);
            l.reserve(t0 + Duration::from_millis(quiet_ms));
            prop_assert!(l.rate().unwrap() > learned || learned == before);
            prop_assert!(l.rate().unwrap() <= f64::from(ceiling));
        }
    }

    #[test]
    fn unpaced_until_a_429_then_paced_at_what_the_psp_took() {
        let t0 = Instant::now();
        let mut l = Limiter::new(None, t0);
        // 300 requests in the first second all go at once.
        let ms: Vec<u64> = (0..300).map(|i| i * 3).collect();
        let sent = run(&mut l, t0, &ms);
        assert!(
            sent.iter()
                .zip(&ms)
                .all(|(s, m)| *s == t0 + Duration::from_millis(*m))
        );
        // A 429; over the next second the PSP answers 40 (the rest 429).
        l.rate_limited(t0 + Duration::from_millis(1_000));
        for i in 0..40 {
            l.accepted(t0 + Duration::from_millis(1_000 + i * 24));
            l.rate_limited(t0 + Duration::from_millis(1_001 + i * 24));
        }
        assert_eq!(l.rate(), None, "still measuring");
        l.reserve(t0 + Duration::from_millis(2_000));
        let rate = l.rate().expect("paced after the window");
        assert!((39.0..=41.0).contains(&rate), "{rate}");
        // No raise while 429s are recent; then it creeps up.
        l.reserve(t0 + Duration::from_millis(2_900));
        assert_eq!(l.rate(), Some(rate));
        l.reserve(t0 + Duration::from_millis(4_000));
        assert!(l.rate().unwrap() > rate);
    }

    #[test]
    fn an_odd_429_at_the_limit_does_not_spiral_down() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(100.0), t0);
        // Paced at 40/s, the PSP takes 40/s and now and then answers 429.
        l.rate_limited(t0);
        for i in 0..40 {
            l.accepted(t0 + Duration::from_millis(i * 25));
        }
        l.reserve(t0 + Duration::from_millis(1_000));
        assert!((39.0..=41.0).contains(&l.rate().unwrap()));
        for second in 1..30u64 {
            let at = t0 + Duration::from_secs(second);
            l.rate_limited(at);
            for i in 0..40 {
                l.accepted(at + Duration::from_millis(i * 25));
            }
        }
        l.reserve(t0 + Duration::from_secs(31));
        let rate = l.rate().unwrap();
        assert!(rate >= 38.0, "{rate}");
    }

    #[test]
    fn reservations_space_requests_evenly() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(100.0), t0);
        // 50 arrive at once: one every 10 ms.
        let sent = run(&mut l, t0, &[0; 50]);
        let last = sent.last().unwrap().duration_since(t0);
        assert!(
            last >= Duration::from_millis(480) && last <= Duration::from_millis(500),
            "{last:?}"
        );
        // After a second idle, a tenth of a second's worth goes at once, then the pace again.
        let t1 = t0 + Duration::from_secs(2);
        let sent = run(&mut l, t1, &[0; 12]);
        let at_once = sent.iter().filter(|s| **s == t1).count();
        assert!((10..=11).contains(&at_once), "{at_once}");
    }
}
