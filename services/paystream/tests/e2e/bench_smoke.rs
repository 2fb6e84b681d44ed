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
}
