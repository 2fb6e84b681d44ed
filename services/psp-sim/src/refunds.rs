//! `POST /v1/refunds`: refund a payment's charge once per idempotency key (the payment id),
//! under the dice's faults.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use tracing::{debug, instrument};

use crate::error::SimError;
use crate::faults::Fault;
use crate::http::{answer, bad_request, inflict, refuse, store_failed};
use crate::record::RefundOutcome;
use crate::request::{BadRequest, IdempotencyKey, RefundRequest};
use crate::telemetry::Outcome;
use crate::{Shared, Simulator};

/// The answer to a refund; a refund that is answered always succeeded.
#[derive(Serialize)]
struct RefundAnswer {
    /// `re_<uuid>`, the same for every POST of the key.
    psp_reference: String,
    /// Always `succeeded`; kept so refunds answer in the same shape as charges.
    status: &'static str,
}

pub(crate) async fn post_refund(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = IdempotencyKey::from_headers(&headers).and_then(|key| {
        let body = body.map_err(|e| BadRequest(e.body_text()))?;
        let request = RefundRequest::parse(&key, &body)?;
        Ok((key, request))
    });
    match parsed {
        Ok((key, request)) => refund(&sim.shared, &key, &request)
            .await
            .unwrap_or_else(|err| store_failed(&err)),
        Err(reason) => bad_request(&reason),
    }
}

/// Applies, in order: the dice's error/timeout, then the refund, then a lost answer.
#[instrument(skip_all, fields(payment_id = %key))]
async fn refund(
    shared: &Shared,
    key: &IdempotencyKey,
    request: &RefundRequest,
) -> Result<Response, SimError> {
    let roll = shared.dice.roll();
    if let Some(fault) = roll.before {
        debug!(?fault, "random fault before processing the refund");
        return Ok(inflict(shared, fault).await);
    }
    let outcome = shared.store.refund(key, request.amount_minor).await?;
    debug!(?outcome, "refund processed");
    let conflict = |message| refuse(StatusCode::CONFLICT, Outcome::Conflict, message);
    let response = match outcome {
        RefundOutcome::Created(psp_reference) | RefundOutcome::Replayed(psp_reference) => answer(
            StatusCode::OK,
            Outcome::Succeeded,
            RefundAnswer {
                psp_reference,
                status: "succeeded",
            },
        ),
        RefundOutcome::NotCharged => refuse(
            StatusCode::NOT_FOUND,
            Outcome::NotFound,
            "payment was never charged",
        ),
        RefundOutcome::Declined => conflict("payment was declined; there is nothing to refund"),
        RefundOutcome::ExceedsCharge => conflict("refund amount exceeds the charged amount"),
        RefundOutcome::KeyReused => conflict("idempotency key reused with a different request"),
    };
    if roll.lose_answer {
        debug!("refund answer dropped after processing");
        return Ok(inflict(shared, Fault::LostResponse).await);
    }
    Ok(response)
}
