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
    'outer: while !shutdown.is_fired() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(cfg.batch_max)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let mut chunks = match stream {
            Ok(s) => s.ready_chunks(cfg.batch_max),
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
        loop {
            let chunk = tokio::select! {
                c = chunks.next() => c,
                () = shutdown.wait() => break 'outer,
            };
            let Some(chunk) = chunk else { continue 'outer };
            let mut batch = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(m) => batch.push(m),
                    Err(e) => {
                        tracing::warn!(consumer = cfg.name, error = %e, "message stream error")
                    }
                }
            }
            if !batch.is_empty() {
                handle_batch(&cfg, handler.as_ref(), batch).await;
            }
        }
    }
    tracing::info!(consumer = cfg.name, "consumer stopped");
}

async fn handle_batch<H: Handler>(cfg: &LoopConfig, handler: &H, batch: Vec<Message>) {
    let started = Instant::now();
    histogram!(names::CONSUMER_BATCH_SIZE, "consumer" => cfg.name).record(batch.len() as f64);
    let verdicts = {
        let work = handler.handle(&batch);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(cfg.progress_every);
        tick.tick().await;
        loop {
            tokio::select! {
                v = &mut work => break v,
                _ = tick.tick() => {
                    for m in &batch {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
    };
    assert_eq!(
        verdicts.len(),
        batch.len(),
        "a handler returns one verdict per message"
    );
    histogram!(names::CONSUMER_BATCH_DURATION, "consumer" => cfg.name)
        .record(started.elapsed().as_secs_f64());
    for (msg, verdict) in batch.iter().zip(verdicts) {
        settle(cfg, msg, verdict).await;
    }
}

/// Acks, NAKs with the backoff delay, or terminates with a reason. A failed ack is only logged:
/// the message comes back and the handler recognises it as a duplicate.
async fn settle(cfg: &LoopConfig, msg: &Message, verdict: Verdict) {
    let (seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let result = match verdict {
        Verdict::Ack => {
            counter!(names::CONSUMER_MESSAGES, "consumer" => cfg.name, "verdict" => "ack")
                .increment(1);
            msg.ack().await
        }
        Verdict::Retry { label, error } => {
            let delay = cfg.backoff.delay_after(delivered);
            counter!(names::CONSUMER_MESSAGES, "consumer" => cfg.name, "verdict" => "retry")
                .increment(1);
            counter!(names::CONSUMER_RETRIES, "consumer" => cfg.name, "reason" => label)
                .increment(1);
            tracing::warn!(consumer = cfg.name, stream_seq = seq, delivered, ?delay, error = %bounded(&error, 512), "retrying");
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
