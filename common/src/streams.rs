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
            if sc.name == DEAD_LETTERS {
                sc.max_messages = cfg.dead_letters_max_msgs;
            }
            Ok(sc)
        })
        .collect()
}

/// One consumer definition as the services apply it under `cfg` (for a partitioned service,
/// the definition of partition 0, as the file holds it).
pub fn consumer_config(
    cfg: &Config,
    service: &str,
) -> Result<(&'static str, pull::Config), TopologyError> {
    let (stream, file, text) = CONSUMER_FILES
        .iter()
        .find(|(_, file, _)| {
            file.trim_end_matches(".json")
                .ends_with(&format!(".{service}"))
        })
        .ok_or_else(|| TopologyError::UnknownConsumer(service.to_owned()))?;
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

/// The priority group whose pinned client owns a partition's consumer.
pub const OWNER_GROUP: &str = "owner";

/// Durable name of `service`'s consumer for buyer partition `partition`: `wallet-p3`.
pub fn partition_durable(service: &str, partition: u16) -> String {
    format!("{service}-p{partition}")
}

/// The service a durable consumer belongs to: `wallet-p3` → `wallet`; `dlq` → `dlq`.
pub fn service_of(durable: &str) -> &str {
    match durable.rsplit_once("-p") {
        Some((service, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => service,
        _ => durable,
    }
}

/// Whether `service` consumes one durable per buyer partition (its definition has a filter on
/// partition 0 and the owner priority group).
pub fn is_partitioned(cfg: &Config, service: &str) -> Result<bool, TopologyError> {
    let (_, cc) = consumer_config(cfg, service)?;
    Ok(cc.priority_groups.iter().any(|g| g == OWNER_GROUP))
}

/// `service`'s consumer for `partition`: the file's definition (partition 0) with the durable
/// name and the filter's partition token substituted (`payments.events.0.*` →
/// `payments.events.<p>.*`).
pub fn partition_consumer_config(
    cfg: &Config,
    service: &str,
    partition: u16,
) -> Result<(&'static str, pull::Config), TopologyError> {
    let (stream, mut cc) = consumer_config(cfg, service)?;
    let durable = partition_durable(service, partition);
    cc.durable_name = Some(durable);
    let mut tokens: Vec<String> = cc.filter_subject.split('.').map(str::to_owned).collect();
    assert!(
        tokens.len() == 4 && tokens[2] == "0",
        "nats/ partition consumers filter `payments.<kind>.0.*`, found {:?}",
        cc.filter_subject
    );
    tokens[2] = partition.to_string();
    cc.filter_subject = tokens.join(".");
    Ok((stream, cc))
}

/// Creates or updates `service`'s consumer of every partition; returns them by partition.
pub async fn ensure_partition_consumers(
    js: &jetstream::Context,
    cfg: &Config,
    service: &str,
) -> Result<Vec<jetstream::consumer::Consumer<pull::Config>>, TopologyError> {
    let (stream_name, _) = consumer_config(cfg, service)?;
    let stream = get_stream(js, stream_name).await?;
    let mut out = Vec::with_capacity(usize::from(cfg.partitions));
    for p in 0..cfg.partitions {
        let (_, cc) = partition_consumer_config(cfg, service, p)?;
        let name = cc.durable_name.clone().unwrap_or_default();
        out.push(
            stream
                .create_consumer(cc)
                .await
                .map_err(|source| TopologyError::Consumer {
                    stream: stream_name,
                    name,
                    source,
                })?,
        );
    }
    Ok(out)
}

async fn get_stream(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<jetstream::stream::Stream, TopologyError> {
    js.get_stream(name)
        .await
        .map_err(|source| TopologyError::GetStream { name, source })
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
    get_stream(js, stream_name)
        .await?
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
    fn partition_consumers_are_derived_from_the_files() {
        let cfg = Config::load_from(["paystream"]).unwrap();
        for (service, filter) in [
            ("payment", "payments.*.7.*"),
            ("wallet", "payments.events.7.*"),
            ("ledger", "payments.events.7.*"),
        ] {
            assert!(is_partitioned(&cfg, service).unwrap());
            let (_, cc) = partition_consumer_config(&cfg, service, 7).unwrap();
            assert_eq!(
                cc.durable_name.as_deref(),
                Some(format!("{service}-p7").as_str())
            );
            assert_eq!(cc.filter_subject, filter);
            assert_eq!(service_of(&partition_durable(service, 7)), service);
        }
        assert!(!is_partitioned(&cfg, "dlq").unwrap());
        assert_eq!(service_of("dlq"), "dlq");
        assert_eq!(service_of("my-pipeline"), "my-pipeline");
    }

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
