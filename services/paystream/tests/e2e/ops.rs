//! What an operator deploys, checked without the tools this machine lacks (a Docker engine, the
//! NATS CLI): the Prometheus configuration and alert rules with promtool (rule unit tests
//! included), compose.yaml and the Dockerfile with scripts/check-compose.py, the NATS cluster
//! configuration with `nats-server -t`; and the gauges the alerts rely on against a real server.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use paystream_testkit::{Backend, TestNats};

use crate::helpers::{Env, eventually, scalar, wait_settled};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a checker; fails the test with its output unless it exits 0.
fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); scripts/setup.sh installs it"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_config_and_alert_rules() {
    run_ok(
        Command::new("promtool").args(["check", "config", "deploy/prometheus.yml"]),
        "promtool check config",
    );
    run_ok(
        Command::new("promtool").args(["check", "rules", "deploy/alerts.yml"]),
        "promtool check rules",
    );
    // The rules fire on series shaped like ours, and stay quiet otherwise.
    run_ok(
        Command::new("promtool").args(["test", "rules", "deploy/alerts.test.yml"]),
        "promtool test rules",
    );
}

#[test]
fn dashboards_and_alert_rules_hold_their_rules() {
    // Datasource variable, filters, no fixed window, no raw counter; every alert described,
    // with a runbook section in README.md and a unit test.
    run_ok(
        Command::new(root().join(".venv/bin/python")).arg("scripts/check-monitoring.py"),
        "scripts/check-monitoring.py",
    );
}

/// A long-running command with `PAYSTREAM_LOG_FORMAT=json` logs one JSON object per line, and
/// its `/metrics` has the process metrics, the build info and the catalogue's zeros from the
/// start (`psp-sim` alone: it needs no NATS or database).
#[test]
fn json_logs_and_process_metrics_from_start_up() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .arg("psp-sim")
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", data.path())
        .env("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_PSP_SIM_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_LOG_FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a log line").unwrap();
    let event: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {first}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert_eq!(
        event["message"], "metrics and health endpoints listening",
        "{event}"
    );
    let addr = event["http_addr"]
        .as_str()
        .expect("the event's fields at the top level");
    let (status, metrics) = crate::helpers::http_get(addr, "/metrics").expect("psp-sim answers");
    assert_eq!(status, 200, "{metrics}");
    let _ = child.kill();
    let _ = child.wait();
    let version = env!("CARGO_PKG_VERSION");
    for series in [
        format!("paystream_build_info{{version=\"{version}\"}} 1"),
        "paystream_ledger_imbalance_minor 0".to_owned(),
        "paystream_psp_rate_limit_requests_per_second 0".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} missing:\n{metrics}"
        );
    }
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(gauge("process_resident_memory_bytes") > 1e6);
    assert!(gauge("process_open_fds") >= 3.0);
    assert!(gauge("process_max_fds") >= gauge("process_open_fds"));
    assert!(gauge("process_cpu_seconds_total") >= 0.0);
    assert!(gauge("process_threads") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = gauge("process_start_time_seconds");
    assert!(
        started <= now && now - started < 300.0,
        "{started} vs {now}"
    );
}

/// A log format other than text or json is refused at start-up, naming the variable.
#[test]
fn a_bad_log_format_is_refused_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(["status", "00000000-0000-0000-0000-000000000000"])
        .env_clear()
        .env("PAYSTREAM_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PAYSTREAM_LOG_FORMAT"), "{stderr}");
}

#[test]
fn compose_and_dockerfile() {
    run_ok(
        Command::new(root().join(".venv/bin/python"))
            .arg("scripts/check-compose.py")
            .arg(env!("CARGO_BIN_EXE_paystream")),
        "scripts/check-compose.py",
    );
}

#[test]
fn nats_cluster_config_is_valid() {
    // Laid out as compose mounts them: /etc/nats/{cluster,accounts}.conf, and the passwords as
    // compose secrets (files named after the variables, as README's recipe writes them), which
    // the nodes' entrypoint deploy/nats/secrets-env.sh exports before running nats-server.
    let etc = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("deploy/nats/cluster.conf"),
        etc.path().join("cluster.conf"),
    )
    .unwrap();
    std::fs::copy(
        root().join("nats/accounts.conf"),
        etc.path().join("accounts.conf"),
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    for user in ["PAYSTREAM", "CHECKOUT", "OPERATOR", "VIEWER", "SYSTEM"] {
        std::fs::write(
            secrets.path().join(format!("NATS_{user}_PASSWORD")),
            format!("pw{}\n", uuid::Uuid::new_v4().simple()),
        )
        .unwrap();
    }
    let check = |secrets: &std::path::Path| {
        let mut cmd = Command::new("sh");
        cmd.arg("deploy/nats/secrets-env.sh")
            .arg(paystream_testkit::nats_server_bin())
            .args(["-t", "-c"])
            .arg(etc.path().join("cluster.conf"))
            .env("SECRETS_DIR", secrets)
            .env("SERVER_NAME", "nats-1");
        for user in ["PAYSTREAM", "CHECKOUT", "OPERATOR", "VIEWER", "SYSTEM"] {
            cmd.env_remove(format!("NATS_{user}_PASSWORD"));
        }
        cmd
    };
    run_ok(
        &mut check(secrets.path()),
        "nats-server -t deploy/nats/cluster.conf (with nats/accounts.conf and the secrets)",
    );
    // Without one of the secrets the node refuses to start.
    std::fs::remove_file(secrets.path().join("NATS_VIEWER_PASSWORD")).unwrap();
    let out = check(secrets.path()).current_dir(root()).output().unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("NATS_VIEWER_PASSWORD"),
        "{out:?}"
    );
}

/// The lag of a service sums num_pending + num_ack_pending over the consumers it owns (`wallet`,
/// `wallet-p…`), and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_counts_owned_consumers() {
    let nats = TestNats::start(false).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let s = js
        .create_stream(stream::Config {
            name: "LAG".into(),
            subjects: vec!["lag.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumers = Vec::new();
    for name in ["wallet", "wallet-p1", "walletx", "ledger"] {
        consumers.push(
            s.create_consumer(pull::Config {
                durable_name: Some(name.into()),
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    for i in 0..5 {
        js.publish(format!("lag.{i}"), Bytes::from_static(b"x"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let lag = |service: &'static str| {
        let js = js.clone();
        async move {
            paystream_common::lag::lag(&js, "LAG", service)
                .await
                .unwrap()
        }
    };
    assert_eq!(lag("wallet").await, 10, "wallet and wallet-p1, not walletx");
    assert_eq!(lag("ledger").await, 5);
    assert_eq!(lag("payment").await, 0, "owns nothing here");

    use futures::StreamExt;
    // wallet: two delivered and acked → done; wallet-p1: one delivered, not acked → still lag.
    let mut batch = consumers[0]
        .fetch()
        .max_messages(2)
        .messages()
        .await
        .unwrap();
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let mut batch = consumers[1]
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .unwrap();
    let held = batch.next().await.unwrap().unwrap();
    assert_eq!(
        lag("wallet").await,
        8,
        "acked messages leave the lag, held ones do not"
    );
    held.double_ack().await.unwrap();
    assert_eq!(lag("wallet").await, 7);
    let err = paystream_common::lag::lag(&js, "NO_SUCH_STREAM", "wallet").await;
    assert!(err.is_err(), "a missing stream is an error, not 0");
}

/// `paystream_ledger_imbalance_minor{currency}` is 0 while the ledger balances and shows the
/// difference as soon as someone writes an unbalanced entry by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_imbalance_gauge() {
    let env = Env::start(Backend::Sqlite, &["--ledger-check-interval=200ms"])
        .await
        .expect("SQLite always runs");
    let js = paystream_common::nats::jetstream(env.client().await);
    crate::helpers::publish_all(&js, &crate::helpers::requests(3, 3, 1, "imb")).await;
    let db = env.db();
    wait_settled(db, 3, Duration::from_secs(20)).await;
    let balanced = r#"paystream_ledger_imbalance_minor{currency="USD"} 0"#;
    eventually(
        Duration::from_secs(5),
        "USD checked and balanced",
        || async { env.metrics().await.contains(balanced) },
    )
    .await;
    let entries = scalar(db, "SELECT COUNT(*) FROM ledger_entries").await;
    assert_eq!(entries, 6, "three balanced postings of two entries");
    sea_orm::ConnectionTrait::execute_unprepared(
        db,
        "INSERT INTO ledger_entries (event_id, payment_id, account, currency, debit, credit, at_ms) \
         VALUES ('manual', 'manual', 'psp_clearing:USD', 'USD', 5, 0, 0)",
    )
    .await
    .expect("a hand-written entry");
    eventually(
        Duration::from_secs(5),
        "the imbalance is reported",
        || async {
            env.metrics()
                .await
                .contains(r#"paystream_ledger_imbalance_minor{currency="USD"} 5"#)
        },
    )
    .await;
    env.shutdown().await;
}

/// `paystream_payments_unknown_oldest_seconds` (the UNKNOWN-ageing alert) grows while a payment
/// stays UNKNOWN: here the PSP answers every charge with a 5xx, so the sweeper cannot settle it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_payment_ageing_gauge() {
    let env = Env::start(
        Backend::Sqlite,
        &["--psp-sim-error-rate=1", "--sweep-interval=200ms"],
    )
    .await
    .expect("SQLite always runs");
    let js = paystream_common::nats::jetstream(env.client().await);
    crate::helpers::publish_all(&js, &crate::helpers::requests(1, 1, 1, "age")).await;
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    eventually(
        Duration::from_secs(20),
        "one payment UNKNOWN for over 1.5 s",
        || async {
            let text = env.metrics().await;
            gauge(&text, "paystream_payments_unknown") == Some(1.0)
                && gauge(&text, "paystream_payments_unknown_oldest_seconds")
                    .is_some_and(|age| age > 1.5)
        },
    )
    .await;
    let state = scalar(
        env.db(),
        "SELECT COUNT(*) FROM payments WHERE state = 'UNKNOWN'",
    )
    .await;
    assert_eq!(state, 1, "the gauge describes the table");
    env.shutdown().await;
}
