//! The query and operator commands as a person runs them (issue 17): separate processes, each
//! with its own NATS identity from the test server's accounts (user and password, or a NATS CLI
//! context) and no `DATABASE_URL`, asking a running paystream through its micro service. The
//! server's permissions decide; a command never creates a database; without a service it says
//! where it looked and as whom.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use paystream_common::nats;
use paystream_testkit::{Backend, TestNats};
use serde_json::{Value, json};

use crate::helpers::{Env, eventually, outcome};

/// Runs `paystream args…` with nothing but these variables (no DATABASE_URL), in `dir`.
fn run(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", dir.join("data"))
        .envs(vars.iter().copied())
        .output()
        .expect("paystream runs");
    outcome(&out)
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Every file under `dir`, for "nothing was created" checks.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_viewers_act_as_themselves_without_database_credentials() {
    let env = Env::start_secure(Backend::Sqlite, &[]).await.unwrap();
    let (checkout, _) = env.client_as("checkout").await;
    let checkout_js = nats::jetstream(checkout);
    for i in 0..2 {
        checkout_js
            .publish(
                format!("payments.request.b-op{i}"),
                Bytes::from_static(b"not a payment"),
            )
            .await
            .unwrap()
            .await
            .expect("acked");
    }
    let work = tempfile::tempdir().unwrap();
    let url = env.nats.url();
    let viewer_pw = env.nats.password("viewer");
    let operator_pw = env.nats.password("operator");
    let viewer = [
        ("PAYSTREAM_NATS_URL", url.as_str()),
        ("PAYSTREAM_NATS_USER", "viewer"),
        ("PAYSTREAM_NATS_PASSWORD", viewer_pw.as_str()),
    ];
    let operator = [
        ("PAYSTREAM_NATS_URL", url.as_str()),
        ("PAYSTREAM_NATS_USER", "operator"),
        ("PAYSTREAM_NATS_PASSWORD", operator_pw.as_str()),
    ];
    let dir = work.path();

    let mut ids: Vec<u64> = Vec::new();
    eventually(Duration::from_secs(20), "two dead letters", || {
        let (code, out, err) = run(dir, &viewer, &["dlq", "list", "--json"]);
        assert_eq!(code, 0, "viewer lists dead letters: {err}");
        ids = json_of(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        let n = ids.len();
        async move { n == 2 }
    })
    .await;
    let (code, out, err) = run(
        dir,
        &viewer,
        &["dlq", "show", &ids[0].to_string(), "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let shown = json_of(&out);
    assert_eq!(shown["id"], ids[0]);
    assert!(shown.get("headers").is_some() && shown.get("payload").is_some());

    for args in [
        &["ledger", "check", "--json"][..],
        &["balance", "m-nobody", "--json"],
        &["audit", "--json"],
    ] {
        let (code, _, err) = run(dir, &viewer, args);
        assert_eq!(code, 0, "viewer {args:?}: {err}");
    }
    let (code, _, err) = run(
        dir,
        &viewer,
        &["status", "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01", "--json"],
    );
    assert_eq!(code, 1, "unknown payment: {err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = run(dir, &viewer, &["status", "not-a-uuid"]);
    assert_eq!(code, 2, "a malformed id is a usage error: {err}");

    // The viewer may not act: refused by the server, naming the subject and the user, at once.
    let (code, _, err) = run(dir, &viewer, &["dlq", "redrive", &ids[0].to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("NATS refused user \"viewer\" on paystream.dlq.redrive"),
        "{err}"
    );
    assert!(!err.contains(&viewer_pw), "no secret in errors");

    // The operator acts as itself, and the trail names it.
    let (code, out, err) = run(
        dir,
        &operator,
        &["dlq", "redrive", &ids[0].to_string(), "--json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out), json!({"redriven": 1}));

    // The same operator through a NATS CLI context, selected by name (NATS_CONTEXT, under
    // XDG_CONFIG_HOME) and by path (--context).
    let contexts = dir.join("config/nats/context");
    std::fs::create_dir_all(&contexts).unwrap();
    let context = contexts.join("paystream-operator.json");
    std::fs::write(
        &context,
        json!({"description": "test", "url": url, "user": "operator", "password": operator_pw})
            .to_string(),
    )
    .unwrap();
    let config_home = dir.join("config");
    let by_name = [
        ("XDG_CONFIG_HOME", config_home.to_str().unwrap()),
        ("NATS_CONTEXT", "paystream-operator"),
    ];
    let (code, out, err) = run(
        dir,
        &by_name,
        &["dlq", "purge", &ids[1].to_string(), "--json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out), json!({"purged": 1}));
    let (code, out, err) = run(
        dir,
        &[],
        &["--context", context.to_str().unwrap(), "audit", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let acts: Vec<(String, String)> = json_of(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        acts,
        [
            ("operator".to_owned(), "dlq.redrive".to_owned()),
            ("operator".to_owned(), "dlq.purge".to_owned())
        ]
    );
    let (code, _, err) = run(dir, &[], &["--context", "nowhere", "audit"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nowhere.json"),
        "the missing context is named: {err}"
    );

    // None of this made a database (or anything else) in the working directory's data dir.
    let made: Vec<String> = files_under(dir)
        .into_iter()
        .filter(|f| !f.contains("/config/"))
        .collect();
    assert_eq!(made, Vec::<String>::new(), "files the commands created");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_service_the_commands_say_where_they_looked_and_create_nothing() {
    let nats = TestNats::start_secure().await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let url = nats.url();
    let pw = nats.password("viewer");
    let viewer = [
        ("PAYSTREAM_NATS_URL", url.as_str()),
        ("PAYSTREAM_NATS_USER", "viewer"),
        ("PAYSTREAM_NATS_PASSWORD", pw.as_str()),
    ];
    for args in [
        &["status", "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01"][..],
        &["recon", "report", "--date", "2026-11-30"],
        &["ledger", "check", "--json"],
    ] {
        let (code, out, err) = run(dir, &viewer, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(out, "", "nothing on stdout");
        let expected = format!(
            "is `paystream up` running? looked for the paystream service at {url} as user \"viewer\""
        );
        assert!(err.contains(&expected), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // In a fresh directory with no NATS either: the cause, and still no database.
    let (code, _, err) = run(dir, &[], &["recon", "report", "--date", "2026-11-30"]);
    assert_eq!(code, 1);
    assert!(err.contains("no NATS server configured"), "{err}");
    let (code, _, err) = run(
        dir,
        &[],
        &["status", "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01"],
    );
    assert_eq!(code, 1);
    assert!(!err.contains("no such table"), "{err}");
    assert_eq!(files_under(dir), Vec::<String>::new(), "no file created");
}
