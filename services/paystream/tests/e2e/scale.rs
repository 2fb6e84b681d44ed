//! Scale-out, as users run it past one process: several instances of each service as separate
//! `paystream serve …` processes sharing one PostgreSQL database and the partitioned durable
//! consumers, producers in separate processes, and a 3-node NATS cluster with R3 streams.
//!
//! Invariants checked: nothing lost, every payment charged at most once, wallets and ledger exact
//! (`assert_exactly_once`); each buyer's events form one chain on PAYMENT_EVENTS (every event names
//! its predecessor's sequence, which the server checked at publish); every consumer applied each
//! buyer's events in stream order, so no cancellation before the completion it cancels.
//!
//! PostgreSQL only (the multi-instance store): skipped, with the reason printed, where
//! `PAYSTREAM_TEST_DATABASE_URL` is not set.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use paystream::app::{self, App, Parts};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use paystream_common::{nats, ownership};
use paystream_testkit::{TestCluster, TestDb, TestNats};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tempfile::TempDir;

use crate::helpers::{assert_exactly_once, config, eventually, publish_all, requests, scalar};

/// Partitions in these tests: enough to spread over three instances, few enough to start fast.
const PARTITIONS: &str = "8";

/// Service processes of one test, killed when dropped.
struct Fleet {
    env: Vec<(&'static str, String)>,
    dir: TempDir,
    procs: BTreeMap<String, Child>,
}

impl Fleet {
    fn new(nats_url: &str, db_url: &str, psp_url: &str) -> Self {
        let env = vec![
            ("PAYSTREAM_NATS_URL", nats_url.to_owned()),
            ("DATABASE_URL", db_url.to_owned()),
            ("PAYSTREAM_PSP_URL", psp_url.to_owned()),
            ("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0".to_owned()),
            ("PAYSTREAM_PARTITIONS", PARTITIONS.to_owned()),
            ("PAYSTREAM_MEMBER_TTL", "2s".to_owned()),
            ("PAYSTREAM_BACKOFF", "200ms,400ms,800ms,1s".to_owned()),
            ("PAYSTREAM_MAX_DELIVER", "60".to_owned()),
            ("PAYSTREAM_PSP_TIMEOUT", "2s".to_owned()),
            ("PAYSTREAM_EXECUTING_TIMEOUT", "5s".to_owned()),
            ("PAYSTREAM_SWEEP_INTERVAL", "1s".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        Self {
            env,
            dir: tempfile::tempdir().expect("temp dir"),
            procs: BTreeMap::new(),
        }
    }

    fn command(&self, name: &str, args: &[&str]) -> Command {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data).expect("instance dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paystream"));
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PAYSTREAM_DATA_DIR", &data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path(name)).expect("log file"));
        cmd
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Runs `paystream migrate` once, as a deployment does before starting instances.
    fn migrate(&self) {
        let status = self
            .command("migrate", &["migrate"])
            .status()
            .expect("migrate runs");
        assert!(status.success(), "migrate: {}", self.log("migrate"));
    }

    fn spawn(&mut self, name: &str, service: &str) {
        let child = self
            .command(name, &["serve", service])
            .spawn()
            .expect("paystream serve starts");
        self.procs.insert(name.to_owned(), child);
    }

    /// SIGKILL: a crash, no drain, no goodbye.
    fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.procs.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Partitions an instance said it took, from its log.
    fn partitions_taken(&self, name: &str) -> Vec<u16> {
        self.log(name)
            .lines()
            .filter(|l| l.contains("partition taken"))
            .filter_map(partition_in)
            .collect()
    }

    /// Partitions an instance owns now, from its log (taken and not released since).
    fn partitions_owned(&self, name: &str) -> Vec<u16> {
        let mut owned: Vec<u16> = Vec::new();
        for line in self.log(name).lines() {
            match partition_in(line) {
                Some(p) if line.contains("partition taken") => owned.push(p),
                Some(p) if line.contains("partition released") => owned.retain(|q| *q != p),
                _ => {}
            }
        }
        owned
    }

    /// Waits until the instances named `<service>-1..=n` own every partition between them, each
    /// exactly once: ownership has settled, nothing is being handed over.
    async fn wait_settled_ownership(&self, service: &str, n: usize) {
        let partitions: u16 = PARTITIONS.parse().unwrap();
        eventually(
            Duration::from_secs(60),
            &format!("{service}'s partitions spread over its {n} instances"),
            || async {
                let mut all: Vec<u16> = Vec::new();
                for i in 1..=n {
                    let mine = self.partitions_owned(&format!("{service}-{i}"));
                    if mine.is_empty() {
                        return false;
                    }
                    all.extend(mine);
                }
                all.sort_unstable();
                all == (0..partitions).collect::<Vec<_>>()
            },
        )
        .await;
    }
}

/// The `partition=N` field of a log line.
fn partition_in(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("partition=")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in self.procs.keys() {
                let log = self.log(name);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("partition") || l.contains("ERROR") || l.contains("WARN")
                    })
                    .collect();
                let tail = &lines[lines.len().saturating_sub(12)..];
                eprintln!(
                    "--- {name} (last ownership lines and warnings)\n{}",
                    tail.join("\n")
                );
            }
        }
        for (_, mut child) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What every multi-process test starts with: a PostgreSQL database, a nats-server, the PSP
/// simulator and an empty fleet on a migrated schema.
struct Setup {
    db: TestDb,
    server: TestNats,
    data: TempDir,
    sim: App,
    psp_url: String,
    fleet: Fleet,
}

impl Setup {
    /// `None` (with the reason printed) where PostgreSQL is not configured.
    async fn start() -> Option<Self> {
        let db = TestDb::postgres().await?;
        let server = TestNats::start(false).await;
        let data = tempfile::tempdir().unwrap();
        let sim = simulator(&db.url, data.path()).await;
        let psp_url = sim.psp_url.clone().unwrap();
        let fleet = Fleet::new(&server.url(), &db.url, &psp_url);
        fleet.migrate();
        Some(Self {
            db,
            server,
            data,
            sim,
            psp_url,
            fleet,
        })
    }
}

/// The PSP simulator, in the test's process (it is not what scales here).
async fn simulator(db_url: &str, data: &Path) -> App {
    let cfg = config("nats://127.0.0.1:1", db_url, data, &[]);
    app::start(
        cfg,
        Parts {
            psp_sim: true,
            ..Parts::default()
        },
    )
    .await
    .expect("simulator starts")
}

async fn connect(db_url: &str) -> DatabaseConnection {
    Database::connect(db_url).await.expect("database")
}

/// Waits until `n` instances of `service` are live members.
async fn wait_members(db: &DatabaseConnection, service: &str, n: i64) {
    let sql = format!("SELECT COUNT(*) FROM members WHERE service = '{service}'");
    eventually(
        Duration::from_secs(60),
        &format!("{n} {service} instances"),
        || {
            let sql = sql.clone();
            async move { scalar(db, &sql).await == n }
        },
    )
    .await;
}

/// Every PAYMENT_EVENTS message as `(stream_seq, stored subject, predecessor header)`.
async fn event_chain(js: &jetstream::Context) -> Vec<(u64, String, u64)> {
    let stream = js.get_stream("PAYMENT_EVENTS").await.expect("stream");
    let last = stream
        .get_info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream
            .get_raw_message(seq)
            .await
            .expect("event by sequence");
        let previous = m
            .headers
            .get(paystream_common::publish::HEADER_PREVIOUS)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_else(|| panic!("event {seq} carries no predecessor"));
        out.push((seq, m.subject.to_string(), previous));
    }
    out
}

/// How many cancellations PAYMENTS stored before the payment they cancel.
async fn early_cancels(js: &jetstream::Context) -> usize {
    let stream = js.get_stream("PAYMENTS").await.expect("stream");
    let last = stream.get_info().await.expect("info").state.last_sequence;
    let mut requested: HashMap<String, u64> = HashMap::new();
    let mut cancelled: Vec<(String, u64)> = Vec::new();
    for seq in 1..=last {
        let m = stream
            .get_raw_message(seq)
            .await
            .expect("request by sequence");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON ingress");
        let id = body["payment_id"].as_str().expect("payment_id").to_owned();
        if m.subject.starts_with("payments.cancel.") {
            cancelled.push((id, seq));
        } else {
            requested.insert(id, seq);
        }
    }
    cancelled
        .iter()
        .filter(|(id, seq)| requested.get(id).is_some_and(|r| r > seq))
        .count()
}

/// Each buyer's events form one chain: every event names as predecessor the sequence of the
/// buyer's previous event (0 for the first), so no producer published out of turn.
fn assert_chains(chain: &[(u64, String, u64)]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (seq, subject, previous) in chain {
        let prev = last.insert(subject.as_str(), *seq).unwrap_or(0);
        assert_eq!(
            *previous, prev,
            "event {seq} on {subject} follows {previous}, but the subject's previous event is {prev}"
        );
    }
}

/// Each payment's versions were applied in order by every consumer (no cancellation before its
/// completion) and, with `per_buyer`, every consumer applied each buyer's events in stream order:
/// sorted by stream sequence, their commit times never go back. (A crash handover keeps the
/// former only: see ARCHITECTURE.md, "Order and ownership".)
async fn assert_applied_in_order(db: &DatabaseConnection, per_buyer: bool) -> usize {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT a.consumer, p.buyer_id, a.stream_seq, a.applied_at_ms, a.payment_id, a.version \
             FROM applied_events a JOIN payments p ON p.payment_id = a.payment_id \
             ORDER BY a.consumer, p.buyer_id, a.stream_seq",
        ))
        .await
        .expect("applied events");
    let mut checked = 0;
    let mut last: HashMap<(String, String), (i64, i64)> = HashMap::new();
    let mut versions: HashMap<(String, String), (i32, i64)> = HashMap::new();
    for r in rows {
        let consumer: String = r.try_get("", "consumer").unwrap();
        let buyer: String = r.try_get("", "buyer_id").unwrap();
        let seq: Option<i64> = r.try_get("", "stream_seq").unwrap();
        let at: i64 = r.try_get("", "applied_at_ms").unwrap();
        let payment: String = r.try_get("", "payment_id").unwrap();
        let version: i32 = r.try_get("", "version").unwrap();
        let seq = seq.expect("every applied event records its stream sequence");
        if let Some((prev_seq, prev_at)) = last.insert((consumer.clone(), buyer.clone()), (seq, at))
            && per_buyer
        {
            assert!(
                at >= prev_at,
                "{consumer} applied {buyer}'s event {seq} at {at}, before event {prev_seq} (at {prev_at})"
            );
        }
        if let Some((prev_v, prev_at)) =
            versions.insert((consumer.clone(), payment.clone()), (version, at))
        {
            assert!(
                version == prev_v + 1 && at >= prev_at,
                "{consumer}: payment {payment} version {version} after {prev_v}"
            );
        }
        checked += 1;
    }
    checked
}

/// Publishes `pays` in chunks of `chunk`, pausing `pause` between them, so that a fault injected
/// meanwhile lands mid-stream; every payment is acknowledged when the task ends.
fn paced_publisher(
    js: &jetstream::Context,
    pays: &[PaymentRequest],
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (js, pays) = (js.clone(), pays.to_vec());
    tokio::spawn(async move {
        for part in pays.chunks(chunk) {
            publish_all(&js, part).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// One producer process's messages: `subject \t JSON payload \t Nats-Msg-Id` per line.
const PRODUCER_ENV: &str = "PAYSTREAM_TEST_PRODUCER";

/// Not a test of its own: the body of a producer process. The scale test re-runs this test binary
/// as `scale::producer_process --exact --ignored` with `PAYSTREAM_TEST_PRODUCER` naming its
/// messages; it publishes them in order (JSON, as `nats pub` would), retrying each until
/// JetStream acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the scale tests as a separate producer process"]
async fn producer_process() {
    let (Ok(spec), Ok(url)) = (
        std::env::var(PRODUCER_ENV),
        std::env::var("PAYSTREAM_NATS_URL"),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(spec).expect("producer spec");
    let client = async_nats::connect(url).await.expect("producer connects");
    let js = jetstream::new(client);
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(subject), Some(payload), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad spec line {line:?}");
        };
        loop {
            let msg = jetstream::message::PublishMessage::build()
                .payload(payload.to_owned().into())
                .header("Content-Type", "application/json")
                .message_id(id);
            let sent = js.send_publish(subject.to_owned(), msg).await;
            if let Ok(ack) = sent
                && ack.await.is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts a producer process publishing `lines`.
fn spawn_producer(dir: &Path, i: usize, nats_url: &str, lines: &[String]) -> Child {
    let spec = dir.join(format!("producer-{i}.tsv"));
    std::fs::write(&spec, lines.join("\n")).expect("spec");
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "scale::producer_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(PRODUCER_ENV, &spec)
        .env("PAYSTREAM_NATS_URL", nats_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("producer process")
}

fn pay_line(r: &PaymentRequest) -> String {
    format!(
        "payments.request.{}\t{}\t{}",
        r.buyer_id,
        serde_json::to_string(r).unwrap(),
        r.payment_id
    )
}

fn cancel_line(c: &CancelRequest) -> String {
    format!(
        "payments.cancel.{}\t{}\tcancel-{}",
        c.buyer_id,
        serde_json::to_string(c).unwrap(),
        c.payment_id
    )
}

/// Many buyers; pays and cancels shuffled at random over three producer processes (so a cancel
/// often reaches NATS before its payment); 3 payment, 3 wallet and 2 ledger instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_across_instances_postgres() {
    let Some(Setup {
        db,
        server,
        data,
        sim,
        psp_url,
        mut fleet,
    }) = Setup::start().await
    else {
        return;
    };
    for (service, n) in [("payment", 3), ("wallet", 3), ("ledger", 2)] {
        for i in 1..=n {
            fleet.spawn(&format!("{service}-{i}"), service);
        }
    }
    let conn = connect(&db.url).await;
    for (service, n) in [("payment", 3), ("wallet", 3), ("ledger", 2)] {
        wait_members(&conn, service, n).await;
        fleet.wait_settled_ownership(service, n as usize).await;
    }

    let seed: u64 = rand::rng().random();
    eprintln!("scale: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pays = requests(600, 40, 7, "sc-");
    let cancels: Vec<CancelRequest> = pays
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .map(|r| CancelRequest {
            payment_id: r.payment_id,
            buyer_id: r.buyer_id.clone(),
            reason: Some("changed mind".into()),
        })
        .collect();
    let mut lines: Vec<String> = pays
        .iter()
        .map(pay_line)
        .chain(cancels.iter().map(cancel_line))
        .collect();
    lines.shuffle(&mut rng);
    let mut per_producer: [Vec<String>; 3] = Default::default();
    for line in lines {
        per_producer[rng.random_range(0..3)].push(line);
    }
    let started = Instant::now();
    let producers: Vec<Child> = per_producer
        .iter()
        .enumerate()
        .map(|(i, l)| spawn_producer(data.path(), i, &server.url(), l))
        .collect();
    for mut p in producers {
        let status = tokio::task::spawn_blocking(move || p.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "producer process failed: {status:?}");
    }
    let expected_cancelled = cancels.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = [
            "SELECT COUNT(*) FROM payments WHERE state IN ('SUCCESS','CANCELLED')",
            "SELECT COUNT(*) FROM payments WHERE state = 'CANCELLED'",
            "SELECT COUNT(*) FROM outbox",
            "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NOT NULL",
            "SELECT COUNT(*) FROM applied_events",
        ];
        let mut got = Vec::new();
        for sql in counts {
            got.push(scalar(&conn, sql).await);
        }
        if got[0] == 600 && got[1] == expected_cancelled && got[4] == 2 * got[2] {
            break;
        }
        if Instant::now() > deadline {
            for name in fleet.procs.keys() {
                let log = fleet.log(name);
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                eprintln!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!(
                "not settled in 120s: final {} of 600, cancelled {} of {expected_cancelled}, events {} (published {}), applied {}",
                got[0], got[1], got[2], got[3], got[4]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    assert_exactly_once(&conn, &psp_url, &pays).await;
    let js = nats::jetstream(async_nats::connect(server.url()).await.unwrap());
    let early = early_cancels(&js).await;
    assert!(
        early > 0,
        "some cancellations reached PAYMENTS before their payment (the case under test)"
    );
    let chain = event_chain(&js).await;
    assert_eq!(chain.len() as i64, 600 + expected_cancelled);
    assert_chains(&chain);
    let checked = assert_applied_in_order(&conn, true).await;
    for service in ["payment", "wallet"] {
        for i in 1..=3 {
            let name = format!("{service}-{i}");
            assert!(
                !fleet.partitions_taken(&name).is_empty(),
                "{name} owned no partition: the load is not spread\n{}",
                fleet.log(&name)
            );
        }
    }
    eprintln!(
        "scale: 600 payments + {expected_cancelled} cancels ({early} stored before their payment) from 3 producer processes over 3 payment, 3 wallet, 2 ledger instances: settled in {:.1}s; {} events in per-buyer chains; {checked} applications in stream order",
        elapsed.as_secs_f64(),
        chain.len()
    );
    drop(fleet);
    sim.shutdown().await;
}

/// One of three wallet instances is SIGKILLed mid-stream: its partitions move to the other two,
/// everything is applied exactly once, and the pause of the moved partitions is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_instance_failover_postgres() {
    let Some(Setup {
        db,
        server,
        data: _data,
        sim,
        psp_url,
        mut fleet,
    }) = Setup::start().await
    else {
        return;
    };
    fleet.spawn("payment-1", "payment");
    fleet.spawn("ledger-1", "ledger");
    for i in 1..=3 {
        fleet.spawn(&format!("wallet-{i}"), "wallet");
    }
    let conn = connect(&db.url).await;
    wait_members(&conn, "wallet", 3).await;
    wait_members(&conn, "payment", 1).await;
    wait_members(&conn, "ledger", 1).await;
    fleet.wait_settled_ownership("wallet", 3).await;

    let pays = requests(2_000, 100, 10, "fo-");
    let js = nats::jetstream(async_nats::connect(server.url()).await.unwrap());
    // ~500 payments/s, so the kill lands mid-stream.
    let publisher = paced_publisher(&js, &pays, 100, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let moved = fleet.partitions_owned("wallet-1");
    let killed_at = paystream_common::time::now_ms();
    fleet.kill("wallet-1");
    publisher.await.unwrap();
    crate::helpers::wait_settled(&conn, 2_000, Duration::from_secs(120)).await;
    assert_exactly_once(&conn, &psp_url, &pays).await;
    assert_applied_in_order(&conn, false).await;

    // The pause: for the moved partitions, from the kill to the first wallet application after it.
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            format!(
                "SELECT p.buyer_id, MIN(a.applied_at_ms) AS first_after FROM applied_events a \
                 JOIN payments p ON p.payment_id = a.payment_id \
                 WHERE a.consumer = 'wallet' AND a.applied_at_ms > {killed_at} GROUP BY p.buyer_id"
            ),
        ))
        .await
        .unwrap();
    let partitions: u16 = PARTITIONS.parse().unwrap();
    let pause_ms = rows
        .iter()
        .filter_map(|r| {
            let buyer: String = r.try_get("", "buyer_id").ok()?;
            let first: i64 = r.try_get("", "first_after").ok()?;
            moved
                .contains(&ownership::partition_of(&buyer, partitions))
                .then_some(first - killed_at)
        })
        .min()
        .expect("the moved partitions had events after the kill");
    let taken_over: usize = ["wallet-2", "wallet-3"]
        .iter()
        .map(|n| {
            fleet
                .partitions_owned(n)
                .iter()
                .filter(|p| moved.contains(p))
                .count()
        })
        .sum();
    assert!(
        taken_over >= moved.len(),
        "the survivors took over wallet-1's partitions {moved:?}"
    );
    eprintln!(
        "failover: wallet-1 (partitions {moved:?} of {partitions}) SIGKILLed mid-stream of 2,000 payments; its partitions resumed on the survivors after {pause_ms} ms; all applied exactly once"
    );
    assert!(
        pause_ms < 20_000,
        "the moved partitions paused {pause_ms} ms"
    );
    drop(fleet);
    sim.shutdown().await;
}

/// A 3-node NATS cluster with R3 streams: the node leading PAYMENT_EVENTS is SIGKILLed mid-stream
/// of 2,000 payments and brought back; no acknowledged publish is lost, every payment is final
/// and applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_loss_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut cluster = TestCluster::start(3).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(
        &cluster.urls(),
        &db.url,
        data.path(),
        &[
            "--replicas=3",
            "--backoff=200ms,400ms,800ms,1s",
            "--max-deliver=60",
        ],
    );
    let app = app::start(cfg, Parts::all())
        .await
        .expect("paystream starts on the cluster");
    let conn = app.db.clone().unwrap();
    let psp_url = app.psp_url.clone().unwrap();
    let js = nats::jetstream(
        async_nats::ConnectOptions::new()
            .connect(cluster.urls().split(',').collect::<Vec<_>>())
            .await
            .unwrap(),
    );
    let info = js
        .get_stream("PAYMENT_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.num_replicas, 3, "streams are replicated");
    let pays = requests(2_000, 100, 10, "cl-");
    let publisher = paced_publisher(&js, &pays, 200, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .unwrap_or_else(|| "n0".into());
    let victim: usize = leader.trim_start_matches('n').parse().unwrap_or(0);
    let killed = Instant::now();
    cluster.nodes[victim].kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[victim]
        .restart()
        .await
        .expect("the node comes back");
    let back = killed.elapsed();
    publisher.await.unwrap();
    let settle = Instant::now();
    crate::helpers::wait_settled(&conn, 2_000, Duration::from_secs(180)).await;
    assert_exactly_once(&conn, &psp_url, &pays).await;
    eprintln!(
        "cluster: node {leader} (PAYMENT_EVENTS leader) SIGKILLed mid-stream and back after {:.1}s; 2,000 payments final, settled {:.1}s after the publisher finished; none lost",
        back.as_secs_f64(),
        settle.elapsed().as_secs_f64()
    );
    app.shutdown().await;
}
