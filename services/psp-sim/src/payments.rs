//! `POST /v1/payments`: record and charge a payment once per idempotency key, under the faults
//! its script or the dice decide.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tracing::{debug, info, instrument};

use crate::error::SimError;
use crate::faults::{Fault, Roll};
use crate::http::{answer, bad_request, inflict, refuse, store_failed};
use crate::record::{ChargeAnswer, ChargeOutcome, ChargeStatus};
use crate::request::{BadRequest, ChargeRequest, IdempotencyKey};
use crate::script::Script;
use crate::store::NewCharge;
use crate::telemetry::Outcome;
use crate::{Shared, Simulator};

pub(crate) async fn post_payment(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = IdempotencyKey::from_headers(&headers).and_then(|key| {
        let body = body.map_err(|e| BadRequest(e.body_text()))?;
        Ok((key, ChargeRequest::parse(&body)?))
    });
    match parsed {
        Ok((key, request)) => charge(&sim.shared, &key, &request)
            .await
            .unwrap_or_else(|err| store_failed(&err)),
        Err(reason) => bad_request(&reason),
    }
}

/// Applies, in order: the script's first-POST fault or the dice's error/timeout, then the
/// charge, then a lost answer.
#[instrument(skip_all, fields(payment_id = %key))]
async fn charge(
    shared: &Shared,
    key: &IdempotencyKey,
    request: &ChargeRequest,
) -> Result<Response, SimError> {
    let script = request.script;
    // Random faults never touch scripted payments.
    let roll = match script {
        Some(_) => Roll::default(),
        None => shared.dice.roll(),
    };
    if let Some(script) = script
        && let Some(fault) = script.first_post_fault()
        && shared.store.count_post(key).await? == 1
    {
        info!(?script, ?fault, "scripted fault on the first POST");
        return Ok(inflict(shared, fault).await);
    }
    if let Some(fault) = roll.before {
        debug!(?fault, "random fault before processing");
        return Ok(inflict(shared, fault).await);
    }
    let outcome = shared
        .store
        .charge(&NewCharge {
            key,
            request,
            declined: script.map_or(roll.decline, Script::declines),
            settles: script.is_none_or(Script::settles),
        })
        .await?;
    let created = matches!(outcome, ChargeOutcome::Created(_));
    let lose_answer = match script {
        Some(script) => created && script.loses_first_answer(),
        None => roll.lose_answer,
    };
    let response = match outcome {
        ChargeOutcome::Created(stored) => {
            debug!(
                status = stored.status.as_str(),
                psp_reference = %stored.psp_reference,
                "payment recorded"
            );
            charged(stored)
        }
        ChargeOutcome::Replayed(stored) => {
            debug!(status = stored.status.as_str(), "payment replayed");
            charged(stored)
        }
        ChargeOutcome::KeyReused => {
            debug!("idempotency key reused with a different request");
            refuse(
                StatusCode::CONFLICT,
                Outcome::Conflict,
                "idempotency key reused with a different request",
            )
        }
    };
    if lose_answer {
        debug!("answer dropped after processing");
        return Ok(inflict(shared, Fault::LostResponse).await);
    }
    Ok(response)
}

fn charged(stored: ChargeAnswer) -> Response {
    let outcome = match stored.status {
        ChargeStatus::Succeeded => Outcome::Succeeded,
        ChargeStatus::Declined => Outcome::Declined,
    };
    answer(StatusCode::OK, outcome, stored)
}
