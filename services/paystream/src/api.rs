//! The NATS micro service `paystream`: the query commands and the dead-letter operator actions as
//! request/reply endpoints under `paystream.>` (`$SRV.PING|INFO|STATS` answer too, so
//! `nats micro ls` finds it). Bodies and answers are the JSON of the CLI's `--json`; errors carry
//! `Nats-Service-Error` and `Nats-Service-Error-Code` (400 bad request, 404 not found, 500).

use std::future::Future;

use async_nats::jetstream;
use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use paystream_common::shutdown::Shutdown;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::dlq::{self, DlqError, Selection};
use crate::queries::{self, QueryError};
use paystream_reconciler::{ReconError, Reconciler};

/// Who operator actions over NATS are recorded as, until requests carry an authenticated identity.
const ACTOR: &str = "nats";

struct ApiError {
    code: usize,
    status: String,
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
            ReconError::BadDate(_) => 400,
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

fn body<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
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

fn json(v: &impl serde::Serialize) -> Result<Bytes, ApiError> {
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
async fn serve<F, Fut>(
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

pub async fn start(
    client: async_nats::Client,
    db: DatabaseConnection,
    js: jetstream::Context,
    recon: Reconciler,
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
    tasks.spawn(serve(
        dlq_group.endpoint("redrive").await?,
        shutdown.clone(),
        move |p| {
            let (d, j) = (d.clone(), j.clone());
            async move {
                let sel = body::<SelectionBody>(&p)?.selection()?;
                json(&serde_json::json!({ "redriven": dlq::redrive(&j, &d, &sel, ACTOR).await? }))
            }
        },
    ));
    let d = db.clone();
    tasks.spawn(serve(
        root.endpoint("audit").await?,
        shutdown.clone(),
        move |_| {
            let d = d.clone();
            async move {
                let trail = crate::audit::list(&d, 1000).await.map_err(|e| ApiError {
                    code: 500,
                    status: e.to_string(),
                })?;
                json(&trail)
            }
        },
    ));
    let (d, j) = (db, js);
    tasks.spawn(serve(
        dlq_group.endpoint("purge").await?,
        shutdown.clone(),
        move |p| {
            let (d, j) = (d.clone(), j.clone());
            async move {
                let sel = body::<SelectionBody>(&p)?.selection()?;
                json(&serde_json::json!({ "purged": dlq::purge(&j, &d, &sel, ACTOR).await? }))
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
    tasks.spawn(serve(
        recon_group.endpoint("run").await?,
        shutdown.clone(),
        move |p| {
            let r = recon.clone();
            async move {
                let q: ReconQuery = body(&p)?;
                json(&crate::recon::run(&r, &q.date, q.file.as_deref(), ACTOR).await?)
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
