//! The ledger's own alarm: every `PAYSTREAM_LEDGER_CHECK_INTERVAL` it sums debits and credits per
//! currency and publishes the difference as `paystream_ledger_imbalance_minor{currency}` (0 when
//! balanced), so an imbalance pages someone instead of waiting for a `ledger check`. Postings are
//! asserted balanced before commit, so a non-zero value means someone wrote the table by hand or a
//! bug slipped past the assertion. The label is an ISO 4217 code (bounded: `Currency` holds only
//! those), one series per currency the ledger holds.

use std::time::Duration;

use metrics::gauge;
use paystream_common::shutdown::Shutdown;
use paystream_common::telemetry::names;
use sea_orm::DatabaseConnection;

use crate::store;

/// Runs until shutdown; the first check is at start-up.
pub async fn run(db: DatabaseConnection, interval: Duration, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        match store::totals_by_currency(&db).await {
            Ok(totals) => {
                for (currency, (debits, credits)) in totals {
                    let imbalance = debits.saturating_sub(credits);
                    if imbalance != 0 {
                        tracing::error!(%currency, debits, credits, "ledger unbalanced");
                    }
                    gauge!(names::LEDGER_IMBALANCE, "currency" => currency).set(imbalance as f64);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "ledger balance check failed; next interval retries")
            }
        }
    }
}
