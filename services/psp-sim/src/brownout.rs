//! `POST /v1/sim/brownout`: the simulator browns out on request. For the next `seconds`, every
//! PSP call (charge, refund, status lookup) answers 500 without processing anything, as a PSP
//! whose backend is down would; `{"seconds": 0}` ends it. Benches and demos use it to watch the
//! circuit breaker open, probe and close against a running paystream.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::Simulator;
use crate::clock::now_ms;
use crate::http::{answer, bad_request};
use crate::request::BadRequest;
use crate::telemetry::Outcome;

/// The longest brownout one request may order: a day.
const SECONDS_MAX: f64 = 86_400.0;

/// Until when (unix ms) the simulator browns out; 0: it does not.
#[derive(Debug, Default)]
pub(crate) struct Brownout {
    until_ms: AtomicI64,
}

impl Brownout {
    /// Whether a PSP call arriving now meets the brownout.
    pub(crate) fn active(&self) -> bool {
        now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    fn set(&self, seconds: f64) -> i64 {
        let until = if seconds > 0.0 {
            now_ms() + (seconds * 1000.0) as i64
        } else {
            0
        };
        self.until_ms.store(until, Ordering::Relaxed);
        until
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BrownoutRequest {
    seconds: f64,
}

#[derive(Serialize)]
struct BrownoutAnswer {
    /// When the brownout ends (unix ms); 0 when it was ended.
    until_ms: i64,
}

pub(crate) async fn post_brownout(
    State(sim): State<Simulator>,
    body: Result<Json<BrownoutRequest>, JsonRejection>,
) -> Response {
    let seconds = match body {
        Ok(Json(b)) => b.seconds,
        Err(rejection) => return bad_request(&BadRequest(rejection.body_text())),
    };
    if !(0.0..=SECONDS_MAX).contains(&seconds) {
        return bad_request(&BadRequest(format!(
            "seconds: must be a number of seconds in 0..={SECONDS_MAX}, got {seconds}"
        )));
    }
    let until_ms = sim.shared.brownout.set(seconds);
    tracing::warn!(seconds, until_ms, "simulated brownout ordered");
    answer(
        StatusCode::OK,
        Outcome::Succeeded,
        BrownoutAnswer { until_ms },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brownout_runs_until_its_end_and_zero_ends_it() {
        let b = Brownout::default();
        assert!(!b.active());
        let until = b.set(60.0);
        assert!(until > now_ms() + 59_000);
        assert!(b.active());
        assert_eq!(b.set(0.0), 0);
        assert!(!b.active());
    }
}
