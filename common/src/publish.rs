//! Publishing to PAYMENT_EVENTS so that the stream's sequence is the one order of a buyer's
//! events, however many producers there are (payment-service relays, the reconciler, redrive).
//!
//! Each publish is conditioned on the last sequence of the buyer's subject
//! (`Nats-Expected-Last-Subject-Sequence`, checked by the server against the stored, partitioned
//! subject). A buyer's events go out one after another, each conditioned on its predecessor's
//! sequence; different buyers' go out concurrently. When another producer got there first the
//! server answers "wrong last sequence: N": we condition on N and publish again with the same
//! `Nats-Msg-Id`, so if it was our own earlier attempt that landed, the server answers
//! `duplicate` instead of storing it twice. The condition is stored with the message, so every
//! event names its predecessor on the buyer's subject: the chain a reader can check.

use std::collections::HashMap;

use async_nats::jetstream::{
    self, context::PublishErrorKind, message::PublishMessage, publish::PublishAck,
};
use bytes::Bytes;
use metrics::counter;

use crate::telemetry::names;

/// Conflicts tolerated for one event before it is left for the next round.
const CONFLICTS_MAX: u32 = 16;
/// Buyers whose last sequence is remembered; past it the memory starts afresh (a miss costs one
/// conflict round trip, never correctness).
const REMEMBERED_BUYERS_MAX: usize = 200_000;

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The buyer whose subject orders it.
    pub buyer: String,
    /// Publish-form subject (`payments.events.<buyer>`).
    pub subject: String,
    /// `Nats-Msg-Id`: the event_id, stable across retries.
    pub msg_id: String,
    pub payload: Bytes,
    /// Further headers (`Nats-*` ones are set here, not taken from these).
    pub headers: async_nats::HeaderMap,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("{0} conflicting producers in a row; retried later")]
    Contended(u32),
    #[error("not attempted: an earlier event of the same buyer failed")]
    Skipped,
}

impl PublishError {
    /// NATS unreachable or a stream leader moving: nothing is wrong with the event.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Publish(e) => matches!(
                e.kind(),
                PublishErrorKind::StreamNotFound
                    | PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
            ),
            PublishError::Contended(_) | PublishError::Skipped => true,
        }
    }
}

/// A producer of PAYMENT_EVENTS. Keeps, per buyer, the sequence it last saw on the buyer's subject.
pub struct OrderedPublisher {
    js: jetstream::Context,
    last: HashMap<String, u64>,
}

impl OrderedPublisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            last: HashMap::new(),
        }
    }

    /// Publishes `items`; a buyer's items in the order given. Returns one result per item. After
    /// a buyer's first failure its later items are `Skipped`, so a buyer's published events are
    /// always a prefix of what was asked.
    pub async fn publish(&mut self, items: &[Outgoing]) -> Vec<Result<PublishAck, PublishError>> {
        let mut chains: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            chains.entry(item.buyer.as_str()).or_default().push(i);
        }
        if self.last.len() + chains.len() > REMEMBERED_BUYERS_MAX {
            self.last.clear();
        }
        let runs = chains.into_iter().map(|(buyer, idx)| {
            let start = self.last.get(buyer).copied().unwrap_or(0);
            let js = self.js.clone();
            async move {
                let (results, last) = publish_chain(&js, items, &idx, start).await;
                (buyer.to_owned(), idx, results, last)
            }
        });
        let done = futures::future::join_all(runs).await;
        let mut out: Vec<Option<Result<PublishAck, PublishError>>> =
            (0..items.len()).map(|_| None).collect();
        for (buyer, idx, results, last) in done {
            match last {
                Some(seq) => {
                    self.last.insert(buyer, seq);
                }
                None => {
                    self.last.remove(&buyer);
                }
            }
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every item belongs to one chain"))
            .collect()
    }
}

/// One buyer's events, in order. Returns their results and the subject's last sequence as far as
/// we know it (`None` when a failure left it unknown).
async fn publish_chain(
    js: &jetstream::Context,
    items: &[Outgoing],
    idx: &[usize],
    start: u64,
) -> (Vec<Result<PublishAck, PublishError>>, Option<u64>) {
    let mut expected = start;
    let mut results = Vec::with_capacity(idx.len());
    let mut failed = false;
    for &i in idx {
        if failed {
            results.push(Err(PublishError::Skipped));
            continue;
        }
        match publish_one(js, &items[i], &mut expected).await {
            Ok(ack) => results.push(Ok(ack)),
            Err(e) => {
                failed = true;
                results.push(Err(e));
            }
        }
    }
    (results, (!failed).then_some(expected))
}

/// Publishes one event conditioned on `expected`, following the subject when other producers
/// moved it; on success `expected` is the subject's new last sequence.
async fn publish_one(
    js: &jetstream::Context,
    item: &Outgoing,
    expected: &mut u64,
) -> Result<PublishAck, PublishError> {
    for _ in 0..CONFLICTS_MAX {
        let msg = PublishMessage::build()
            .payload(item.payload.clone())
            .headers(item.headers.clone())
            .message_id(&item.msg_id)
            .expected_last_subject_sequence(*expected);
        let sent = js.send_publish(item.subject.clone(), msg).await?;
        match sent.await {
            Ok(ack) => {
                // A duplicate (our own earlier attempt had landed) was accepted under the same
                // condition: the subject's last sequence is still `expected`.
                if !ack.duplicate {
                    *expected = ack.sequence;
                }
                return Ok(ack);
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                counter!(names::PUBLISH_CONFLICTS).increment(1);
                let current = std::error::Error::source(&e)
                    .and_then(|s| last_sequence_in(&s.to_string()))
                    .ok_or(e)?;
                tracing::debug!(buyer_id = %item.buyer, expected = *expected, current, "another producer moved the buyer's subject");
                *expected = current;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(PublishError::Contended(CONFLICTS_MAX))
}

/// The `N` of the server's "wrong last sequence: N".
fn last_sequence_in(description: &str) -> Option<u64> {
    let (_, rest) = description.split_once("wrong last sequence: ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The header under which a published event carries its predecessor's sequence.
pub const HEADER_PREVIOUS: &str = "Nats-Expected-Last-Subject-Sequence";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_sequence_from_the_error() {
        assert_eq!(
            last_sequence_in("wrong last sequence: 4 (code 400, error code 10071)"),
            Some(4)
        );
        assert_eq!(last_sequence_in("wrong last sequence: 17"), Some(17));
        assert_eq!(last_sequence_in("something else"), None);
    }
}
