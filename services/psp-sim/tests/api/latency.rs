//! Log-normal latency: over many requests, the latencies the client records have the configured
//! median and 99th percentile (a fixed latency is in `faults`).

use std::time::Instant;

use futures::StreamExt;
use reqwest::StatusCode;

use crate::helpers::spawn_with;

const MEDIAN_MS: u64 = 100;
const P99_MS: u64 = 500;
const REQUESTS: usize = 1_000;
/// Requests in flight at once: the run takes about REQUESTS ÷ this × the mean latency (1.3 s).
const IN_FLIGHT: usize = 100;

/// The `q`-quantile (0–1) of sorted samples, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test]
async fn latency_has_the_configured_median_and_p99() {
    // Unauthenticated requests wait out the latency, then get a 401 without asking the store:
    // what the client measures is the simulator's latency and little else.
    let sim = spawn_with(|cfg| {
        cfg.latency_ms = MEDIAN_MS;
        cfg.latency_p99_ms = Some(P99_MS);
        cfg.api_key = Some("sk_latency".into());
    })
    .await;
    let sim = &sim;
    let mut elapsed_ms: Vec<f64> = futures::stream::iter(0..REQUESTS)
        .map(|i| async move {
            let sent = Instant::now();
            let answer = sim.get(&format!("/v1/payments/pay-lat-{i}")).await;
            let answered = Instant::now();
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
            (answered - sent).as_secs_f64() * 1_000.0
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    elapsed_ms.sort_by(f64::total_cmp);
    let (median, p99) = (quantile(&elapsed_ms, 0.5), quantile(&elapsed_ms, 0.99));
    // Over 1,000 draws the sample median's standard error is ~3% and the p99's ~6%. Each request
    // takes at least its drawn latency, so the lower bounds are the statistical ones; the upper
    // bounds also allow for the client's and the scheduler's own time on a busy machine. A
    // fixed latency (p99 = median) or a wrong sigma fails them.
    let (median_ms, p99_ms) = (MEDIAN_MS as f64, P99_MS as f64);
    assert!(
        (0.9 * median_ms..=1.1 * median_ms + 25.0).contains(&median),
        "median {median:.1} ms, configured {MEDIAN_MS}"
    );
    assert!(
        (0.75 * p99_ms..=1.3 * p99_ms + 75.0).contains(&p99),
        "p99 {p99:.1} ms, configured {P99_MS}"
    );
}
