//! `paystream`: parse, dispatch, map errors to exit codes (2 usage, 1 everything else).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::FromArgMatches as _;
use paystream::app::{self, Parts};
use paystream::cli::{Cli, Command, DlqCommand, LedgerCommand, ReconCommand, Service};
use paystream::dlq::{self, Selection};
use paystream::operator::{self, ServiceClient};
use paystream::output::emit;
use paystream::progress::Progress;
use paystream::{client, queries};
use paystream_common::config::{ClientConfig, Config};
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use paystream_common::money::{Amount, Currency};
use paystream_common::nats::Role;
use paystream_common::{db, nats, telemetry};
use serde_json::json;

fn main() -> ExitCode {
    paystream_common::tls::install_crypto_provider();
    let parsed = paystream::cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => match paystream_common::config::name_the_source(
            &e,
            &paystream::cli::command(),
            &std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        ) {
            Some(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let long_running = matches!(
        cli.command,
        Command::Up { .. } | Command::Serve { .. } | Command::PspSim { .. }
    );
    telemetry::init_tracing(
        if long_running { "info" } else { "warn" },
        cli.client.log_format,
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", paystream::output::error_report(&e));
            exit_code(&e)
        }
    }
}

/// Runs `work` unless the NATS server refuses this user something meanwhile (its `-ERR` would
/// otherwise leave `work` waiting for a JetStream ack until the timeout).
async fn unless_refused<T>(
    errors: &nats::ServerErrors,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = work => r,
        refusal = errors.refused() => anyhow::bail!("NATS refused this user: {refusal}"),
    }
}

/// A usage error found after parsing (a value clap cannot check): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn usage(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    Err(Usage(msg.to_string()).into())
}

/// Exit 2 for a usage error (found here, or a request the service refused as malformed), else 1.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    let bad_request = e
        .downcast_ref::<operator::ServiceError>()
        .is_some_and(operator::ServiceError::is_bad_request);
    if e.is::<Usage>() || bad_request {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(
        cli.command,
        Command::Up { .. } | Command::Serve { .. } | Command::PspSim { .. }
    ) {
        // A SIGTERM during start-up is a graceful stop once started, not a kill mid-start.
        paystream_common::shutdown::listen_for_signals();
    }
    // Where NATS is and who the caller is: every command's. The services' settings come with
    // the subcommands that use them.
    let conn = cli.client;
    let with_conn = |config: Config| Config {
        client: conn.clone(),
        ..config
    };
    match cli.command {
        Command::Up { config } => {
            let parts = Parts {
                console: true,
                ..Parts::all()
            };
            let app = app::start(with_conn(*config), parts).await?;
            tracing::info!(nats = ?app.nats_url, psp = ?app.psp_url, http = %app.http_addr, "paystream is up");
            app.run_until_signal().await.map_err(anyhow::Error::msg)?;
        }
        Command::Serve { service, config } => {
            let parts = Parts {
                payment: service == Service::Payment,
                wallet: service == Service::Wallet,
                ledger: service == Service::Ledger,
                dlq: service == Service::Dlq,
                reconciler: service == Service::Reconciler,
                console: service == Service::Console,
                ..Parts::default()
            };
            app::start(with_conn(*config), parts)
                .await?
                .run_until_signal()
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Command::PspSim { config } => {
            let parts = Parts {
                psp_sim: true,
                ..Parts::default()
            };
            let cfg = Config {
                psp_url: None,
                ..with_conn(*config)
            };
            let app = app::start(cfg, parts).await?;
            tracing::info!(psp = ?app.psp_url, "PSP simulator is up");
            app.run_until_signal().await.map_err(anyhow::Error::msg)?;
        }
        Command::Migrate { config } => {
            let cfg = with_conn(*config);
            let (_trigger, stop) = paystream_common::shutdown::channel();
            let progress = Progress::spinner("applying migrations", false);
            app::connect_db(&cfg, stop).await?;
            progress.finish();
            println!(
                "migrations applied to {}",
                paystream_common::config::redact_url(&cfg.database_url())
            );
        }
        Command::Pay {
            buyer,
            merchant,
            amount,
            currency,
            payment_id,
            meta,
            json,
        } => {
            let req = match build_payment(
                &buyer,
                &merchant,
                amount,
                &currency,
                payment_id.as_deref(),
                &meta,
            ) {
                Ok(r) => r,
                Err(e) => return usage(e),
            };
            let (client, errors) =
                nats::connect_as(&conn, "paystream-cli", nats::Role::Checkout, false).await?;
            let receipt =
                unless_refused(&errors, client::pay(&nats::jetstream(client), &req)).await?;
            emit(json, &receipt, || receipt.table());
        }
        Command::Cancel {
            payment_id,
            buyer,
            reason,
            json,
        } => {
            let req = match (PaymentId::parse(&payment_id), BuyerId::parse(&buyer)) {
                (Ok(payment_id), Ok(buyer_id)) => CancelRequest {
                    payment_id,
                    buyer_id,
                    reason,
                },
                (Err(e), _) => return usage(format!("payment_id: {e}")),
                (_, Err(e)) => return usage(format!("buyer: {e}")),
            };
            let (client, errors) =
                nats::connect_as(&conn, "paystream-cli", nats::Role::Checkout, false).await?;
            let receipt =
                unless_refused(&errors, client::cancel(&nats::jetstream(client), &req)).await?;
            emit(json, &receipt, || receipt.table());
        }
        Command::Status { payment_id, json } => {
            PaymentId::parse(&payment_id).map_err(|e| Usage(format!("payment_id: {e}")))?;
            let answer = query(
                &conn,
                "paystream.status",
                json!({ "payment_id": payment_id }),
            )
            .await?;
            let status: queries::Status = serde_json::from_value(answer.clone())?;
            emit(json, &answer, || status.table());
        }
        Command::Balance { merchant_id, json } => {
            MerchantId::parse(&merchant_id).map_err(|e| Usage(format!("merchant_id: {e}")))?;
            let answer = query(
                &conn,
                "paystream.balance",
                json!({ "merchant_id": merchant_id }),
            )
            .await?;
            let balance: queries::Balance = serde_json::from_value(answer.clone())?;
            emit(json, &answer, || balance.table());
        }
        Command::Ledger {
            command: LedgerCommand::Check { json },
        } => {
            let answer = query(&conn, "paystream.ledger.check", json!({})).await?;
            let report: paystream_ledger::check::Report = serde_json::from_value(answer.clone())?;
            emit(json, &answer, || queries::ledger_check_table(&report));
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Timeline {
            payment_id,
            offset,
            limit,
            json,
        } => {
            PaymentId::parse(&payment_id).map_err(|e| Usage(format!("payment_id: {e}")))?;
            let answer = query(
                &conn,
                "paystream.timeline",
                json!({ "payment_id": payment_id, "offset": offset, "limit": limit }),
            )
            .await?;
            emit(json, &answer, || paystream::timeline::table_of(&answer));
        }
        Command::Dlq { command } => run_dlq(&conn, command).await?,
        Command::Recon { command } => run_recon(&conn, command).await?,
        Command::Audit { limit, json } => {
            let answer = query(&conn, "paystream.audit", json!({ "limit": limit })).await?;
            let entries: Vec<paystream::audit::AuditEntry> =
                serde_json::from_value(answer.clone())?;
            emit(json, &answer, || paystream::audit::table(&entries));
        }
        Command::Bench {
            payments,
            rate,
            db,
            fsync,
            backlog,
            psp_latency_ms,
            psp_latency_p99_ms,
            psp_timeout_rate,
            psp_brownout_s,
            json,
            config,
        } => {
            let cfg = with_conn(*config);
            let opts = paystream::bench::BenchOptions {
                backlog,
                psp: paystream::bench::PspOptions {
                    latency_ms: psp_latency_ms,
                    latency_p99_ms: psp_latency_p99_ms,
                    timeout_rate: psp_timeout_rate.unwrap_or(0.0),
                    brownout_s: psp_brownout_s,
                },
                payments,
                rate,
                postgres: db == paystream::cli::BenchDb::Postgres,
                json,
                fsync_always: fsync == paystream::cli::Fsync::Always,
            };
            let report = paystream::bench::run(&cfg, opts).await?;
            emit(json, &report, || report.table());
            if !report.verified {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The body of a `paystream.dlq.redrive|purge` request.
fn selection_body(ids: &[u64], all: bool, consumer: Option<&str>) -> serde_json::Value {
    if all {
        json!({ "all": true, "consumer": consumer })
    } else {
        json!({ "ids": ids })
    }
}

/// Asks the paystream service `subject` as the caller (without an identity, against `up`'s own
/// server: its viewer user).
async fn query(
    conn: &ClientConfig,
    subject: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let svc = ServiceClient::connect(conn, Role::Viewer).await?;
    Ok(svc.query(subject, &body).await?)
}

async fn run_dlq(conn: &ClientConfig, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { consumer, json } => {
            let answer = query(conn, "paystream.dlq.list", json!({ "consumer": consumer })).await?;
            let entries: Vec<dlq::DeadLetter> = serde_json::from_value(answer.clone())?;
            emit(json, &answer, || dlq::list_table(&entries));
        }
        DlqCommand::Show { id, json } => {
            let answer = query(conn, "paystream.dlq.show", json!({ "id": id })).await?;
            emit(json, &answer, || {
                serde_json::to_string_pretty(&answer).unwrap_or_default() + "\n"
            });
        }
        DlqCommand::Redrive {
            ids,
            all,
            consumer,
            direct,
            json,
        } => {
            let n = if direct {
                let (cfg, js, db) = direct_access(conn).await?;
                let _progress = Progress::spinner("redriving dead letters", json || !all);
                dlq::redrive(&js, &db, &selection(ids, all, consumer), &cfg.actor).await?
            } else {
                let svc = ServiceClient::connect(conn, Role::Operator).await?;
                let body = selection_body(&ids, all, consumer.as_deref());
                let _progress = Progress::spinner("redriving dead letters", json || !all);
                let answer = svc
                    .call("paystream.dlq.redrive", &body, operator::ACTION_TIMEOUT)
                    .await?;
                answer["redriven"].as_u64().unwrap_or_default()
            };
            emit(json, &json!({ "redriven": n }), || {
                format!("redriven: {n}\n")
            });
        }
        DlqCommand::Purge {
            ids,
            all,
            consumer,
            direct,
            json,
        } => {
            let n = if direct {
                let (cfg, js, db) = direct_access(conn).await?;
                dlq::purge(&js, &db, &selection(ids, all, consumer), &cfg.actor).await?
            } else {
                let svc = ServiceClient::connect(conn, Role::Operator).await?;
                let body = selection_body(&ids, all, consumer.as_deref());
                let answer = svc
                    .call("paystream.dlq.purge", &body, operator::ACTION_TIMEOUT)
                    .await?;
                answer["purged"].as_u64().unwrap_or_default()
            };
            emit(json, &json!({ "purged": n }), || format!("purged: {n}\n"));
        }
    }
    Ok(())
}

fn selection(ids: Vec<u64>, all: bool, consumer: Option<String>) -> Selection {
    if all {
        Selection::All { consumer }
    } else {
        Selection::Ids(ids)
    }
}

/// `--direct`: the services' configuration (from the environment), their NATS user and their
/// database, for when no paystream service runs.
async fn direct_access(
    conn: &ClientConfig,
) -> anyhow::Result<(
    Config,
    async_nats::jetstream::Context,
    sea_orm::DatabaseConnection,
)> {
    let cfg = Config::from_env(conn.clone())?;
    let js = nats::jetstream(nats::connect(conn, "paystream-cli", false).await?);
    let db = db::connect(&cfg.database_url()).await?;
    Ok((cfg, js, db))
}

async fn run_recon(conn: &ClientConfig, command: ReconCommand) -> anyhow::Result<()> {
    use paystream::recon;
    let date = match &command {
        ReconCommand::Run { date, .. } | ReconCommand::Report { date, .. } => date,
    };
    paystream_reconciler::parse_date(date).map_err(|e| Usage(e.to_string()))?;
    let (answer, json) = match command {
        ReconCommand::Run {
            date,
            file,
            direct: true,
            json,
        } => {
            let cfg = Config::from_env(conn.clone())?;
            let (_trigger, stop) = paystream_common::shutdown::channel();
            let db = app::connect_db(&cfg, stop).await?;
            let rec = recon::reconciler(&cfg, db, None);
            let _progress = Progress::spinner(&format!("reconciling {date}"), json);
            let report = recon::run(&rec, &date, file.as_deref(), &cfg.actor).await?;
            (serde_json::to_value(report)?, json)
        }
        ReconCommand::Run {
            date, file, json, ..
        } => {
            let svc = ServiceClient::connect(conn, Role::Operator).await?;
            let body = json!({ "date": date, "file": file });
            let _progress = Progress::spinner(&format!("reconciling {date}"), json);
            let answer = svc
                .call("paystream.recon.run", &body, operator::ACTION_TIMEOUT)
                .await?;
            (answer, json)
        }
        ReconCommand::Report { date, json } => {
            let answer = query(conn, "paystream.recon.report", json!({ "date": date })).await?;
            (answer, json)
        }
    };
    let report: paystream_reconciler::report::Report = serde_json::from_value(answer.clone())?;
    emit(json, &answer, || recon::table(&report));
    Ok(())
}

fn build_payment(
    buyer: &str,
    merchant: &str,
    amount: i64,
    currency: &str,
    payment_id: Option<&str>,
    meta: &[String],
) -> Result<PaymentRequest, String> {
    let metadata = meta
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--meta {kv:?}: expected K=V"))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(PaymentRequest {
        payment_id: match payment_id {
            Some(p) => PaymentId::parse(p).map_err(|e| format!("payment_id: {e}"))?,
            None => PaymentId::new_random(),
        },
        buyer_id: BuyerId::parse(buyer).map_err(|e| format!("buyer: {e}"))?,
        merchant_id: MerchantId::parse(merchant).map_err(|e| format!("merchant: {e}"))?,
        amount: Amount::new(amount).map_err(|e| format!("amount: {e}"))?,
        currency: Currency::parse(currency).map_err(|e| format!("currency: {e}"))?,
        metadata,
    })
}
