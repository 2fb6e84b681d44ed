//! The HTTP surface: the routes, the front every `/v1` route passes through (rate limit,
//! latency, authentication, the request counter), and the answer shapes all handlers share.

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Serialize;

use crate::auth::authorized;
use crate::faults::Fault;
use crate::limit::{RateLimit, retry_after_s};
use crate::request::BadRequest;
use crate::telemetry::{self, Endpoint, Outcome};
use crate::{Shared, Simulator, brownout, lookup, payments, refunds, settlement, stats};

/// Builds every route of the simulator.
pub(crate) fn router(sim: &Simulator) -> Router {
    Router::new()
        .route(
            "/v1/payments",
            fronted(sim, Endpoint::Payments, post(payments::post_payment)),
        )
        .route(
            "/v1/payments/{key}",
            fronted(sim, Endpoint::PaymentStatus, get(lookup::get_payment)),
        )
        .route(
            "/v1/refunds",
            fronted(sim, Endpoint::Refunds, post(refunds::post_refund)),
        )
        .route(
            "/v1/settlements/{date}",
            fronted(sim, Endpoint::Settlements, get(settlement::get_settlement)),
        )
        .route(
            "/v1/sim/stats",
            fronted(sim, Endpoint::Stats, get(stats::get_stats)),
        )
        .route(
            "/v1/sim/brownout",
            fronted(sim, Endpoint::Brownout, post(brownout::post_brownout)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(sim.clone())
}

/// What the front of one route needs to know.
#[derive(Clone)]
struct Front {
    /// Configuration (latency, API key) and the shutdown signal that cuts latency short.
    sim: Simulator,
    /// The `endpoint` label of this route's counter.
    endpoint: Endpoint,
}

fn fronted(
    sim: &Simulator,
    endpoint: Endpoint,
    route: MethodRouter<Simulator>,
) -> MethodRouter<Simulator> {
    let front = Front {
        sim: sim.clone(),
        endpoint,
    };
    // `route_layer`: only requests that reach a handler pass the front, so every response it
    // sees carries an outcome (a 405 for a wrong method does not).
    route.route_layer(middleware::from_fn_with_state(front, front_door))
}

/// Refuses requests over the rate limit at once (before latency, as a PSP's edge would, and
/// before anything is read or recorded), adds the latency, refuses unauthenticated requests,
/// fails PSP calls with a 500 during an ordered brownout, and counts the outcome the handler
/// attached to its response.
async fn front_door(State(front): State<Front>, request: Request, next: Next) -> Response {
    let shared = &front.sim.shared;
    // `/v1/sim/*` is the simulator's own window, not the PSP's API: never limited.
    let refused = shared
        .rate_limit
        .as_ref()
        .filter(|_| !front.endpoint.is_sim_window())
        .and_then(|limit| limit.admit().err().map(|wait| (limit, wait)));
    let response = match refused {
        Some((limit, wait)) => {
            shared.store.count_rate_limited();
            too_many_requests(limit, wait)
        }
        None => {
            shared.hold_ms(shared.dice.latency_ms()).await;
            if !authorized(shared.cfg.api_key.as_deref(), request.headers()) {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    Outcome::Unauthorized,
                    "missing or wrong Authorization: Bearer token",
                )
            } else if front.endpoint.is_psp_call() && shared.brownout.active() {
                refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Outcome::Error,
                    "simulated brownout: nothing was processed",
                )
            } else {
                next.run(request).await
            }
        }
    };
    let outcome = response.extensions().get::<Outcome>().copied();
    debug_assert!(outcome.is_some(), "every /v1 answer names its outcome");
    if let Some(outcome) = outcome {
        telemetry::count(front.endpoint, outcome);
    }
    response
}

/// The body of every error answer.
#[derive(Serialize)]
struct ErrorBody<'a> {
    /// What went wrong, for a human reading the client's log.
    error: &'a str,
}

/// A JSON answer tagged with its outcome for the request counter.
pub(crate) fn answer(status: StatusCode, outcome: Outcome, body: impl Serialize) -> Response {
    tagged(outcome, (status, Json(body)).into_response())
}

/// Tags any response with its outcome for the request counter.
pub(crate) fn tagged(outcome: Outcome, mut response: Response) -> Response {
    response.extensions_mut().insert(outcome);
    response
}

/// An error answer, `{"error": message}`.
pub(crate) fn refuse(status: StatusCode, outcome: Outcome, message: &str) -> Response {
    answer(status, outcome, ErrorBody { error: message })
}

/// A 429 telling the client to come back after `wait`, in whole seconds as `Retry-After` wants.
fn too_many_requests(limit: &RateLimit, wait: std::time::Duration) -> Response {
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        Outcome::RateLimited,
        &format!(
            "rate limit of {} requests/s exceeded; nothing was processed",
            limit.rate_per_s
        ),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_s(wait)));
    response
}

/// A 400 naming what was wrong with the request.
pub(crate) fn bad_request(reason: &BadRequest) -> Response {
    refuse(StatusCode::BAD_REQUEST, Outcome::BadRequest, &reason.0)
}

/// A 500 for a store failure; the detail goes to the log, not to the client.
pub(crate) fn store_failed(err: &crate::SimError) -> Response {
    tracing::error!(error = %err, "simulator store failed");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        Outcome::Error,
        "simulator store failed",
    )
}

/// Inflicts `fault` on the current request. Timeouts and lost answers look the same to the
/// client, as they would from a real PSP; only the counter tells them apart.
pub(crate) async fn inflict(shared: &Shared, fault: Fault) -> Response {
    match fault {
        Fault::Error => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            Outcome::Error,
            "simulated PSP error",
        ),
        Fault::Timeout | Fault::LostResponse => {
            shared.hold_ms(shared.cfg.hang_ms).await;
            let outcome = if fault == Fault::Timeout {
                Outcome::Timeout
            } else {
                Outcome::LostResponse
            };
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                outcome,
                "simulated gateway timeout",
            )
        }
    }
}
