//! The payment service: consumes PAYMENTS (durable consumer `payment`), executes each payment
//! exactly once against the PSP, and publishes the outcome to PAYMENT_EVENTS through an outbox.
//!
//! A message flows: `intake` (decode, validate) → `execute` (EXECUTING, PSP call, outcome) or
//! `cancel` (refund) → `store` (state + history + outbox in one transaction) → `outbox` (publish).
//!
//! Architecture Invariant: only this crate changes payment state, and only through
//! `paystream_common::state::transition`.

pub mod cancel;
pub mod entity;
pub mod execute;
pub mod intake;
pub mod outbox;
pub mod outcome;
pub mod psp;
pub mod store;
pub mod sweeper;

use std::sync::Arc;

use async_nats::jetstream;
use paystream_common::config::Config;
use paystream_common::consume::{self, LoopConfig};
use paystream_common::shutdown::{Shutdown, Trigger};
use paystream_common::streams::TopologyError;
use paystream_common::telemetry::Readiness;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub const CONSUMER: &str = "payment";

/// Rounds of PSP calls that `n` payments take at the configured concurrency.
fn rounds_of(n: usize, concurrency: u16) -> u32 {
    u32::try_from(n.div_ceil(usize::from(concurrency.max(1)))).unwrap_or(u32::MAX)
}

/// Starts the payment service's tasks into `tasks`; they run until `shutdown`.
pub async fn start<P: psp::Psp>(
    cfg: &Config,
    db: DatabaseConnection,
    js: jetstream::Context,
    psp: Arc<P>,
    readiness: &Readiness,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<(), TopologyError> {
    let source = consume::Source::partitioned(&js, cfg, CONSUMER, db.clone()).await?;
    let rounds = |n: usize| rounds_of(n, cfg.psp_concurrency);
    let wake = Arc::new(Notify::new());
    let intake = intake::Intake {
        db: db.clone(),
        psp: psp.clone(),
        psp_concurrency: usize::from(cfg.psp_concurrency),
        outbox: wake.clone(),
        execution_lease: (cfg.psp_timeout + cfg.psp_connect_timeout)
            * rounds(usize::from(cfg.batch_max)),
    };
    let loop_cfg = LoopConfig::new(CONSUMER, cfg, Some(db.clone()));
    let ready = readiness.component("payment consumer");
    // The consumer and the sweeper commit events; the relay must outlive both, so that what they
    // commit while draining on shutdown is published before the process exits.
    let mut producers = JoinSet::new();
    producers.spawn(consume::run(
        source,
        loop_cfg,
        intake,
        shutdown.clone(),
        ready,
    ));
    let sweeper_cfg = sweeper::SweeperConfig {
        interval: cfg.sweep_interval,
        executing_timeout: cfg.executing_timeout,
        attempts_max: cfg.sweep_max_attempts,
        psp_concurrency: usize::from(cfg.psp_concurrency),
        // One sweep: up to 256 payments, each a lookup and maybe a charge.
        lease: (cfg.psp_timeout * 2 + cfg.psp_connect_timeout * 2) * rounds(256)
            + cfg.sweep_interval,
    };
    producers.spawn(sweeper::run(
        db.clone(),
        psp,
        sweeper_cfg,
        wake.clone(),
        shutdown.clone(),
    ));
    let (relay_stop, relay_shutdown) = paystream_common::shutdown::channel();
    tasks.spawn(supervise(producers, relay_stop, shutdown));
    tasks.spawn(outbox::run(db, js, wake, cfg.member_ttl, relay_shutdown));
    Ok(())
}

/// Waits for the producers of events, then stops the relay (which makes its last pass). A
/// producer that panics or ends before shutdown ends this task too (re-raising the panic), so the
/// process notices it as it would the producer itself.
async fn supervise(mut producers: JoinSet<()>, relay_stop: Trigger, shutdown: Shutdown) {
    while let Some(ended) = producers.join_next().await {
        if let Err(e) = ended
            && e.is_panic()
        {
            relay_stop.fire();
            std::panic::resume_unwind(e.into_panic());
        }
        if !shutdown.is_fired() {
            relay_stop.fire();
            return;
        }
    }
    relay_stop.fire();
}
