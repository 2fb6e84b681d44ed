//! Starting the real application for a test: its own nats-server, a fresh database, the same
//! `app::start` that `paystream up` calls, with ports picked by the OS.

use std::time::{Duration, Instant};

use paystream::app::{self, App, Parts};
use paystream_common::config::Config;
use paystream_common::nats;
use paystream_testkit::{Backend, TestDb, TestNats};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tempfile::TempDir;

pub struct Env {
    pub nats: TestNats,
    pub db: TestDb,
    pub data: TempDir,
    pub app: Option<App>,
    pub cfg: Config,
}

/// Configuration for a test: explicit flags, so nothing from the caller's environment leaks in.
pub fn config(nats_url: &str, db_url: &str, data_dir: &std::path::Path, extra: &[&str]) -> Config {
    let mut args = vec![
        "paystream".to_owned(),
        format!("--nats-url={nats_url}"),
        format!("--database-url={db_url}"),
        format!("--data-dir={}", data_dir.display()),
        "--http-addr=127.0.0.1:0".to_owned(),
        "--psp-sim-addr=127.0.0.1:0".to_owned(),
        "--partitions=4".to_owned(),
        "--psp-timeout=2s".to_owned(),
        "--psp-sim-hang=3s".to_owned(),
    ];
    // A flag given in `extra` replaces the default above.
    let flag = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
    args.retain(|a| !extra.iter().any(|e| flag(e) == flag(a)));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Config::load_from(args).expect("test configuration parses")
}

impl Env {
    /// `None` when the backend is not configured here (PostgreSQL without its URL).
    pub async fn start(backend: Backend, extra: &[&str]) -> Option<Self> {
        Self::start_with(backend, extra, false).await
    }

    /// `sync_always`: the nats-server fsyncs every write (for tests that restart it).
    pub async fn start_with(backend: Backend, extra: &[&str], sync_always: bool) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        Some(Self::start_on(TestNats::start(sync_always).await, db, extra).await)
    }

    /// On a server with nats/accounts.conf; the services authenticate as `paystream`.
    pub async fn start_secure(backend: Backend, extra: &[&str]) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let nats = TestNats::start_secure().await;
        let user = "--nats-user=paystream".to_owned();
        let password = format!("--nats-password={}", nats.password("paystream"));
        let mut args = vec![user.as_str(), password.as_str()];
        args.extend_from_slice(extra);
        Some(Self::start_on(nats, db, &args).await)
    }

    /// A client of the secure server as one of paystream's users, with the server errors it sees.
    pub async fn client_as(&self, user: &str) -> (async_nats::Client, nats::ServerErrors) {
        let cfg = paystream_common::config::ClientConfig {
            nats_user: Some(user.to_owned()),
            nats_password: Some(paystream_common::config::Secret(self.nats.password(user))),
            ..self.cfg.client.clone()
        };
        nats::connect_as(&cfg, user, nats::Role::Service, false)
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"))
    }

    /// On a server the test started itself (e.g. with TLS).
    pub async fn start_on(nats: TestNats, db: TestDb, extra: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let cfg = config(&nats.url(), &db.url, data.path(), extra);
        let app = app::start(cfg.clone(), Parts::all())
            .await
            .expect("paystream starts");
        let mut env = Self {
            nats,
            db,
            data,
            app: Some(app),
            cfg,
        };
        env.cfg.psp_url = env.app().psp_url.clone();
        env.wait_ready().await;
        env
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("app running")
    }

    pub fn db(&self) -> &DatabaseConnection {
        self.app().db.as_ref().expect("app has a database")
    }

    pub fn psp_url(&self) -> String {
        self.app().psp_url.clone().expect("simulator running")
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.app().http_addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "not ready within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        nats::connect(&self.cfg.client, "test", false)
            .await
            .expect("test client connects")
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.app().http_addr))
            .await
            .expect("metrics endpoint")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops the application and starts it again on the same server, database and data.
    pub async fn restart_app(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        let cfg = Config {
            psp_url: None,
            ..self.cfg.clone()
        };
        self.app = Some(
            app::start(cfg, Parts::all())
                .await
                .expect("paystream restarts"),
        );
        self.cfg.psp_url = self.app().psp_url.clone();
        self.wait_ready().await;
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// One integer from a query.
/// Runs the `paystream` binary against `env` (its NATS and data dir, plus `extra` variables;
/// no database: the commands ask the running service) and returns its exit code, stdout and
/// stderr.
pub fn run_cli(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .env_clear()
        .env("PAYSTREAM_NATS_URL", env.nats.url())
        .env("PAYSTREAM_DATA_DIR", env.data.path())
        .envs(extra.iter().copied())
        .output()
        .expect("paystream runs");
    outcome(&out)
}

/// A finished command's exit code (-1 if killed), stdout and stderr.
pub fn outcome(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .expect("query runs")
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("an integer")
}

/// Polls `probe` until it returns true, or panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every committed event is published and applied by both wallet and ledger.
pub async fn events_applied(db: &DatabaseConnection) -> bool {
    let events = scalar(db, "SELECT COUNT(*) FROM outbox").await;
    let published = scalar(
        db,
        "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NOT NULL",
    )
    .await;
    let wallet = scalar(
        db,
        "SELECT COUNT(*) FROM applied_events WHERE consumer = 'wallet'",
    )
    .await;
    let ledger = scalar(
        db,
        "SELECT COUNT(*) FROM applied_events WHERE consumer = 'ledger'",
    )
    .await;
    published == events && wallet == events && ledger == events
}

/// Waits until no payment is in flight and wallet and ledger have applied every event.
pub async fn wait_settled(db: &DatabaseConnection, payments: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let final_ = scalar(
            db,
            "SELECT COUNT(*) FROM payments WHERE state IN ('SUCCESS','FAILURE','CANCELLED')",
        )
        .await;
        if final_ == payments && events_applied(db).await {
            return;
        }
        if Instant::now() >= deadline {
            // What is left, for whoever reads the failure.
            let rows = db
                .query_all_raw(Statement::from_string(
                    db.get_database_backend(),
                    "SELECT state || ' ' || CAST(COUNT(*) AS TEXT) || ' (max attempts ' || \
                     CAST(MAX(attempts) AS TEXT) || ')' AS s FROM payments GROUP BY state"
                        .to_owned(),
                ))
                .await
                .unwrap_or_default();
            let states: Vec<String> = rows
                .iter()
                .filter_map(|r| r.try_get::<String>("", "s").ok())
                .collect();
            let unpublished = scalar(
                db,
                "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL",
            )
            .await;
            panic!(
                "timed out after {timeout:?} waiting for all {payments} payments final and applied: \
                 {states:?}, {unpublished} events unpublished"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The simulator's whole-store counters.
pub async fn sim_stats(psp_url: &str) -> serde_json::Value {
    reqwest::get(format!("{psp_url}/v1/sim/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON")
}

/// The same, from a simulator that requires a bearer key.
pub async fn sim_stats_with_key(psp_url: &str, key: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{psp_url}/v1/sim/stats"))
        .bearer_auth(key)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON")
}

/// What the simulator knows of one key.
pub async fn sim_payment(psp_url: &str, payment_id: &str) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("{psp_url}/v1/payments/{payment_id}"))
        .await
        .expect("lookup");
    if r.status().as_u16() == 404 {
        return None;
    }
    Some(r.json().await.expect("payment JSON"))
}

/// Publishes requests pipelined (as `paystream pay` does, one at a time), retrying each until
/// JetStream acknowledges it: a publisher that rides out a server restart. Returns when all are
/// acknowledged.
pub async fn publish_all(
    js: &async_nats::jetstream::Context,
    requests: &[paystream_common::ingress::PaymentRequest],
) {
    for chunk in requests.chunks(256) {
        let mut todo: Vec<&paystream_common::ingress::PaymentRequest> = chunk.iter().collect();
        while !todo.is_empty() {
            let mut pending = Vec::with_capacity(todo.len());
            for r in &todo {
                pending.push(send(js, r).await);
            }
            // Acks are awaited together, so an outage costs one ack timeout per round, not one
            // per message.
            let acked = futures::future::join_all(pending.into_iter().map(|ack| async move {
                match ack {
                    Some(f) => f.await.is_ok(),
                    None => false,
                }
            }))
            .await;
            todo = todo
                .into_iter()
                .zip(acked)
                .filter(|(_, ok)| !ok)
                .map(|(r, _)| r)
                .collect();
            if !todo.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn send(
        js: &async_nats::jetstream::Context,
        r: &paystream_common::ingress::PaymentRequest,
    ) -> Option<async_nats::jetstream::context::PublishAckFuture> {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(paystream_common::codec::to_msgpack(r).into())
            .message_id(r.payment_id.to_string());
        js.send_publish(format!("payments.request.{}", r.buyer_id), msg)
            .await
            .ok()
    }
}

/// `n` payment requests over `buyers` buyers and `merchants` merchants, amounts 100 + i.
pub fn requests(
    n: usize,
    buyers: usize,
    merchants: usize,
    prefix: &str,
) -> Vec<paystream_common::ingress::PaymentRequest> {
    use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
    use paystream_common::money::{Amount, Currency};
    (0..n)
        .map(|i| paystream_common::ingress::PaymentRequest {
            payment_id: PaymentId::new_random(),
            buyer_id: BuyerId::parse(&format!("{prefix}b-{}", i % buyers)).unwrap(),
            merchant_id: MerchantId::parse(&format!("{prefix}m-{}", i % merchants)).unwrap(),
            amount: Amount::new(100 + i as i64).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            metadata: Default::default(),
        })
        .collect()
}

/// The money invariants, checked from three independent sides (our payments, the PSP's record,
/// the wallet and ledger):
/// - every published request is a payment in a final state (nothing lost);
/// - SUCCESS ⇔ the PSP charged exactly once and never refunded; FAILURE ⇔ never charged;
///   CANCELLED ⇔ charged once and refunded once;
/// - each merchant's wallet = Σ SUCCESS amounts (cancelled ones netted out), and `ledger check` passes;
/// - the PSP saw no double charge or refund at all.
///
/// Returns the number of payments per final state.
pub async fn assert_exactly_once(
    db: &DatabaseConnection,
    psp_url: &str,
    published: &[paystream_common::ingress::PaymentRequest],
) -> std::collections::BTreeMap<String, usize> {
    use futures::StreamExt;
    use paystream_payment::entity::payment;
    use sea_orm::EntityTrait;
    let rows = payment::Entity::find().all(db).await.unwrap();
    let by_id: std::collections::HashMap<&str, &payment::Model> =
        rows.iter().map(|r| (r.payment_id.as_str(), r)).collect();
    for r in published {
        let row = by_id
            .get(r.payment_id.to_string().as_str())
            .unwrap_or_else(|| panic!("payment {} lost", r.payment_id));
        assert_eq!(row.amount, r.amount.minor());
    }
    let mut per_state = std::collections::BTreeMap::new();
    let mut wallet_expected: std::collections::BTreeMap<(String, String), i64> = Default::default();
    let client = reqwest::Client::new();
    let checks: Vec<(String, String, Option<serde_json::Value>)> =
        futures::stream::iter(rows.iter())
            .map(|row| {
                let client = client.clone();
                async move {
                    // A rate-limited PSP answers our own checks 429 too: wait and ask again.
                    let resp = loop {
                        let resp = client
                            .get(format!("{psp_url}/v1/payments/{}", row.payment_id))
                            .send()
                            .await
                            .unwrap();
                        if resp.status().as_u16() != 429 {
                            break resp;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    };
                    let known = if resp.status().as_u16() == 404 {
                        None
                    } else {
                        Some(resp.json().await.unwrap())
                    };
                    (row.payment_id.clone(), row.state.clone(), known)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    for (id, state, psp) in checks {
        let charges = psp
            .as_ref()
            .and_then(|p| p["charge_count"].as_i64())
            .unwrap_or(0);
        let refunds = psp
            .as_ref()
            .and_then(|p| p["refund_count"].as_i64())
            .unwrap_or(0);
        let expected = match state.as_str() {
            "SUCCESS" => (1, 0),
            "FAILURE" => (0, 0),
            "CANCELLED" => (1, 1),
            other => panic!("payment {id} is not final: {other}"),
        };
        assert_eq!(
            (charges, refunds),
            expected,
            "payment {id} in {state}: PSP says {psp:?}"
        );
        *per_state.entry(state.clone()).or_insert(0) += 1;
        if state == "SUCCESS" {
            let row = by_id[id.as_str()];
            *wallet_expected
                .entry((row.merchant_id.clone(), row.currency.clone()))
                .or_default() += row.amount;
        }
    }
    let wallet = paystream_wallet::store::all_balances(db).await.unwrap();
    for (key, sum) in &wallet_expected {
        assert_eq!(
            wallet.get(key),
            Some(sum),
            "wallet {key:?} = Σ succeeded − Σ cancelled"
        );
    }
    for (key, balance) in &wallet {
        assert_eq!(
            *balance,
            wallet_expected.get(key).copied().unwrap_or(0),
            "wallet {key:?} has no money it should not"
        );
    }
    let check = paystream::queries::ledger_check(db).await.unwrap();
    assert!(check.ok, "ledger check: {:?}", check.violations);
    let stats = sim_stats(psp_url).await;
    assert_eq!(
        (
            stats["double_charges"].as_i64(),
            stats["double_refunds"].as_i64()
        ),
        (Some(0), Some(0)),
        "{stats}"
    );
    per_state
}

/// Status and body of a plain HTTP/1.0 GET to a process this test started (`/metrics`,
/// `/readyz`); `None` while nothing listens. Plain TCP: no TLS, so no crypto provider to install
/// in a test that runs paystream as a child process.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Reconciles `day` against a settlement file with one charge of a payment we never received
/// (line 2: `unknown_payment`, for manual review), then the lines `more`.
pub async fn reconcile_an_unknown_payment(
    env: &Env,
    day: &str,
    more: &[String],
) -> paystream_reconciler::report::Report {
    let file = env.data.path().join(format!("{day}.csv"));
    std::fs::write(
        &file,
        format!(
            "psp_reference,payment_id,merchant_id,type,amount,currency,settled_at\n\
             ch_unknown_1,{},m-elsewhere,charge,990,USD,{day}T10:00:00Z\n{}",
            paystream_common::ids::PaymentId::new_random(),
            more.iter().map(|l| format!("{l}\n")).collect::<String>()
        ),
    )
    .expect("settlement file written");
    let rec = paystream::recon::reconciler(&env.cfg, env.db().clone(), None);
    paystream::recon::run(&rec, day, Some(file.to_str().expect("UTF-8 path")), "test")
        .await
        .expect("reconciliation runs")
}

/// The `paystream` service's error header on a reply, if it carries one (`Nats-Service-Error`).
pub fn service_error(reply: &async_nats::Message) -> Option<String> {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
        .map(|v| v.as_str().to_owned())
}
