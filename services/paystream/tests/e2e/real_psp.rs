//! Against a PSP as the world has them: a call that hangs until the timeout, a rate limit answered
//! 429, a brownout where every call fails for a while. Each test asserts the money invariants
//! (`assert_exactly_once`: nothing lost, one charge per SUCCESS, wallet = ledger = states) and
//! what the pipeline promises, with time bounds taken from the payments' recorded history.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paystream_common::nats;
use paystream_common::telemetry::names;
use paystream_psp_sim::{SimConfig, Simulator};
use paystream_testkit::Backend;
use sea_orm::{ConnectionTrait, Statement};

use crate::helpers::{
    Env, assert_exactly_once, eventually, publish_all, requests, scalar, sim_stats, wait_settled,
};

/// A simulator the test starts, stops and starts again on the same address and store.
pub struct Sim {
    pub url: String,
    pub addr: SocketAddr,
    pub sim: Simulator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sim {
    pub async fn start(cfg: SimConfig, addr: SocketAddr) -> Self {
        let sim = Simulator::open(cfg).await.expect("simulator opens");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("simulator binds");
        let addr = listener.local_addr().unwrap();
        let url = sim.base_url(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = sim.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("simulator serves");
        });
        Self {
            url,
            addr,
            sim,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.task.await;
    }
}

/// `(max, per payment)` of the time from a request's publish to its SUCCESS, in ms, over the
/// payments with ids in `ids`.
async fn publish_to_success_ms(db: &sea_orm::DatabaseConnection, ids: &[String]) -> Vec<i64> {
    let list: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "SELECT h.at_ms - p.requested_at_ms AS d FROM payment_history h \
             JOIN payments p ON p.payment_id = h.payment_id \
             WHERE h.state = 'SUCCESS' AND p.payment_id IN ({})",
            list.join(",")
        ),
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<i64>("", "d").unwrap())
    .collect()
}

async fn hanging_call(backend: Backend) {
    let extra = [
        "--psp-timeout=4s",
        "--psp-sim-hang=5s",
        "--executing-timeout=6s",
        "--sweep-interval=500ms",
        "--psp-sim-latency-ms=20",
    ];
    let Some(env) = Env::start(backend, &extra).await else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    // One payment whose charge hangs until our timeout, then 200 behind it on the same buyers.
    let mut reqs = requests(201, 10, 5, "hang");
    reqs[0]
        .metadata
        .insert("sim".to_owned(), "timeout".to_owned());
    publish_all(&js, &reqs[..1]).await;
    publish_all(&js, &reqs[1..]).await;
    let db = env.db();
    let others: Vec<String> = reqs[1..].iter().map(|r| r.payment_id.to_string()).collect();
    eventually(
        Duration::from_secs(60),
        "the 200 behind the hanging call succeed",
        || async { publish_to_success_ms(db, &others).await.len() == others.len() },
    )
    .await;
    wait_settled(db, 201, Duration::from_secs(60)).await;
    assert_exactly_once(db, &env.psp_url(), &reqs).await;
    // From the recorded history: the hanging payment went UNKNOWN after the 4 s timeout, and
    // every other payment was SUCCESS long before that.
    let hung = reqs[0].payment_id.to_string();
    let hung_unknown_ms = scalar(
        db,
        &format!(
            "SELECT MIN(h.at_ms) - MIN(p.requested_at_ms) FROM payment_history h JOIN payments p \
             ON p.payment_id = h.payment_id WHERE h.state = 'UNKNOWN' AND p.payment_id = '{hung}'"
        ),
    )
    .await;
    let waits = publish_to_success_ms(db, &others).await;
    let slowest = waits.iter().copied().max().unwrap();
    eprintln!(
        "{backend:?}: the hanging call went UNKNOWN after {hung_unknown_ms} ms; the 200 behind it \
         took at most {slowest} ms from publish to SUCCESS"
    );
    assert!(hung_unknown_ms >= 4_000, "{hung_unknown_ms}");
    assert!(
        slowest < hung_unknown_ms - 2_000,
        "a payment behind the hanging call waited {slowest} ms (the hanging call: {hung_unknown_ms} ms)"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_holds_back_no_other_payment_sqlite() {
    hanging_call(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_holds_back_no_other_payment_postgres() {
    hanging_call(Backend::Postgres).await;
}

async fn rate_limit_storm(backend: Backend) {
    const PAYMENTS: usize = 300;
    const LIMIT: u32 = 40;
    let limit = format!("--psp-sim-rate-limit={LIMIT}");
    let extra = [limit.as_str(), "--psp-sim-latency-ms=5"];
    let Some(env) = Env::start(backend, &extra).await else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let reqs = requests(PAYMENTS, 30, 10, "rl");
    let started_ms = paystream_common::time::now_ms();
    publish_all(&js, &reqs).await;
    let db = env.db();
    wait_settled(db, PAYMENTS as i64, Duration::from_secs(120)).await;
    let per_state = assert_exactly_once(db, &env.psp_url(), &reqs).await;
    assert_eq!(per_state.get("SUCCESS"), Some(&PAYMENTS));
    // A 429 is not an outcome: no payment went UNKNOWN or FAILURE, none used a second attempt.
    let unknown_or_failed = scalar(
        db,
        "SELECT COUNT(*) FROM payment_history WHERE state IN ('UNKNOWN', 'FAILURE')",
    )
    .await;
    assert_eq!(unknown_or_failed, 0);
    assert_eq!(
        scalar(db, "SELECT CAST(MAX(attempts) AS BIGINT) FROM payments").await,
        1
    );
    let stats = sim_stats(&env.psp_url()).await;
    let refused = stats["rate_limited"].as_i64().unwrap();
    let gate = env
        .app()
        .psp_gate
        .clone()
        .expect("the payment service runs");
    let paced_at = gate.rate().expect("the limiter paces after 429s");
    let last_ms = scalar(
        db,
        "SELECT MAX(at_ms) FROM payment_history WHERE state = 'SUCCESS'",
    )
    .await;
    let per_s = PAYMENTS as f64 / ((last_ms - started_ms) as f64 / 1000.0);
    eprintln!(
        "{backend:?}: {PAYMENTS} payments against a {LIMIT}/s PSP: {per_s:.1}/s, {refused} answered 429, \
         limiter at {paced_at:.1}/s, no UNKNOWN, no FAILURE, each charged once"
    );
    assert!(refused > 0, "the PSP did rate-limit: {stats}");
    assert!(paced_at <= f64::from(LIMIT) * 1.5, "{paced_at}");
    // The limiter keeps paystream near the PSP's limit (the bench measures how near).
    assert!(per_s > f64::from(LIMIT) * 0.5, "{per_s}/s");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_fails_nothing_and_charges_once_sqlite() {
    rate_limit_storm(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_fails_nothing_and_charges_once_postgres() {
    rate_limit_storm(Backend::Postgres).await;
}

async fn brownout(backend: Backend) {
    const PAYMENTS: usize = 150;
    const CONCURRENCY: i64 = 8;
    let store = tempfile::tempdir().unwrap();
    let sim_cfg = SimConfig {
        store_path: store.path().join("psp.sqlite"),
        latency_ms: 5,
        ..SimConfig::default()
    };
    // Every call fails (500) while the PSP browns out.
    let down = Sim::start(
        SimConfig {
            error_rate: 1.0,
            ..sim_cfg.clone()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let psp_url = format!("--psp-url={}", down.url);
    let concurrency = format!("--psp-concurrency={CONCURRENCY}");
    let extra = [
        psp_url.as_str(),
        concurrency.as_str(),
        "--psp-timeout=2s",
        "--executing-timeout=3s",
        "--sweep-interval=300ms",
        "--sweep-max-attempts=100",
    ];
    let Some(env) = Env::start(backend, &extra).await else {
        down.stop().await;
        return;
    };
    let js = nats::jetstream(env.client().await);
    let reqs = requests(PAYMENTS, 15, 5, "bo");
    publish_all(&js, &reqs).await;
    let gate = env
        .app()
        .psp_gate
        .clone()
        .expect("the payment service runs");
    eventually(Duration::from_secs(30), "the breaker opens", || async {
        gate.transitions().0 >= 1
    })
    .await;
    let brownout_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let addr = down.addr;
    down.stop().await;
    let recovered_ms = paystream_common::time::now_ms();
    let up = Sim::start(sim_cfg, addr).await;
    let db = env.db();
    wait_settled(db, PAYMENTS as i64, Duration::from_secs(90)).await;
    assert_exactly_once(db, &up.url, &reqs).await;
    let failed = scalar(
        db,
        "SELECT COUNT(*) FROM payment_history WHERE state = 'FAILURE'",
    )
    .await;
    assert_eq!(failed, 0, "a brownout fails no payment");
    // UNKNOWN only for calls sent before the breaker opened (or as its probes).
    let unknown_seen = scalar(
        db,
        "SELECT COUNT(DISTINCT payment_id) FROM payment_history WHERE state = 'UNKNOWN'",
    )
    .await;
    let probes_max = (brownout_started.elapsed().as_secs() as i64 + 10) / 2 + 2;
    let bound = CONCURRENCY + 10 + probes_max;
    assert!(
        unknown_seen <= bound,
        "{unknown_seen} payments went UNKNOWN (bound {bound})"
    );
    let first_success_after = scalar(
        db,
        &format!(
            "SELECT MIN(at_ms) - {recovered_ms} FROM payment_history WHERE state = 'SUCCESS' AND at_ms >= {recovered_ms}"
        ),
    )
    .await;
    let (opened, closed) = gate.transitions();
    eprintln!(
        "{backend:?}: brownout: {unknown_seen} of {PAYMENTS} payments went UNKNOWN, none FAILURE; \
         first SUCCESS {first_success_after} ms after the PSP recovered; breaker opened {opened}, \
         closed {closed} time(s)"
    );
    assert!(closed >= 1);
    assert_eq!(gate.state(), paystream_payment::breaker::State::Closed);
    // The gauge and counters exist for dashboards (their values are per process, shared by
    // the tests running in it).
    let metrics = env.metrics().await;
    assert!(metrics.contains(&format!(
        "{}{{to=\"open\"}}",
        names::PSP_CIRCUIT_TRANSITIONS
    )));
    assert!(metrics.contains(names::PSP_CIRCUIT_STATE));
    assert!(
        first_success_after < 10_000,
        "back within 10 s of the PSP's recovery ({first_success_after} ms)"
    );
    env.shutdown().await;
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brownout_opens_and_closes_the_breaker_sqlite() {
    brownout(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brownout_opens_and_closes_the_breaker_postgres() {
    brownout(Backend::Postgres).await;
}

/// A throwaway CA (PEM) and a certificate it signed for 127.0.0.1, with its key, written to `dir`:
/// `(ca, cert, key)` paths.
fn throwaway_pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

/// Payments over HTTPS: with the PSP's CA trusted they complete, charged once; with it untrusted
/// nothing reaches the PSP, nothing is recorded against the payments (they stay EXECUTING, no
/// attempt used), the refusal pages — and once the CA is trusted they complete, charged once.
async fn https(backend: Backend) {
    const PAYMENTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = throwaway_pki(dir.path());
    let sim = Sim::start(
        SimConfig {
            store_path: dir.path().join("psp.sqlite"),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    assert!(sim.url.starts_with("https://"), "{}", sim.url);
    let psp_url = format!("--psp-url={}", sim.url);
    // First without the CA: the certificate does not verify.
    let extra = [
        psp_url.as_str(),
        "--executing-timeout=3s",
        "--sweep-interval=300ms",
    ];
    let Some(mut env) = Env::start(backend, &extra).await else {
        sim.stop().await;
        return;
    };
    let js = nats::jetstream(env.client().await);
    let reqs = requests(PAYMENTS, 8, 4, "tls");
    publish_all(&js, &reqs[..PAYMENTS / 2]).await;
    let db = env.db().clone();
    // The refusal is the message's recorded error (the gauge that pages on it is per process).
    eventually(
        Duration::from_secs(30),
        "the certificate is refused",
        || async {
            scalar(
            &db,
            "SELECT COUNT(*) FROM consumer_failures WHERE error LIKE '%certificate not trusted%'",
        )
        .await
            > 0
        },
    )
    .await;
    assert!(env.metrics().await.contains(names::PSP_CERTIFICATE_REFUSED));
    let not_executing = scalar(
        &db,
        "SELECT COUNT(*) FROM payments WHERE state <> 'EXECUTING'",
    )
    .await;
    assert_eq!(not_executing, 0, "nothing recorded against the payments");
    assert_eq!(
        sim.sim.stats().await.unwrap().payments,
        0,
        "nothing reached the PSP"
    );
    // Then with the CA trusted: everything completes, charged once.
    if let Some(app) = env.app.take() {
        app.shutdown().await;
    }
    let ca_flag = format!("--psp-ca={}", ca.display());
    let cfg = crate::helpers::config(
        &env.nats.url(),
        &env.db.url,
        env.data.path(),
        &[
            psp_url.as_str(),
            ca_flag.as_str(),
            "--executing-timeout=3s",
            "--sweep-interval=300ms",
        ],
    );
    env.app = Some(
        paystream::app::start(cfg, paystream::app::Parts::all())
            .await
            .expect("paystream restarts"),
    );
    env.wait_ready().await;
    publish_all(&js, &reqs[PAYMENTS / 2..]).await;
    let db = env.db().clone();
    wait_settled(&db, PAYMENTS as i64, Duration::from_secs(60)).await;
    let stats = sim.sim.stats().await.unwrap();
    assert_eq!(
        (stats.charges, stats.double_charges),
        (PAYMENTS as u64, 0),
        "{stats:?}"
    );
    let unknown_or_failed = scalar(
        &db,
        "SELECT COUNT(*) FROM payment_history WHERE state IN ('UNKNOWN', 'FAILURE')",
    )
    .await;
    assert_eq!(unknown_or_failed, 0);
    let wallet: i64 = paystream_wallet::store::all_balances(&db)
        .await
        .unwrap()
        .values()
        .sum();
    assert_eq!(wallet, reqs.iter().map(|r| r.amount.minor()).sum::<i64>());
    assert!(paystream::queries::ledger_check(&db).await.unwrap().ok);
    eprintln!(
        "{backend:?}: {PAYMENTS} payments over HTTPS, charged once each; untrusted first, then completed"
    );
    env.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_trusted_and_an_untrusted_certificate_sqlite() {
    https(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_trusted_and_an_untrusted_certificate_postgres() {
    https(Backend::Postgres).await;
}
