//! The `payment` consumer's batch handler: decode and validate each ingress message, then hand
//! payments to `execute` and cancellations to `cancel`. Invalid input is terminated at once with a
//! reason naming the field; it never blocks the batch.

use std::sync::Arc;

use async_nats::jetstream::Message;
use metrics::counter;
use paystream_common::consume::{Handler, Verdict};
use paystream_common::ingress::{Command, decode_command};
use paystream_common::telemetry::names;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;

use crate::psp::Psp;
use crate::store::Requested;
use crate::{cancel, execute};

pub struct Intake<P: Psp> {
    pub db: DatabaseConnection,
    pub psp: Arc<P>,
    /// PSP calls in flight at once for one batch.
    pub psp_concurrency: usize,
    /// Wakes the outbox relay once events are committed.
    pub outbox: Arc<Notify>,
    /// How long a batch's PSP calls can take at most: the sweeper keeps off a payment that long
    /// after its EXECUTING is written, and after an unknown outcome.
    pub execution_lease: std::time::Duration,
}

/// The stream sequence and the time JetStream stored the message (unix ms).
pub(crate) fn stream_position(m: &Message) -> (u64, i64) {
    match m.info() {
        Ok(i) => (
            i.stream_sequence,
            i64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        ),
        Err(_) => (0, paystream_common::time::now_ms()),
    }
}

impl<P: Psp> Handler for Intake<P> {
    async fn handle(&self, batch: &[Message]) -> Vec<Verdict> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        let mut pays = Vec::new();
        let mut cancels = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let (seq, published_ms) = stream_position(m);
            let content_type = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Content-Type"))
                .map(|v| v.as_str());
            match decode_command(&m.subject, content_type, &m.payload) {
                Err(rejection) => {
                    counter!(names::INGRESS_REJECTED, "field" => rejection.field).increment(1);
                    tracing::warn!(stream_seq = seq, subject = %m.subject, %rejection, "ingress message rejected");
                    verdicts[i] = Some(Verdict::Term {
                        label: rejection.field,
                        reason: rejection.to_string(),
                    });
                }
                Ok((command, format)) => {
                    let kind = if matches!(command, Command::Pay(_)) {
                        "request"
                    } else {
                        "cancel"
                    };
                    counter!(names::INGRESS_MESSAGES, "kind" => kind, "format" => format.as_str())
                        .increment(1);
                    match command {
                        Command::Pay(req) => pays.push((
                            i,
                            Requested {
                                req,
                                seq,
                                published_ms,
                            },
                        )),
                        Command::Cancel(c) => cancels.push((i, c, seq, published_ms)),
                    }
                }
            }
        }
        // Payments first: a cancellation in the same batch then sees its payment's outcome.
        if !pays.is_empty() {
            execute::pay(self, pays, &mut verdicts).await;
        }
        if !cancels.is_empty() {
            cancel::cancel(self, cancels, &mut verdicts).await;
        }
        if verdicts.iter().any(Option::is_some) {
            self.outbox.notify_one();
        }
        verdicts
            .into_iter()
            .map(|v| v.expect("every message of the batch received a verdict"))
            .collect()
    }
}
