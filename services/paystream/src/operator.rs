//! The client side of the `paystream` micro service: the query and operator commands (`status`,
//! `timeline`, `balance`, `ledger check`, `dlq …`, `recon …`, `audit`) send their request to the
//! `paystream.*` endpoints as the caller's own NATS identity (PAYSTREAM_NATS_USER/PASSWORD,
//! PAYSTREAM_NATS_CREDS or a NATS CLI context), so the NATS server's permissions decide who may
//! look or act, the service audits the caller the server names, and no command needs the
//! database's credentials.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use paystream_common::config::ClientConfig;
use paystream_common::nats::{self, ConnectError, Role, ServerErrors};

/// How long a query may take (the service answers from its database).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a long operator action may take (`recon run` of a big file, `dlq redrive --all`).
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no paystream service answered {0}")]
    NoResponders(String),
    #[error(
        "{0}: no answer in time (if this user may not publish there, the server refused it: \
         see the NATS server's log or this user's permissions)"
    )]
    TimedOut(String),
    #[error("{0}: the NATS server refused this user: {1}")]
    NotPermitted(String, String),
    #[error("{subject}: {status} ({code})")]
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

impl OperatorError {
    /// The service refused the request as malformed (400): a usage error of the command.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if code == "400")
    }
}

/// Sends `body` to `subject` and returns the JSON answer, or the service's error.
/// A refusal by the server (this user may not publish on `subject`) ends the wait at once.
pub async fn request(
    client: &Client,
    errors: &ServerErrors,
    subject: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, OperatorError> {
    request_within(client, errors, subject, body, QUERY_TIMEOUT).await
}

async fn request_within(
    client: &Client,
    errors: &ServerErrors,
    subject: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, OperatorError> {
    let payload = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    let reply = tokio::select! {
        r = client.send_request(subject.to_owned(), request) => r,
        refusal = errors.refused() => {
            return Err(OperatorError::NotPermitted(subject.to_owned(), refusal));
        }
    };
    let reply = reply.map_err(|e| match e.kind() {
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

/// What a command could not get from the service, with where and as whom it asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "no paystream service answered {subject}: is `paystream up` running? looked for the \
         paystream service at {url} as {who}"
    )]
    NotRunning {
        subject: String,
        url: String,
        who: String,
    },
    #[error("NATS refused {who} on {subject}: {detail}")]
    NotPermitted {
        subject: String,
        who: String,
        detail: String,
    },
    #[error(transparent)]
    Other(OperatorError),
}

impl ServiceError {
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::Other(e) if e.is_bad_request())
    }
}

/// A connection to the `paystream` service as the caller's NATS identity.
pub struct ServiceClient {
    client: Client,
    errors: ServerErrors,
    /// The server(s) asked, for messages.
    url: String,
    /// Who asked (a user name or a creds file, never a password), for messages.
    who: String,
}

impl ServiceClient {
    /// Connects as the configured identity; without one, as `role`'s user of `up`'s embedded
    /// server (found through the data dir).
    pub async fn connect(cfg: &ClientConfig, role: Role) -> Result<Self, ConnectError> {
        let url = nats::resolve_url(cfg)?;
        let who = nats::resolve_auth(cfg, role)?.who();
        let (client, errors) = nats::connect_as(cfg, "paystream-cli", role, false).await?;
        Ok(Self {
            client,
            errors,
            url,
            who,
        })
    }

    /// A query: answered within [`QUERY_TIMEOUT`].
    pub async fn query(
        &self,
        subject: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ServiceError> {
        self.call(subject, body, QUERY_TIMEOUT).await
    }

    /// Sends `body` to `subject` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        subject: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, ServiceError> {
        request_within(&self.client, &self.errors, subject, body, timeout)
            .await
            .map_err(|e| match e {
                OperatorError::NoResponders(subject) | OperatorError::TimedOut(subject)
                    if self.errors.last_refusal().is_none() =>
                {
                    ServiceError::NotRunning {
                        subject,
                        url: self.url.clone(),
                        who: self.who.clone(),
                    }
                }
                OperatorError::NotPermitted(subject, detail) => ServiceError::NotPermitted {
                    subject,
                    who: self.who.clone(),
                    detail,
                },
                e => ServiceError::Other(e),
            })
    }
}
