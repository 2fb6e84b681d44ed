//! Nightly: at `PAYSTREAM_RECON_AT` in `PAYSTREAM_RECON_TZ`, reconcile the previous day, once.
//! Several instances may run this loop: the per-day lease lets one run at a time, and a run
//! that finds the day already reconciled (checked under the lease) does nothing.

use std::time::Duration;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime as Zoned};
use paystream_common::shutdown::Shutdown;

use crate::{ReconError, Reconciler};

/// How often an instance that lost the race (or failed) tries the day again.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Tries per night before waiting for the next one (a failing day is retried for an hour).
const TRIES_MAX: u32 = 120;
/// Longest single sleep, so a changed wall clock is noticed.
const SLEEP_MAX: Duration = Duration::from_secs(60);

/// The first instant strictly after `now` at which the local time in `tz` is `at`. A time that
/// does not exist on a day (a DST gap) fires at the first instant after the gap.
pub fn next_fire(now: Timestamp, at: Time, tz: &TimeZone) -> Result<Zoned, jiff::Error> {
    let local = now.to_zoned_datetime(tz.clone());
    let today = local.date().to_datetime(at).to_zoned_datetime(tz.clone())?;
    if today.timestamp() > now {
        return Ok(today);
    }
    local
        .date()
        .tomorrow()?
        .to_datetime(at)
        .to_zoned_datetime(tz.clone())
}

/// The settlement day that a firing reconciles: the day before, by the schedule's calendar.
pub fn day_for(fire: &Zoned) -> Result<Date, jiff::Error> {
    fire.date().yesterday()
}

/// Runs until shutdown: sleeps until the next firing, then reconciles the previous day.
pub async fn run(rec: Reconciler, at: Time, tz: TimeZone, mut shutdown: Shutdown) {
    loop {
        let fire = match next_fire(Timestamp::now(), at, &tz) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot compute the next reconciliation time");
                return;
            }
        };
        tracing::info!(at = %fire, "next reconciliation");
        loop {
            let left = fire.timestamp().duration_since(Timestamp::now());
            let Ok(left) = Duration::try_from(left) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(left.min(SLEEP_MAX)) => {},
                () = shutdown.wait() => return,
            }
        }
        let Ok(date) = day_for(&fire) else { continue };
        nightly(&rec, date, &mut shutdown).await;
    }
}

/// Reconciles `date` unless it already was, retrying while another instance holds it or a run
/// fails, at most `TRIES_MAX` times.
async fn nightly(rec: &Reconciler, date: Date, shutdown: &mut Shutdown) {
    for _ in 0..TRIES_MAX {
        match rec.run_once(date).await {
            Ok(Some(report)) => {
                tracing::info!(%date, run_id = %report.run_id, corrections = report.corrections,
                    manual_review = report.manual_review_total, "nightly reconciliation done");
                return;
            }
            Ok(None) => {
                tracing::info!(%date, "day already reconciled");
                return;
            }
            Err(ReconError::Busy(_)) => {
                tracing::info!(%date, "another instance is reconciling this day; checking again later");
            }
            Err(e) => tracing::error!(%date, error = %e, "nightly reconciliation failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_INTERVAL) => {},
            () = shutdown.wait() => return,
        }
    }
    tracing::error!(%date, "nightly reconciliation gave up for tonight");
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fires_at_the_next_occurrence() {
        let utc = TimeZone::UTC;
        let midnight = time(0, 0, 0, 0);
        let f = next_fire(ts("2026-11-30T15:00:00Z"), midnight, &utc).unwrap();
        assert_eq!(f.timestamp(), ts("2026-12-01T00:00:00Z"));
        assert_eq!(day_for(&f).unwrap(), jiff::civil::date(2026, 11, 30));
        // Exactly at the time: the next day (a firing never repeats itself).
        let f = next_fire(ts("2026-12-01T00:00:00Z"), midnight, &utc).unwrap();
        assert_eq!(f.timestamp(), ts("2026-12-02T00:00:00Z"));
        let f = next_fire(ts("2026-11-30T23:59:59Z"), midnight, &utc).unwrap();
        assert_eq!(f.timestamp(), ts("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn follows_the_zone() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let f = next_fire(ts("2026-11-30T22:30:00Z"), time(0, 0, 0, 0), &paris).unwrap();
        assert_eq!(
            f.timestamp(),
            ts("2026-11-30T23:00:00Z"),
            "midnight in Paris"
        );
        assert_eq!(day_for(&f).unwrap(), jiff::civil::date(2026, 11, 30));
        // 02:30 does not exist on 2026-03-29 in Paris (clocks jump 02:00 → 03:00).
        let f = next_fire(ts("2026-03-28T12:00:00Z"), time(2, 30, 0, 0), &paris).unwrap();
        assert_eq!(f.timestamp(), ts("2026-03-29T01:30:00Z"));
    }

    proptest::proptest! {
        #[test]
        fn always_within_a_day_after_now(secs in 0i64..4_000_000_000, h in 0i8..24, m in 0i8..60) {
            let now = Timestamp::from_second(secs).unwrap();
            for tz in [TimeZone::UTC, TimeZone::get("America/New_York").unwrap()] {
                let f = next_fire(now, time(h, m, 0, 0), &tz).unwrap();
                proptest::prop_assert!(f.timestamp() > now);
                proptest::prop_assert!(f.timestamp().duration_since(now).as_secs() <= 25 * 3600);
            }
        }
    }
}
