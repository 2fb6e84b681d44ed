//! The NATS micro service `paystream`: the query commands and the dead-letter operator actions as
//! request/reply endpoints under `paystream.>` (`$SRV.PING|INFO|STATS` answer too, so
//! `nats micro ls` finds it). Bodies and answers are the JSON of the CLI's `--json`; errors carry
//! `Nats-Service-Error` and `Nats-Service-Error-Code` (400 bad request, 403 no caller identity,
//! 404 not found, 500).
//!
//! Mutating endpoints (`paystream.dlq.redrive`, `paystream.dlq.purge`, and any added later, such
//! as `paystream.recon.run`) are served with [`serve_operator`]: it names the caller from the
//! server-stamped identity (`crate::identity`), refuses a request without one, and hands the
//! caller to the action, which audits under that name.

use std::future::Future;

use async_nats::jetstream;
use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use paystream_common::shutdown::Shutdown;
use paystream_common::telemetry::names;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::dlq::{self, DlqError, Selection};
use crate::queries::{self, QueryError};
use paystream_reconciler::{ReconError, Reconciler};

#[derive(Debug)]
pub struct ApiError {
    pub code: usize,
    pub status: String,
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let code = match e {
            QueryError::BadInput(_) => 400,
            QueryError::NotFound(_) => 404,
            QueryError::Db(_) => 500,
        };
        Self {
            code,
            status: e.to_string(),
        }
    }
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        let code = if matches!(e, DlqError::NotFound(_)) {
            404
        } else {
            500
        };
        Self {
            code,
            status: e.to_string(),
        }
    }
}

impl From<ReconError> for ApiError {
    fn from(e: ReconError) -> Self {
        let code = match e {
            ReconError::BadDate(_) | ReconError::BadInput(_) => 400,
            ReconError::NoReport(_) => 404,
            ReconError::Busy(_) => 409,
            _ => 500,
        };
        Self {
            code,
            status: e.to_string(),
        }
    }
}

pub(crate) fn body<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|e| ApiError {
        code: 400,
        status: format!("request body: {e}"),
    })
}

pub(crate) fn json(v: &impl serde::Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ApiError {
            code: 500,
            status: e.to_string(),
        })
}

#[derive(Deserialize)]
struct PaymentQuery {
    payment_id: String,
}

#[derive(Deserialize)]
struct MerchantQuery {
    merchant_id: String,
}

#[derive(Deserialize)]
struct ConsumerQuery {
    consumer: Option<String>,
}

#[derive(Deserialize)]
struct AuditQuery {
    /// At most this many of the newest entries (default and ceiling 1000).
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct IdQuery {
    id: u64,
}

#[derive(Deserialize)]
struct ReconQuery {
    date: String,
    file: Option<String>,
}

#[derive(Deserialize)]
struct SelectionBody {
    #[serde(default)]
    ids: Vec<u64>,
    #[serde(default)]
    all: bool,
    consumer: Option<String>,
}

impl SelectionBody {
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.all, self.ids.is_empty()) {
            (true, true) => Ok(Selection::All {
                consumer: self.consumer,
            }),
            (false, false) => Ok(Selection::Ids(self.ids)),
            _ => Err(ApiError {
                code: 400,
                status: "give either \"ids\": [..] or \"all\": true".into(),
            }),
        }
    }
}

/// Answers one endpoint until shutdown.
pub(crate) async fn serve<F, Fut>(
    mut endpoint: service::endpoint::Endpoint,
    mut shutdown: Shutdown,
    handler: F,
) where
    F: Fn(Bytes) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Bytes, ApiError>> + Send,
{
    loop {
        let request = tokio::select! {
            r = endpoint.next() => r,
            () = shutdown.wait() => None,
        };
        let Some(request) = request else { break };
        let answer =
            handler(request.message.payload.clone())
                .await
                .map_err(|e| service::error::Error {
                    status: e.status,
                    code: e.code,
                });
        if let Err(e) = request.respond(answer).await {
            tracing::warn!(error = %e, "could not answer a service request");
        }
    }
}

/// Answers one mutating operator endpoint until shutdown: each request's caller is taken from
/// the server-stamped `Nats-Request-Info` header and passed to `handler`, which must audit under
/// that name; a request without a trustworthy identity is refused (403) and the refusal audited.
pub async fn serve_operator<F, Fut>(
    mut endpoint: service::endpoint::Endpoint,
    action: &'static str,
    client: async_nats::Client,
    db: DatabaseConnection,
    mut shutdown: Shutdown,
    handler: F,
) where
    F: Fn(Bytes, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Bytes, ApiError>> + Send,
{
    loop {
        let request = tokio::select! {
            r = endpoint.next() => r,
            () = shutdown.wait() => None,
        };
        let Some(request) = request else { break };
        let auth_required = client.server_info().auth_required;
        let answer = match crate::identity::caller(request.message.headers.as_ref(), auth_required)
        {
            Ok(actor) => {
                let answer = handler(request.message.payload.clone(), actor.clone()).await;
                let outcome = if answer.is_ok() { "ok" } else { "error" };
                metrics::counter!(names::OPERATOR_REQUESTS, "action" => action, "outcome" => outcome)
                    .increment(1);
                tracing::info!(action, actor, outcome, "operator request");
                answer
            }
            Err(e) => {
                metrics::counter!(names::OPERATOR_REQUESTS, "action" => action, "outcome" => "refused")
                    .increment(1);
                tracing::warn!(action, error = %e, "operator request refused");
                let refused = format!("refused: {e}");
                match crate::audit::record(
                    &db,
                    "unknown",
                    action,
                    &request.message.subject,
                    &refused,
                )
                .await
                {
                    Ok(()) => Err(ApiError {
                        code: 403,
                        status: e.to_string(),
                    }),
                    Err(db_err) => Err(ApiError {
                        code: 500,
                        status: format!("{e}; and auditing the refusal failed: {db_err}"),
                    }),
                }
            }
        };
        let answer = answer.map_err(|e| service::error::Error {
            status: e.status,
            code: e.code,
        });
        if let Err(e) = request.respond(answer).await {
            tracing::warn!(error = %e, "could not answer a service request");
        }
    }
}

pub async fn start(
    client: async_nats::Client,
    db: DatabaseConnection,
    js: jetstream::Context,
    recon: Reconciler,
    gate: Option<std::sync::Arc<paystream_payment::gate::Gate>>,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<(), async_nats::Error> {
    let service = client
        .service_builder()
        .description("paystream queries and dead-letter operations")
        .start("paystream", env!("CARGO_PKG_VERSION"))
        .await?;
    let root = service.group("paystream");
    let dlq_group = root.group("dlq");
    crate::api_console::start(
        &root,
        client.clone(),
        db.clone(),
        js.clone(),
        gate,
        shutdown.clone(),
        tasks,
    )
    .await?;

    let d = db.clone();
    tasks.spawn(serve(
        root.endpoint("status").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move { json(&queries::status(&d, &body::<PaymentQuery>(&p)?.payment_id).await?) }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve(root.endpoint("balance").await?, shutdown.clone(), move |p| {
        let d = d.clone();
        async move { json(&queries::balance(&d, &body::<MerchantQuery>(&p)?.merchant_id).await?) }
    }));
    let d = db.clone();
    tasks.spawn(serve(
        root.group("ledger").endpoint("check").await?,
        shutdown.clone(),
        move |_| {
            let d = d.clone();
            async move { json(&queries::ledger_check(&d).await?) }
        },
    ));
    let (d, j) = (db.clone(), js.clone());
    tasks.spawn(serve(
        dlq_group.endpoint("list").await?,
        shutdown.clone(),
        move |p| {
            let (d, j) = (d.clone(), j.clone());
            async move {
                let q: ConsumerQuery = body(&p)?;
                json(&dlq::list(&j, Some(&d), q.consumer.as_deref()).await?)
            }
        },
    ));
    let (d, j) = (db.clone(), js.clone());
    tasks.spawn(serve(
        dlq_group.endpoint("show").await?,
        shutdown.clone(),
        move |p| {
            let (d, j) = (d.clone(), j.clone());
            async move { json(&dlq::show(&j, Some(&d), body::<IdQuery>(&p)?.id).await?) }
        },
    ));
    let (d, j) = (db.clone(), js.clone());
    tasks.spawn(serve_operator(
        dlq_group.endpoint("redrive").await?,
        "dlq.redrive",
        client.clone(),
        db.clone(),
        shutdown.clone(),
        move |p, actor| {
            let (d, j) = (d.clone(), j.clone());
            async move {
                let sel = body::<SelectionBody>(&p)?.selection()?;
                json(&serde_json::json!({ "redriven": dlq::redrive(&j, &d, &sel, &actor).await? }))
            }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve(
        root.endpoint("audit").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move {
                let limit = body::<AuditQuery>(&p)?.limit.unwrap_or(1000).min(1000);
                let trail = crate::audit::list(&d, limit).await.map_err(|e| ApiError {
                    code: 500,
                    status: e.to_string(),
                })?;
                json(&trail)
            }
        },
    ));
    let (d, j) = (db.clone(), js);
    tasks.spawn(serve_operator(
        dlq_group.endpoint("purge").await?,
        "dlq.purge",
        client.clone(),
        db,
        shutdown.clone(),
        move |p, actor| {
            let (d, j) = (d.clone(), j.clone());
            async move {
                let sel = body::<SelectionBody>(&p)?.selection()?;
                json(&serde_json::json!({ "purged": dlq::purge(&j, &d, &sel, &actor).await? }))
            }
        },
    ));
    let recon_group = root.group("recon");
    let d = recon.db.clone();
    tasks.spawn(serve(
        recon_group.endpoint("report").await?,
        shutdown.clone(),
        move |p| {
            let d = d.clone();
            async move { json(&crate::recon::report(&d, &body::<ReconQuery>(&p)?.date).await?) }
        },
    ));
    let d = recon.db.clone();
    tasks.spawn(serve_operator(
        recon_group.endpoint("run").await?,
        "recon.run",
        client.clone(),
        d,
        shutdown.clone(),
        move |p, actor| {
            let r = recon.clone();
            async move {
                let q: ReconQuery = body(&p)?;
                let file = remote_file(r.drop_dir.as_deref(), q.file.as_deref())?;
                json(&crate::recon::run(&r, &q.date, file.as_deref(), &actor).await?)
            }
        },
    ));
    // The service (and its $SRV handlers) lives as long as the process runs.
    tasks.spawn(async move {
        let mut shutdown = shutdown;
        shutdown.wait().await;
        let _ = service.stop().await;
    });
    Ok(())
}

/// A settlement file named in a `paystream.recon.run` request: only a plain file name, read from
/// `PAYSTREAM_RECON_DROP_DIR`. A remote caller must not make the service read any path of its host.
fn remote_file(
    drop_dir: Option<&std::path::Path>,
    file: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(name) = file else { return Ok(None) };
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    match (drop_dir, plain) {
        (Some(dir), true) => Ok(Some(dir.join(name).display().to_string())),
        (None, _) => Err(ApiError {
            code: 400,
            status: "file: over NATS only a file in PAYSTREAM_RECON_DROP_DIR may be named, and none is configured".into(),
        }),
        (Some(_), false) => Err(ApiError {
            code: 400,
            status: format!(
                "file: {:?} is not a plain file name in PAYSTREAM_RECON_DROP_DIR",
                paystream_common::text::bounded(name, 80)
            ),
        }),
    }
}

#[cfg(test)]
mod remote_file_tests {
    use super::remote_file;
    use std::path::Path;

    #[test]
    fn only_plain_names_in_the_drop_dir() {
        let dir = Path::new("/srv/drop");
        assert_eq!(
            remote_file(Some(dir), Some("2026-11-30.csv")).unwrap(),
            Some("/srv/drop/2026-11-30.csv".into())
        );
        assert_eq!(remote_file(Some(dir), None).unwrap(), None);
        for bad in ["../etc/passwd", "/etc/passwd", "..", "", "a\\b"] {
            assert!(remote_file(Some(dir), Some(bad)).is_err(), "{bad}");
        }
        assert!(remote_file(None, Some("2026-11-30.csv")).is_err());
    }
}
