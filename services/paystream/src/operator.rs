//! The client side of the operator endpoints: `paystream dlq redrive|purge` send their request to
//! `paystream.dlq.redrive|purge` as the operator user, so the NATS server's permissions decide
//! who may act and the service audits the caller the server names.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use paystream_common::nats::ServerErrors;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "no paystream service answers {0} (is `paystream up` or `serve dlq` running?); \
         `--direct` acts without it, with the services' NATS and database access"
    )]
    NoResponders(String),
    #[error(
        "{0}: no answer in time (if this user may not publish there, the server refused it: \
         see the NATS server's log or this user's permissions)"
    )]
    TimedOut(String),
    #[error("{0}: the NATS server refused this user: {1}")]
    NotPermitted(String, String),
    #[error("{subject}: {code} {status}")]
    Refused {
        subject: String,
        code: String,
        status: String,
    },
    #[error("{0}: {1}")]
    Nats(String, String),
    #[error("{0}: unreadable answer: {1}")]
    Answer(String, serde_json::Error),
}

/// Sends `body` to `subject` and returns the JSON answer, or the service's error.
/// A refusal by the server (this user may not publish on `subject`) ends the wait at once.
pub async fn request(
    client: &Client,
    errors: &ServerErrors,
    subject: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, OperatorError> {
    let payload = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let reply = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(30), client.request(subject.to_owned(), payload)) => r,
        refusal = errors.refused() => {
            return Err(OperatorError::NotPermitted(subject.to_owned(), refusal));
        }
    };
    let reply = reply
        .map_err(|_| OperatorError::TimedOut(subject.to_owned()))?
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => OperatorError::NoResponders(subject.to_owned()),
            RequestErrorKind::TimedOut => OperatorError::TimedOut(subject.to_owned()),
            _ => OperatorError::Nats(subject.to_owned(), e.to_string()),
        })?;
    if let Some(h) = &reply.headers
        && let Some(status) = h.get("Nats-Service-Error")
    {
        return Err(OperatorError::Refused {
            subject: subject.to_owned(),
            code: h
                .get("Nats-Service-Error-Code")
                .map(|c| c.to_string())
                .unwrap_or_default(),
            status: paystream_common::text::bounded(status.as_str(), 512),
        });
    }
    serde_json::from_slice(&reply.payload).map_err(|e| OperatorError::Answer(subject.to_owned(), e))
}
