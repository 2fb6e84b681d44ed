//! `paystream bench`: raw JetStream against paystream end to end, on the same nats-server
//! settings in one run, so only the ratio matters (absolute numbers on a shared 2-core machine are
//! noise). The raw hop is publish → pull consume → ack of 256-byte messages; paystream's is a
//! payment published on `payments.request.*` until the ledger has applied its event (PSP
//! simulator with no injected latency, or with `--psp-latency-ms` a PSP as slow as a real one,
//! measured then against concurrency ÷ mean PSP latency as well). Both are measured at saturation (throughput) and at a
//! fixed rate (latency). The outcome is verified, so a fast wrong run cannot report.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{
    self, consumer::pull, context::PublishAckFuture, message::PublishMessage,
};
use futures::StreamExt;
use paystream_common::config::{ClientConfig, Config};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::PaymentRequest;
use paystream_common::money::{Amount, Currency};
use paystream_common::nats_server::{self, NatsServer, ServerOptions};
use paystream_common::{codec, nats};
use sea_orm::{ConnectionTrait, Statement};
use serde::Serialize;

use crate::app::{self, Parts};
use crate::progress::Progress;

/// Payments that were UNKNOWN at some point: their own PSP call timed out (or lost its answer).
const UNKNOWN_ONCE_IDS: &str = "SELECT payment_id FROM payment_history WHERE state = 'UNKNOWN'";
const UNKNOWN_ONCE: &str =
    "SELECT COUNT(DISTINCT payment_id) FROM payment_history WHERE state = 'UNKNOWN'";
const PSP_DURATION: &str = paystream_common::telemetry::names::PSP_REQUEST_DURATION;
const PSP_IN_FLIGHT: &str = paystream_common::telemetry::names::PSP_IN_FLIGHT;

/// Publish acks outstanding at once (FIELD-NOTES: 256–1024 is the sweet spot on 2 cores).
const PUBLISH_WINDOW: usize = 512;
const PAYLOAD_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub payments: usize,
    pub rate: u32,
    pub postgres: bool,
    pub fsync_always: bool,
    /// Payments queued while the services are down, then processed (0: no backlog run).
    pub backlog: usize,
    /// How slow and unreliable the simulated PSP is.
    pub psp: PspOptions,
    /// The report is printed as JSON: no progress is drawn (nor off a terminal).
    pub json: bool,
}

/// The simulated PSP's behaviour in a bench run.
#[derive(Debug, Clone, Default)]
pub struct PspOptions {
    /// Median latency (ms); `None`: answers at once.
    pub latency_ms: Option<u64>,
    /// p99 of a log-normal latency (ms).
    pub latency_p99_ms: Option<u64>,
    /// Share of calls that hang until the PSP timeout.
    pub timeout_rate: f64,
    /// Then a brownout of this many seconds in the middle of a paced run (`None`: none).
    pub brownout_s: Option<u64>,
}

/// A brownout in the middle of payments published at the bench's rate: the simulator fails
/// every PSP call for `seconds` (`POST /v1/sim/brownout`), then is healthy again.
#[derive(Debug, Serialize)]
pub struct Brownout {
    pub seconds: u64,
    /// Payments published during the phase (5 s before, through the brownout, 20 s after).
    pub payments: usize,
    /// Payments of the phase that ended or ever were FAILURE: must be 0.
    pub failed: i64,
    /// Payments of the phase that went UNKNOWN at some point (their call was in flight when the
    /// PSP began failing, before the breaker opened, or was one of its probes).
    pub went_unknown: i64,
    /// PSP calls in flight when the brownout began.
    pub in_flight_at_start: f64,
    /// Breaker transitions to open and to closed during the phase.
    pub breaker_opened: u64,
    pub breaker_closed: u64,
    /// From the PSP's recovery to the first SUCCESS recorded.
    pub first_success_after_ms: i64,
    /// From the PSP's recovery to the start of the first whole second whose SUCCESSes reach
    /// the publishing rate: the pipeline at full rate again.
    pub full_rate_after_ms: Option<i64>,
}

/// What the PSP allowed in a run with a PSP latency: the bound no pipeline can beat.
#[derive(Debug, Serialize)]
pub struct PspBound {
    /// Mean latency of the throughput run's charges, as the payment service measured them.
    pub latency_ms_mean: f64,
    pub concurrency: u16,
    /// concurrency ÷ mean latency.
    pub bound_payments_per_s: f64,
    /// Payments of the throughput run whose own call timed out (UNKNOWN, then resolved by the
    /// sweeper): left out of `payments_per_s` and the latency percentiles, which measure the
    /// pipeline, not the PSP timeout.
    pub timed_out: usize,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub samples: usize,
}

#[derive(Debug, Serialize)]
pub struct Raw {
    pub msgs: usize,
    pub msgs_per_s: f64,
    pub latency_at_rate: Latency,
}

#[derive(Debug, Serialize)]
pub struct Paystream {
    pub payments: usize,
    pub payments_per_s: f64,
    pub cpu_ms_per_payment: f64,
    pub latency_at_rate: Latency,
    /// Where the paced payments' time went, stage by stage (each stage's own percentiles).
    pub stages_at_rate: Stages,
    pub db: &'static str,
}

/// The stages of a payment's way, from the timestamps paystream stores.
#[derive(Debug, Serialize)]
pub struct Stages {
    /// Published → EXECUTING committed.
    pub intake: Latency,
    /// EXECUTING committed → outcome committed: the PSP call, and the group commit of its outcome.
    pub psp_call_and_record: Latency,
    /// Outcome committed → applied by the ledger: the outbox relay, the wallet and the ledger.
    pub outbox_to_ledger: Latency,
}

/// A backlog queued while the services were down, then processed: memory must stay flat.
#[derive(Debug, Serialize)]
pub struct Backlog {
    pub payments: usize,
    pub seconds: f64,
    pub payments_per_s: f64,
    /// Resident set of this process (services, simulator, bench) when processing began.
    pub rss_start_mb: f64,
    /// The highest resident set sampled (every 250 ms) while the backlog was processed.
    pub rss_peak_mb: f64,
    /// Resident set at each tenth of the backlog processed.
    pub rss_by_tenth_mb: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub raw: Raw,
    pub paystream: Paystream,
    /// paystream payments/s ÷ raw hop msgs/s.
    pub ratio: f64,
    /// `always` (fsync per write) or `interval` (the server's default, 2 min).
    pub fsync: &'static str,
    pub rate: u32,
    pub verified: bool,
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<Backlog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psp: Option<PspBound>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brownout: Option<Brownout>,
    /// paystream payments/s ÷ `psp.bound_payments_per_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_psp_bound: Option<f64>,
}

impl Report {
    pub fn table(&self) -> String {
        let l = |x: &Latency| {
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
                x.p50_ms, x.p99_ms, x.p999_ms
            )
        };
        format!(
            "fsync {}\nraw JetStream hop   {:>9.0} msgs/s      at {} msg/s: {}\npaystream ({:<8}) {:>9.0} payments/s  at {} /s: {}\nratio               {:.3}\ncpu per payment     {:.3} ms\nverified            {}{}\n",
            self.fsync,
            self.raw.msgs_per_s,
            self.rate,
            l(&self.raw.latency_at_rate),
            self.paystream.db,
            self.paystream.payments_per_s,
            self.rate,
            l(&self.paystream.latency_at_rate),
            self.ratio,
            self.paystream.cpu_ms_per_payment,
            self.verified,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!("\nproblems: {}", self.problems.join("; "))
            }
        ) + &format!(
            "  stages at {} /s    intake {}\n                      PSP call + record {}\n                      outbox → ledger {}\n",
            self.rate,
            l(&self.paystream.stages_at_rate.intake),
            l(&self.paystream.stages_at_rate.psp_call_and_record),
            l(&self.paystream.stages_at_rate.outbox_to_ledger),
        ) + &self.psp.as_ref().map_or(String::new(), |p| {
            format!(
                "PSP bound           {:>9.0} payments/s  ({} in flight ÷ mean latency {:.1} ms); ratio to it {:.3}; {} timed out\n",
                p.bound_payments_per_s,
                p.concurrency,
                p.latency_ms_mean,
                self.ratio_to_psp_bound.unwrap_or(0.0),
                p.timed_out
            )
        }) + &self.brownout.as_ref().map_or(String::new(), |b| {
            format!(
                "brownout            {} s, {} payments: {} FAILURE, {} went UNKNOWN ({:.0} calls in flight at its start), breaker opened {} / closed {}; after recovery first SUCCESS in {} ms, full rate in {}\n",
                b.seconds,
                b.payments,
                b.failed,
                b.went_unknown,
                b.in_flight_at_start,
                b.breaker_opened,
                b.breaker_closed,
                b.first_success_after_ms,
                b.full_rate_after_ms
                    .map_or("— (not reached)".to_owned(), |ms| format!("{ms} ms")),
            )
        }) + &self.backlog.as_ref().map_or(String::new(), |b| {
            format!(
                "backlog             {} payments in {:.1} s ({:.0}/s), RSS {:.0} MB at start, peak {:.0} MB; by tenth: {:?}\n",
                b.payments, b.seconds, b.payments_per_s, b.rss_start_mb, b.rss_peak_mb, b.rss_by_tenth_mb
            )
        })
    }
}

fn percentiles(mut xs: Vec<f64>) -> Latency {
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if xs.is_empty() {
            0.0
        } else {
            xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)]
        }
    };
    Latency {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        samples: xs.len(),
    }
}

/// CPU time of this process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based, whole line).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(14) + ticks(15)) * 10)
}

/// Resident set of this process (MB), from /proc.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Publishes with a bounded window of outstanding acks.
struct Window {
    acks: VecDeque<PublishAckFuture>,
}

impl Window {
    async fn push(&mut self, ack: PublishAckFuture) -> anyhow::Result<()> {
        self.acks.push_back(ack);
        if self.acks.len() >= PUBLISH_WINDOW {
            self.acks.pop_front().expect("non-empty").await?;
        }
        Ok(())
    }
    /// Publishes a payment request as a client would: MessagePack, `Nats-Msg-Id` = payment_id.
    async fn push_payment(
        &mut self,
        js: &jetstream::Context,
        p: &PaymentRequest,
    ) -> anyhow::Result<()> {
        let msg = PublishMessage::build()
            .payload(codec::to_msgpack(p).into())
            .message_id(p.payment_id.to_string())
            .header("Content-Type", codec::CONTENT_TYPE_MSGPACK);
        let ack = js
            .send_publish(format!("payments.request.{}", p.buyer_id), msg)
            .await?;
        self.push(ack).await
    }
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(a) = self.acks.pop_front() {
            a.await?;
        }
        Ok(())
    }
}

/// One raw run: `n` messages, as fast as possible (`rate` None) or paced; returns the elapsed
/// time until the last was consumed and acked, and per-message latencies at a fixed rate.
async fn raw_run(
    js: &jetstream::Context,
    name: &str,
    n: usize,
    rate: Option<u32>,
    json: bool,
) -> anyhow::Result<(Duration, Vec<f64>)> {
    let progress = Progress::bar(n as u64, name, json);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("bench.{name}")],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let origin = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let reader = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(if rate.is_some() { n } else { 0 });
            let mut msgs = consumer
                .stream()
                .max_messages_per_batch(256)
                .messages()
                .await?;
            while let Some(m) = msgs.next().await {
                let m = m?;
                if rate.is_some() {
                    let sent = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                    lat.push((origin.elapsed().as_nanos() as u64 - sent) as f64 / 1e6);
                }
                m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                if done.fetch_add(1, Ordering::Relaxed) + 1 == n as u64 {
                    break;
                }
            }
            anyhow::Ok((origin.elapsed(), lat))
        })
    };
    let mut window = Window {
        acks: VecDeque::new(),
    };
    let started = Instant::now();
    let period = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
    for i in 0..n {
        if let Some(p) = period {
            let due = started + p * i as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        payload[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
        window
            .push(
                js.send_publish(
                    format!("bench.{name}"),
                    PublishMessage::build().payload(payload.into()),
                )
                .await?,
            )
            .await?;
        progress.set(done.load(Ordering::Relaxed));
    }
    window.drain().await?;
    let (end, lat) = reader.await??;
    progress.finish();
    Ok((end - (started - origin), lat))
}

fn payment(i: usize) -> PaymentRequest {
    PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse(&format!("bb-{}", i % 1000)).expect("token"),
        merchant_id: MerchantId::parse(&format!("bm-{}", i % 50)).expect("token"),
        amount: Amount::new(100 + (i % 1000) as i64).expect("amount"),
        currency: Currency::parse("USD").expect("currency"),
        metadata: Default::default(),
    }
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await?
        .context("a count")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Publishes payments (paced or not) and waits until the ledger applied them all.
async fn paystream_run(
    js: &jetstream::Context,
    db: &sea_orm::DatabaseConnection,
    payments: &[PaymentRequest],
    rate: Option<u32>,
    already: i64,
    json: bool,
) -> anyhow::Result<Duration> {
    let progress = Progress::bar(payments.len() as u64, "payments", json);
    let mut window = Window {
        acks: VecDeque::new(),
    };
    let started = Instant::now();
    let started_ms = paystream_common::time::now_ms();
    let period = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
    for (i, p) in payments.iter().enumerate() {
        if let Some(period) = period {
            tokio::time::sleep_until((started + period * i as u32).into()).await;
        }
        window.push_payment(js, p).await?;
    }
    window.drain().await?;
    let last_ms = wait_applied(
        db,
        already + payments.len() as i64,
        Duration::from_secs(600),
        |applied| progress.set(u64::try_from(applied - already).unwrap_or(0)),
    )
    .await?;
    progress.finish();
    Ok(Duration::from_millis(
        u64::try_from(last_ms - started_ms).unwrap_or(0).max(1),
    ))
}

/// `(sum, count)` of a histogram of this process's metrics, over the series with `label`.
fn histogram_totals(name: &str, label: &str) -> (f64, f64) {
    let text = paystream_common::telemetry::install_metrics().render();
    let value = |suffix: &str| {
        let prefix = format!("{name}_{suffix}{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("sum"), value("count"))
}

/// Events the ledger has applied in this process, from its `paystream_events_applied_total`:
/// polling a `COUNT(*)` instead scanned a million-row index twenty times a second, which took
/// CPU from the services and filled the bench's own page cache.
fn ledger_applied() -> i64 {
    let text = paystream_common::telemetry::install_metrics().render();
    let prefix = format!(
        "{}{{consumer=\"ledger\"",
        paystream_common::telemetry::names::EVENTS_APPLIED
    );
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as i64
}

/// Waits until the ledger has applied `want` events (polling its counter every 20 ms), then
/// checks the count in the database on `db` (the bench's own connection, not the services').
/// Returns when (unix ms) the ledger applied the last of them: the poll only notices it, the
/// figure comes from the ledger's own rows. `progress` sees each count.
async fn wait_applied(
    db: &sea_orm::DatabaseConnection,
    want: i64,
    within: Duration,
    mut progress: impl FnMut(i64),
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + within;
    loop {
        let n = ledger_applied();
        progress(n);
        if n >= want {
            // The counter is the process's: another run in the same process (a test binary
            // running two benches) counts too, so the table has the last word.
            let stored = count(
                db,
                "SELECT COUNT(*) FROM applied_events WHERE consumer = 'ledger'",
            )
            .await?;
            if stored >= want {
                return count(
                    db,
                    "SELECT MAX(applied_at_ms) FROM applied_events WHERE consumer = 'ledger'",
                )
                .await;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the ledger counted {n} events applied, its table holds {stored} of {want}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "paystream applied {n} of {want} payments within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Queues `n` payments while the services are down, starts them, and follows the resident set
/// while they work through the backlog. Returns the figures and the payments' amount sum.
async fn backlog_run(
    js: &jetstream::Context,
    db: &sea_orm::DatabaseConnection,
    cfg: &Config,
    n: usize,
    already: i64,
    json: bool,
) -> anyhow::Result<(Backlog, i64)> {
    let queueing = Progress::bar(n as u64, "queueing", json);
    let mut window = Window {
        acks: VecDeque::new(),
    };
    let mut sum = 0;
    // Generated as published: a million requests held at once would be the bench's memory, not
    // paystream's.
    for i in 0..n {
        let p = payment(already as usize + i);
        sum += p.amount.minor();
        window.push_payment(js, &p).await?;
        queueing.inc(1);
    }
    window.drain().await?;
    queueing.finish();
    let backlog = Progress::bar(n as u64, "backlog", json);
    let app = app::start(cfg.clone(), bench_parts()).await?;
    let rss_start_mb = rss_mb();
    let started_ms = paystream_common::time::now_ms();
    let mut peak = rss_start_mb;
    let mut by_tenth = Vec::new();
    let mut last_sample = Instant::now();
    let want = already + n as i64;
    let waited = wait_applied(db, want, Duration::from_secs(3600), |applied| {
        if last_sample.elapsed() >= Duration::from_millis(250) {
            peak = peak.max(rss_mb());
            last_sample = Instant::now();
        }
        let done = usize::try_from(applied - already).unwrap_or(0);
        backlog.set(done as u64);
        while by_tenth.len() < 10 && done * 10 >= n * (by_tenth.len() + 1) {
            by_tenth.push(rss_mb().round());
        }
    })
    .await;
    app.shutdown().await;
    let seconds = ((waited? - started_ms) as f64 / 1000.0).max(0.001);
    Ok((
        Backlog {
            payments: n,
            seconds,
            payments_per_s: n as f64 / seconds,
            rss_start_mb: rss_start_mb.round(),
            rss_peak_mb: peak.max(rss_mb()).round(),
            rss_by_tenth_mb: by_tenth,
        },
        sum,
    ))
}

/// This process's gauge `name` (summed over its series).
fn gauge_value(name: &str) -> f64 {
    let text = paystream_common::telemetry::install_metrics().render();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Publishes payments at `rate` for 5 s, through a `seconds`-long brownout of the simulator and
/// 20 s after it, waits until every one is applied (those that went UNKNOWN through the sweeper),
/// and measures what the brownout did. Returns the figures and the payments' amount sum.
async fn brownout_run(
    js: &jetstream::Context,
    db: &sea_orm::DatabaseConnection,
    app: &app::App,
    seconds: u64,
    rate: u32,
    already: usize,
    json: bool,
) -> anyhow::Result<(Brownout, i64)> {
    const BEFORE_S: u64 = 5;
    const AFTER_S: u64 = 20;
    let psp_url = app
        .psp_url
        .clone()
        .context("--psp-brownout-s needs the simulator that the bench starts")?;
    let gate = app
        .psp_gate
        .clone()
        .context("the payment service runs in the bench")?;
    let published_n = (u64::from(rate) * (BEFORE_S + seconds + AFTER_S)) as usize;
    let payments: Vec<PaymentRequest> = (already..already + published_n).map(payment).collect();
    let sum = payments.iter().map(|p| p.amount.minor()).sum();
    let ids = payments
        .iter()
        .map(|p| format!("'{}'", p.payment_id))
        .collect::<Vec<_>>()
        .join(",");
    let (opened0, closed0) = gate.transitions();
    let order = async {
        tokio::time::sleep(Duration::from_secs(BEFORE_S)).await;
        let in_flight = gauge_value(PSP_IN_FLIGHT);
        let answer = reqwest::Client::new()
            .post(format!("{psp_url}/v1/sim/brownout"))
            .json(&serde_json::json!({ "seconds": seconds }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("ordering the simulator's brownout")?;
        let until: serde_json::Value = answer.json().await?;
        let until_ms = until["until_ms"]
            .as_i64()
            .context("the simulator's brownout answer has no until_ms")?;
        anyhow::Ok((in_flight, until_ms))
    };
    let (published, ordered) = tokio::join!(
        paystream_run(js, db, &payments, Some(rate), already as i64, json),
        order
    );
    published?;
    let (in_flight_at_start, recovered_ms) = ordered?;
    let (opened1, closed1) = gate.transitions();
    let failed = count(
        db,
        &format!("SELECT COUNT(DISTINCT payment_id) FROM payment_history WHERE state = 'FAILURE' AND payment_id IN ({ids})"),
    )
    .await?;
    let went_unknown = count(
        db,
        &format!("SELECT COUNT(DISTINCT payment_id) FROM payment_history WHERE state = 'UNKNOWN' AND payment_id IN ({ids})"),
    )
    .await?;
    let successes: Vec<i64> = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT at_ms FROM payment_history WHERE state = 'SUCCESS' AND at_ms >= {recovered_ms} \
                 AND payment_id IN ({ids}) ORDER BY at_ms"
            ),
        ))
        .await?
        .iter()
        .filter_map(|r| r.try_get::<i64>("", "at_ms").ok())
        .collect();
    let first_success_after_ms = successes.first().map_or(-1, |t| t - recovered_ms);
    // The first SUCCESS that opens a whole second holding `rate` of them.
    let full = (rate as usize).max(1);
    let full_rate_after_ms = (0..successes.len().saturating_sub(full.saturating_sub(1)))
        .find(|&i| successes[i + full - 1] < successes[i] + 1000)
        .map(|i| successes[i] - recovered_ms);
    Ok((
        Brownout {
            seconds,
            payments: published_n,
            failed,
            went_unknown,
            in_flight_at_start,
            breaker_opened: opened1 - opened0,
            breaker_closed: closed1 - closed0,
            first_success_after_ms,
            full_rate_after_ms,
        },
        sum,
    ))
}

fn bench_parts() -> Parts {
    Parts {
        payment: true,
        wallet: true,
        ledger: true,
        psp_sim: true,
        ..Parts::default()
    }
}

pub async fn run(cfg: &Config, opts: BenchOptions) -> anyhow::Result<Report> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("paystream-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(cfg, &opts, &dir).await;
    if std::env::var_os("PAYSTREAM_BENCH_KEEP").is_some() {
        // For profiling: the database and the server's store stay for inspection.
        eprintln!("bench: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(
    cfg: &Config,
    opts: &BenchOptions,
    dir: &std::path::Path,
) -> anyhow::Result<Report> {
    let bin = nats_server::locate(cfg.nats_server_bin.as_deref()).await?;
    let server = NatsServer::start(ServerOptions {
        bin,
        store_dir: dir.join("nats"),
        port: 0,
        sync_interval: opts.fsync_always.then(|| "always".to_owned()),
        extra_conf: String::new(),
    })
    .await?;
    let database_url = if opts.postgres {
        let admin = cfg.database_url.clone().filter(|u| u.starts_with("postgres")).context("--db postgres: set DATABASE_URL to a PostgreSQL server (a fresh database is created on it)")?;
        let name = format!("paystream_bench_{}", uuid::Uuid::new_v4().simple());
        let conn = sea_orm::Database::connect(admin.as_str()).await?;
        conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(b, _)| b)
            .to_owned();
        Some((admin, name.clone(), format!("{base}/{name}")))
    } else {
        None
    };
    let db_url = database_url
        .as_ref()
        .map(|(_, _, u)| u.clone())
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("bench.sqlite").display()));
    let bench_cfg = Config {
        client: ClientConfig {
            nats_url: Some(server.url()),
            data_dir: dir.to_path_buf(),
            ..cfg.client.clone()
        },
        database_url: Some(db_url.clone().into()),
        http_addr: "127.0.0.1:0".parse()?,
        psp_url: None,
        psp_sim_addr: "127.0.0.1:0".parse()?,
        psp_sim_latency_ms: opts.psp.latency_ms.unwrap_or(0),
        psp_sim_latency_p99_ms: opts.psp.latency_p99_ms,
        psp_sim_error_rate: 0.0,
        psp_sim_timeout_rate: opts.psp.timeout_rate,
        psp_sim_lost_response_rate: 0.0,
        psp_sim_decline_rate: 0.0,
        failpoints: None,
        ..cfg.clone()
    };
    let js = nats::jetstream(nats::connect(&bench_cfg.client, "paystream-bench", false).await?);

    let n = opts.payments.max(1);
    let (raw_elapsed, _) = raw_run(&js, "RAW_SAT", n, None, opts.json).await?;
    // Three seconds at the rate; ten against a slow PSP, whose long tail needs more samples for a
    // p99 that does not move between runs.
    let paced_s = if opts.psp.latency_ms.is_some() { 10 } else { 3 };
    let latency_n = (opts.rate as usize * paced_s).clamp(100, n.max(100));
    let (_, raw_lat) = raw_run(&js, "RAW_RATE", latency_n, Some(opts.rate), opts.json).await?;

    let app = app::start(bench_cfg.clone(), bench_parts()).await?;
    // The bench's own pool: its polling must not take the services' connection.
    let db = paystream_common::db::connect(&db_url).await?;
    let saturate: Vec<PaymentRequest> = (0..n).map(payment).collect();
    let cpu0 = cpu_time();
    let charges0 = histogram_totals(PSP_DURATION, "op=\"charge\"");
    let started_ms = paystream_common::time::now_ms();
    let ps_elapsed = paystream_run(&js, &db, &saturate, None, 0, opts.json).await?;
    let cpu = cpu_time() - cpu0;
    let charges1 = histogram_totals(PSP_DURATION, "op=\"charge\"");
    // Payments whose own call timed out wait for the sweeper: the pipeline's throughput is that
    // of the others (all of them, when no call timed out).
    let timed_out = count(&db, UNKNOWN_ONCE).await?;
    let ps_elapsed = if timed_out > 0 {
        let last_ms = count(
            &db,
            &format!(
                "SELECT MAX(applied_at_ms) FROM applied_events WHERE consumer = 'ledger' \
                 AND payment_id NOT IN ({UNKNOWN_ONCE_IDS})"
            ),
        )
        .await?;
        Duration::from_millis(u64::try_from(last_ms - started_ms).unwrap_or(0).max(1))
    } else {
        ps_elapsed
    };
    let timed_out = usize::try_from(timed_out).unwrap_or(0);
    let psp_bound = opts.psp.latency_ms.map(|_| {
        let (sum, calls) = (charges1.0 - charges0.0, charges1.1 - charges0.1);
        let mean_s = if calls > 0.0 { sum / calls } else { 0.0 };
        PspBound {
            latency_ms_mean: mean_s * 1000.0,
            concurrency: bench_cfg.psp_concurrency,
            bound_payments_per_s: if mean_s > 0.0 {
                f64::from(bench_cfg.psp_concurrency) / mean_s
            } else {
                f64::INFINITY
            },
            timed_out,
        }
    });
    let paced: Vec<PaymentRequest> = (n..n + latency_n).map(payment).collect();
    paystream_run(&js, &db, &paced, Some(opts.rate), n as i64, opts.json).await?;
    let mut done = n + latency_n;
    let brownout = match opts.psp.brownout_s {
        Some(seconds) => {
            let b = brownout_run(&js, &db, &app, seconds, opts.rate, done, opts.json).await?;
            done += b.0.payments;
            Some(b)
        }
        None => None,
    };
    app.shutdown().await;
    if let Some(path) = std::env::var_os("PAYSTREAM_BENCH_METRICS") {
        // For profiling: the services' metrics (batch sizes, stage durations) after the runs.
        std::fs::write(
            path,
            paystream_common::telemetry::install_metrics().render(),
        )?;
    }
    let ids: Vec<String> = paced
        .iter()
        .map(|p| format!("'{}'", p.payment_id))
        .collect();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT p.requested_at_ms AS r, a.applied_at_ms AS a, \
                 (SELECT MIN(h.at_ms) FROM payment_history h WHERE h.payment_id = p.payment_id AND h.state = 'EXECUTING') AS e, \
                 (SELECT MIN(h.at_ms) FROM payment_history h WHERE h.payment_id = p.payment_id AND h.state = 'SUCCESS') AS s \
                 FROM applied_events a JOIN payments p ON p.payment_id = a.payment_id \
                 WHERE a.consumer = 'ledger' AND p.payment_id IN ({}) AND p.payment_id NOT IN ({UNKNOWN_ONCE_IDS})",
                ids.join(",")
            ),
        ))
        .await?;
    // Each paced payment's way, from the database's own timestamps: published → EXECUTING
    // committed (intake) → outcome committed (the PSP call and its record) → applied by the
    // ledger (outbox, wallet and ledger).
    let mut ps_lat = Vec::with_capacity(rows.len());
    let mut stages = [Vec::new(), Vec::new(), Vec::new()];
    for row in &rows {
        let at = |c: &str| row.try_get::<i64>("", c).ok();
        let (Some(r), Some(a)) = (at("r"), at("a")) else {
            continue;
        };
        ps_lat.push((a - r) as f64);
        if let (Some(e), Some(s)) = (at("e"), at("s")) {
            stages[0].push((e - r) as f64);
            stages[1].push((s - e) as f64);
            stages[2].push((a - s) as f64);
        }
    }
    let [intake, psp_stage, after] = stages;
    let stages = Stages {
        intake: percentiles(intake),
        psp_call_and_record: percentiles(psp_stage),
        outbox_to_ledger: percentiles(after),
    };

    let backlog = if opts.backlog > 0 {
        Some(backlog_run(&js, &db, &bench_cfg, opts.backlog, done as i64, opts.json).await?)
    } else {
        None
    };

    // Verification: every payment final and charged, money exact, ledger balanced.
    let mut problems = Vec::new();
    let total = (done + opts.backlog) as i64;
    let succeeded = count(&db, "SELECT COUNT(*) FROM payments WHERE state = 'SUCCESS'").await?;
    if succeeded != total {
        problems.push(format!("{succeeded} of {total} payments SUCCESS"));
    }
    let expected: i64 = saturate
        .iter()
        .chain(&paced)
        .map(|p| p.amount.minor())
        .sum::<i64>()
        + backlog.as_ref().map_or(0, |(_, sum)| *sum)
        + brownout.as_ref().map_or(0, |(_, sum)| *sum);
    let wallet = count(
        &db,
        "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM wallet_balances",
    )
    .await?;
    if wallet != expected {
        problems.push(format!("wallets hold {wallet}, payments sum to {expected}"));
    }
    let check = crate::queries::ledger_check(&db).await?;
    if !check.ok {
        problems.push(format!("ledger check: {:?}", check.violations));
    }
    db.close().await?;
    server.stop().await;
    if let Some((admin, name, _)) = database_url {
        let conn = sea_orm::Database::connect(admin.as_str()).await?;
        let _ = conn
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }

    let raw_rate = n as f64 / raw_elapsed.as_secs_f64();
    let ps_rate = n.saturating_sub(timed_out).max(1) as f64 / ps_elapsed.as_secs_f64();
    Ok(Report {
        raw: Raw {
            msgs: n,
            msgs_per_s: raw_rate,
            latency_at_rate: percentiles(raw_lat),
        },
        paystream: Paystream {
            payments: n,
            payments_per_s: ps_rate,
            cpu_ms_per_payment: cpu.as_secs_f64() * 1000.0 / n as f64,
            latency_at_rate: percentiles(ps_lat),
            stages_at_rate: stages,
            db: if opts.postgres { "postgres" } else { "sqlite" },
        },
        ratio: ps_rate / raw_rate,
        fsync: if opts.fsync_always {
            "always"
        } else {
            "interval"
        },
        rate: opts.rate,
        verified: problems.is_empty(),
        problems,
        backlog: backlog.map(|(b, _)| b),
        brownout: brownout.map(|(b, _)| b),
        ratio_to_psp_bound: psp_bound.as_ref().map(|p| ps_rate / p.bound_payments_per_s),
        psp: psp_bound,
    })
}
