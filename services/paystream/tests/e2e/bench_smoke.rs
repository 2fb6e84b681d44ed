//! A small `paystream bench` run: it completes, measures both sides, and its outcome verifies
//! (not a speed test: the figures of a loaded CI machine mean nothing).

use paystream::bench::{self, BenchOptions};
use paystream_common::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke() {
    let bin = paystream_testkit::nats_server_bin();
    let cfg =
        Config::load_from(["paystream", &format!("--nats-server-bin={}", bin.display())]).unwrap();
    let report = bench::run(
        &cfg,
        BenchOptions {
            payments: 300,
            rate: 200,
            postgres: false,
            fsync_always: false,
            backlog: 500,
            json: true,
            psp: Default::default(),
        },
    )
    .await
    .expect("bench runs");
    assert!(report.verified, "{:?}", report.problems);
    assert!(report.raw.msgs_per_s > 0.0 && report.paystream.payments_per_s > 0.0);
    assert!(report.ratio > 0.0);
    assert_eq!(
        report.paystream.latency_at_rate.samples, 300,
        "every paced payment measured (3 s at the rate, at most --payments)"
    );
    let backlog = report.backlog.as_ref().expect("a backlog run");
    assert_eq!(backlog.payments, 500);
    assert_eq!(backlog.rss_by_tenth_mb.len(), 10, "{backlog:?}");
    assert!(backlog.rss_peak_mb >= backlog.rss_start_mb && backlog.rss_start_mb > 0.0);
    let json = serde_json::to_value(&report).unwrap();
    for key in ["raw", "paystream", "ratio", "fsync", "verified"] {
        assert!(json.get(key).is_some(), "bench --json has {key}");
    }
    assert!(
        json.get("psp").is_none(),
        "no PSP bound without a PSP latency"
    );
}

/// Against a slow PSP with a tail and timeouts: the report gives the PSP bound and the ratio to
/// it, and the payments whose own call timed out are counted apart (and still verified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_against_a_slow_psp() {
    let bin = paystream_testkit::nats_server_bin();
    let cfg = Config::load_from([
        "paystream",
        &format!("--nats-server-bin={}", bin.display()),
        "--psp-timeout=1s",
        "--psp-concurrency=64",
    ])
    .unwrap();
    let report = bench::run(
        &cfg,
        BenchOptions {
            payments: 400,
            rate: 100,
            postgres: false,
            fsync_always: false,
            backlog: 0,
            json: true,
            psp: bench::PspOptions {
                latency_ms: Some(40),
                latency_p99_ms: Some(300),
                timeout_rate: 0.02,
                brownout_s: None,
            },
        },
    )
    .await
    .expect("bench runs");
    assert!(report.verified, "{:?}", report.problems);
    let psp = report.psp.as_ref().expect("a PSP bound");
    assert_eq!(psp.concurrency, 64);
    // The measured mean of a log-normal with median 40 ms and p99 300 ms is about 60 ms (the
    // timed-out calls add their second each).
    assert!(
        psp.latency_ms_mean > 30.0 && psp.latency_ms_mean < 400.0,
        "{psp:?}"
    );
    assert!((psp.bound_payments_per_s - 64_000.0 / psp.latency_ms_mean).abs() < 1.0);
    let ratio = report.ratio_to_psp_bound.expect("a ratio to the bound");
    assert!(ratio > 0.0 && ratio < 1.2, "{ratio}");
    let json = serde_json::to_value(&report).unwrap();
    for key in ["psp", "ratio_to_psp_bound"] {
        assert!(json.get(key).is_some(), "bench --json has {key}");
    }
    eprintln!("{}", report.table());
}

/// A brownout in the middle of a paced run: no payment fails, the UNKNOWNs stay within what the
/// breaker lets through before it opens (its window) plus its probes and what was in flight, the
/// breaker opens and closes, and the pipeline is back at the full rate within 10 s of the PSP's
/// recovery (from the history's timestamps). Everything is verified: all SUCCESS, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_through_a_brownout() {
    const SECONDS: u64 = 6;
    let bin = paystream_testkit::nats_server_bin();
    let cfg = Config::load_from([
        "paystream",
        &format!("--nats-server-bin={}", bin.display()),
        "--psp-timeout=2s",
        "--executing-timeout=3s",
        "--sweep-interval=300ms",
        "--sweep-max-attempts=100",
    ])
    .unwrap();
    let report = bench::run(
        &cfg,
        BenchOptions {
            payments: 200,
            rate: 40,
            postgres: false,
            fsync_always: false,
            backlog: 0,
            json: true,
            psp: bench::PspOptions {
                latency_ms: Some(20),
                latency_p99_ms: None,
                timeout_rate: 0.0,
                brownout_s: Some(SECONDS),
            },
        },
    )
    .await
    .expect("bench runs");
    eprintln!("{}", report.table());
    assert!(report.verified, "{:?}", report.problems);
    let b = report.brownout.as_ref().expect("a brownout report");
    assert_eq!(b.payments, 40 * (5 + SECONDS as usize + 20));
    assert_eq!(b.failed, 0, "a brownout fails no payment");
    assert!(b.breaker_opened >= 1 && b.breaker_closed >= 1, "{b:?}");
    let window = paystream_payment::breaker::WINDOW as i64;
    let probes = SECONDS as i64 / 2 + 2;
    assert!(
        b.went_unknown <= window + b.in_flight_at_start.ceil() as i64 + probes,
        "{b:?}"
    );
    let full = b.full_rate_after_ms.expect("back at the full rate");
    assert!(full < 10_000, "back at full rate {full} ms after recovery");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["brownout"]["full_rate_after_ms"].is_i64());
}
