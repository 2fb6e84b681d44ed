//! Connecting to NATS: one client per process, reconnecting forever (services ride out an outage;
//! readiness reports it meanwhile).

use std::time::Duration;

use async_nats::{Client, ConnectOptions, jetstream};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no NATS server configured: set PAYSTREAM_NATS_URL, or start `paystream up` (it writes {0})"
    )]
    NoUrl(String),
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// The URL in force: `PAYSTREAM_NATS_URL`, or the one `up` wrote into the data dir.
pub fn resolve_url(cfg: &Config) -> Result<String, ConnectError> {
    if let Some(url) = &cfg.nats_url {
        return Ok(url.clone());
    }
    let file = cfg.nats_url_file();
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConnectError::NoUrl(file.display().to_string()))
}

/// Connects. `retry_forever` is for services (wait for the server to come up); commands fail fast.
pub async fn connect(
    cfg: &Config,
    name: &str,
    retry_forever: bool,
) -> Result<Client, ConnectError> {
    let url = resolve_url(cfg)?;
    let mut opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    if retry_forever {
        opts = opts.retry_on_initial_connect();
    }
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    opts.connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.clone(),
            source,
        })
}

/// The JetStream context: outstanding publish acks are bounded, so a producer cannot run away
/// from the server.
pub fn jetstream(client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(1024)
        .backpressure_on_inflight(true)
        .build(client)
}
