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
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Config::load_from(args).expect("test configuration parses")
}

impl Env {
    /// `None` when the backend is not configured here (PostgreSQL without its URL).
    pub async fn start(backend: Backend, extra: &[&str]) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let nats = TestNats::start(false).await;
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
        Some(env)
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
        nats::connect(&self.cfg, "test", false)
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

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// One integer from a query.
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

/// Waits until no payment is in flight and wallet and ledger have applied every event.
pub async fn wait_settled(db: &DatabaseConnection, payments: i64, timeout: Duration) {
    eventually(timeout, "all payments final and applied", || async {
        let final_ = scalar(
            db,
            "SELECT COUNT(*) FROM payments WHERE state IN ('SUCCESS','FAILURE','CANCELLED')",
        )
        .await;
        let events = scalar(db, "SELECT COUNT(*) FROM outbox").await;
        let published = scalar(
            db,
            "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NOT NULL",
        )
        .await;
        let wallet = scalar(db, "SELECT COUNT(*) FROM wallet_events").await;
        let ledger = scalar(db, "SELECT COUNT(*) FROM ledger_events").await;
        final_ == payments && published == events && wallet == events && ledger == events
    })
    .await;
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
