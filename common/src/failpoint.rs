//! Crash points for tests: `PAYSTREAM_FAILPOINTS="payment.after_executing@2,outbox.after_publish@1"`
//! makes the process abort (no destructors, no flush: a crash) the n-th time it reaches that
//! point. Unset in production, where `hit` is one relaxed atomic load.
//!
//! The points sit in the windows that matter for exactly-once: after EXECUTING is committed and
//! before the PSP answers, after the PSP answered and before the outcome is committed, after the
//! outcome is committed and before the request is acked, after events are published and before
//! they are marked, after an event is applied and before it is acked.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static ARMED: AtomicBool = AtomicBool::new(false);
static POINTS: OnceLock<HashMap<String, (u32, AtomicU32)>> = OnceLock::new();

/// Parses `name@n,…` (n ≥ 1). Call once at start-up.
pub fn arm(spec: &str) -> Result<(), String> {
    let mut points = HashMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('@')
            .ok_or_else(|| format!("failpoint {part:?}: expected name@n"))?;
        let n: u32 = n
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("failpoint {part:?}: n must be ≥ 1"))?;
        points.insert(name.to_owned(), (n, AtomicU32::new(0)));
    }
    if points.is_empty() {
        return Ok(());
    }
    POINTS
        .set(points)
        .map_err(|_| "failpoints are armed once".to_owned())?;
    ARMED.store(true, Ordering::Release);
    Ok(())
}

/// Aborts the process if `name` is armed and this is its n-th hit.
pub fn hit(name: &str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    if let Some((n, count)) = POINTS.get().and_then(|p| p.get(name))
        && count.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
