//! `paystream`: parse, dispatch, map errors to exit codes (2 usage, 1 everything else).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Parser;
use paystream::app::{self, Parts};
use paystream::cli::{Cli, Command, DlqCommand, LedgerCommand, ReconCommand, Service};
use paystream::dlq::{self, Selection};
use paystream::output::emit;
use paystream::{client, queries};
use paystream_common::config::Config;
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use paystream_common::money::{Amount, Currency};
use paystream_common::{db, nats, telemetry};

fn main() -> ExitCode {
    paystream_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    let long_running = matches!(
        cli.command,
        Command::Up | Command::Serve { .. } | Command::PspSim
    );
    telemetry::init_tracing(
        if long_running { "info" } else { "warn" },
        cli.config.log_format,
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
fn usage(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(
        cli.command,
        Command::Up | Command::Serve { .. } | Command::PspSim
    ) {
        // A SIGTERM during start-up is a graceful stop once started, not a kill mid-start.
        paystream_common::shutdown::listen_for_signals();
    }
    let cfg = cli.config;
    match cli.command {
        Command::Up => {
            let parts = Parts {
                console: true,
                ..Parts::all()
            };
            let app = app::start(cfg, parts).await?;
            tracing::info!(nats = ?app.nats_url, psp = ?app.psp_url, http = %app.http_addr, "paystream is up");
            app.run_until_signal().await.map_err(anyhow::Error::msg)?;
        }
        Command::Serve { service } => {
            let parts = Parts {
                payment: service == Service::Payment,
                wallet: service == Service::Wallet,
                ledger: service == Service::Ledger,
                dlq: service == Service::Dlq,
                reconciler: service == Service::Reconciler,
                console: service == Service::Console,
                ..Parts::default()
            };
            app::start(cfg, parts)
                .await?
                .run_until_signal()
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Command::PspSim => {
            let parts = Parts {
                psp_sim: true,
                ..Parts::default()
            };
            let cfg = Config {
                psp_url: None,
                ..cfg
            };
            let app = app::start(cfg, parts).await?;
            tracing::info!(psp = ?app.psp_url, "PSP simulator is up");
            app.run_until_signal().await.map_err(anyhow::Error::msg)?;
        }
        Command::Migrate => {
            let (_trigger, stop) = paystream_common::shutdown::channel();
            app::connect_db(&cfg, stop).await?;
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
                nats::connect_as(&cfg, "paystream-cli", nats::Role::Checkout, false).await?;
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
                nats::connect_as(&cfg, "paystream-cli", nats::Role::Checkout, false).await?;
            let receipt =
                unless_refused(&errors, client::cancel(&nats::jetstream(client), &req)).await?;
            emit(json, &receipt, || receipt.table());
        }
        Command::Status { payment_id, json } => {
            let conn = db::connect(&cfg.database_url()).await?;
            match queries::status(&conn, &payment_id).await {
                Ok(s) => emit(json, &s, || s.table()),
                Err(queries::QueryError::BadInput(e)) => return usage(e),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Balance { merchant_id, json } => {
            let conn = db::connect(&cfg.database_url()).await?;
            match queries::balance(&conn, &merchant_id).await {
                Ok(b) => emit(json, &b, || b.table()),
                Err(queries::QueryError::BadInput(e)) => return usage(e),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Ledger {
            command: LedgerCommand::Check { json },
        } => {
            let conn = db::connect(&cfg.database_url()).await?;
            let report = queries::ledger_check(&conn).await?;
            emit(json, &report, || queries::ledger_check_table(&report));
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
            let (client, errors) =
                nats::connect_as(&cfg, "paystream-cli", nats::Role::Operator, false).await?;
            let body =
                serde_json::json!({"payment_id": payment_id, "offset": offset, "limit": limit});
            let out =
                paystream::operator::request(&client, &errors, "paystream.timeline", &body).await?;
            emit(json, &out, || paystream::timeline::table_of(&out));
        }
        Command::Dlq { command } => return run_dlq(&cfg, command).await,
        Command::Recon { command } => return run_recon(&cfg, command).await,
        Command::Audit { limit, json } => {
            let conn = db::connect(&cfg.database_url()).await?;
            let entries = paystream::audit::list(&conn, limit).await?;
            emit(json, &entries, || paystream::audit::table(&entries));
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
        } => {
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

/// `dlq redrive|purge` without `--direct`: through the operator endpoint, as the operator user.
async fn dlq_over_nats(
    cfg: &Config,
    subject: &str,
    ids: Vec<u64>,
    all: bool,
    consumer: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let (client, errors) =
        nats::connect_as(cfg, "paystream-cli", nats::Role::Operator, false).await?;
    let body = if all {
        serde_json::json!({ "all": true, "consumer": consumer })
    } else {
        serde_json::json!({ "ids": ids })
    };
    Ok(paystream::operator::request(&client, &errors, subject, &body).await?)
}

async fn run_dlq(cfg: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::Redrive {
            ids,
            all,
            consumer,
            direct: false,
            json,
        } => {
            let out = dlq_over_nats(cfg, "paystream.dlq.redrive", ids, all, consumer).await?;
            emit(json, &out, || format!("redriven: {}\n", out["redriven"]));
            return Ok(ExitCode::SUCCESS);
        }
        DlqCommand::Purge {
            ids,
            all,
            consumer,
            direct: false,
            json,
        } => {
            let out = dlq_over_nats(cfg, "paystream.dlq.purge", ids, all, consumer).await?;
            emit(json, &out, || format!("purged: {}\n", out["purged"]));
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let js = nats::jetstream(nats::connect(cfg, "paystream-cli", false).await?);
    let conn = db::connect(&cfg.database_url()).await?;
    let selection = |ids: Vec<u64>, all: bool, consumer: Option<String>| {
        if all {
            Selection::All { consumer }
        } else {
            Selection::Ids(ids)
        }
    };
    match command {
        DlqCommand::List { consumer, json } => {
            let entries = dlq::list(&js, Some(&conn), consumer.as_deref()).await?;
            emit(json, &entries, || dlq::list_table(&entries));
        }
        DlqCommand::Show { id, json } => {
            let d = dlq::show(&js, Some(&conn), id).await?;
            emit(json, &d, || {
                serde_json::to_string_pretty(&d).unwrap_or_default() + "\n"
            });
        }
        DlqCommand::Redrive {
            ids,
            all,
            consumer,
            json,
            ..
        } => {
            let n = dlq::redrive(&js, &conn, &selection(ids, all, consumer), &cfg.actor).await?;
            let out = serde_json::json!({ "redriven": n });
            emit(json, &out, || format!("redriven: {n}\n"));
        }
        DlqCommand::Purge {
            ids,
            all,
            consumer,
            json,
            ..
        } => {
            let n = dlq::purge(&js, &conn, &selection(ids, all, consumer), &cfg.actor).await?;
            let out = serde_json::json!({ "purged": n });
            emit(json, &out, || format!("purged: {n}\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_recon(cfg: &Config, command: ReconCommand) -> anyhow::Result<ExitCode> {
    use paystream::recon;
    use paystream_reconciler::ReconError;
    let (_trigger, stop) = paystream_common::shutdown::channel();
    let conn = app::connect_db(cfg, stop).await?;
    let result = match command {
        ReconCommand::Run { date, file, json } => {
            let rec = recon::reconciler(cfg, conn, None);
            recon::run(&rec, &date, file.as_deref(), &cfg.actor)
                .await
                .map(|r| (r, json))
        }
        ReconCommand::Report { date, json } => recon::report(&conn, &date).await.map(|r| (r, json)),
    };
    match result {
        Ok((report, json)) => emit(json, &report, || recon::table(&report)),
        Err(e @ ReconError::BadDate(_)) => return usage(e),
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
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
