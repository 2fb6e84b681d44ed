//! Consumer lag (`paystream_consumer_lag{consumer}`): how many messages a service's durable
//! consumers have not finished, num_pending (not yet delivered) + num_ack_pending (delivered, not
//! yet acknowledged), refreshed every few seconds by the service that owns them.
//!
//! A service owns every consumer on its stream named after it: `wallet`, and `wallet-p3` once
//! consumers are one per partition. The gauge sums them, so it means the same thing before and
//! after that change. The label is the service name, never a partition or an id.

use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};
use metrics::gauge;

use crate::shutdown::Shutdown;
use crate::telemetry::names;

/// How often the lag is refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one refresh (listing a stream's consumers is one or a few API calls).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// Consumers looked at per stream at most: the listing is paged and a stream has a handful.
const CONSUMERS_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("looking up stream {stream}: {source}")]
    Stream {
        stream: String,
        source: jetstream::context::GetStreamError,
    },
    #[error("listing the consumers of {stream}: {source}")]
    List {
        stream: String,
        source: jetstream::stream::ConsumersError,
    },
    #[error("listing the consumers of {0}: no answer within {REFRESH_TIMEOUT:?}")]
    Timeout(String),
}

/// Whether the durable consumer `name` belongs to `service`: `service` itself or `service-…`.
pub fn owned_by(name: &str, service: &str) -> bool {
    name.strip_prefix(service)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Σ (num_pending + num_ack_pending) over the consumers of `stream` that `service` owns.
pub async fn lag(js: &jetstream::Context, stream: &str, service: &str) -> Result<u64, LagError> {
    let work = async {
        let s = js
            .get_stream(stream)
            .await
            .map_err(|source| LagError::Stream {
                stream: stream.to_owned(),
                source,
            })?;
        let mut consumers = std::pin::pin!(s.consumers().take(CONSUMERS_MAX));
        let mut total = 0u64;
        while let Some(info) = consumers
            .try_next()
            .await
            .map_err(|source| LagError::List {
                stream: stream.to_owned(),
                source,
            })?
        {
            if owned_by(&info.name, service) {
                total = total
                    .saturating_add(info.num_pending)
                    .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX));
            }
        }
        Ok(total)
    };
    tokio::time::timeout(REFRESH_TIMEOUT, work)
        .await
        .map_err(|_| LagError::Timeout(stream.to_owned()))?
}

/// Refreshes `paystream_consumer_lag{consumer=service}` until shutdown. While NATS is
/// unreachable the last value stays (and `/readyz` says why).
pub async fn run(
    js: jetstream::Context,
    stream: &'static str,
    service: &'static str,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        match lag(&js, stream, service).await {
            Ok(n) => gauge!(names::CONSUMER_LAG, "consumer" => service).set(n as f64),
            Err(e) => tracing::debug!(consumer = service, error = %e, "consumer lag not refreshed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owned_by;

    #[test]
    fn a_service_owns_its_name_and_its_partitions() {
        assert!(owned_by("wallet", "wallet"));
        assert!(owned_by("wallet-p3", "wallet"));
        assert!(!owned_by("walletx", "wallet"));
        assert!(!owned_by("ledger", "wallet"));
        assert!(!owned_by("wal", "wallet"));
        assert!(owned_by("payment-p0", "payment"));
    }
}
