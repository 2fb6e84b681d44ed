//! Reconciliation end to end: a day of payments with faults (lost answers left UNKNOWN, charges
//! never settled, declines, our refunds and refunds we never heard of) against the simulator's
//! settlement file with every drift kind. The expected count of each class is derived from what
//! the simulator was told to do (scripted outcomes, and its drift decision for each reference),
//! not from the reconciler; after the run the wallets hold what the file says, the ledger
//! balances, and a second run corrects nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paystream::recon;
use paystream_common::events::EventKind;
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use paystream_common::money::{Amount, Currency};
use paystream_common::nats;
use paystream_common::payment::Change;
use paystream_common::state::{PaymentState, Trigger};
use paystream_payment::psp::{HttpPsp, Psp};
use paystream_payment::store::Recorded;
use paystream_psp_sim::{Drift, row_drift};
use paystream_testkit::Backend;
use serde_json::Value;

use crate::helpers::{Env, eventually, publish_all, scalar, sim_payment};

/// Payments in the day: the 10,000 (~65 s on SQLite in a debug build on 2 cores, 54 s of
/// it paying). `PAYSTREAM_TEST_RECON_PAYMENTS` sets another size for a quicker local run.
const PAYMENTS_DEFAULT: usize = 10_000;

fn payments() -> usize {
    std::env::var("PAYSTREAM_TEST_RECON_PAYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PAYMENTS_DEFAULT)
}
const MERCHANTS: usize = 20;
const UNKNOWN_ROWS: u32 = 7;
const DRIFT: Drift = Drift {
    missing_rate: 0.03,
    amount_rate: 0.03,
    duplicate_rate: 0.03,
    unknown_rows: UNKNOWN_ROWS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Normal,
    /// Charged, answer lost: UNKNOWN here (the sweeper is kept idle).
    Lost,
    /// Charged, never in a settlement file.
    NeverSettle,
    Declined,
    /// We cancel it: refunded and CANCELLED.
    Cancelled,
    /// Refunded at the PSP behind our back: SUCCESS here, a refund row there.
    RefundedAtPsp,
}

fn fate(i: usize) -> Fate {
    match i % 50 {
        1 => Fate::Lost,
        2 => Fate::NeverSettle,
        3 => Fate::Declined,
        4 | 14 => Fate::Cancelled,
        5 => Fate::RefundedAtPsp,
        _ => Fate::Normal,
    }
}

fn request(i: usize) -> PaymentRequest {
    let sim = match fate(i) {
        Fate::Lost => Some("lost_response"),
        Fate::NeverSettle => Some("never_settle"),
        Fate::Declined => Some("decline"),
        _ => None,
    };
    PaymentRequest {
        payment_id: PaymentId::new_random(),
        buyer_id: BuyerId::parse(&format!("rb-{}", i % 97)).unwrap(),
        merchant_id: MerchantId::parse(&format!("rm-{}", i % MERCHANTS)).unwrap(),
        amount: Amount::new(1_000 + i64::try_from(i).unwrap()).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        metadata: sim
            .map(|s| BTreeMap::from([("sim".to_owned(), s.to_owned())]))
            .unwrap_or_default(),
    }
}

/// What the run must find, derived from the fates and the simulator's drift decisions.
#[derive(Debug, Default)]
struct Expected {
    counts: BTreeMap<String, u64>,
    corrections: u64,
    wallet: BTreeMap<String, i64>,
    /// Payments the run must move to SUCCESS / CANCELLED.
    to_success: Vec<PaymentId>,
    to_cancelled: Vec<PaymentId>,
}

impl Expected {
    fn add(&mut self, class: &str) {
        *self.counts.entry(class.to_owned()).or_default() += 1;
    }

    /// A movement the PSP made, with our record `held` (whether we hold that movement).
    /// Returns the money the merchant ends with for it, sign included.
    fn movement(&mut self, reference: &str, amount: i64, refund: bool, held: bool) -> Option<i64> {
        let d = row_drift(&DRIFT, reference);
        let sign = if refund { -1 } else { 1 };
        if d.missing {
            if held {
                self.add("missing_external");
                return Some(sign * amount);
            }
            return None;
        }
        if d.duplicate {
            self.add("duplicate_external");
        }
        let file_amount = amount + d.amount_delta_minor;
        if !held {
            self.add(if refund {
                "status_mismatch"
            } else {
                "missing_internal"
            });
            self.corrections += 1;
        } else if d.amount_delta_minor != 0 {
            self.add("amount_mismatch");
            self.corrections += 1;
        } else {
            self.add("matched");
        }
        Some(sign * file_amount)
    }
}

fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// The CLI, through the running paystream's service (no database access of its own).
fn cli(env: &Env, args: &[&str]) -> (i32, String, String) {
    crate::helpers::run_cli(env, args, &[])
}

/// Waits until every event in the outbox is published and applied by wallet and ledger.
async fn wait_applied(env: &Env) {
    let db = env.db();
    eventually(
        Duration::from_secs(60),
        "events published and applied",
        || crate::helpers::events_applied(db),
    )
    .await;
}

async fn day_with_faults(backend: Backend) {
    let started = Instant::now();
    let drift = [
        format!("--psp-sim-drift-missing-rate={}", DRIFT.missing_rate),
        format!("--psp-sim-drift-amount-rate={}", DRIFT.amount_rate),
        format!("--psp-sim-drift-duplicate-rate={}", DRIFT.duplicate_rate),
        format!("--psp-sim-drift-unknown-rows={UNKNOWN_ROWS}"),
    ];
    let mut flags: Vec<&str> = drift.iter().map(String::as_str).collect();
    // The sweeper sweeps once at start-up, then not for an hour: lost answers stay UNKNOWN. A
    // lost answer holds its whole intake batch until the client gives up: keep that short.
    flags.extend([
        "--sweep-interval=1h",
        "--psp-timeout=1s",
        "--psp-sim-hang=2s",
    ]);
    let Some(env) = Env::start(backend, &flags).await else {
        return;
    };
    let js = nats::jetstream(env.client().await);
    let total = payments();
    let requests: Vec<PaymentRequest> = (0..total).map(request).collect();
    publish_all(&js, &requests).await;
    let db = env.db();
    eventually(
        Duration::from_secs(120),
        "every payment final or UNKNOWN",
        || async {
            let settled = scalar(
                db,
                "SELECT COUNT(*) FROM payments WHERE state IN ('SUCCESS','FAILURE','UNKNOWN')",
            )
            .await;
            settled == total as i64
        },
    )
    .await;
    // Lost answers are UNKNOWN by script; on a loaded machine a PSP call can also outlive the
    // 1 s client timeout and leave a payment UNKNOWN (the sweeper is idle). Such a payment is
    // what a lost answer is, for reconciliation: its fate follows what we hold.
    let ours = paystream_payment::store::load(
        db,
        &requests.iter().map(|r| r.payment_id).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let fates: Vec<Fate> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let unknown = ours[&r.payment_id].as_ref().unwrap().state == PaymentState::Unknown;
            match fate(i) {
                Fate::Lost => {
                    assert!(unknown, "a lost answer leaves the payment UNKNOWN");
                    Fate::Lost
                }
                Fate::NeverSettle | Fate::Declined if unknown => Fate::Declined,
                _ if unknown => Fate::Lost,
                f => f,
            }
        })
        .collect();
    let timed_out = fates
        .iter()
        .enumerate()
        .filter(|(i, f)| **f == Fate::Lost && fate(*i) != Fate::Lost)
        .count();
    let paid = started.elapsed();

    let psp = HttpPsp::new(
        &env.psp_url(),
        None,
        Duration::from_secs(5),
        Duration::from_secs(2),
        None,
    )
    .unwrap();
    let mut cancels = 0;
    for (r, f) in requests.iter().zip(&fates) {
        match f {
            Fate::Cancelled => {
                cancels += 1;
                paystream::client::cancel(
                    &js,
                    &CancelRequest {
                        payment_id: r.payment_id,
                        buyer_id: r.buyer_id.clone(),
                        reason: None,
                    },
                )
                .await
                .unwrap();
            }
            Fate::RefundedAtPsp => {
                let out = psp.refund(r.payment_id, r.amount).await;
                assert!(format!("{out:?}").contains("Succeeded"), "{out:?}");
            }
            _ => {}
        }
    }
    eventually(Duration::from_secs(60), "cancellations applied", || async {
        scalar(
            db,
            "SELECT COUNT(*) FROM payments WHERE state = 'CANCELLED'",
        )
        .await
            == cancels
    })
    .await;
    wait_applied(&env).await;

    // The oracle: what the simulator did to each movement, against what we hold.
    let mut exp = Expected::default();
    let ours = paystream_payment::store::load(
        db,
        &requests.iter().map(|r| r.payment_id).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    for (r, f) in requests.iter().zip(fates.iter().copied()) {
        let id = r.payment_id.to_string();
        let amount = r.amount.minor();
        let merchant = r.merchant_id.to_string();
        let (charge_ref, refund_ref) = match f {
            Fate::Lost | Fate::Cancelled | Fate::RefundedAtPsp => {
                let p = sim_payment(&env.psp_url(), &id)
                    .await
                    .expect("the PSP knows it");
                (
                    p["psp_reference"].as_str().unwrap().to_owned(),
                    p["refund_reference"].as_str().map(str::to_owned),
                )
            }
            _ => (
                ours[&r.payment_id]
                    .as_ref()
                    .unwrap()
                    .psp_reference
                    .clone()
                    .unwrap_or_default(),
                None,
            ),
        };
        let mut money = 0;
        match f {
            Fate::Declined => {}
            Fate::NeverSettle => {
                exp.add("missing_external");
                money += amount;
            }
            Fate::Lost => {
                if let Some(m) = exp.movement(&charge_ref, amount, false, false) {
                    money += m;
                    exp.to_success.push(r.payment_id);
                }
            }
            Fate::Normal | Fate::Cancelled | Fate::RefundedAtPsp => {
                money += exp.movement(&charge_ref, amount, false, true).unwrap();
                let refund_ref = refund_ref.clone();
                if f == Fate::Cancelled {
                    money += exp
                        .movement(&refund_ref.unwrap(), amount, true, true)
                        .unwrap();
                } else if f == Fate::RefundedAtPsp
                    && let Some(m) = exp.movement(&refund_ref.unwrap(), amount, true, false)
                {
                    money += m;
                    exp.to_cancelled.push(r.payment_id);
                }
            }
        }
        *exp.wallet.entry(merchant).or_default() += money;
    }
    *exp.counts.entry("unknown_payment".into()).or_default() += u64::from(UNKNOWN_ROWS);
    for class in paystream_common::telemetry::RECON_CLASSES {
        exp.counts.entry(class.to_owned()).or_default();
    }
    for class in [
        "missing_internal",
        "missing_external",
        "amount_mismatch",
        "status_mismatch",
        "duplicate_external",
    ] {
        assert!(
            exp.counts[class] > 0,
            "the day exercises {class}: {:?}",
            exp.counts
        );
    }

    // First run: the library entry the CLI and the NATS endpoint share.
    let rec = recon::reconciler(&env.cfg, db.clone(), Some(env.psp_url()));
    let run_started = Instant::now();
    let report = recon::run(&rec, &today(), None, "test").await.unwrap();
    let run_took = run_started.elapsed();
    eprintln!("{}", recon::table(&report));
    assert_eq!(report.counts, exp.counts, "classes");
    assert_eq!(report.corrections, exp.corrections);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let manual: u64 = ["missing_external", "duplicate_external", "unknown_payment"]
        .iter()
        .map(|c| exp.counts[*c])
        .sum();
    assert_eq!(report.manual_review_total, manual);
    assert_eq!(report.manual_review.len() as u64, manual);
    assert!(std::path::Path::new(&report.files.csv).is_file());
    let csv_lines = std::fs::read_to_string(&report.files.csv)
        .unwrap()
        .lines()
        .count() as u64;
    let not_matched: u64 = exp
        .counts
        .iter()
        .filter(|(c, _)| *c != "matched")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        csv_lines,
        1 + not_matched,
        "the CSV lists every row that did not match"
    );

    // The corrections travel as events: wallet and ledger apply them like any other.
    wait_applied(&env).await;
    for id in &exp.to_success {
        assert_eq!(ours_state(&env, *id).await, "SUCCESS");
    }
    for id in &exp.to_cancelled {
        assert_eq!(ours_state(&env, *id).await, "CANCELLED");
    }
    let wallets = paystream_wallet::store::all_balances(db).await.unwrap();
    for (merchant, money) in &exp.wallet {
        assert_eq!(
            wallets
                .get(&(merchant.clone(), "USD".to_owned()))
                .copied()
                .unwrap_or(0),
            *money,
            "wallet of {merchant} = what the file says moved (our record where it has no row)"
        );
    }
    let check = paystream::queries::ledger_check(db).await.unwrap();
    assert!(check.ok, "ledger check: {:?}", check.violations);
    let status = paystream::queries::status(db, &exp.to_success[0].to_string())
        .await
        .unwrap();
    assert!(
        status
            .history
            .iter()
            .any(|h| h.cause.contains(&report.run_id) && h.cause.contains("line")),
        "the correction names the run and the line: {:?}",
        status.history
    );

    // The sweeper's late answer for a payment reconciliation already settled (its lease ran while
    // the run corrected it) is refused by the state machine: no second `succeeded`, no credit.
    let events_before = scalar(db, "SELECT COUNT(*) FROM outbox").await;
    let late: Vec<Change> = exp
        .to_success
        .iter()
        .map(|id| Change {
            event: Some(EventKind::Succeeded),
            psp_reference: Some("ch_late".into()),
            ..Change::new(*id, Trigger::Charged, "sweeper: PSP charged".into())
        })
        .collect();
    let recorded = paystream_payment::store::record(db, &late).await.unwrap();
    assert!(
        recorded
            .iter()
            .all(|r| *r == Recorded::Skipped(PaymentState::Success)),
        "{recorded:?}"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM outbox").await,
        events_before
    );

    // Second run, through the CLI: nothing corrected twice, the earlier corrections named.
    let (code, out, err) = cli(&env, &["recon", "run", "--date", &today(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let second: Value = serde_json::from_str(&out).unwrap();
    for key in [
        "date",
        "run_id",
        "counts",
        "corrections",
        "manual_review",
        "errors",
    ] {
        assert!(second.get(key).is_some(), "DESIGN's key {key} in {out}");
    }
    assert_eq!(second["corrections"], 0);
    assert_eq!(second["corrections_already_applied"], exp.corrections);
    assert_eq!(second["counts"], serde_json::to_value(&exp.counts).unwrap());
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM outbox").await,
        events_before,
        "no new event"
    );
    let (code, out, _) = cli(&env, &["recon", "report", "--date", &today(), "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["run_id"], second["run_id"],
        "report shows the latest run"
    );
    let (code, out, _) = cli(&env, &["recon", "report", "--date", &today()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("missing_internal") && out.contains("manual review"),
        "{out}"
    );
    let (code, _, err) = cli(&env, &["recon", "report", "--date", "2026-13-01"]);
    assert_eq!(code, 2, "a bad date is a usage error: {err}");
    let audit = paystream::audit::list(db, 100).await.unwrap();
    assert!(
        audit.iter().any(|a| a.action == "recon.run"
            && a.actor == "anonymous"
            && a.result.starts_with("ok"))
    );

    // Both runs happened in this process: the first called directly, the second by the CLI
    // through this process's `paystream.recon.run` endpoint.
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("paystream_recon_runs_total{outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "paystream_recon_corrections_total{{class=\"missing_internal\"}} {}",
        exp.counts["missing_internal"]
    )));
    eprintln!(
        "recon day: {total} payments ({timed_out} UNKNOWN by timeout) settled in {paid:?}; first run {run_took:?}; whole test {:?}; counts {:?}",
        started.elapsed(),
        exp.counts
    );
    env.shutdown().await;
}

async fn ours_state(env: &Env, id: PaymentId) -> String {
    paystream::queries::status(env.db(), &id.to_string())
        .await
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_with_faults_sqlite() {
    day_with_faults(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_with_faults_postgres() {
    day_with_faults(Backend::Postgres).await;
}

/// The nightly schedule fires at the configured time for the previous day, and two reconciler
/// instances reconcile that day once.
async fn scheduled_once(backend: Backend) {
    let Some(env) = Env::start(backend, &[]).await else {
        return;
    };
    let utc = jiff::tz::TimeZone::UTC;
    let fire = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(4))
        .unwrap()
        .to_zoned_datetime(utc);
    let at = fire.strftime("%H:%M:%S").to_string();
    let day = fire.date().yesterday().unwrap().to_string();
    let flags = [format!("--recon-at={at}"), "--recon-tz=UTC".to_owned()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let mut cfg = crate::helpers::config(&env.nats.url(), &env.db.url, env.data.path(), &flags);
        cfg.psp_url = Some(env.psp_url());
        let parts = paystream::app::Parts {
            reconciler: true,
            ..Default::default()
        };
        instances.push(paystream::app::start(cfg, parts).await.unwrap());
    }
    let db = env.db();
    let runs = |status: &'static str| {
        let day = day.clone();
        async move {
            scalar(
                db,
                &format!("SELECT COUNT(*) FROM recon_runs WHERE date = '{day}' AND status LIKE '{status}'"),
            )
            .await
        }
    };
    assert_eq!(runs("%").await, 0, "nothing before the time");
    eventually(Duration::from_secs(15), "the nightly run", || async {
        runs("ok").await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runs("%").await,
        1,
        "one run for the day, not one per instance"
    );
    let rec = recon::reconciler(&env.cfg, db.clone(), Some(env.psp_url()));
    let date = paystream_reconciler::parse_date(&day).unwrap();
    assert!(
        rec.run_once(date).await.unwrap().is_none(),
        "an instance that comes late finds the day reconciled"
    );
    for app in instances {
        app.shutdown().await;
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_once_sqlite() {
    scheduled_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_once_postgres() {
    scheduled_once(Backend::Postgres).await;
}

/// `paystream.recon.run` and `paystream.recon.report` answer the CLI's JSON over NATS; errors
/// come as service errors; the run is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recon_over_nats() {
    let env = Env::start(Backend::Sqlite, &[])
        .await
        .expect("SQLite always runs");
    let js = nats::jetstream(env.client().await);
    let requests: Vec<PaymentRequest> = (0..3).map(|i| request(i * 50)).collect();
    publish_all(&js, &requests).await;
    crate::helpers::wait_settled(env.db(), 3, Duration::from_secs(30)).await;
    let client = env.client().await;
    let ask = |subject: &'static str, body: Value| {
        let client = client.clone();
        async move {
            client
                .request(subject, serde_json::to_vec(&body).unwrap().into())
                .await
                .unwrap()
        }
    };
    let code = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_owned())
    };
    let ran = ask("paystream.recon.run", serde_json::json!({"date": today()})).await;
    assert_eq!(code(&ran), None, "{ran:?}");
    let ran: Value = serde_json::from_slice(&ran.payload).unwrap();
    assert_eq!(ran["counts"]["matched"], 3, "{ran}");
    let shown = ask(
        "paystream.recon.report",
        serde_json::json!({"date": today()}),
    )
    .await;
    let shown: Value = serde_json::from_slice(&shown.payload).unwrap();
    assert_eq!(shown["run_id"], ran["run_id"]);
    let bad = ask(
        "paystream.recon.report",
        serde_json::json!({"date": "30/11/2026"}),
    )
    .await;
    assert_eq!(code(&bad).as_deref(), Some("400"));
    let none = ask(
        "paystream.recon.report",
        serde_json::json!({"date": "2001-01-01"}),
    )
    .await;
    assert_eq!(code(&none).as_deref(), Some("404"));
    let audit = paystream::audit::list(env.db(), 10).await.unwrap();
    assert!(
        audit
            .iter()
            // A server without auth names no caller (see security.rs for named operators).
            .any(|a| a.action == "recon.run" && a.actor == "anonymous" && a.target == today()),
        "{audit:?}"
    );
    env.shutdown().await;
}
