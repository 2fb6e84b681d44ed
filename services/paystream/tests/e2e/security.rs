//! Who may publish what (issue 11), against a real nats-server 2.15 started with
//! nats/accounts.conf: every refusal below is the server's, read from the `-ERR` it sends the
//! client, and followed by a check that nothing changed.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use paystream::operator;
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::PaymentRequest;
use paystream_common::money::{Amount, Currency};
use paystream_common::nats::{self, ServerErrors};
use paystream_testkit::Backend;
use serde_json::{Value, json};

use crate::helpers::{Env, eventually};

/// Publishes on `subject` and waits for the server to refuse it.
async fn refused_publish(client: &async_nats::Client, errors: &ServerErrors, subject: &str) {
    client
        .publish(subject.to_owned(), Bytes::from_static(b"{}"))
        .await
        .expect("the client sends");
    client.flush().await.expect("flush");
    assert_refused(errors, &format!("publish to \"{subject}\"")).await;
}

async fn assert_refused(errors: &ServerErrors, what: &str) {
    let what = what.to_lowercase();
    eventually(
        Duration::from_secs(5),
        &format!("the server refuses {what}"),
        || async {
            errors
                .last_refusal()
                .is_some_and(|r| r.to_lowercase().contains(&what))
        },
    )
    .await;
}

async fn usd_balance(env: &Env, merchant: &str) -> Value {
    let b = paystream::queries::balance(env.db(), merchant)
        .await
        .expect("balance query");
    serde_json::to_value(b).expect("JSON")["balances"]["USD"].clone()
}

async fn checkout_may_pay_and_nothing_else(backend: Backend) {
    let Some(env) = Env::start_secure(backend, &[]).await else {
        return;
    };
    let (checkout, errors) = env.client_as("checkout").await;
    let req = PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-sec").unwrap(),
        merchant_id: MerchantId::parse("m-sec").unwrap(),
        amount: Amount::new(500).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: BTreeMap::new(),
    };
    let receipt = paystream::client::pay(&nats::jetstream(checkout.clone()), &req)
        .await
        .expect("checkout publishes a payment and gets its JetStream ack");
    assert_eq!(receipt.stream, "PAYMENTS");
    eventually(
        Duration::from_secs(20),
        "the merchant is credited",
        || async { usd_balance(&env, "m-sec").await == json!(500) },
    )
    .await;

    // A forged `succeeded` event, in publish form and in stored (partitioned) form.
    let forged = json!({"type": "succeeded", "event_id": "5d1f0c1e-0000-4000-8000-000000000001",
        "payment_id": "5d1f0c1e-0000-4000-8000-000000000002", "buyer_id": "b-sec",
        "merchant_id": "m-sec", "amount": 1_000_000, "currency": "USD", "version": 1,
        "occurred_at": "2026-12-01T00:00:00Z", "psp_reference": "forged"});
    for subject in ["payments.events.b-sec", "payments.events.0.b-sec"] {
        checkout
            .publish(subject, Bytes::from(forged.to_string()))
            .await
            .unwrap();
        checkout.flush().await.unwrap();
        assert_refused(&errors, &format!("publish to \"{subject}\"")).await;
    }
    for subject in [
        "$JS.API.STREAM.DELETE.PAYMENTS",
        "$JS.API.STREAM.PURGE.PAYMENT_EVENTS",
        "$JS.API.STREAM.CREATE.EVIL",
        "paystream.dlq.purge",
        "paystream.dlq.redrive",
        "paystream.status",
        "$SRV.PING",
    ] {
        refused_publish(&checkout, &errors, subject).await;
    }
    // Nor may it read what others publish.
    let _sub = checkout.subscribe("payments.events.>").await.unwrap();
    checkout.flush().await.unwrap();
    assert_refused(&errors, "subscription to \"payments.events.>\"").await;

    // Nothing changed: the streams are there, one event only, the money is what was paid.
    let js = nats::jetstream(env.client().await);
    for stream in ["PAYMENTS", "PAYMENT_EVENTS"] {
        js.get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("{stream} still exists: {e}"));
    }
    let events = js
        .get_stream("PAYMENT_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(events, 1, "only the payment's own event");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(usd_balance(&env, "m-sec").await, json!(500));
    let check = paystream::queries::ledger_check(env.db()).await.unwrap();
    assert!(check.ok);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_may_pay_and_nothing_else_sqlite() {
    checkout_may_pay_and_nothing_else(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_may_pay_and_nothing_else_postgres() {
    checkout_may_pay_and_nothing_else(Backend::Postgres).await;
}

pub fn paystream_cli(env: &Env, user: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .env_clear()
        .env("PAYSTREAM_NATS_URL", env.nats.url())
        .env("PAYSTREAM_NATS_USER", user)
        .env("PAYSTREAM_NATS_PASSWORD", env.nats.password(user))
        .env("PAYSTREAM_DATA_DIR", env.data.path())
        .output()
        .expect("paystream runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_act_and_are_audited_viewers_only_look() {
    let env = Env::start_secure(Backend::Sqlite, &[]).await.unwrap();
    let (checkout, _) = env.client_as("checkout").await;
    let checkout_js = nats::jetstream(checkout);
    for i in 0..3 {
        checkout_js
            .publish(
                format!("payments.request.b-dl{i}"),
                Bytes::from_static(b"garbage"),
            )
            .await
            .unwrap()
            .await
            .expect("acked");
    }
    let (viewer, viewer_errors) = env.client_as("viewer").await;
    let dead_letter_ids = || async {
        let list = operator::request(&viewer, &viewer_errors, "paystream.dlq.list", &json!({}))
            .await
            .expect("viewer lists dead letters");
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    eventually(Duration::from_secs(20), "three dead letters", || async {
        dead_letter_ids().await.len() == 3
    })
    .await;
    let ids = dead_letter_ids().await;
    let check = operator::request(
        &viewer,
        &viewer_errors,
        "paystream.ledger.check",
        &json!({}),
    )
    .await
    .expect("viewer checks the ledger");
    assert_eq!(check["ok"], true);
    let ping = operator::request(&viewer, &viewer_errors, "$SRV.PING.paystream", &json!({}))
        .await
        .expect("viewer finds the micro service");
    assert_eq!(ping["name"], "paystream");
    let audit = operator::request(&viewer, &viewer_errors, "paystream.audit", &json!({}))
        .await
        .expect("viewer reads the audit trail");
    assert_eq!(audit, json!([]));

    // The viewer may not act, nor read streams, nor publish anywhere.
    for subject in [
        "paystream.dlq.purge",
        "paystream.dlq.redrive",
        "paystream.recon.run",
        "$JS.PAYSTREAM.API.STREAM.INFO.PAYMENTS",
        "payments.request.b-x",
    ] {
        refused_publish(&viewer, &viewer_errors, subject).await;
    }
    let started = Instant::now();
    let out = paystream_cli(
        &env,
        "viewer",
        &[
            "pay",
            "--buyer",
            "b-v",
            "--merchant",
            "m-v",
            "--amount",
            "1",
        ],
    );
    assert!(!out.status.success(), "a viewer cannot pay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused this user") && started.elapsed() < Duration::from_secs(5),
        "the cause, at once: {stderr}"
    );
    let out = paystream_cli(
        &env,
        "viewer",
        &["dlq", "purge", &ids[2].to_string(), "--json"],
    );
    assert!(!out.status.success(), "viewer's purge fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NATS refused user \"viewer\" on paystream.dlq.purge"),
        "the cause is named: {stderr}"
    );

    // The operator acts; a forged identity header is replaced by the server's.
    let (op, op_errors) = env.client_as("operator").await;
    let mut forged = HeaderMap::new();
    forged.insert("Nats-Request-Info", r#"{"acc":"OPS","user":"admin"}"#);
    let reply = op
        .request_with_headers(
            "paystream.dlq.purge",
            forged,
            Bytes::from(json!({"ids": [ids[0]]}).to_string()),
        )
        .await
        .expect("operator purges");
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.payload).unwrap(),
        json!({"purged": 1}),
        "{reply:?}"
    );
    let out = paystream_cli(
        &env,
        "operator",
        &["dlq", "redrive", &ids[1].to_string(), "--json"],
    );
    assert!(
        out.status.success(),
        "operator's CLI redrive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"redriven": 1})
    );
    // A reconciliation run is an operator action too; a file named over NATS can only be one in
    // the drop directory, never a path of the service's host.
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let ran = operator::request(
        &op,
        &op_errors,
        "paystream.recon.run",
        &json!({"date": today}),
    )
    .await
    .expect("operator runs a reconciliation");
    assert_eq!(ran["date"], today, "{ran}");
    let escape = op
        .request(
            "paystream.recon.run",
            Bytes::from(json!({"date": today, "file": "../../etc/passwd"}).to_string()),
        )
        .await
        .expect("an answer");
    assert_eq!(
        escape
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_owned())
            .as_deref(),
        Some("400"),
        "{escape:?}"
    );
    // Operators read streams (through PAYSTREAM's read-only API export), never change them.
    let op_js = async_nats::jetstream::with_prefix(op.clone(), "$JS.PAYSTREAM.API");
    let info = op_js
        .get_stream("PAYMENTS")
        .await
        .expect("operator reads PAYMENTS")
        .get_info()
        .await
        .unwrap();
    assert!(info.state.messages >= 3);
    op_js
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .direct_get(1)
        .await
        .expect("operator direct-gets a message");
    refused_publish(&op, &op_errors, "$JS.PAYSTREAM.API.STREAM.DELETE.PAYMENTS").await;
    refused_publish(&op, &op_errors, "$JS.API.STREAM.DELETE.PAYMENTS").await;
    refused_publish(&op, &op_errors, "payments.request.b-x").await;
    refused_publish(&op, &op_errors, "payments.events.b-x").await;
    // Not even the services' own user may call an operator endpoint (it could forge identity).
    let (svc, svc_errors) = env.client_as("paystream").await;
    refused_publish(&svc, &svc_errors, "paystream.dlq.purge").await;
    refused_publish(&svc, &svc_errors, "$JS.API.STREAM.DELETE.DEAD_LETTERS").await;

    let trail = paystream::audit::list(env.db(), 100).await.unwrap();
    let acts: Vec<(&str, &str)> = trail
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        acts,
        [
            ("operator", "dlq.purge"),
            ("operator", "dlq.redrive"),
            ("operator", "recon.run")
        ],
        "{trail:?}"
    );
    let remaining = operator::request(&op, &op_errors, "paystream.dlq.list", &json!({}))
        .await
        .unwrap();
    assert!(
        remaining
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"].as_u64() == Some(ids[2])),
        "the viewer's purge did nothing"
    );
    env.shutdown().await;
}

/// Runs the binary until it exits (or panics after `limit`); returns its status and stderr.
fn run_until_exit(cmd: &mut Command, limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("paystream starts");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("stderr");
            return (status, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}: a refused start-up must exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_or_permissions_stop_start_up_with_the_cause() {
    let nats = paystream_testkit::TestNats::start_secure().await;
    let data = tempfile::tempdir().unwrap();
    let serve = |user: &str, password: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paystream"));
        c.args(["serve", "wallet"])
            .env_clear()
            .env("PAYSTREAM_NATS_URL", nats.url())
            .env("PAYSTREAM_NATS_USER", user)
            .env("PAYSTREAM_NATS_PASSWORD", password)
            .env("PAYSTREAM_DATA_DIR", data.path())
            .env("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0")
            .env("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0");
        c
    };
    let started = Instant::now();
    let (status, stderr) = run_until_exit(
        &mut serve("paystream", "wrong-password"),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("refused the credentials of user \"paystream\""),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-password"), "no secret in errors");
    let viewer = nats.password("viewer");
    let (status, stderr) = run_until_exit(&mut serve("viewer", &viewer), Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        stderr.contains("NATS refused this user")
            && stderr.to_lowercase().contains("permissions violation"),
        "{stderr}"
    );
    assert!(!stderr.contains(&viewer), "no secret in errors");
    eprintln!("both refusals reported in {:?}", started.elapsed());

    // A user that may create streams but not consumers: refused half-way, and said so at once.
    let limited = paystream_testkit::TestNats::start_with_conf(
        r#"accounts { LIMITED: { jetstream: enabled, users: [ { user: limited, password: "pw-limited",
             permissions: { publish: { allow: ["$JS.API.STREAM.>"] }, subscribe: { allow: ["_INBOX.>"] } } } ] } }"#
            .to_owned(),
    )
    .await;
    let started = Instant::now();
    let (status, stderr) = run_until_exit(
        Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args(["serve", "wallet"])
            .env_clear()
            .env("PAYSTREAM_NATS_URL", limited.url())
            .env("PAYSTREAM_NATS_USER", "limited")
            .env("PAYSTREAM_NATS_PASSWORD", "pw-limited")
            .env("PAYSTREAM_DATA_DIR", data.path())
            .env("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0")
            .env("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0"),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("NATS refused this user")
            && stderr.contains("$JS.API.CONSUMER.CREATE.PAYMENT_EVENTS"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not after the request timeout: {:?}",
        started.elapsed()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `paystream up` with no NATS configuration: its own nats-server has paystream's users (a
/// client without credentials is refused), the client commands act through the passwords it
/// generated into the data dir, and with every secret set, none of them appears in its logs
/// (debug level), its metrics, the commands' `--json` output or the nats-server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_secure_by_default_and_leaks_no_secret() {
    // This test starts no test server or database of its own (which install it), yet builds
    // HTTP clients.
    paystream_common::tls::install_crypto_provider();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let psp_key = format!("psp-key-{}", uuid::Uuid::new_v4().simple());
    let http = format!("127.0.0.1:{}", free_port());
    let mut up = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .arg("up")
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", &dir)
        .env(
            "PAYSTREAM_NATS_SERVER_BIN",
            paystream_testkit::nats_server_bin(),
        )
        .env("PAYSTREAM_EMBEDDED_NATS_PORT", "0")
        .env("PAYSTREAM_HTTP_ADDR", &http)
        .env("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_PSP_SIM_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_PSP_API_KEY", &psp_key)
        .env("PAYSTREAM_PSP_SIM_API_KEY", &psp_key)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("up.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paystream"))
            .args(args)
            .env_clear()
            .env("PAYSTREAM_DATA_DIR", &dir)
            .env("RUST_LOG", "debug")
            .output()
            .expect("paystream runs")
    };
    let mut outputs = Vec::new();
    let mut payment_id = String::new();
    let started = Instant::now();
    while payment_id.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "up accepts a payment"
        );
        let out = cli(&[
            "pay",
            "--buyer",
            "b-up",
            "--merchant",
            "m-up",
            "--amount",
            "990",
            "--json",
        ]);
        if out.status.success() {
            let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
            payment_id = receipt["payment_id"].as_str().unwrap().to_owned();
            outputs.push(out);
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eventually(
        Duration::from_secs(20),
        "paid through the PSP's bearer key",
        || async {
            let out = cli(&["status", &payment_id, "--json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["state"] == "SUCCESS")
        },
    )
    .await;
    // Wallet and ledger are separate consumers: the ledger may apply the event a moment later.
    eventually(Duration::from_secs(20), "the ledger balances", || async {
        cli(&["ledger", "check", "--json"]).status.success()
    })
    .await;
    // The operator endpoints are the last part `up` starts: purge (a no-op here) once they answer.
    eventually(
        Duration::from_secs(20),
        "the operator endpoint answers",
        || async { cli(&["dlq", "purge", "--all", "--json"]).status.success() },
    )
    .await;
    for args in [
        &["status", payment_id.as_str(), "--json"][..],
        &["balance", "m-up", "--json"],
        &["ledger", "check", "--json"],
        &["dlq", "list", "--json"],
        &["dlq", "purge", "--all", "--json"],
        &["audit", "--json"],
    ] {
        let out = cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(out);
    }

    // The embedded server: the five users, passwords private to the data dir's owner.
    let users_file = dir.join("nats-users.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&users_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "nats-users.json is private");
    }
    let passwords: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&users_file).unwrap()).unwrap();
    assert_eq!(passwords.len(), 5);
    let url = std::fs::read_to_string(dir.join("nats.url")).unwrap();
    let anonymous = paystream_common::config::Config::load_from([
        "paystream".to_owned(),
        format!("--nats-url={}", url.trim()),
    ])
    .unwrap();
    let refused = nats::connect(&anonymous.client, "anonymous", false).await;
    assert!(
        matches!(refused, Err(nats::ConnectError::Refused { .. })),
        "a client without credentials is refused: {:?}",
        refused.err()
    );
    for (user, password) in &passwords {
        let cfg = paystream_common::config::ClientConfig {
            nats_user: Some(user.clone()),
            nats_password: Some(paystream_common::config::Secret(password.clone())),
            ..anonymous.client.clone()
        };
        nats::connect(&cfg, user, false)
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    }

    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Everything `up` did (consumers per partition, pins, the relay, dead letters, endpoints)
    // stayed within the services' permissions.
    assert_eq!(
        metric(
            &metrics,
            r#"paystream_nats_server_errors_total{kind="permission"}"#
        ),
        0.0,
        "a permission the services lack"
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || up.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");

    let mut texts = vec![
        (
            "up's log",
            std::fs::read_to_string(dir.join("up.log")).unwrap(),
        ),
        (
            "up's stdout",
            std::fs::read_to_string(dir.join("up.out")).unwrap(),
        ),
        (
            "nats-server's log",
            std::fs::read_to_string(dir.join("nats/nats-server.log")).unwrap(),
        ),
        ("/metrics", metrics),
    ];
    for out in &outputs {
        texts.push((
            "a command's stdout",
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
        texts.push((
            "a command's stderr",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    assert!(texts[0].1.len() > 10_000, "debug logging was on");
    assert!(
        !texts[0].1.to_lowercase().contains("permissions violation"),
        "the services stayed within their permissions, shutdown included"
    );
    let secrets: Vec<&str> = std::iter::once(psp_key.as_str())
        .chain(passwords.values().map(String::as_str))
        .collect();
    for (what, text) in &texts {
        for secret in &secrets {
            assert!(!text.contains(secret), "a secret in {what}");
        }
    }
}

async fn state_of(env: &Env, id: &str) -> Value {
    paystream::queries::status(env.db(), id)
        .await
        .map(|s| serde_json::to_value(s).unwrap()["state"].clone())
        .unwrap_or(Value::Null)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A wrong PSP key at runtime: the PSP answers 401, the payment is not marked FAILURE, the
/// metric that pages rises; once the key is fixed (restart) the payment completes, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_psp_key_pages_and_fails_no_payment() {
    let mut env = Env::start_secure(
        Backend::Sqlite,
        &[
            "--psp-api-key=sk_wrong",
            "--psp-sim-api-key=sk_right",
            "--backoff=300ms,600ms",
            "--max-deliver=3",
            "--psp-timeout=1s",
            "--executing-timeout=2s",
            "--sweep-interval=500ms",
        ],
    )
    .await
    .unwrap();
    let (checkout, _) = env.client_as("checkout").await;
    let req = PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-key").unwrap(),
        merchant_id: MerchantId::parse("m-key").unwrap(),
        amount: Amount::new(4200).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: BTreeMap::new(),
    };
    paystream::client::pay(&nats::jetstream(checkout), &req)
        .await
        .unwrap();
    let refused = r#"paystream_psp_requests_total{op="charge",outcome="config_error"}"#;
    let withheld = r#"paystream_psp_calls_withheld_total{op="charge"}"#;
    eventually(
        Duration::from_secs(15),
        "the redelivered request is withheld",
        || async { metric(&env.metrics().await, withheld) >= 1.0 },
    )
    .await;
    let metrics = env.metrics().await;
    assert_eq!(
        metric(&metrics, refused),
        1.0,
        "one refused call, then none"
    );
    assert_eq!(
        metric(&metrics, "paystream_psp_credentials_refused"),
        1.0,
        "it pages"
    );
    let id = req.payment_id.to_string();
    assert_eq!(
        state_of(&env, &id).await,
        json!("EXECUTING"),
        "not the payment's fault"
    );
    let stats = crate::helpers::sim_stats_with_key(&env.psp_url(), "sk_right").await;
    assert_eq!(stats["charges"], 0, "the PSP charged nothing: {stats}");

    env.cfg.psp_api_key = Some(paystream_common::config::Secret("sk_right".into()));
    env.restart_app().await;
    eventually(
        Duration::from_secs(20),
        "completed once the key is fixed",
        || async { state_of(&env, &id).await == json!("SUCCESS") },
    )
    .await;
    let stats = crate::helpers::sim_stats_with_key(&env.psp_url(), "sk_right").await;
    assert_eq!(stats["charges"], 1, "{stats}");
    assert_eq!(
        metric(
            &env.metrics().await,
            r#"paystream_nats_server_errors_total{kind="permission"}"#
        ),
        0.0,
        "the services stayed within their permissions across a restart"
    );
    assert_eq!(stats["double_charges"], 0, "{stats}");
    env.shutdown().await;
}

/// A password rotated on the server under a running service: its reconnects are refused, and it
/// says so (an error log and `paystream_nats_server_errors_total{kind="authorization"}`, which
/// pages) instead of reconnecting silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_rotated_under_a_running_service_is_reported() {
    use paystream_common::config::Secret;
    use paystream_common::nats_server::{NatsServer, ServerOptions, secure_conf};

    let mut env = Env::start_secure(Backend::Sqlite, &[]).await.unwrap();
    let series = r#"paystream_nats_server_errors_total{kind="authorization"}"#;
    assert_eq!(metric(&env.metrics().await, series), 0.0);
    let port = env.nats.server.port();
    env.nats.server.kill().await;
    let store = tempfile::tempdir().unwrap();
    let rotated = paystream_common::nats::USERS
        .iter()
        .map(|u| ((*u).to_owned(), Secret(format!("rotated-{u}"))))
        .collect();
    let _rotated_server = NatsServer::start(ServerOptions {
        bin: paystream_testkit::nats_server_bin(),
        store_dir: store.path().to_path_buf(),
        port,
        sync_interval: None,
        extra_conf: secure_conf(&rotated),
    })
    .await
    .expect("the server restarts with rotated passwords");
    eventually(
        Duration::from_secs(20),
        "refused reconnects counted",
        || async { metric(&env.metrics().await, series) >= 1.0 },
    )
    .await;
}

/// The services resume under their permissions after NATS restarts (reconnect, consumer lookups,
/// re-pinned partitions): a payment published after the restart is applied, with no permission
/// refused on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_resume_within_their_permissions_after_a_nats_restart() {
    let mut env = Env::start_secure(Backend::Sqlite, &[]).await.unwrap();
    env.nats
        .server
        .restart()
        .await
        .expect("nats-server restarts");
    let (checkout, _) = env.client_as("checkout").await;
    let req = PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-restart").unwrap(),
        merchant_id: MerchantId::parse("m-restart").unwrap(),
        amount: Amount::new(777).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: BTreeMap::new(),
    };
    paystream::client::pay(&nats::jetstream(checkout), &req)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "credited after the restart",
        || async { usd_balance(&env, "m-restart").await == json!(777) },
    )
    .await;
    assert_eq!(
        metric(
            &env.metrics().await,
            r#"paystream_nats_server_errors_total{kind="permission"}"#
        ),
        0.0
    );
    env.shutdown().await;
}
