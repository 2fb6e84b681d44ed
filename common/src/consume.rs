//! The consumer loop every service runs: pull from a durable consumer in bounded batches (as many
//! as are ready, up to `batch_max` and up to what the handler says it can take), hand the batch to
//! the service's handler, then settle each message with the handler's verdict — at once, or, for a
//! pipelined handler, whenever that message's own verdict arrives, while the loop goes on with the
//! next batch. Until a message is settled, progress acks keep the server from redelivering it.
//! Shutdown stops pulling and finishes what is in hand.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use metrics::{counter, gauge, histogram};

use crate::config::Backoff;
use crate::ownership::Membership;
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

/// A message's verdict now, or later: a pipelined handler answers each message when its own work
/// is done (a PSP call), never after a slower one of the same batch. Until then the message stays
/// held (progress acks); a sender dropped without a verdict gives the message back for redelivery.
#[derive(Debug)]
pub enum Reply {
    Now(Verdict),
    Later(tokio::sync::oneshot::Receiver<Verdict>),
}

impl From<Verdict> for Reply {
    fn from(v: Verdict) -> Self {
        Reply::Now(v)
    }
}

/// A service's batch handler. It returns one reply per message, in order.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, batch: &[Message]) -> impl Future<Output = Vec<Reply>> + Send;

    /// Waits until the handler can take messages and says how many: the loop hands it no more
    /// (nor more than `batch_max`). A pipelined handler bounds its work in flight with it, so
    /// that what it cannot start yet stays in the stream rather than in memory. Default: a batch.
    fn capacity(&self) -> impl Future<Output = usize> + Send {
        std::future::ready(usize::MAX)
    }
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
    /// Where failed attempts are recorded (the last error of a dead letter), and dead letters
    /// before they are sent (`pending_dead_letters`).
    pub failures: Option<sea_orm::DatabaseConnection>,
    /// The consumer's `max_deliver`: a failed delivery with this count is the message's last.
    pub max_deliver: i64,
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
            max_deliver: cfg.max_deliver,
        }
    }
}

/// Where a loop's messages come from.
#[allow(clippy::large_enum_variant)] // one per consumer loop, moved once
pub enum Source {
    /// One durable consumer that every instance pulls (the dlq watcher).
    Single(Consumer<pull::Config>),
    /// One durable per buyer partition, index = partition: this instance pulls those that
    /// `membership` assigns it, as the pinned client of each (see `ownership`).
    Partitioned {
        js: async_nats::jetstream::Context,
        consumers: Vec<Consumer<pull::Config>>,
        membership: Membership,
    },
}

impl Source {
    /// `service`'s consumers of every partition (created or updated), owned through a membership
    /// of the service's instances in `db`.
    pub async fn partitioned(
        js: &async_nats::jetstream::Context,
        cfg: &crate::config::Config,
        service: &'static str,
        db: sea_orm::DatabaseConnection,
    ) -> Result<Self, crate::streams::TopologyError> {
        Ok(Source::Partitioned {
            js: js.clone(),
            consumers: crate::streams::ensure_partition_consumers(js, cfg, service).await?,
            membership: Membership::new(db, service, cfg.member_ttl),
        })
    }
}

/// Runs until shutdown. Errors of the message stream (NATS restarting, a missed heartbeat) are
/// logged and the pull is re-established; the loop itself never exits on them. On shutdown it
/// stops pulling, settles everything already received (bounded), then gives its partitions up.
pub async fn run<H: Handler>(
    source: Source,
    cfg: LoopConfig,
    handler: H,
    shutdown: Shutdown,
    ready: Arc<AtomicBool>,
) {
    // Readers drain the pulls eagerly and register every message the moment it arrives; a
    // heartbeat sends `+WPI` for everything registered and not yet settled. So a message waiting
    // behind a slow batch is never redelivered for sitting in a buffer, and never burns a
    // delivery it did not use.
    let held = Held::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(cfg.batch_max * 2);
    let heartbeat = tokio::spawn(held.clone().heartbeat(cfg.progress_every));
    // Each pull asks for at most `pull_max` messages: what the server has sent to a pull but the
    // reader has not taken out of the client's buffer yet gets no progress acks, so with many
    // partitions pulling `batch_max` each, thousands waited there past their ack wait and were
    // delivered twice (`paystream bench`: 25% of payment requests). Split across the partitions,
    // everything in flight is about one batch plus the channel.
    let pull_max = match &source {
        Source::Single(_) => cfg.batch_max,
        Source::Partitioned { consumers, .. } => (cfg.batch_max / consumers.len().max(1))
            .max(PULL_MIN)
            .min(cfg.batch_max),
    };
    let readers = Readers {
        tx,
        held: held.clone(),
        name: cfg.name,
        pull_max,
        ack_wait_first: cfg.backoff.delay_after(1),
    };
    let (stop_pulling, pulling_stopped) = tokio::sync::watch::channel(false);
    let control = match source {
        Source::Single(consumer) => {
            let reader = readers.spawn(consumer, None, ready.clone());
            let mut stop = pulling_stopped.clone();
            tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                reader.stop().await;
                Vec::new()
            })
        }
        Source::Partitioned {
            js,
            consumers,
            membership,
        } => tokio::spawn(own_partitions(
            js,
            consumers,
            membership,
            readers,
            ready.clone(),
            pulling_stopped,
        )),
    };
    let mut stop = shutdown.clone();
    // Messages whose verdict comes later, each settled by its own task.
    let mut later = tokio::task::JoinSet::new();
    loop {
        let room = tokio::select! {
            n = handler.capacity() => n,
            () = stop.wait() => break,
        };
        let first = tokio::select! {
            m = rx.recv() => m,
            () = stop.wait() => None,
        };
        let Some(first) = first else { break };
        let batch = fill(first, &mut rx, cfg.batch_max.min(room.max(1)));
        handle_batch(&cfg, &handler, &batch, &held, &mut later).await;
        while later.try_join_next().is_some() {}
    }
    // Stop pulling, then settle what was already received, so the next owner of a partition
    // starts after everything this instance took (bounded: a stuck database must not hold
    // shutdown forever; anything left is redelivered after its ack wait).
    let _ = stop_pulling.send(true);
    let released = control.await.unwrap_or_default();
    let drain = async {
        while let Ok(first) = rx.try_recv() {
            let room = handler.capacity().await;
            let batch = fill(first, &mut rx, cfg.batch_max.min(room.max(1)));
            handle_batch(&cfg, &handler, &batch, &held, &mut later).await;
        }
        while later.join_next().await.is_some() {}
    };
    if tokio::time::timeout(DRAIN_MAX, drain).await.is_err() {
        tracing::warn!(
            consumer = cfg.name,
            "shutdown drain timed out; the rest is redelivered"
        );
    }
    heartbeat.abort();
    release(released).await;
    ready.store(false, Ordering::Relaxed);
    tracing::info!(consumer = cfg.name, "consumer stopped");
}

/// Fewest messages one pull of a partition asks for.
const PULL_MIN: usize = 16;

/// Longest a stopping loop spends settling what it had received.
const DRAIN_MAX: Duration = Duration::from_secs(20);
/// Longest a released partition waits for its received messages to be settled before it is
/// unpinned anyway.
const RELEASE_WAIT_MAX: Duration = Duration::from_secs(30);

/// `first` and whatever else is ready, up to `max`.
fn fill(first: Message, rx: &mut tokio::sync::mpsc::Receiver<Message>, max: usize) -> Vec<Message> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    batch
}

/// What every reader of one loop shares.
#[derive(Clone)]
struct Readers {
    tx: tokio::sync::mpsc::Sender<Message>,
    held: Held,
    name: &'static str,
    /// Messages one pull asks for.
    pull_max: usize,
    /// The ack wait of a first delivery (the first backoff step): how long a message the server
    /// sent to a pull that was dropped stays out before it is due for redelivery.
    ack_wait_first: Duration,
}

impl Readers {
    /// Pulls `consumer` (as a member of `group`, if any) into the loop's channel until stopped,
    /// re-establishing the pull whenever it fails. `ok` tells whether the pull is established.
    fn spawn(
        &self,
        consumer: Consumer<pull::Config>,
        group: Option<&'static str>,
        ok: Arc<AtomicBool>,
    ) -> Reader {
        let r = self.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let mut pull = consumer
                    .stream()
                    .max_messages_per_batch(r.pull_max)
                    .expires(Duration::from_secs(30))
                    .heartbeat(Duration::from_secs(5));
                if let Some(g) = group {
                    pull = pull.group(g);
                }
                let established = tokio::select! {
                    s = pull.messages() => s,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let mut stream = match established {
                    Ok(stream) => stream,
                    Err(e) => {
                        ok.store(false, Ordering::Relaxed);
                        tracing::warn!(consumer = r.name, error = %e, "pull failed; retrying in 1s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {},
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                        continue;
                    }
                };
                ok.store(true, Ordering::Relaxed);
                loop {
                    let item = tokio::select! {
                        biased;
                        _ = stopped.wait_for(|s| *s) => return,
                        item = stream.next() => item,
                    };
                    let m = match item {
                        None => break,
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::warn!(consumer = r.name, error = %e, "message stream error");
                            continue;
                        }
                    };
                    r.held.insert(&m);
                    let slot = tokio::select! {
                        biased;
                        slot = r.tx.reserve() => Some(slot),
                        _ = stopped.wait_for(|s| *s) => None,
                    };
                    match slot {
                        Some(Ok(slot)) => slot.send(m),
                        Some(Err(_)) => return,
                        None => {
                            // Received but never handed over: give it back now (no progress acks
                            // for it any more), so the partition's next owner gets it first.
                            r.held.remove([&m]).await;
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                            return;
                        }
                    }
                }
            }
        });
        Reader { task, stop }
    }
}

/// A running reader.
struct Reader {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Reader {
    /// Stops pulling; a message received and not yet handed to the loop is NAKed. Returns once
    /// the reader is gone.
    async fn stop(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("a reader did not stop within 5s");
        }
    }
}

/// A partition this instance is pulling.
struct Owned {
    reader: Reader,
    ok: Arc<AtomicBool>,
}

/// A partition this instance stopped pulling, to unpin once its received messages are settled.
struct Released {
    js: async_nats::jetstream::Context,
    consumer: Consumer<pull::Config>,
    held: Held,
    name: &'static str,
    ack_wait_first: Duration,
}

/// Keeps this instance pulling exactly the partitions its membership assigns it: every
/// heartbeat, partitions gained start a reader, partitions lost stop theirs and are unpinned once
/// their received messages are settled (so the next owner starts after them). Returns the
/// partitions still owned when told to stop pulling, for `run` to release after its drain.
async fn own_partitions(
    js: async_nats::jetstream::Context,
    consumers: Vec<Consumer<pull::Config>>,
    membership: Membership,
    readers: Readers,
    ready: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Released> {
    let name = readers.name;
    let partitions = u16::try_from(consumers.len()).expect("partitions fit a u16");
    let mut owned: std::collections::BTreeMap<u16, Owned> = Default::default();
    let mut assigned_once = false;
    let every = (membership.ttl / 4).max(Duration::from_millis(100));
    loop {
        match membership.heartbeat().await {
            Ok(members) => {
                let mine = crate::ownership::assign(partitions, &members, &membership.instance_id);
                gauge!(names::MEMBERS_LIVE, "consumer" => name).set(members.len() as f64);
                let lost: Vec<u16> = owned
                    .keys()
                    .filter(|p| !mine.contains(p))
                    .copied()
                    .collect();
                for p in lost {
                    let o = owned.remove(&p).expect("owned");
                    o.reader.stop().await;
                    counter!(names::PARTITION_HANDOVERS, "consumer" => name, "direction" => "released").increment(1);
                    tracing::info!(consumer = name, partition = p, "partition released");
                    tokio::spawn(release(vec![Released {
                        js: js.clone(),
                        consumer: consumers[usize::from(p)].clone(),
                        held: readers.held.clone(),
                        name,
                        ack_wait_first: readers.ack_wait_first,
                    }]));
                }
                for p in mine {
                    if owned.contains_key(&p) {
                        continue;
                    }
                    let ok = Arc::new(AtomicBool::new(false));
                    let reader = readers.spawn(
                        consumers[usize::from(p)].clone(),
                        Some(crate::streams::OWNER_GROUP),
                        ok.clone(),
                    );
                    counter!(names::PARTITION_HANDOVERS, "consumer" => name, "direction" => "gained").increment(1);
                    tracing::info!(
                        consumer = name,
                        partition = p,
                        members = members.len(),
                        "partition taken"
                    );
                    owned.insert(p, Owned { reader, ok });
                }
                gauge!(names::PARTITIONS_OWNED, "consumer" => name).set(owned.len() as f64);
                assigned_once = true;
            }
            Err(e) => {
                tracing::warn!(consumer = name, error = %e, "membership heartbeat failed; keeping the partitions held")
            }
        }
        ready.store(
            assigned_once && owned.values().all(|o| o.ok.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Err(e) = membership.leave().await {
        tracing::warn!(consumer = name, error = %e, "could not leave the membership; others wait for its TTL");
    }
    gauge!(names::PARTITIONS_OWNED, "consumer" => name).set(0.0);
    let mut released = Vec::with_capacity(owned.len());
    for (p, o) in owned {
        o.reader.stop().await;
        released.push(Released {
            js: js.clone(),
            consumer: consumers[usize::from(p)].clone(),
            held: readers.held.clone(),
            name,
            ack_wait_first: readers.ack_wait_first,
        });
    }
    released
}

/// Unpins released partitions once none of their received messages is left unsettled (bounded)
/// and what was in flight to the dropped pull is due again, so the next owner gets the pin at once
/// (instead of after the priority timeout) and starts where this instance stopped.
async fn release(partitions: Vec<Released>) {
    futures::future::join_all(partitions.into_iter().map(release_one)).await;
}

async fn release_one(r: Released) {
    let info = r.consumer.cached_info();
    let (stream, durable) = (info.stream_name.clone(), info.name.clone());
    let deadline = Instant::now() + RELEASE_WAIT_MAX;
    while r.held.count_of(&durable) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Messages the server had sent to the dropped pull but that never reached us are due for
    // redelivery after their ack wait; the server serves due redeliveries before new messages,
    // so waiting that long lets the next owner start with them, in order.
    tokio::time::sleep(r.ack_wait_first + Duration::from_millis(100)).await;
    let unpinned = async {
        r.js.get_stream(&stream)
            .await?
            .unpin_consumer(&durable, crate::streams::OWNER_GROUP)
            .await?;
        Ok::<(), async_nats::Error>(())
    };
    if let Err(e) = unpinned.await {
        tracing::warn!(consumer = r.name, %durable, error = %e, "unpin failed; the pin expires by itself");
    }
}

/// Messages received and not yet settled, by reply subject, for progress acks.
#[derive(Clone, Default)]
struct Held {
    /// Never held across an await: the reader registers messages without waiting.
    map: Arc<std::sync::Mutex<std::collections::HashMap<String, (async_nats::Client, String)>>>,
    /// Held for a whole heartbeat round, so that `remove` (before settling) waits for a round in
    /// progress: no `+WPI` can follow a message's ack or NAK and undo the NAK's delay.
    round: Arc<tokio::sync::Mutex<()>>,
}

impl Held {
    fn insert(&self, m: &Message) {
        if let Some(reply) = &m.reply {
            let durable = m.info().map(|i| i.consumer.to_owned()).unwrap_or_default();
            self.map
                .lock()
                .expect("held lock")
                .insert(reply.to_string(), (m.context.client(), durable));
        }
    }

    /// Messages of durable `durable` received and not yet settled.
    fn count_of(&self, durable: &str) -> usize {
        self.map
            .lock()
            .expect("held lock")
            .values()
            .filter(|(_, d)| d == durable)
            .count()
    }

    /// Stops the heartbeat for these messages; called before they are settled.
    async fn remove<'m>(&self, batch: impl IntoIterator<Item = &'m Message>) {
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
                .map(|(r, (c, _))| (r.clone(), c.clone()))
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

async fn handle_batch<H: Handler>(
    cfg: &LoopConfig,
    handler: &H,
    batch: &[Message],
    held: &Held,
    later: &mut tokio::task::JoinSet<()>,
) {
    let started = Instant::now();
    histogram!(names::CONSUMER_BATCH_SIZE, "consumer" => cfg.name).record(batch.len() as f64);
    let replies = handler.handle(batch).await;
    assert_eq!(
        replies.len(),
        batch.len(),
        "a handler returns one reply per message"
    );
    let mut now = Vec::with_capacity(batch.len());
    for (msg, reply) in batch.iter().zip(replies) {
        match reply {
            Reply::Now(v) => now.push((msg, v)),
            Reply::Later(verdict) => {
                later.spawn(settle_later(
                    cfg.clone(),
                    msg.clone(),
                    verdict,
                    held.clone(),
                ));
            }
        }
    }
    held.remove(now.iter().map(|(m, _)| *m)).await;
    histogram!(names::CONSUMER_BATCH_DURATION, "consumer" => cfg.name)
        .record(started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    for (msg, verdict) in now {
        failed.extend(settle(cfg, msg, verdict).await);
    }
    record_failures(cfg, &failed).await;
}

/// Settles one message whose verdict comes later, once it comes (or gives it back for
/// redelivery if the handler dropped it, e.g. on shutdown).
async fn settle_later(
    cfg: LoopConfig,
    msg: Message,
    verdict: tokio::sync::oneshot::Receiver<Verdict>,
    held: Held,
) {
    let verdict = verdict.await.unwrap_or_else(|_| Verdict::Retry {
        label: "abandoned",
        error: "the handler stopped before deciding (shutdown)".into(),
    });
    held.remove([&msg]).await;
    let failed = settle(&cfg, &msg, verdict).await;
    record_failures(&cfg, failed.as_slice()).await;
}

/// Records NAKed deliveries as their messages' last errors.
async fn record_failures(cfg: &LoopConfig, failed: &[Failed]) {
    // Recorded after every NAK went out, and bounded: a slow or unreachable database must not hold
    // the loop (the messages are already on their way back).
    if let (Some(db), false) = (&cfg.failures, failed.is_empty()) {
        let record = async {
            for f in failed {
                crate::failures::record(
                    db,
                    cfg.name,
                    &f.stream,
                    f.seq,
                    f.delivered,
                    &f.error,
                    f.at_ms,
                )
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

/// Records a dead letter in `pending_dead_letters` (bounded: a slow database gives an error, not
/// a stuck loop). A loop without a database (the dlq watcher) records nothing.
async fn record_dead_letter(
    cfg: &LoopConfig,
    msg: &Message,
    kind: &str,
    reason: &str,
) -> Result<(), String> {
    let Some(db) = &cfg.failures else {
        return Ok(());
    };
    let info = msg.info().map_err(|e| e.to_string())?;
    let row = crate::pending_dead_letters::pending::Model {
        stream: info.stream.to_owned(),
        durable: info.consumer.to_owned(),
        stream_seq: i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
        subject: msg.subject.to_string(),
        kind: kind.to_owned(),
        deliveries: info.delivered,
        reason: reason.to_owned(),
        at_ms: crate::time::now_ms(),
        landed_at_ms: None,
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        crate::pending_dead_letters::record(db, row),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A NAKed delivery, to be recorded as the message's last error.
struct Failed {
    stream: String,
    seq: u64,
    delivered: i64,
    error: String,
    /// When it was given back.
    at_ms: i64,
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
            if crate::pending_dead_letters::is_last_delivery(delivered, cfg.max_deliver) {
                // The server will dead-letter it (MAX_DELIVERIES): recorded first, so it lands
                // even if that advisory is lost. A failure here leaves the advisory alone.
                if let Err(e) = record_dead_letter(
                    cfg,
                    msg,
                    crate::pending_dead_letters::MAX_DELIVERIES,
                    &error,
                )
                .await
                {
                    tracing::warn!(consumer = cfg.name, stream_seq = seq, error = %e, "could not record the dead letter of a last delivery");
                }
            }
            failed = Some(Failed {
                stream,
                seq,
                delivered,
                error,
                at_ms: crate::time::now_ms(),
            });
            msg.ack_with(AckKind::Nak(Some(delay))).await
        }
        Verdict::Term { label, reason } => {
            counter!(names::CONSUMER_MESSAGES, "consumer" => cfg.name, "verdict" => "term")
                .increment(1);
            counter!(names::CONSUMER_TERMINATED, "consumer" => cfg.name, "reason" => label)
                .increment(1);
            let reason = bounded(&reason, 512);
            // Recorded before the `+TERM`: the advisory it causes is lost if DEAD_LETTERS has no
            // leader at that moment. Unrecorded, it is not terminated but given back: the next
            // delivery terminates it again.
            match record_dead_letter(cfg, msg, crate::pending_dead_letters::TERMINATED, &reason)
                .await
            {
                Ok(()) => {
                    tracing::warn!(consumer = cfg.name, stream_seq = seq, subject = %msg.subject, %reason, "terminated");
                    term_with_reason(msg, &reason).await
                }
                Err(e) => {
                    tracing::warn!(consumer = cfg.name, stream_seq = seq, error = %e, "could not record the dead letter; terminating on the next delivery");
                    msg.ack_with(AckKind::Nak(Some(nak_delay(&cfg.backoff, delivered))))
                        .await
                }
            }
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
