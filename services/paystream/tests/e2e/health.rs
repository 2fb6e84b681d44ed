//! `/readyz` follows the connections while the services run: it turns 503 naming NATS while the
//! nats-server is down and back to 200 when it returns; the same for the database (PostgreSQL,
//! whose connections can be refused from outside). Payments published after the outage complete.

use std::time::{Duration, Instant};

use paystream_testkit::Backend;
use sea_orm::{ConnectionTrait, Database};

use crate::helpers::{Env, eventually};

async fn readyz(env: &Env) -> (u16, String) {
    match reqwest::get(format!("http://{}/readyz", env.app().http_addr)).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn wait_readyz(env: &Env, timeout: Duration, want: u16, naming: &str) -> Duration {
    let started = Instant::now();
    let what = format!("/readyz {want} naming {naming:?}");
    eventually(timeout, &what, || async {
        let (status, body) = readyz(env).await;
        status == want && body.contains(naming)
    })
    .await;
    started.elapsed()
}

async fn pay_and_settle(env: &Env, buyer: &str, settled: usize) {
    let js = paystream_common::nats::jetstream(env.client().await);
    crate::helpers::publish_all(&js, &crate::helpers::requests(1, 1, 1, buyer)).await;
    crate::helpers::wait_settled(env.db(), settled as i64, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_nats() {
    let mut env = Env::start_with(Backend::Sqlite, &[], true)
        .await
        .expect("SQLite always runs");
    pay_and_settle(&env, "h1", 1).await;
    env.nats.server.kill().await;
    let down = wait_readyz(&env, Duration::from_secs(10), 503, "nats").await;
    let (_, body) = readyz(&env).await;
    assert!(
        !body.contains("database"),
        "only what is down is named: {body}"
    );
    env.nats
        .server
        .restart()
        .await
        .expect("nats-server restarts");
    let up = wait_readyz(&env, Duration::from_secs(30), 200, "ready").await;
    eprintln!("readyz: 503 {down:?} after NATS died, 200 {up:?} after it came back");
    pay_and_settle(&env, "h2", 2).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_database_postgres() {
    let Some(env) = Env::start(Backend::Postgres, &[]).await else {
        return;
    };
    let admin_url = paystream_testkit::postgres_url().expect("PostgreSQL configured");
    let admin = Database::connect(admin_url.as_str()).await.unwrap();
    let name = env.db.url.rsplit('/').next().unwrap().to_owned();
    // Refuse new connections to the test's database, then end the ones it has: from the
    // service's side, the database is gone. Two statements: in one, the backends would be ended
    // before the refusal commits and could reconnect in between.
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    let terminate =
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'");
    admin.execute_unprepared(&terminate).await.unwrap();
    let down = wait_readyz(&env, Duration::from_secs(20), 503, "database").await;
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let up = wait_readyz(&env, Duration::from_secs(30), 200, "ready").await;
    eprintln!("readyz: 503 {down:?} after the database went away, 200 {up:?} after it came back");
    pay_and_settle(&env, "hd", 1).await;
    env.shutdown().await;
}
