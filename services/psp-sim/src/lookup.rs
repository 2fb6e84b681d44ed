//! `GET /v1/payments/{key}`: what the simulator knows of one key, including how many times money
//! actually moved for it.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use crate::Simulator;
use crate::clock::rfc3339;
use crate::error::SimError;
use crate::http::{answer, bad_request, refuse, store_failed};
use crate::record::{ChargeAnswer, PaymentRecord};
use crate::request::{BadRequest, IdempotencyKey};
use crate::telemetry::Outcome;

/// The answer's shape; tools outside the code read these field names.
#[derive(Serialize)]
struct PaymentView {
    payment_id: String,
    #[serde(flatten)]
    answer: ChargeAnswer,
    amount: i64,
    currency: String,
    merchant_id: String,
    charge_count: i64,
    refund_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund_reference: Option<String>,
    created_at: String,
}

impl PaymentView {
    fn new(key: &IdempotencyKey, record: PaymentRecord) -> Result<Self, SimError> {
        Ok(Self {
            payment_id: key.as_str().to_owned(),
            answer: record.answer,
            amount: record.amount_minor,
            currency: record.currency,
            merchant_id: record.merchant_id,
            charge_count: record.charge_count,
            refund_count: record.refund_count,
            refund_reference: record.refund_reference,
            created_at: rfc3339(record.created_at_ms)?,
        })
    }
}

pub(crate) async fn get_payment(
    State(sim): State<Simulator>,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    let key = match key {
        Ok(Path(key)) => IdempotencyKey::parse(&key),
        Err(rejection) => Err(BadRequest(rejection.body_text())),
    };
    let key = match key {
        Ok(key) => key,
        Err(reason) => return bad_request(&reason),
    };
    let view = match sim.shared.store.payment(&key).await {
        Ok(Some(record)) => PaymentView::new(&key, record),
        Ok(None) => return refuse(StatusCode::NOT_FOUND, Outcome::NotFound, "not found"),
        Err(err) => Err(err),
    };
    match view {
        Ok(view) => answer(StatusCode::OK, Outcome::Succeeded, view),
        Err(err) => store_failed(&err),
    }
}
