//! The `payment` consumer's batch handler: decode and validate each ingress message, then hand
//! payments to `execute` and cancellations to `cancel`, which answer each message when its own PSP
//! work is done. Invalid input is terminated at once with a reason naming the field; it never
//! blocks the batch.

use std::sync::Arc;

use async_nats::jetstream::Message;
use metrics::counter;
use paystream_common::consume::{Handler, Reply, Verdict};
use paystream_common::ingress::{Command, decode_command};
use paystream_common::payment::Requested;
use paystream_common::telemetry::names;

use crate::cancel::{self, Cancel};
use crate::execute;
use crate::pipeline::Pipeline;
use crate::psp::Psp;

pub struct Intake<P: Psp> {
    pub pipe: Arc<Pipeline<P>>,
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
    /// Free PSP call slots, once the circuit breaker is not open: what cannot be called now is
    /// left in PAYMENTS (not received, no delivery used) rather than taken and made to wait.
    async fn capacity(&self) -> usize {
        self.pipe.gate.until_not_open(&self.pipe.shutdown).await;
        let one = self.pipe.acquire_slot().await;
        let free = self.pipe.slots.available_permits() + 1;
        drop(one);
        free
    }

    async fn handle(&self, batch: &[Message]) -> Vec<Reply> {
        let mut replies: Vec<Option<Reply>> = (0..batch.len()).map(|_| None).collect();
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
                    replies[i] = Some(
                        Verdict::Term {
                            label: rejection.field,
                            reason: rejection.to_string(),
                        }
                        .into(),
                    );
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
                        Command::Cancel(req) => cancels.push((
                            i,
                            Cancel {
                                req,
                                seq,
                                published_ms,
                            },
                        )),
                    }
                }
            }
        }
        // Payments first: a cancellation in the same batch then finds its payment's charge under
        // way and waits for it.
        if !pays.is_empty() {
            execute::pay(&self.pipe, pays, &mut replies).await;
        }
        if !cancels.is_empty() {
            cancel::cancel(&self.pipe, cancels, &mut replies).await;
        }
        replies
            .into_iter()
            .map(|r| r.expect("every message of the batch received a reply"))
            .collect()
    }
}
