//! `GET /v1/sim/stats`: counts over the whole store, the external check that no key was ever
//! charged or refunded twice, and how many requests the rate limit refused.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use crate::Simulator;
use crate::http::{answer, store_failed};
use crate::telemetry::Outcome;

/// Counts over the simulator's whole store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Keys received and recorded (declined ones included; faulted-away requests not).
    pub payments: u64,
    /// Charges that moved money.
    pub charges: u64,
    /// Refunds that moved money.
    pub refunds: u64,
    /// Keys charged more than once: must stay 0.
    pub double_charges: u64,
    /// Keys refunded more than once: must stay 0.
    pub double_refunds: u64,
    /// Requests answered 429 by the rate limit, over the store's whole life: counted in memory
    /// and saved in the store every second while serving and at shutdown, so a crash (SIGKILL)
    /// forgets at most the last second's count.
    pub rate_limited: u64,
}

pub(crate) async fn get_stats(State(sim): State<Simulator>) -> Response {
    match sim.shared.store.stats().await {
        Ok(stats) => answer(StatusCode::OK, Outcome::Succeeded, stats),
        Err(err) => store_failed(&err),
    }
}
