//! The payment service: consumes PAYMENTS (durable consumer `payment`), executes each payment
//! exactly once against the PSP, and publishes the outcome to PAYMENT_EVENTS through an outbox.
//!
//! A message flows: `intake` (decode, validate) → `execute` (EXECUTING for the batch, then one task
//! per payment: PSP call, outcome) or `cancel` (refund, one task each) → `pipeline`'s recorder
//! (state + history + outbox in one transaction, grouped as outcomes arrive) → `outbox` (publish).
//! Every PSP call passes one `gate` (`breaker`, `limiter`) and holds one of
//! `PAYSTREAM_PSP_CONCURRENCY` slots.
//!
//! Architecture Invariant: only this crate changes payment state, and only through
//! `paystream_common::state::transition`.

pub mod attempts;
pub mod breaker;
pub mod cancel;
pub mod entity;
pub mod execute;
pub mod gate;
pub mod intake;
pub mod limiter;
pub mod outbox;
pub mod outcome;
pub mod pipeline;
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
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

pub const CONSUMER: &str = "payment";

/// Starts the payment service's tasks into `tasks`; they run until `shutdown`. Returns the gate
/// its PSP calls pass, for the process to look at (its state is also a metric).
pub async fn start<P: psp::Psp>(
    cfg: &Config,
    db: DatabaseConnection,
    js: jetstream::Context,
    psp: Arc<P>,
    readiness: &Readiness,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<Arc<gate::Gate>, TopologyError> {
    let source = consume::Source::partitioned(&js, cfg, CONSUMER, db.clone()).await?;
    let wake = Arc::new(Notify::new());
    let call_max = cfg.psp_timeout + cfg.psp_connect_timeout;
    let (recorder, recording) = pipeline::Recorder::new(db.clone(), wake.clone());
    let pipe = Arc::new(pipeline::Pipeline {
        db: db.clone(),
        psp,
        gate: Arc::new(gate::Gate::new(cfg.psp_rate_limit, call_max)),
        slots: Arc::new(Semaphore::new(usize::from(cfg.psp_concurrency))),
        flights: pipeline::Flights::default(),
        recorder,
        shutdown: shutdown.clone(),
        // One call's deadline, and a sweep interval for its outcome to be committed.
        execution_lease: call_max + cfg.sweep_interval,
    });
    let intake = intake::Intake { pipe: pipe.clone() };
    let loop_cfg = LoopConfig::new(CONSUMER, cfg, Some(db.clone()));
    let ready = readiness.component("payment consumer");
    // The consumer and the sweeper hand outcomes to the recorder, which commits events; the relay
    // must outlive all three, so that what they commit while draining on shutdown is published
    // before the process exits. The recorder ends once the others have dropped the pipeline.
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
        // One payment: a lookup and maybe a charge, each waiting for a slot and the gate.
        lease: call_max * 2 + cfg.sweep_interval * 2,
    };
    let gate = pipe.gate.clone();
    producers.spawn(sweeper::run(
        pipe,
        sweeper_cfg,
        wake.clone(),
        shutdown.clone(),
    ));
    producers.spawn(recording);
    let (relay_stop, relay_shutdown) = paystream_common::shutdown::channel();
    tasks.spawn(supervise(producers, relay_stop, shutdown));
    tasks.spawn(outbox::run(db, js, wake, cfg.member_ttl, relay_shutdown));
    Ok(gate)
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
