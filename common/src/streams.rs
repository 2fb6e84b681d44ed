//! Stream and consumer definitions. The JSON files in `nats/` are the source of truth: operators
//! feed them to `nats stream add --config` / `nats consumer add --config`, and the services apply
//! the very same files at start-up, with only the configured partitions, replicas and retry policy
//! substituted.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};

use crate::config::Config;

pub const PAYMENTS: &str = "PAYMENTS";
pub const PAYMENT_EVENTS: &str = "PAYMENT_EVENTS";
pub const DEAD_LETTERS: &str = "DEAD_LETTERS";

/// `(file name, contents)` of every stream definition, in creation order.
pub const STREAM_FILES: [(&str, &str); 3] = [
    (
        "streams/PAYMENTS.json",
        include_str!("../../nats/streams/PAYMENTS.json"),
    ),
    (
        "streams/PAYMENT_EVENTS.json",
        include_str!("../../nats/streams/PAYMENT_EVENTS.json"),
    ),
    (
        "streams/DEAD_LETTERS.json",
        include_str!("../../nats/streams/DEAD_LETTERS.json"),
    ),
];

/// The durable consumers: `(stream, file name, contents)`.
pub const CONSUMER_FILES: [(&str, &str, &str); 4] = [
    (
        PAYMENTS,
        "consumers/PAYMENTS.payment.json",
        include_str!("../../nats/consumers/PAYMENTS.payment.json"),
    ),
    (
        PAYMENT_EVENTS,
        "consumers/PAYMENT_EVENTS.wallet.json",
        include_str!("../../nats/consumers/PAYMENT_EVENTS.wallet.json"),
    ),
    (
        PAYMENT_EVENTS,
        "consumers/PAYMENT_EVENTS.ledger.json",
        include_str!("../../nats/consumers/PAYMENT_EVENTS.ledger.json"),
    ),
    (
        DEAD_LETTERS,
        "consumers/DEAD_LETTERS.dlq.json",
        include_str!("../../nats/consumers/DEAD_LETTERS.dlq.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("nats/{file}: {source}")]
    Definition {
        file: &'static str,
        source: serde_json::Error,
    },
    #[error("no consumer definition named {0}")]
    UnknownConsumer(String),
    #[error(
        "PAYSTREAM_MAX_DELIVER ({max_deliver}) must exceed the number of backoff steps ({steps})"
    )]
    RetryPolicy { max_deliver: i64, steps: usize },
    #[error("creating stream {name}: {source}")]
    Stream {
        name: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("creating consumer {name} on {stream}: {source}")]
    Consumer {
        stream: &'static str,
        name: String,
        source: jetstream::stream::ConsumerError,
    },
    #[error("looking up stream {name}: {source}")]
    GetStream {
        name: &'static str,
        source: jetstream::context::GetStreamError,
    },
}

/// Rewrites `{{partition(16,…)}}` to the configured partition count.
fn with_partitions(dest: &str, partitions: u16) -> String {
    const NEEDLE: &str = "partition(";
    let Some(start) = dest.find(NEEDLE).map(|i| i + NEEDLE.len()) else {
        return dest.to_owned();
    };
    let end = dest[start..].find(',').map_or(dest.len(), |i| start + i);
    format!("{}{}{}", &dest[..start], partitions, &dest[end..])
}

/// The stream definitions as the services apply them under `cfg`.
pub fn stream_configs(cfg: &Config) -> Result<Vec<stream::Config>, TopologyError> {
    STREAM_FILES
        .iter()
        .map(|(file, text)| {
            let mut sc: stream::Config = serde_json::from_str(text)
                .map_err(|source| TopologyError::Definition { file, source })?;
            if let Some(t) = sc.subject_transform.as_mut() {
                t.destination = with_partitions(&t.destination, cfg.partitions);
            }
            sc.num_replicas = usize::from(cfg.replicas);
            Ok(sc)
        })
        .collect()
}

/// One consumer definition as the services apply it under `cfg`.
pub fn consumer_config(
    cfg: &Config,
    durable: &str,
) -> Result<(&'static str, pull::Config), TopologyError> {
    let (stream, file, text) = CONSUMER_FILES
        .iter()
        .find(|(_, file, _)| {
            file.trim_end_matches(".json")
                .ends_with(&format!(".{durable}"))
        })
        .ok_or_else(|| TopologyError::UnknownConsumer(durable.to_owned()))?;
    let mut cc: pull::Config =
        serde_json::from_str(text).map_err(|source| TopologyError::Definition { file, source })?;
    let steps = cfg.backoff.0.len();
    if i64::try_from(steps).unwrap_or(i64::MAX) >= cfg.max_deliver {
        return Err(TopologyError::RetryPolicy {
            max_deliver: cfg.max_deliver,
            steps,
        });
    }
    cc.max_deliver = cfg.max_deliver;
    cc.backoff = cfg.backoff.0.clone();
    Ok((stream, cc))
}

/// Creates or updates every stream. Idempotent; safe for several instances starting at once.
pub async fn ensure_streams(js: &jetstream::Context, cfg: &Config) -> Result<(), TopologyError> {
    for sc in stream_configs(cfg)? {
        let name = sc.name.clone();
        js.create_or_update_stream(sc)
            .await
            .map_err(|source| TopologyError::Stream { name, source })?;
    }
    Ok(())
}

/// Creates or updates one durable pull consumer and returns its handle.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &Config,
    durable: &str,
) -> Result<jetstream::consumer::Consumer<pull::Config>, TopologyError> {
    let (stream_name, cc) = consumer_config(cfg, durable)?;
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|source| TopologyError::GetStream {
            name: stream_name,
            source,
        })?;
    stream
        .create_consumer(cc)
        .await
        .map_err(|source| TopologyError::Consumer {
            stream: stream_name,
            name: durable.to_owned(),
            source,
        })
}

/// How long a consumer may hold a message before it must report progress: the first redelivery
/// delay (the server lets `backoff` override `ack_wait`).
pub fn progress_interval(cfg: &Config) -> Duration {
    cfg.backoff.0[0] / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_substituted() {
        assert_eq!(
            with_partitions(
                "payments.{{wildcard(1)}}.{{partition(16,2)}}.{{wildcard(2)}}",
                4
            ),
            "payments.{{wildcard(1)}}.{{partition(4,2)}}.{{wildcard(2)}}"
        );
    }
}
