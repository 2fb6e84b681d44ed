//! The operator console in a real browser (Debian's chromium, driven by Playwright's
//! `playwright-core` from `console-tests/console.mjs`) against the real application on a secure
//! nats-server: a viewer finds a dead-lettered payment by its id, sees its timeline and cannot
//! redrive it (not offered, and refused by NATS when forced); an operator redrives it and the
//! payment completes, charged once, with an audit row naming them; an operator resolves a
//! reconciliation row; a wrong password, unusable creds, a forged session and an expired session
//! are refused.
//! The script saves a screenshot of each page into `docs/console/`.

use std::path::PathBuf;
use std::time::Duration;

use paystream::console;
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::PaymentRequest;
use paystream_common::money::{Amount, Currency};
use paystream_common::nats;
use paystream_testkit::Backend;
use sea_orm::{ConnectionTrait, Statement};

use crate::dead_letters::{POISON, inject_fault, remove_fault};
use crate::helpers::{Env, eventually, reconcile_an_unknown_payment, scalar, sim_payment};

const DAY: &str = "2026-11-30";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn text(db: &sea_orm::DatabaseConnection, sql: &str) -> String {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap()
    .expect("one row")
    .try_get_by_index::<String>(0)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_work_from_the_console_in_a_browser() {
    let env = Env::start_secure(Backend::Sqlite, &["--backoff=1s", "--max-deliver=2"])
        .await
        .unwrap();
    let db = env.db().clone();
    let stop = env.app().shutdown_signal();
    let (addr, _task) = console::start(
        &env.cfg.client,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(600),
        stop.clone(),
    )
    .await
    .expect("console binds");
    // A second console whose sessions expire after 2 s of silence.
    let (short_addr, _short_task) = console::start(
        &env.cfg.client,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(2),
        stop,
    )
    .await
    .expect("console binds");

    // A payment whose wallet event is dead-lettered (the wallet's database refuses its merchant).
    inject_fault(&db).await;
    let (checkout, _) = env.client_as("checkout").await;
    let req = PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse("b-console").unwrap(),
        merchant_id: MerchantId::parse(POISON).unwrap(),
        amount: Amount::new(4_200).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: Default::default(),
    };
    let pid = req.payment_id.to_string();
    paystream::client::pay(&nats::jetstream(checkout), &req)
        .await
        .expect("payment accepted");
    eventually(
        Duration::from_secs(30),
        "the wallet event dead-lettered",
        || async {
            scalar(
                &db,
                "SELECT COUNT(*) FROM dead_letter_index WHERE removed_at_ms IS NULL",
            )
            .await
                == 1
        },
    )
    .await;
    remove_fault(&db).await;

    // A reconciliation with a row for manual review (a payment we never received).
    let report = reconcile_an_unknown_payment(&env, DAY, &[]).await;
    assert_eq!(report.manual_review.len(), 1, "{report:?}");

    let root = repo_root();
    let shots = root.join("docs/console");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(root.join("console-tests/console.mjs"))
        .current_dir(root.join("console-tests"))
        .env("CONSOLE_URL", format!("http://{addr}"))
        .env("CONSOLE_SHORT_URL", format!("http://{short_addr}"))
        .env("VIEWER_PASSWORD", env.nats.password("viewer"))
        .env("OPERATOR_PASSWORD", env.nats.password("operator"))
        .env("PAYMENT_ID", &pid)
        .env("RECON_DATE", DAY)
        .env("SCREENSHOT_DIR", &shots)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect(
            "node runs (scripts/setup.sh --test installs it, chromium and console-tests' packages)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ALL CONSOLE CHECKS PASSED"),
        "the script did not finish: {stdout}"
    );

    // What the browser did, checked from the inside.
    eventually(
        Duration::from_secs(20),
        "wallet and ledger applied the redriven event",
        || async {
            scalar(
                &db,
                &format!(
                    "SELECT COUNT(*) FROM applied_events WHERE payment_id = '{pid}' AND consumer IN ('wallet','ledger')"
                ),
            )
            .await
                == 2
        },
    )
    .await;
    let psp = sim_payment(&env.psp_url(), &pid)
        .await
        .expect("PSP knows it");
    assert_eq!(psp["charge_count"], 1, "charged once: {psp}");
    let balance = paystream_wallet::store::balances(&db, POISON)
        .await
        .unwrap();
    assert_eq!(balance.get("USD"), Some(&4_200), "credited once");
    assert_eq!(
        text(&db, "SELECT actor FROM audit WHERE action = 'dlq.redrive'").await,
        "operator"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM audit WHERE action IN ('dlq.redrive','dlq.purge') AND actor <> 'operator'"
        )
        .await,
        0,
        "the viewer's forced redrive never reached the service"
    );
    assert_eq!(
        text(&db, "SELECT actor FROM recon_resolutions").await,
        "operator"
    );
    let report = paystream::recon::report(&db, DAY).await.unwrap();
    let resolution = report.manual_review[0]
        .resolution
        .as_ref()
        .expect("the report shows the resolution");
    assert_eq!(resolution.by, "operator");
    assert!(resolution.note.contains("unknown to us"), "{resolution:?}");
    let files = std::fs::read_to_string(report.files.resolutions.as_ref().expect("file")).unwrap();
    assert!(files.contains("operator"), "{files}");
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("paystream_console_sign_ins_total{outcome=\"refused\"} 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("console"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    env.shutdown().await;
}
