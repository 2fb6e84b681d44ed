//! `paystream up` as a user runs it: no NATS URL and no PSP URL, so it starts its own nats-server
//! and simulator; the client commands find it through the data dir; every metric the dashboards
//! and alert rules query is exported; SIGTERM stops it cleanly, draining the work in hand.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{eventually, http_get, scalar};

fn paystream(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(args)
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", data)
        .output()
        .expect("paystream runs")
}

/// A running `paystream up`, killed if the test ends without stopping it (a failed assertion must
/// not leave it running).
struct Up(Option<Child>);

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `paystream up` on `data` with ports picked by the OS; its log goes to `data/up.log`.
fn spawn_up(data: &Path, extra_env: &[(&str, &str)]) -> Up {
    let child = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .arg("up")
        .env_clear()
        .env("PAYSTREAM_DATA_DIR", data)
        .env(
            "PAYSTREAM_NATS_SERVER_BIN",
            paystream_testkit::nats_server_bin(),
        )
        .env("PAYSTREAM_EMBEDDED_NATS_PORT", "0")
        .env("PAYSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_CONSOLE_ADDR", "127.0.0.1:0")
        .env("PAYSTREAM_PSP_SIM_ADDR", "127.0.0.1:0")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join("up.log")).unwrap())
        .spawn()
        .unwrap();
    Up(Some(child))
}

/// Where `up` serves `/metrics`: the address it logged ("metrics and health endpoints listening").
fn http_addr(data: &Path) -> Option<String> {
    logged_addr(data, "metrics and health endpoints listening", "http_addr=")
}

/// The address after `key` on the log line saying `message`.
fn logged_addr(data: &Path, message: &str, key: &str) -> Option<String> {
    let log = std::fs::read_to_string(data.join("up.log")).ok()?;
    let line = log.lines().find(|l| l.contains(message))?;
    let plain = strip_ansi(line);
    let at = plain.find(key)? + key.len();
    Some(
        plain[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_owned(),
    )
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SIGTERM, then the exit status within `bound`, with the log for the assertion message.
async fn terminate(mut up: Up, data: &Path, bound: Duration) -> (std::process::ExitStatus, String) {
    let mut up = up.0.take().expect("up is running");
    Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = up.kill();
            let _ = up.wait();
            panic!("paystream up did not stop within {bound:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(data.join("up.log")).unwrap_or_default();
    (status, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_embedded() {
    let data = tempfile::tempdir().unwrap();
    // The ledger's balance check runs every second, so its gauge has a USD series soon after
    // the first payment.
    let up = spawn_up(data.path(), &[("PAYSTREAM_LEDGER_CHECK_INTERVAL", "1s")]);
    let dir = data.path().to_path_buf();
    // Ready means started: /readyz is served from the first moment, so it must not say ready
    // while the parts that register what they wait for are still starting (README's first
    // session waits for it, then pays through the embedded NATS).
    eventually(Duration::from_secs(30), "up is ready", || {
        let dir = dir.clone();
        async move {
            let Some(addr) = http_addr(&dir) else {
                return false;
            };
            http_get(&addr, "/readyz").is_some_and(|(status, _)| status == 200)
        }
    })
    .await;
    assert!(
        data.path().join("nats.url").exists(),
        "/readyz said ready before the embedded NATS was up"
    );
    let addr = http_addr(data.path()).expect("up logged its HTTP address");
    let metrics = || http_get(&addr, "/metrics").expect("up serves /metrics").1;
    // From start-up, before any payment: every metric the dashboards and rules query is there
    // (an absent() rule or a fresh dashboard must not wait for the first event).
    rules_and_dashboards_use_exported_metrics(&metrics());
    // `up` serves the operator console too.
    let console = logged_addr(data.path(), "operator console listening", "addr=")
        .expect("up logged the console's address");
    let (status, page) = http_get(&console, "/signin").expect("the console answers");
    assert!(status == 200 && page.contains("Sign in"), "{status} {page}");
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
    // Wallet and ledger are separate consumers: the ledger may apply the event a moment later.
    eventually(Duration::from_secs(20), "the ledger balances", || {
        let dir = dir.clone();
        async move {
            paystream(&dir, &["ledger", "check", "--json"])
                .status
                .success()
        }
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let text = metrics();
        if text.contains(r#"paystream_ledger_imbalance_minor{currency="USD"} 0"#) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger gauge has no USD series:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    rules_and_dashboards_use_exported_metrics(&exposition);
    compose_health_check_passes(&addr).await;

    let (status, log) = terminate(up, data.path(), Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM is a graceful stop: {status:?}\n{log}"
    );
    assert!(log.contains("consumer stopped"), "consumers drained: {log}");
}

/// The health check compose.yaml gives every paystream container, run as written against this
/// process (its address instead of the container's :9464): it passes while `/readyz` is 200.
async fn compose_health_check_passes(addr: &str) {
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compose.yaml");
    let text = std::fs::read_to_string(compose).unwrap();
    let check = text
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("test: "))
        .find(|t| t.contains("/readyz"))
        .expect("compose.yaml has the paystream health check");
    let argv: Vec<String> = serde_json::from_str(check).expect("an exec-form test (JSON array)");
    assert_eq!(argv[0], "CMD", "{argv:?}");
    let argv: Vec<String> = argv[1..]
        .iter()
        .map(|a| a.replace("127.0.0.1:9464", addr))
        .collect();
    // Readiness follows the partition readers one membership heartbeat behind, so the check
    // may need a moment after start-up, as in a container's start period.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{argv:?} still fails after 10 s: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every `paystream_*` and `process_*` metric a Grafana panel or an alert rule queries is one that
/// the running `paystream up` exports. (Recorded series, `level:metric:operation`, are checked
/// against the recording rules by scripts/check-monitoring.py.)
fn rules_and_dashboards_use_exported_metrics(exposition: &str) {
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("grafana/dashboards"))
        .expect("grafana/dashboards exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.push(root.join("deploy/alerts.yml"));
    let mut checked = BTreeSet::new();
    let mut label_pairs = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let names = text
            .match_indices("paystream_")
            .chain(text.match_indices("process_"));
        for (i, _) in names {
            if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || "_-:".contains(c)) {
                continue; // part of another word (a uid, a file name, a recorded series)
            }
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(name.as_str()),
                "{} queries {name}, which `paystream up` does not export",
                file.display()
            );
            // Equality matchers (`{outcome="unknown"}`) name a label value some series has.
            let rest = &text[i + name.len()..];
            if let Some(selector) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
                let selector = selector.replace("\\\"", "\""); // as written in JSON: \"
                for matcher in selector.split(',').map(str::trim) {
                    let Some((label, value)) = matcher.split_once("=\"") else {
                        continue;
                    };
                    if label.ends_with(['!', '=', '~']) {
                        continue;
                    }
                    let pair = format!("{label}=\"{}\"", value.trim_end_matches('"'));
                    assert!(
                        exposition
                            .lines()
                            .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(&pair)),
                        "{} queries {name} with {pair}, which no exported series has",
                        file.display()
                    );
                    label_pairs += 1;
                }
            }
            checked.insert(name);
        }
    }
    assert!(
        label_pairs >= 4,
        "label matchers in rules and dashboards are checked"
    );
    assert!(
        checked.len() > 25,
        "the dashboards and rules query paystream metrics: {checked:?}"
    );
    for name in ["paystream_build_info", "process_cpu_seconds_total"] {
        assert!(checked.contains(name), "the dashboards plot {name}");
    }
}

/// SIGTERM while payments are in flight: the batch in hand is finished (no payment is left
/// EXECUTING) and every committed event is published before the process exits; what was not
/// taken yet is completed by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_sigterm_drains_in_flight_work() {
    const PAYMENTS: usize = 600;
    let data = tempfile::tempdir().unwrap();
    // A slow PSP keeps work in hand; short retry schedules let the next start finish quickly
    // what the stop left to redelivery or to the sweeper.
    let slow_psp = [
        ("PAYSTREAM_PSP_SIM_LATENCY_MS", "200"),
        ("PAYSTREAM_BACKOFF", "200ms,500ms,1s"),
        ("PAYSTREAM_SWEEP_INTERVAL", "250ms"),
    ];
    let up = spawn_up(data.path(), &slow_psp);
    let url_file = data.path().join("nats.url");
    eventually(Duration::from_secs(30), "up writes its NATS URL", || {
        let f = url_file.clone();
        async move { f.exists() && http_addr(f.parent().unwrap()).is_some() }
    })
    .await;
    let nats_url = std::fs::read_to_string(&url_file).unwrap();
    // up's server has paystream's users: publish as checkout, with the password up generated.
    let users: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.path().join("nats-users.json")).unwrap(),
    )
    .unwrap();
    let checkout = async_nats::ConnectOptions::with_user_and_password(
        "checkout".into(),
        users["checkout"].as_str().unwrap().into(),
    )
    .connect(nats_url.trim())
    .await
    .unwrap();
    let js = async_nats::jetstream::new(checkout);
    let requests = crate::helpers::requests(PAYMENTS, 40, 5, "drain");
    crate::helpers::publish_all(&js, &requests).await;
    let db_url = format!(
        "sqlite://{}?mode=rw",
        data.path().join("paystream.sqlite").display()
    );
    let db = paystream_common::db::connect(&db_url).await.unwrap();
    eventually(Duration::from_secs(30), "payments under way", || async {
        scalar(&db, "SELECT COUNT(*) FROM payments").await >= 50
    })
    .await;
    let (status, log) = terminate(up, data.path(), Duration::from_secs(30)).await;
    assert!(status.success(), "graceful stop: {status:?}\n{log}");
    let started = scalar(&db, "SELECT COUNT(*) FROM payments").await;
    let executing = scalar(
        &db,
        "SELECT COUNT(*) FROM payments WHERE state = 'EXECUTING'",
    )
    .await;
    let unpublished = scalar(
        &db,
        "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL",
    )
    .await;
    let unknown = scalar(&db, "SELECT COUNT(*) FROM payments WHERE state = 'UNKNOWN'").await;
    eprintln!(
        "SIGTERM with {started} of {PAYMENTS} payments taken: {executing} EXECUTING, {unknown} \
         UNKNOWN, {unpublished} events unpublished"
    );
    assert_eq!(executing, 0, "the batch in hand was finished\n{log}");
    assert_eq!(
        unknown, 0,
        "the simulator outlives the services in `up`: their last PSP calls were answered\n{log}"
    );
    assert_eq!(unpublished, 0, "every committed event was published\n{log}");

    let up = spawn_up(data.path(), &slow_psp);
    let restarted = Instant::now();
    crate::helpers::wait_settled(&db, PAYMENTS as i64, Duration::from_secs(60)).await;
    eprintln!("restarted: all settled in {:?}", restarted.elapsed());
    let check = paystream(data.path(), &["ledger", "check", "--json"]);
    assert!(check.status.success(), "ledger balances after the restart");
    let (status, log) = terminate(up, data.path(), Duration::from_secs(30)).await;
    assert!(status.success(), "graceful stop: {status:?}\n{log}");
}

/// One NATS CLI context `up` wrote: the user's connection, as the `nats` CLI would make it.
async fn context_client(dir: &Path, user: &str) -> async_nats::Client {
    let path = dir.join(format!("config/nats/context/{user}.json"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is private", path.display());
    }
    let ctx: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(ctx["user"], user);
    async_nats::ConnectOptions::with_user_and_password(
        user.to_owned(),
        ctx["password"].as_str().unwrap().to_owned(),
    )
    .connect(ctx["url"].as_str().unwrap())
    .await
    .unwrap_or_else(|e| panic!("{user} connects with its context: {e}"))
}

/// A request as the CLI makes it; the answer must be JSON without an `error` (a subject the user
/// may not publish on gets no answer at all, and fails here too).
async fn step(
    client: &async_nats::Client,
    subject: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_owned(), body.to_string().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no answer"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("{subject}: not JSON ({e}): {:?}", reply.payload));
    assert!(v.get("error").is_none(), "{subject}: {v}");
    assert!(
        crate::helpers::service_error(&reply).is_none(),
        "{subject}: {reply:?}"
    );
    v
}

/// The operator's session of nats/README.md, step by step, as the users it names, with the
/// contexts `up` wrote (each request is the one the `nats` CLI command of that step makes: the
/// CLI itself cannot be installed here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nats_cli_session_works_for_the_users_it_names() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let _up = spawn_up(dir, &[]);
    eventually(Duration::from_secs(30), "up is ready", || async {
        http_addr(dir)
            .and_then(|addr| http_get(&addr, "/readyz"))
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join(p)).unwrap()).unwrap()
    };

    // nats --context paystream stream add --config nats/streams/PAYMENTS.json; consumer add …
    let svc = context_client(dir, "paystream").await;
    eventually(
        Duration::from_secs(30),
        "the services made the topology",
        || {
            let svc = svc.clone();
            async move {
                svc.request("$JS.API.STREAM.INFO.DEAD_LETTERS", "".into())
                    .await
                    .is_ok_and(|r| !String::from_utf8_lossy(&r.payload).contains("error"))
            }
        },
    )
    .await;
    step(&svc, "$JS.API.INFO", json!({})).await;
    for stream in ["PAYMENTS", "PAYMENT_EVENTS", "DEAD_LETTERS"] {
        step(&svc, &format!("$JS.API.STREAM.INFO.{stream}"), json!({})).await;
        let config = file(&format!("nats/streams/{stream}.json"));
        step(&svc, &format!("$JS.API.STREAM.CREATE.{stream}"), config).await;
    }
    let consumer = file("nats/consumers/PAYMENTS.payment.json");
    step(
        &svc,
        "$JS.API.CONSUMER.CREATE.PAYMENTS.payment-p0.payments.*.0.*",
        json!({"stream_name": "PAYMENTS", "config": consumer}),
    )
    .await;
    step(&svc, "$JS.API.CONSUMER.INFO.PAYMENTS.payment-p0", json!({})).await;

    // nats --context checkout pub payments.request.b-42 '{…}' (with its JetStream ack)
    let checkout = context_client(dir, "checkout").await;
    let id = "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01";
    let payment = json!({"payment_id": id, "buyer_id": "b-42", "merchant_id": "m-7",
        "amount": 1250, "currency": "USD"});
    step(&checkout, "payments.request.b-42", payment).await;

    // nats --context operator …: the context carries the JetStream API prefix.
    let op = context_client(dir, "operator").await;
    let ctx: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("config/nats/context/operator.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ctx["jetstream_api_prefix"], "$JS.PAYSTREAM.API");
    step(&op, "$JS.PAYSTREAM.API.INFO", json!({})).await;
    eventually(Duration::from_secs(20), "the payment's event", || {
        let op = op.clone();
        async move {
            op.request(
                "$JS.PAYSTREAM.API.STREAM.MSG.GET.PAYMENT_EVENTS",
                json!({"seq": 1}).to_string().into(),
            )
            .await
            .is_ok_and(|r| !String::from_utf8_lossy(&r.payload).contains("error"))
        }
    })
    .await;
    step(&op, "$JS.PAYSTREAM.API.CONSUMER.LIST.PAYMENTS", json!({})).await;
    step(
        &op,
        "$JS.PAYSTREAM.API.CONSUMER.INFO.PAYMENT_EVENTS.wallet-p3",
        json!({}),
    )
    .await;
    step(
        &op,
        "$JS.PAYSTREAM.API.STREAM.MSG.GET.PAYMENTS",
        json!({"seq": 1}),
    )
    .await;
    step(&op, "paystream.dlq.list", json!({})).await;

    // nats --context viewer micro ls; request paystream.status / .balance
    let viewer = context_client(dir, "viewer").await;
    let ping = step(&viewer, "$SRV.PING", json!({})).await;
    assert_eq!(ping["name"], "paystream");
    let status = step(&viewer, "paystream.status", json!({"payment_id": id})).await;
    assert_eq!(status["payment_id"], id);
    step(&viewer, "paystream.balance", json!({"merchant_id": "m-7"})).await;

    // nats --context system server report jetstream | connections
    let system = context_client(dir, "system").await;
    let statz = step(&system, "$SYS.REQ.SERVER.PING.STATSZ", json!({})).await;
    assert!(statz["server"]["id"].is_string(), "{statz}");
    step(&system, "$SYS.REQ.SERVER.PING.JSZ", json!({})).await;
    step(&system, "$SYS.REQ.SERVER.PING.CONNZ", json!({})).await;
}
