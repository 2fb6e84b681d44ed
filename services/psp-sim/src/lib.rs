//! A Stripe-like PSP simulator: idempotent charges and refunds keyed by payment id, its own
//! SQLite store (records survive restarts), scripted and random faults, a real PSP's manners
//! (log-normal latency, a rate limit answered 429, HTTPS), and settlement files with
//! configurable drift for reconciliation tests.
//!
//! Requests flow (`tls`) → `http` (`limit`, `latency`, auth, metrics) → `payments` / `refunds`
//! (faults, then the store) → `store` (the only SQL). Reads are `lookup`, `stats` and
//! `settlement` (+ `drift`).
//!
//! Invariant: money moves at most once per key and direction — one charge and one refund per
//! payment id — whatever the faults, the concurrency or the restarts (see `store`).

mod auth;
mod brownout;
mod clock;
mod config;
mod drift;
mod error;
mod faults;
mod http;
mod latency;
mod limit;
mod lookup;
mod payments;
mod record;
mod refunds;
mod request;
mod script;
mod settlement;
mod stats;
mod store;
mod telemetry;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Drift, SimConfig};
pub use drift::{RowDrift, row_drift};
pub use error::SimError;
pub use stats::Stats;

use faults::Dice;
use limit::RateLimit;
use store::Store;
use tokio_rustls::TlsAcceptor;

/// How often the rate-limited count kept in memory is saved in the store while serving.
const SAVE_COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// An opened simulator: its store, its configuration and its fault dice. Cheap to clone; all
/// clones share one store.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

/// What every request handler shares.
pub(crate) struct Shared {
    /// Validated at open; handlers read faults, drift and the API key from it.
    pub(crate) cfg: SimConfig,
    /// The records that make "same key, same result" hold across restarts.
    pub(crate) store: Store,
    /// One shared generator, so a seeded run draws one reproducible sequence.
    pub(crate) dice: Dice,
    /// A brownout ordered through `/v1/sim/brownout`: every PSP call fails until it ends.
    pub(crate) brownout: brownout::Brownout,
    /// The request-rate limit, when one is configured.
    pub(crate) rate_limit: Option<RateLimit>,
    /// Set when a certificate and key are configured: the simulator then serves HTTPS.
    tls: Option<TlsAcceptor>,
    /// Flipped to true when serving shuts down, so held requests (latency, timeouts, lost
    /// answers) end at once instead of delaying the graceful shutdown by up to `hang_ms`.
    stopping: watch::Sender<bool>,
}

impl Shared {
    /// Holds the current request for `ms` milliseconds, or until shutdown begins.
    pub(crate) async fn hold_ms(&self, ms: u64) {
        if ms == 0 {
            return;
        }
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
    }
}

impl Simulator {
    /// Validates `cfg`, loads the TLS certificate and key if configured, opens (or creates) the
    /// store and its directory, and registers the metrics.
    pub async fn open(cfg: SimConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key).await?),
            _ => None,
        };
        let store = Store::open(&cfg.store_path).await?;
        let dice = Dice::new(&cfg);
        let rate_limit = cfg.rate_limit_per_s.map(RateLimit::per_second);
        telemetry::register();
        tracing::info!(config = ?cfg, "PSP simulator store opened");
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                store,
                dice,
                brownout: brownout::Brownout::default(),
                rate_limit,
                tls,
                stopping: watch::Sender::new(false),
            }),
        })
    }

    /// Whether [`Simulator::serve`] speaks HTTPS (a certificate and key are configured).
    pub fn serves_https(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// The base URL a client calls the simulator at when it listens on `addr`: `https://` when
    /// it serves HTTPS (the certificate must then name that address), else `http://`.
    pub fn base_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.serves_https() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// Every route: `/v1/payments`, `/v1/payments/{key}`, `/v1/refunds`,
    /// `/v1/settlements/{date}`, `/v1/sim/stats` and `/healthz`.
    pub fn router(&self) -> axum::Router {
        http::router(self)
    }

    /// Serves the routes on `listener` (over TLS when configured) until `shutdown` completes,
    /// then finishes the requests in flight (held ones are released at once), saves the
    /// rate-limited count and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SimError> {
        let router = self.router();
        let shared = Arc::clone(&self.shared);
        let signal = async move {
            shutdown.await;
            shared.stopping.send_replace(true);
        };
        let saver = tokio::spawn(save_counts_until_stopped(Arc::clone(&self.shared)));
        let served = match self.shared.tls.clone() {
            Some(acceptor) => {
                axum::serve(tls::TlsListener::new(listener, acceptor), router)
                    .with_graceful_shutdown(signal)
                    .await
            }
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(signal)
                    .await
            }
        };
        // Also when serving failed, so the saver ends.
        self.shared.stopping.send_replace(true);
        if let Err(e) = saver.await {
            tracing::error!(error = %e, "the simulator's count saver panicked");
        }
        let saved = self.shared.store.save_rate_limited().await;
        served?;
        saved
    }

    /// Counts over the whole store, as `GET /v1/sim/stats` answers them.
    pub async fn stats(&self) -> Result<Stats, SimError> {
        self.shared.store.stats().await
    }
}

/// Saves the rate-limited count every [`SAVE_COUNTS_INTERVAL`] until serving stops; a failed
/// save keeps the count in memory for the next one.
async fn save_counts_until_stopped(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SAVE_COUNTS_INTERVAL) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
        if let Err(e) = shared.store.save_rate_limited().await {
            tracing::warn!(error = %e, "saving the rate-limited count failed; kept in memory");
        }
    }
}
