//! Assembling the services: what `up` and `serve` run, and what the tests start. One function,
//! `start`, brings up the parts asked for and returns a handle that shuts them down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use paystream_common::config::Config;
use paystream_common::nats_server::{self, NatsServer, ServerOptions};
use paystream_common::shutdown::{self, Shutdown, Trigger};
use paystream_common::telemetry::{self, Readiness};
use paystream_common::{apply, db, health, lag, nats, streams};
use paystream_migrations::{Migrator, MigratorTrait};
use paystream_payment::psp::HttpPsp;
use paystream_psp_sim::{Drift, SimConfig, Simulator};
use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;

/// Which parts to run in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    pub payment: bool,
    pub wallet: bool,
    pub ledger: bool,
    /// The dlq service: follows DEAD_LETTERS for metrics and logs.
    pub dlq: bool,
    /// The nightly reconciliation.
    pub reconciler: bool,
    /// Start the PSP simulator (when no PSP URL is configured).
    pub psp_sim: bool,
    /// Start a nats-server of our own (when no NATS URL is configured).
    pub nats_server: bool,
    /// The operator console (web). Not in `all()`: tests start it on a port of their own.
    pub console: bool,
}

impl Parts {
    pub fn all() -> Self {
        Self {
            payment: true,
            wallet: true,
            ledger: true,
            dlq: true,
            reconciler: true,
            psp_sim: true,
            nats_server: true,
            console: false,
        }
    }
    fn any_service(&self) -> bool {
        self.payment || self.wallet || self.ledger || self.dlq || self.reconciler
    }
}

/// A running paystream process.
pub struct App {
    pub http_addr: SocketAddr,
    /// Where the operator console listens, when it runs here.
    pub console_addr: Option<SocketAddr>,
    pub psp_url: Option<String>,
    pub nats_url: Option<String>,
    pub db: Option<DatabaseConnection>,
    pub readiness: Readiness,
    /// The payment service's gate to the PSP (circuit breaker, rate limiter), when it runs here.
    pub psp_gate: Option<Arc<paystream_payment::gate::Gate>>,
    trigger: Trigger,
    tasks: JoinSet<()>,
    /// The PSP simulator, stopped only after the services drained: their last PSP calls on
    /// shutdown still get answers instead of becoming UNKNOWN.
    sim: Option<SimTask>,
    nats_server: Option<NatsServer>,
}

struct SimTask {
    stop: Trigger,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimTask {
    /// An `App` dropped without `shutdown` (start-up failed) leaves no simulator behind.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// Requests shutdown and waits for every task to drain.
    pub async fn shutdown(mut self) {
        self.trigger.fire();
        while self.tasks.join_next().await.is_some() {}
        if let Some(mut sim) = self.sim.take() {
            sim.stop.fire();
            let _ = (&mut sim.task).await;
        }
        if let Some(server) = self.nats_server.take() {
            server.stop().await;
        }
    }

    /// Runs until SIGINT/SIGTERM, then shuts down gracefully.
    /// Runs until SIGINT/SIGTERM, then shuts down gracefully. A task that ends on its own (a bug
    /// that panicked a consumer, say) is not left silently dead: the process shuts down and
    /// reports it, so its supervisor restarts it and the messages are redelivered.
    pub async fn run_until_signal(mut self) -> Result<(), String> {
        let sim_ended = async {
            match self.sim.as_mut() {
                Some(sim) => (&mut sim.task).await,
                None => std::future::pending().await,
            }
        };
        let failure = tokio::select! {
            () = shutdown::signal() => None,
            ended = self.tasks.join_next() => Some(match ended {
                Some(Err(e)) if e.is_panic() => format!("a task panicked: {e}"),
                _ => "a task stopped unexpectedly".to_owned(),
            }),
            ended = sim_ended => Some(match ended {
                Err(e) if e.is_panic() => format!("the PSP simulator panicked: {e}"),
                _ => "the PSP simulator stopped unexpectedly".to_owned(),
            }),
        };
        if let Some(f) = &failure {
            tracing::error!(failure = %f, "shutting down");
        }
        self.shutdown().await;
        failure.map_or(Ok(()), Err)
    }

    pub fn shutdown_signal(&self) -> Shutdown {
        self.trigger.subscribe()
    }
}

/// Simulator settings from the configuration.
pub fn sim_config(cfg: &Config) -> SimConfig {
    SimConfig {
        store_path: cfg.client.data_dir.join("psp-sim.sqlite"),
        latency_ms: cfg.psp_sim_latency_ms,
        latency_p99_ms: cfg.psp_sim_latency_p99_ms,
        rate_limit_per_s: cfg.psp_sim_rate_limit,
        tls_cert: cfg.psp_sim_tls_cert.clone(),
        tls_key: cfg.psp_sim_tls_key.clone(),
        error_rate: cfg.psp_sim_error_rate,
        timeout_rate: cfg.psp_sim_timeout_rate,
        lost_response_rate: cfg.psp_sim_lost_response_rate,
        decline_rate: cfg.psp_sim_decline_rate,
        hang_ms: u64::try_from(cfg.psp_sim_hang.as_millis()).unwrap_or(u64::MAX),
        api_key: cfg.psp_sim_api_key.as_ref().map(|s| s.0.clone()),
        seed: cfg.psp_sim_seed,
        drift: Drift {
            missing_rate: cfg.psp_sim_drift_missing_rate,
            amount_rate: cfg.psp_sim_drift_amount_rate,
            duplicate_rate: cfg.psp_sim_drift_duplicate_rate,
            unknown_rows: cfg.psp_sim_drift_unknown_rows,
        },
    }
}

/// Starts the simulator on `cfg.psp_sim_addr`; returns its base URL and its task, which runs
/// until its own trigger fires.
async fn start_sim(cfg: &Config) -> anyhow::Result<(String, SimTask)> {
    let (stop, shutdown) = shutdown::channel();
    let sim = Simulator::open(sim_config(cfg))
        .await
        .context("opening the PSP simulator")?;
    let listener = tokio::net::TcpListener::bind(cfg.psp_sim_addr)
        .await
        .with_context(|| format!("binding the PSP simulator to {}", cfg.psp_sim_addr))?;
    let addr = listener.local_addr()?;
    let url = sim.base_url(addr);
    let tls = sim.serves_https();
    let task = tokio::spawn(async move {
        if let Err(e) = sim.serve(listener, shutdown.into_future()).await {
            tracing::error!(error = %e, "PSP simulator stopped");
        }
    });
    tracing::info!(
        %url,
        tls,
        rate_limit_per_s = ?cfg.psp_sim_rate_limit,
        latency_ms = cfg.psp_sim_latency_ms,
        latency_p99_ms = ?cfg.psp_sim_latency_p99_ms,
        "PSP simulator listening"
    );
    Ok((url, SimTask { stop, task }))
}

/// Connects to the database, retrying until it answers or shutdown; then migrates.
pub async fn connect_db(cfg: &Config, mut stop: Shutdown) -> anyhow::Result<DatabaseConnection> {
    let url = cfg.database_url();
    let mut delay = Duration::from_millis(200);
    loop {
        match db::connect(&url).await {
            Ok(conn) => {
                // Instances starting together race to migrate; the loser's error (a table or
                // migration row the winner just created) goes away on the next try.
                let mut tries = 0;
                loop {
                    match Migrator::up(&conn, None).await {
                        Ok(()) => return Ok(conn),
                        Err(e) if tries < 5 => {
                            tries += 1;
                            tracing::warn!(error = %e, tries, "migration failed; retrying");
                            tokio::time::sleep(Duration::from_millis(300 * tries)).await;
                        }
                        Err(e) => return Err(e).context("migrating the database"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "database not reachable; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {},
                    () = stop.wait() => anyhow::bail!("shut down while waiting for the database"),
                    () = shutdown::signal() => anyhow::bail!("stopped by a signal while waiting for the database"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Starts the parts asked for. A permission the NATS server refuses this process while it starts
/// (creating a stream or a consumer, serving an endpoint) ends the start at once with the
/// server's reason: the request it refused would otherwise only time out.
pub async fn start(cfg: Config, parts: Parts) -> anyhow::Result<App> {
    let nats_errors = nats::ServerErrors::default();
    tokio::select! {
        app = start_parts(cfg, parts, nats_errors.clone()) => app,
        refusal = nats_errors.refused() => anyhow::bail!(
            "starting: NATS refused this user ({refusal}); see nats/accounts.conf"
        ),
    }
}

async fn start_parts(
    cfg: Config,
    parts: Parts,
    nats_errors: nats::ServerErrors,
) -> anyhow::Result<App> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    if let Some(spec) = &cfg.failpoints {
        paystream_common::failpoint::arm(spec).map_err(anyhow::Error::msg)?;
    }
    let metrics = telemetry::install_metrics();
    let readiness = Readiness::default();
    // `/readyz` is served from the next line on, and each part registers what it waits for only
    // as it starts: until start-up is over, nothing may look ready.
    let starting = readiness.component("start-up");
    let (trigger, shutdown) = shutdown::channel();
    let mut tasks = JoinSet::new();
    let (http_addr, http_task) =
        telemetry::serve_http(cfg.http_addr, metrics, readiness.clone(), shutdown.clone())
            .await
            .with_context(|| format!("binding the HTTP endpoint to {}", cfg.http_addr))?;
    tasks.spawn(async move {
        let _ = http_task.await;
    });
    tracing::info!(%http_addr, "metrics and health endpoints listening");

    let mut nats_server = None;
    let mut cfg = cfg;
    if cfg.client.nats_url.is_none() && parts.nats_server {
        let bin = nats_server::locate(cfg.nats_server_bin.as_deref()).await?;
        // Secure by default: the same accounts and users as nats/server.conf, with passwords
        // generated into the data dir (0600) where client commands find them.
        let users = nats::embedded_users(&cfg.client)
            .with_context(|| format!("writing {}", cfg.client.nats_users_file().display()))?;
        let server = NatsServer::start(ServerOptions {
            bin,
            store_dir: cfg.client.data_dir.join("nats"),
            port: cfg.embedded_nats_port,
            sync_interval: None,
            extra_conf: nats_server::secure_conf(&users),
        })
        .await?;
        if cfg.client.nats_user.is_none() && cfg.client.nats_creds.is_none() {
            cfg.client.nats_user = Some(nats::Role::Service.user().to_owned());
            cfg.client.nats_password = users.get(nats::Role::Service.user()).cloned();
        }
        let url = server.url();
        std::fs::create_dir_all(&cfg.client.data_dir)?;
        std::fs::write(cfg.client.nats_url_file(), &url)
            .with_context(|| format!("writing {}", cfg.client.nats_url_file().display()))?;
        tracing::info!(%url, "embedded nats-server started");
        let contexts = nats::write_contexts(&cfg.client, &url, &users)
            .with_context(|| format!("writing {}", cfg.client.nats_contexts_dir().display()))?;
        let config_home = contexts
            .parent()
            .and_then(std::path::Path::parent)
            .unwrap_or(&contexts);
        println!(
            "NATS CLI contexts for {} are in {}; e.g.\n  XDG_CONFIG_HOME={} nats --context operator micro ls\n  paystream dlq list --context {}",
            users.keys().cloned().collect::<Vec<_>>().join(", "),
            contexts.display(),
            config_home.display(),
            contexts.join("operator.json").display()
        );
        cfg.client.nats_url = Some(url);
        // The services speak to their own server as its `paystream` user, whatever NATS CLI
        // context the shell has selected.
        cfg.client.nats_context = None;
        nats_server = Some(server);
    }

    let mut psp_url = cfg.psp_url.clone();
    let mut sim = None;
    if psp_url.is_none() && parts.psp_sim {
        let (url, task) = start_sim(&cfg).await?;
        psp_url = Some(url);
        sim = Some(task);
    }

    let mut console_addr = None;
    if parts.console {
        let (addr, task) = crate::console::start(
            &cfg.client,
            cfg.console_addr,
            cfg.console_session_ttl,
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("binding the operator console to {}", cfg.console_addr))?;
        tasks.spawn(async move {
            let _ = task.await;
        });
        console_addr = Some(addr);
    }
    let mut app = App {
        http_addr,
        console_addr,
        psp_url: psp_url.clone(),
        nats_url: cfg.client.nats_url.clone(),
        db: None,
        readiness: readiness.clone(),
        psp_gate: None,
        trigger,
        tasks,
        sim,
        nats_server,
    };
    if !parts.any_service() {
        // Nothing to follow (the simulator alone): still keep `paystream_ready` current.
        app.tasks.spawn(health::watch(
            health::Watched {
                nats: None,
                database: None,
            },
            readiness.clone(),
            shutdown.clone(),
        ));
        starting.store(true, Ordering::Relaxed);
        return Ok(app);
    }

    let db_ready = readiness.component("database");
    let conn = connect_db(&cfg, shutdown.clone()).await?;
    db_ready.store(true, Ordering::Relaxed);
    app.db = Some(conn.clone());
    app.tasks.spawn(paystream_common::db::checkpointer(
        conn.clone(),
        shutdown.clone(),
    ));

    let streams_ready = readiness.component("streams");
    let client = nats::connect_reporting(
        &cfg.client,
        "paystream",
        nats::Role::Service,
        true,
        &nats_errors,
    )
    .await?;
    // From here on `/readyz` follows both connections at run time, not only at start-up.
    let nats_ready = readiness.component("nats");
    app.tasks.spawn(health::watch(
        health::Watched {
            nats: Some((client.clone(), nats_ready)),
            database: Some((conn.clone(), db_ready)),
        },
        readiness.clone(),
        shutdown.clone(),
    ));
    let js = nats::jetstream(client.clone());
    // NATS may still be starting (or be down): wait for it, as for the database. A definition
    // the server refuses is not worth waiting for.
    let mut delay = Duration::from_millis(200);
    let mut stop = shutdown.clone();
    loop {
        match streams::ensure_streams(&js, &cfg).await {
            Ok(()) => break,
            Err(
                e @ (streams::TopologyError::Definition { .. }
                | streams::TopologyError::RetryPolicy { .. }),
            ) => {
                return Err(anyhow::Error::new(e).context("creating streams"));
            }
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "streams not ready (is NATS up?); retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {},
                    () = stop.wait() => anyhow::bail!("shut down while waiting for NATS"),
                    () = shutdown::signal() => anyhow::bail!("stopped by a signal while waiting for NATS"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    streams_ready.store(true, Ordering::Relaxed);

    if parts.payment {
        let psp_base = psp_url
            .as_deref()
            .context("PAYSTREAM_PSP_URL is not set and no simulator was started")?;
        let psp = HttpPsp::new(
            psp_base,
            cfg.psp_api_key.as_ref().map(|s| s.0.clone()),
            cfg.psp_timeout,
            cfg.psp_connect_timeout,
            cfg.psp_ca.as_deref(),
        )?;
        app.psp_gate = Some(
            paystream_payment::start(
                &cfg,
                conn.clone(),
                js.clone(),
                Arc::new(psp),
                &readiness,
                shutdown.clone(),
                &mut app.tasks,
            )
            .await?,
        );
    }
    if parts.wallet {
        let applier = paystream_wallet::Wallet { db: conn.clone() };
        apply::start(
            &cfg,
            &js,
            conn.clone(),
            applier,
            &readiness,
            shutdown.clone(),
            &mut app.tasks,
        )
        .await?;
    }
    if parts.ledger {
        let applier = paystream_ledger::Ledger { db: conn.clone() };
        apply::start(
            &cfg,
            &js,
            conn.clone(),
            applier,
            &readiness,
            shutdown.clone(),
            &mut app.tasks,
        )
        .await?;
    }
    if parts.ledger {
        app.tasks.spawn(paystream_ledger::balance_watch::run(
            conn.clone(),
            cfg.ledger_check_interval,
            shutdown.clone(),
        ));
    }
    // Each service reports the lag of the durable consumers it owns.
    for (on, stream, service) in [
        (
            parts.payment,
            streams::PAYMENTS,
            paystream_payment::CONSUMER,
        ),
        (
            parts.wallet,
            streams::PAYMENT_EVENTS,
            paystream_wallet::CONSUMER,
        ),
        (
            parts.ledger,
            streams::PAYMENT_EVENTS,
            paystream_ledger::CONSUMER,
        ),
        (parts.dlq, streams::DEAD_LETTERS, crate::dlq_watch::CONSUMER),
    ] {
        if on {
            app.tasks
                .spawn(lag::run(js.clone(), stream, service, shutdown.clone()));
        }
    }
    if parts.dlq {
        crate::dlq_watch::start(
            &cfg,
            conn.clone(),
            js.clone(),
            &readiness,
            shutdown.clone(),
            &mut app.tasks,
        )
        .await?;
        crate::api::start(
            client.clone(),
            conn.clone(),
            js.clone(),
            crate::recon::reconciler(&cfg, conn.clone(), psp_url.clone()),
            app.psp_gate.clone(),
            shutdown.clone(),
            &mut app.tasks,
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS service API: {e}"))?;
    }
    if parts.reconciler {
        let rec = crate::recon::reconciler(&cfg, conn.clone(), psp_url.clone());
        app.tasks.spawn(paystream_reconciler::schedule::run(
            rec,
            cfg.recon_at,
            cfg.recon_tz.clone(),
            shutdown.clone(),
        ));
    }
    starting.store(true, Ordering::Relaxed);
    Ok(app)
}
