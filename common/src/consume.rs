//! The consumer loop every service runs: pull from a durable consumer in bounded batches (as many
//! as are ready, up to `batch_max`), hand the batch to the service's handler, then settle each
//! message with the handler's verdict. While a batch is in hand, progress acks keep the server
//! from redelivering it. Shutdown stops pulling and finishes the batch in hand.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use metrics::{counter, histogram};

use crate::config::Backoff;
use crate::shutdown::Shutdown;
use crate::telemetry::names;
use crate::text::bounded;

/// What to do with one message once its batch was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done (applied, or recognised as a duplicate).
    Ack,
    /// A transient failure: redeliver after the backoff delay for this delivery count.
    /// `label` is a bounded metric label, `error` the full text kept as the last error.
    Retry { label: &'static str, error: String },
    /// A permanent failure: terminate now with this reason (the server's MSG_TERMINATED advisory
    /// carries it into DEAD_LETTERS). `label` is a bounded metric label.
    Term { label: &'static str, reason: String },
}

/// A service's batch handler. It returns one verdict per message, in order.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, batch: &[Message]) -> impl Future<Output = Vec<Verdict>> + Send;
}

/// Settings of one consumer loop.
#[derive(Clone)]
pub struct LoopConfig {
    /// Metric label and log field.
    pub name: &'static str,
    pub batch_max: usize,
    pub backoff: Backoff,
    /// How often to send `+WPI` for a batch still being handled.
    pub progress_every: Duration,
    /// Where failed attempts are recorded (the last error of a dead letter).
    pub failures: Option<sea_orm::DatabaseConnection>,
}

impl LoopConfig {
    /// The loop settings of durable consumer `name` under `cfg`.
    pub fn new(
        name: &'static str,
        cfg: &crate::config::Config,
        failures: Option<sea_orm::DatabaseConnection>,
    ) -> Self {
        Self {
            name,
            batch_max: usize::from(cfg.batch_max),
            backoff: cfg.backoff.clone(),
            progress_every: crate::streams::progress_interval(cfg),
            failures,
        }
    }
}

/// Runs until shutdown. Errors of the message stream (NATS restarting, a missed heartbeat) are
/// logged and the pull is re-established; the loop itself never exits on them.
pub async fn run<H: Handler>(
    consumer: Consumer<pull::Config>,
    cfg: LoopConfig,
    handler: H,
    mut shutdown: Shutdown,
    ready: Arc<AtomicBool>,
) {
    let handler = Arc::new(handler);
    while !shutdown.is_fired() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(cfg.batch_max)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                ready.store(false, Ordering::Relaxed);
                tracing::warn!(consumer = cfg.name, error = %e, "pull failed; retrying in 1s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.wait() => break,
                }
            }
        };
        ready.store(true, Ordering::Relaxed);
        // A reader drains the pull eagerly and registers every message the moment it arrives; a
        // heartbeat sends `+WPI` for everything registered and not yet settled. So a message
        // waiting behind a slow batch is never redelivered for sitting in a buffer, and never
        // burns a delivery it did not use.
        let held = Held::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(cfg.batch_max * 2);
        let reader = {
            let held = held.clone();
            let name = cfg.name;
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(m) => {
                            held.insert(&m);
                            if tx.send(m).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(consumer = name, error = %e, "message stream error")
                        }
                    }
                }
            })
        };
        let heartbeat = tokio::spawn(held.clone().heartbeat(cfg.progress_every));
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                () = shutdown.wait() => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < cfg.batch_max {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            handle_batch(&cfg, handler.as_ref(), &batch, &held).await;
        }
        reader.abort();
        heartbeat.abort();
    }
    tracing::info!(consumer = cfg.name, "consumer stopped");
}

/// Messages received and not yet settled, by reply subject, for progress acks.
#[derive(Clone, Default)]
struct Held {
    /// Never held across an await: the reader registers messages without waiting.
    map: Arc<std::sync::Mutex<std::collections::HashMap<String, async_nats::Client>>>,
    /// Held for a whole heartbeat round, so that `remove` (before settling) waits for a round in
    /// progress: no `+WPI` can follow a message's ack or NAK and undo the NAK's delay.
    round: Arc<tokio::sync::Mutex<()>>,
}

impl Held {
    fn insert(&self, m: &Message) {
        if let Some(reply) = &m.reply {
            self.map
                .lock()
                .expect("held lock")
                .insert(reply.to_string(), m.context.client());
        }
    }

    /// Stops the heartbeat for these messages; called before they are settled.
    async fn remove(&self, batch: &[Message]) {
        let _round = self.round.lock().await;
        let mut held = self.map.lock().expect("held lock");
        for m in batch {
            if let Some(reply) = &m.reply {
                held.remove(reply.as_str());
            }
        }
    }

    async fn heartbeat(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _round = self.round.lock().await;
            let snapshot: Vec<(String, async_nats::Client)> = self
                .map
                .lock()
                .expect("held lock")
                .iter()
                .map(|(r, c)| (r.clone(), c.clone()))
                .collect();
            // Bounded: while NATS is unreachable a round gives up rather than hold `remove` back.
            let _ = tokio::time::timeout(every, async {
                for (reply, client) in snapshot {
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                        .await;
                }
            })
            .await;
        }
    }
}

async fn handle_batch<H: Handler>(cfg: &LoopConfig, handler: &H, batch: &[Message], held: &Held) {
    let started = Instant::now();
    histogram!(names::CONSUMER_BATCH_SIZE, "consumer" => cfg.name).record(batch.len() as f64);
    let verdicts = handler.handle(batch).await;
    held.remove(batch).await;
    assert_eq!(
        verdicts.len(),
        batch.len(),
        "a handler returns one verdict per message"
    );
    histogram!(names::CONSUMER_BATCH_DURATION, "consumer" => cfg.name)
        .record(started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    for (msg, verdict) in batch.iter().zip(verdicts) {
        failed.extend(settle(cfg, msg, verdict).await);
    }
    // Recorded after every NAK went out, and bounded: a slow or unreachable database must not hold
    // the loop (the messages are already on their way back).
    if let (Some(db), false) = (&cfg.failures, failed.is_empty()) {
        let record = async {
            for f in &failed {
                crate::failures::record(db, cfg.name, &f.stream, f.seq, f.delivered, &f.error)
                    .await?;
            }
            Ok::<(), sea_orm::DbErr>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), record).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(consumer = cfg.name, error = %e, "could not record failed attempts")
            }
            Err(_) => tracing::warn!(consumer = cfg.name, "recording failed attempts timed out"),
        }
    }
}

/// A NAKed delivery, to be recorded as the message's last error.
struct Failed {
    stream: String,
    seq: u64,
    delivered: i64,
    error: String,
}

/// Acks, NAKs with the backoff delay, or terminates with a reason. A failed ack is only logged:
/// the message comes back and the handler recognises it as a duplicate.
async fn settle(cfg: &LoopConfig, msg: &Message, verdict: Verdict) -> Option<Failed> {
    let (seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let mut failed = None;
    let result = match verdict {
        Verdict::Ack => {
            counter!(names::CONSUMER_MESSAGES, "consumer" => cfg.name, "verdict" => "ack")
                .increment(1);
            msg.ack().await
        }
        Verdict::Retry { label, error } => {
            let step = cfg.backoff.delay_after(delivered);
            let delay = nak_delay(&cfg.backoff, delivered);
            counter!(names::CONSUMER_MESSAGES, "consumer" => cfg.name, "verdict" => "retry")
                .increment(1);
            counter!(names::CONSUMER_RETRIES, "consumer" => cfg.name, "reason" => label)
                .increment(1);
            tracing::warn!(consumer = cfg.name, stream_seq = seq, delivered, retry_in = ?step, error = %bounded(&error, 512), "retrying");
            let stream = msg.info().map(|i| i.stream.to_owned()).unwrap_or_default();
            failed = Some(Failed {
                stream,
                seq,
                delivered,
                error,
            });
            msg.ack_with(AckKind::Nak(Some(delay))).await
        }
        Verdict::Term { label, reason } => {
            counter!(names::CONSUMER_MESSAGES, "consumer" => cfg.name, "verdict" => "term")
                .increment(1);
            counter!(names::CONSUMER_TERMINATED, "consumer" => cfg.name, "reason" => label)
                .increment(1);
            let reason = bounded(&reason, 512);
            tracing::warn!(consumer = cfg.name, stream_seq = seq, subject = %msg.subject, %reason, "terminated");
            term_with_reason(msg, &reason).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(consumer = cfg.name, stream_seq = seq, error = %e, "ack failed; the message will be redelivered");
    }
    failed
}

/// The NAK delay that makes the server redeliver after the configured backoff step. Measured on
/// nats-server 2.15: on a consumer that has a `backoff`, a `-NAK {"delay": d}` of delivery k ≥ 2
/// is redelivered after d + backoff[k−2] (the step the server itself would have waited after the
/// previous delivery); delivery 1 after d. So we ask for the step minus that (at least 1 ms: a
/// zero delay would mean "at once").
pub fn nak_delay(backoff: &Backoff, delivered: i64) -> Duration {
    let step = backoff.delay_after(delivered);
    let server_adds = if delivered >= 2 {
        backoff.delay_after(delivered - 1)
    } else {
        Duration::ZERO
    };
    step.saturating_sub(server_adds)
        .max(Duration::from_millis(1))
}

/// `+TERM <reason>`: async-nats's `AckKind::Term` sends a bare `+TERM`, which loses the reason that
/// the MSG_TERMINATED advisory would carry.
pub async fn term_with_reason(msg: &Message, reason: &str) -> Result<(), async_nats::Error> {
    let Some(reply) = msg.reply.clone() else {
        return Ok(());
    };
    msg.context
        .client()
        .publish(reply, format!("+TERM {reason}").into())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_delay_compensates_for_the_server() {
        let b = Backoff::parse("300ms,600ms,900ms").unwrap();
        // The server redelivers after d + backoff[k−2]; that must equal the step.
        assert_eq!(nak_delay(&b, 1), Duration::from_millis(300));
        assert_eq!(
            nak_delay(&b, 2) + Duration::from_millis(300),
            Duration::from_millis(600)
        );
        assert_eq!(
            nak_delay(&b, 3) + Duration::from_millis(600),
            Duration::from_millis(900)
        );
        assert_eq!(
            nak_delay(&b, 9),
            Duration::from_millis(1),
            "a flat tail still waits the step"
        );
    }
}
