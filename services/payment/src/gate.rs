//! The one gate every PSP call of an instance passes — charges, refunds and the sweeper's lookups:
//! the circuit breaker first (no call into a PSP that is browning out), then the adaptive rate
//! limiter (no faster than the PSP takes). A caller enters, calls, and reports what came back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use paystream_common::shutdown::Shutdown;
use paystream_common::telemetry::names;
use tokio::sync::Notify;

use crate::breaker::{Breaker, Permit, State};
use crate::limiter::Limiter;

/// What a call's answer says about the PSP's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered (success, decline, not found, a client error, a refusal of our credentials or
    /// a certificate we do not trust: our configuration, not its health).
    Answered,
    /// No usable answer: timeout, reset, 5xx.
    Failed,
    /// 429: it is alive but we are too fast.
    RateLimited,
}

/// A caller's ticket through the gate.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    probe: bool,
}

pub struct Gate {
    breaker: Mutex<Breaker>,
    limiter: Mutex<Limiter>,
    /// Woken when the breaker changes state.
    changed: Notify,
    /// Times the breaker opened and closed in this gate's life (the metrics count per process,
    /// over every gate in it).
    opened: AtomicU64,
    closed: AtomicU64,
}

impl Gate {
    /// `rate_ceiling`: `PAYSTREAM_PSP_RATE_LIMIT`; `call_max`: the longest one call can take.
    pub fn new(rate_ceiling: Option<f64>, call_max: Duration) -> Self {
        let now = Instant::now();
        let limiter = Limiter::new(rate_ceiling, now);
        gauge!(names::PSP_RATE_LIMIT).set(limiter.rate().unwrap_or(0.0));
        gauge!(names::PSP_CIRCUIT_STATE).set(State::Closed.gauge());
        Self {
            breaker: Mutex::new(Breaker::new(call_max, now)),
            limiter: Mutex::new(limiter),
            changed: Notify::new(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }
    }

    /// The breaker's state now (an open one half-opens once its time is up).
    pub fn state(&self) -> State {
        let (state, entered) = self
            .breaker
            .lock()
            .expect("breaker lock")
            .poll(Instant::now());
        if let Some(to) = entered {
            self.transition(to);
        }
        state
    }

    /// `(opened, closed)`: how often the breaker opened and closed again.
    pub fn transitions(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.closed.load(Ordering::Relaxed),
        )
    }

    /// Requests/s the limiter allows now (`None`: not pacing).
    pub fn rate(&self) -> Option<f64> {
        self.limiter.lock().expect("limiter lock").rate()
    }

    /// Waits until a call may go out; `None` if `shutdown` fired first.
    pub async fn enter(&self, shutdown: &Shutdown) -> Option<Pass> {
        let mut stop = shutdown.clone();
        let probe = loop {
            let changed = self.changed.notified();
            let (permit, entered) = self
                .breaker
                .lock()
                .expect("breaker lock")
                .permit(Instant::now());
            if let Some(state) = entered {
                self.transition(state);
            }
            match permit {
                Permit::Go => break false,
                Permit::Probe => break true,
                Permit::Wait(d) => tokio::select! {
                    () = changed => {},
                    () = tokio::time::sleep(d) => {},
                    () = stop.wait() => return None,
                },
            }
        };
        let wait = self
            .limiter
            .lock()
            .expect("limiter lock")
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                () = stop.wait() => return None,
            }
        }
        Some(Pass { probe })
    }

    /// Waits while the breaker is open (half-open lets work in: it needs a probe).
    pub async fn until_not_open(&self, shutdown: &Shutdown) {
        let mut stop = shutdown.clone();
        loop {
            let changed = self.changed.notified();
            if self.state() != State::Open {
                return;
            }
            let wait = Duration::from_millis(100);
            tokio::select! {
                () = changed => {},
                () = tokio::time::sleep(wait) => {},
                () = stop.wait() => return,
            }
        }
    }

    /// Reports what came back for a call that went through `pass`.
    pub fn exit(&self, pass: Pass, health: Health) {
        let now = Instant::now();
        {
            let mut l = self.limiter.lock().expect("limiter lock");
            match health {
                Health::RateLimited => l.rate_limited(now),
                Health::Answered => l.accepted(now),
                Health::Failed => {}
            }
            gauge!(names::PSP_RATE_LIMIT).set(l.rate().unwrap_or(0.0));
        }
        let entered = match health {
            // A 429 is an answer: the PSP is up.
            Health::Answered | Health::RateLimited => self
                .breaker
                .lock()
                .expect("breaker lock")
                .record(now, pass.probe, false),
            Health::Failed => self
                .breaker
                .lock()
                .expect("breaker lock")
                .record(now, pass.probe, true),
        };
        if let Some(state) = entered {
            self.transition(state);
        }
    }

    fn transition(&self, to: State) {
        gauge!(names::PSP_CIRCUIT_STATE).set(to.gauge());
        counter!(names::PSP_CIRCUIT_TRANSITIONS, "to" => to.as_str()).increment(1);
        match to {
            State::Open => self.opened.fetch_add(1, Ordering::Relaxed),
            State::Closed => self.closed.fetch_add(1, Ordering::Relaxed),
            State::HalfOpen => 0,
        };
        match to {
            State::Open => tracing::warn!(
                "PSP circuit breaker opened: most recent calls failed; new calls wait"
            ),
            State::HalfOpen => tracing::info!("PSP circuit breaker half-open: probing"),
            State::Closed => tracing::info!("PSP circuit breaker closed: the PSP answers again"),
        }
        self.changed.notify_waiters();
    }
}
