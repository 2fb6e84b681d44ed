//! Readiness that follows the connections while the process runs, not only at start-up: the NATS
//! client's connection state and a database ping flip the `nats` and `database` components of
//! [`Readiness`], so `/readyz` answers 503 naming what is down for as long as it is down, and
//! `paystream_ready` follows without anyone polling `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::gauge;
use sea_orm::DatabaseConnection;

use crate::shutdown::Shutdown;
use crate::telemetry::{Readiness, names};

/// How often the connections are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A ping slower than this counts as failed. Generous: SQLite has one pooled connection, which a
/// large batch may hold for a while.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed pings in a row before the database counts as down, so one slow ping under load does
/// not flap readiness.
const PING_FAILURES_MAX: u32 = 2;

/// What the watcher follows; either may be absent (a process without a database, say).
pub struct Watched {
    pub nats: Option<(async_nats::Client, Arc<AtomicBool>)>,
    pub database: Option<(DatabaseConnection, Arc<AtomicBool>)>,
}

/// Runs until shutdown: every [`CHECK_INTERVAL`], sets the flags from the NATS connection state
/// and a bounded database ping, logs each change once, and refreshes `paystream_ready`.
pub async fn watch(watched: Watched, readiness: Readiness, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_failures = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        if let Some((client, flag)) = &watched.nats {
            let state = client.connection_state();
            let up = state == async_nats::connection::State::Connected;
            flip(flag, up, "nats", &format!("{state}"));
        }
        if let Some((db, flag)) = &watched.database {
            let result = match tokio::time::timeout(PING_TIMEOUT, db.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
            };
            match result {
                Ok(()) => {
                    ping_failures = 0;
                    flip(flag, true, "database", "ping answered");
                }
                Err(e) => {
                    ping_failures = ping_failures.saturating_add(1);
                    if ping_failures >= PING_FAILURES_MAX {
                        flip(flag, false, "database", &e);
                    }
                }
            }
        }
        let ready = readiness.not_ready().is_empty();
        gauge!(names::READY).set(if ready { 1.0 } else { 0.0 });
    }
}

/// Sets `flag` to `up`, logging only a change.
fn flip(flag: &AtomicBool, up: bool, what: &str, detail: &str) {
    if flag.swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!(
                dependency = what,
                detail,
                "dependency reachable again: ready"
            );
        } else {
            tracing::warn!(
                dependency = what,
                detail,
                "dependency unreachable: not ready"
            );
        }
    }
}
