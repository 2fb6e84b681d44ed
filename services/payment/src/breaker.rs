//! The circuit breaker in front of the PSP: pure state, time passed in, property-tested.
//!
//! Closed, it lets every call through and remembers the last `WINDOW` outcomes. When at least
//! `CALLS_MIN` of them are in and more than `FAILURE_SHARE` failed (a timeout, a reset, a 5xx: the
//! PSP is browning out), it opens: no new call goes out, so no new payment becomes UNKNOWN for a
//! PSP that cannot answer, and requests wait in PAYMENTS. After `OPEN_FOR` it half-opens: one call
//! goes out as a probe; if it is answered the breaker closes, if not it opens again. Declines and
//! 429s are answers, not failures (429s are the limiter's business).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Outcomes remembered. Long enough that a PSP failing a third of its calls at random (the fault
/// tests' 10% 5xx + 10% timeouts + 10% lost answers) almost never shows a majority of failures
/// by chance: over 20 calls it did every few seconds, and the breaker flapped the whole run.
pub const WINDOW: usize = 50;
pub const CALLS_MIN: usize = 20;
/// "Most recent calls fail": more than this share of the window.
pub const FAILURE_SHARE: f64 = 0.6;
pub const OPEN_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The value of `paystream_psp_circuit_state`.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call.
    Go,
    /// Call: this is the half-open breaker's probe, whose outcome decides.
    Probe,
    /// Do not call; ask again after this long (or when the state changes).
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    /// Recent outcomes while closed, `true` = failed.
    recent: VecDeque<bool>,
    opened_at: Instant,
    /// When the probe in flight went out; a probe that never reports (its caller was stopped)
    /// is given up after `probe_max`.
    probe_since: Option<Instant>,
    probe_max: Duration,
}

impl Breaker {
    /// `probe_max`: the longest a call can take (the PSP timeout and then some).
    pub fn new(probe_max: Duration, now: Instant) -> Self {
        Self {
            state: State::Closed,
            recent: VecDeque::with_capacity(WINDOW),
            opened_at: now,
            probe_since: None,
            probe_max,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The state at `now`: an open breaker whose `OPEN_FOR` is over half-opens (returned as the
    /// second value), so the next caller probes. Without this, a breaker that opened when nothing
    /// else was calling stayed open for good: callers wait for it to be not open before calling.
    pub fn poll(&mut self, now: Instant) -> (State, Option<State>) {
        if self.state == State::Open && now >= self.opened_at + OPEN_FOR {
            self.state = State::HalfOpen;
            self.probe_since = None;
            return (self.state, Some(State::HalfOpen));
        }
        (self.state, None)
    }

    /// Whether a call may go now. May move Open → HalfOpen (returned as the second value).
    pub fn permit(&mut self, now: Instant) -> (Permit, Option<State>) {
        let (state, entered) = self.poll(now);
        match state {
            State::Closed => (Permit::Go, entered),
            State::Open => (Permit::Wait(self.opened_at + OPEN_FOR - now), entered),
            State::HalfOpen if entered.is_some() => {
                self.probe_since = Some(now);
                (Permit::Probe, entered)
            }
            State::HalfOpen => match self.probe_since {
                Some(since) if now < since + self.probe_max => {
                    (Permit::Wait(since + self.probe_max - now), None)
                }
                _ => {
                    self.probe_since = Some(now);
                    (Permit::Probe, None)
                }
            },
        }
    }

    /// A call came back; `failed`: no answer (timeout, reset, 5xx). Returns the state entered,
    /// if it changed.
    pub fn record(&mut self, now: Instant, probe: bool, failed: bool) -> Option<State> {
        match self.state {
            State::Closed => {
                if self.recent.len() == WINDOW {
                    self.recent.pop_front();
                }
                self.recent.push_back(failed);
                let failures = self.recent.iter().filter(|f| **f).count();
                // Judged on a failure only: an answer never opens the breaker (found by the
                // property test: a success that filled the window to CALLS_MIN did).
                if failed
                    && self.recent.len() >= CALLS_MIN
                    && failures as f64 > FAILURE_SHARE * self.recent.len() as f64
                {
                    self.open(now);
                    return Some(State::Open);
                }
                None
            }
            // Calls that went out before the breaker opened come back late: they decide nothing.
            State::Open => None,
            State::HalfOpen if !probe => None,
            State::HalfOpen => {
                self.probe_since = None;
                if failed {
                    self.open(now);
                    Some(State::Open)
                } else {
                    self.state = State::Closed;
                    self.recent.clear();
                    Some(State::Closed)
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.opened_at = now;
        self.recent.clear();
        self.probe_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// Ask for a permit after this many ms; if granted, the call fails or not.
        Call { after_ms: u64, fails: bool },
    }

    fn step() -> impl Strategy<Value = Step> {
        (0u64..3_000, any::<bool>()).prop_map(|(after_ms, fails)| Step::Call { after_ms, fails })
    }

    proptest! {
        /// Whatever happens: an open breaker lets nothing through before OPEN_FOR; a half-open
        /// one lets one probe at a time; a closed one opens only on a majority of failures.
        #[test]
        fn state_machine_holds(steps in proptest::collection::vec(step(), 1..300)) {
            let t0 = Instant::now();
            let mut b = Breaker::new(Duration::from_secs(12), t0);
            let mut now = t0;
            let mut opened_at = None;
            for Step::Call { after_ms, fails } in steps {
                now += Duration::from_millis(after_ms);
                let before = b.state();
                let recent_failures = b.recent.iter().filter(|f| **f).count();
                let (permit, _) = b.permit(now);
                match (before, permit) {
                    (State::Open, Permit::Go) => prop_assert!(false, "an open breaker let a call through"),
                    (State::Open, Permit::Probe) => prop_assert!(now >= opened_at.unwrap() + OPEN_FOR),
                    (State::Closed, p) => prop_assert_eq!(p, Permit::Go),
                    (State::HalfOpen, Permit::Go) => prop_assert!(false, "half-open lets only probes"),
                    _ => {}
                }
                if let Permit::Wait(d) = permit {
                    prop_assert!(d > Duration::ZERO);
                    continue;
                }
                let probe = permit == Permit::Probe;
                let entered = b.record(now, probe, fails);
                if entered == Some(State::Open) {
                    opened_at = Some(now);
                    prop_assert!(fails, "only a failure opens the breaker");
                    if before == State::Closed {
                        prop_assert!(recent_failures + 1 > CALLS_MIN * 6 / 10);
                    }
                }
                if probe {
                    prop_assert_eq!(b.state(), if fails { State::Open } else { State::Closed });
                }
            }
        }
    }

    #[test]
    fn opens_on_a_brownout_probes_then_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Duration::from_secs(12), t0);
        // A third failing keeps it closed.
        for i in 0..200 {
            assert_eq!(b.record(t0, false, i % 3 == 0), None);
        }
        // A brownout: every call fails.
        let mut entered = None;
        for _ in 0..WINDOW {
            entered = entered.or(b.record(t0, false, true));
        }
        assert_eq!(entered, Some(State::Open));
        assert!(matches!(
            b.permit(t0 + Duration::from_secs(1)).0,
            Permit::Wait(_)
        ));
        // After OPEN_FOR: one probe, the rest wait.
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.permit(t1), (Permit::Probe, Some(State::HalfOpen)));
        assert!(matches!(b.permit(t1).0, Permit::Wait(_)));
        // The probe fails: open again; the next probe is answered: closed.
        assert_eq!(b.record(t1, true, true), Some(State::Open));
        let t2 = t1 + OPEN_FOR;
        assert_eq!(b.permit(t2).0, Permit::Probe);
        assert_eq!(b.record(t2, true, false), Some(State::Closed));
        assert_eq!(b.permit(t2).0, Permit::Go);
        // Nobody called while it was open: asked for its state later, it half-opens, and the
        // next caller probes.
        for _ in 0..WINDOW {
            b.record(t2, false, true);
        }
        assert_eq!(
            b.poll(t2 + OPEN_FOR),
            (State::HalfOpen, Some(State::HalfOpen))
        );
        assert_eq!(b.permit(t2 + OPEN_FOR).0, Permit::Probe);
        assert_eq!(b.record(t2 + OPEN_FOR, true, false), Some(State::Closed));
        // A probe whose caller vanished is replaced after probe_max.
        for _ in 0..WINDOW {
            b.record(t2, false, true);
        }
        let t3 = t2 + OPEN_FOR;
        assert_eq!(b.permit(t3).0, Permit::Probe);
        assert!(matches!(
            b.permit(t3 + Duration::from_secs(11)).0,
            Permit::Wait(_)
        ));
        assert_eq!(b.permit(t3 + Duration::from_secs(12)).0, Permit::Probe);
    }
}
