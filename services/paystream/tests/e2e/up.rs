//! `paystream up` as a user runs it: no NATS URL and no PSP URL, so it starts its own nats-server
//! and simulator; the client commands find it through the data dir; SIGTERM stops it cleanly.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::eventually;

fn paystream(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", data)
        .output()
        .expect("paystream runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_embedded() {
    let data = tempfile::tempdir().unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .arg("up")
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", data.path())
        .env(
            "PAYSTREAM_NATS_SERVER_BIN",
            paystream_testkit::nats_server_bin(),
        )
        .env("PAYSTREAM_EMBEDDED_NATS_PORT", "0")
        .env("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_PSP_SIM_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.path().join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let dir = data.path().to_path_buf();
    eventually(Duration::from_secs(30), "up accepts a payment", || {
        let dir = dir.clone();
        async move {
            let out = paystream(
                &dir,
                &[
                    "pay",
                    "--buyer",
                    "b-up",
                    "--merchant",
                    "m-up",
                    "--amount",
                    "990",
                    "--json",
                ],
            );
            out.status.success()
        }
    })
    .await;
    eventually(Duration::from_secs(20), "the merchant is credited", || {
        let dir = dir.clone();
        async move {
            let out = paystream(&dir, &["balance", "m-up", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["balances"]["USD"] == 990)
        }
    })
    .await;
    let check = paystream(data.path(), &["ledger", "check", "--json"]);
    assert!(check.status.success());
    Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || up.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(data.path().join("up.log")).unwrap_or_default();
    assert!(
        status.success(),
        "SIGTERM is a graceful stop: {status:?}\n{log}"
    );
    assert!(log.contains("consumer stopped"), "consumers drained: {log}");
}
