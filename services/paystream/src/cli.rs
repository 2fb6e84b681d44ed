//! The command line: one binary, `paystream`, whose subcommands are the services, the simulator
//! and the operator and client commands. The connection settings (NATS, identity, data dir, log
//! format) go with every subcommand; the services' settings only with the subcommands that run
//! services (`up`, `serve`, `psp-sim`, `migrate`, `bench`), grouped under headings. Every flag
//! has its environment variable; `--json` goes after the subcommand and its arguments.

use clap::{Parser, Subcommand, ValueEnum};
use paystream_common::config::{ClientConfig, Config};

#[derive(Parser, Debug)]
#[command(
    name = "paystream",
    version,
    about = "Payment event pipeline on NATS JetStream"
)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientConfig,
    #[command(subcommand)]
    pub command: Command,
}

/// The command line as the binary parses it: [`Cli`], with the services' settings that
/// `psp-sim` and `migrate` take but do not use hidden from their help (still accepted, so one
/// environment serves every subcommand).
pub fn command() -> clap::Command {
    use clap::CommandFactory as _;
    Cli::command()
        .mut_subcommand("psp-sim", |c| {
            only_headings(c, &["Service", "PSP simulator"])
        })
        .mut_subcommand("migrate", |c| only_headings(c, &["Storage"]))
}

/// `cmd` with every argument under another help heading than `shown` hidden.
fn only_headings(cmd: clap::Command, shown: &[&str]) -> clap::Command {
    let hidden: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.get_help_heading().is_some_and(|h| !shown.contains(&h)))
        .map(|a| a.get_id().clone())
        .collect();
    hidden
        .into_iter()
        .fold(cmd, |c, id| c.mut_arg(id, |a| a.hide(true)))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything in one process: payment, wallet and ledger services, the PSP simulator and (when
    /// PAYSTREAM_NATS_URL is unset) a nats-server of its own. SQLite by default.
    Up {
        #[command(flatten)]
        config: Box<Config>,
    },
    /// One service, for deployments that run each separately.
    Serve {
        /// Which service this process runs.
        #[arg(value_enum)]
        service: Service,
        #[command(flatten)]
        config: Box<Config>,
    },
    /// The PSP simulator alone.
    PspSim {
        #[command(flatten)]
        config: Box<Config>,
    },
    /// Applies the database migrations and exits.
    Migrate {
        #[command(flatten)]
        config: Box<Config>,
    },
    /// Publishes a payment request (MessagePack) and prints the JetStream receipt.
    Pay {
        /// The buyer's id (`[A-Za-z0-9_-]{1,64}`): the subject's token and the partition key.
        #[arg(long)]
        buyer: String,
        /// The merchant credited.
        #[arg(long)]
        merchant: String,
        /// Minor units (cents), 1..=10^12.
        #[arg(long)]
        amount: i64,
        /// ISO 4217 code.
        #[arg(long, default_value = "USD")]
        currency: String,
        /// The idempotency key (a UUID). Default: a new random one.
        #[arg(long)]
        payment_id: Option<String>,
        /// Metadata entry, repeatable: `--meta sim=decline`.
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publishes a cancellation of a payment.
    Cancel {
        /// The payment to cancel (refunded at the PSP once its outcome is known).
        payment_id: String,
        /// The payment's buyer (the subject's token).
        #[arg(long)]
        buyer: String,
        /// Why, recorded with the cancellation.
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A payment's state and history.
    Status {
        /// The payment's id (UUID).
        payment_id: String,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One payment's whole life on one time axis: request, states, PSP attempts, events and
    /// when wallet and ledger applied them, dead letters and redrives, reconciliation.
    Timeline {
        /// The payment's id (UUID).
        payment_id: String,
        /// Skip this many entries (they are in time order).
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Show at most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A merchant's wallet balances.
    Balance {
        /// The merchant whose balances to show.
        merchant_id: String,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ledger invariants.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Raw JetStream hop against paystream end to end, in one run on the same server settings.
    Bench {
        /// Payments (and raw messages) for the throughput run.
        #[arg(long, default_value_t = 10_000)]
        payments: usize,
        /// Fixed rate (per second) for the latency runs.
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
        /// The database the services use during the run.
        #[arg(long, value_enum, default_value = "sqlite")]
        db: BenchDb,
        /// `always`: the server fsyncs every write; `interval`: its default (2 min).
        #[arg(long, value_enum, default_value = "interval")]
        fsync: Fsync,
        /// Then queue this many payments with the services down, start them, and report the
        /// time to work through the backlog and the peak resident set (0: skip).
        #[arg(long, default_value_t = 0)]
        backlog: usize,
        /// The simulator's median latency (ms), to measure against a PSP as slow as a real one;
        /// the report then gives the bound no pipeline can beat (concurrency ÷ mean latency).
        #[arg(long)]
        psp_latency_ms: Option<u64>,
        /// With `--psp-latency-ms`: the p99 (ms) of a log-normal latency (a real PSP's tail).
        #[arg(long, requires = "psp_latency_ms")]
        psp_latency_p99_ms: Option<u64>,
        /// Share of PSP calls (0.0–1.0) that hang until `PAYSTREAM_PSP_TIMEOUT`.
        #[arg(long, value_parser = paystream_common::config::parse_rate)]
        psp_timeout_rate: Option<f64>,
        /// Then a brownout: payments at `--rate` for 5 s, the simulator failing every call for
        /// this many seconds, 20 s more; reports FAILUREs (none), UNKNOWNs and the recovery.
        #[arg(long)]
        psp_brownout_s: Option<u64>,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: Box<Config>,
    },
    /// The audit trail of operator actions (who, when, what, result), oldest first.
    Audit {
        /// Show at most this many of the newest entries.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: inspect, redrive, purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Reconciliation against the PSP's settlement file.
    Recon {
        #[command(subcommand)]
        command: ReconCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReconCommand {
    /// Reconciles a day now: classifies every row, corrects what can be corrected (through
    /// payment events), reports the rest. Running a day again corrects nothing twice.
    Run {
        /// The settlement day, YYYY-MM-DD (UTC).
        #[arg(long)]
        date: String,
        /// A settlement file to use instead of the drop directory's or the PSP's. Through the
        /// service: a file name in its PAYSTREAM_RECON_DROP_DIR; with `--direct`: any path here.
        #[arg(long)]
        file: Option<String>,
        /// Reconcile here with the services' database (DATABASE_URL) and PSP access, audited as
        /// PAYSTREAM_ACTOR, instead of asking the `paystream.recon.run` endpoint.
        #[arg(long)]
        direct: bool,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The report of a day's latest run.
    Report {
        /// The settlement day, YYYY-MM-DD (UTC).
        #[arg(long)]
        date: String,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Every dead letter, oldest first.
    List {
        /// Only this service's dead letters (payment, wallet, ledger).
        #[arg(long)]
        consumer: Option<String>,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with the original's headers, decoded payload and every failed attempt.
    Show {
        /// The dead letter's id (its DEAD_LETTERS sequence, from `dlq list`).
        id: u64,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish the originals for reprocessing (effects stay exactly-once), then remove the
    /// entries. Goes through the `paystream.dlq.redrive` endpoint (NATS permissions decide).
    Redrive {
        /// Dead letter ids (from `dlq list`).
        #[arg(required_unless_present = "all")]
        ids: Vec<u64>,
        /// Every dead letter (or every one of `--consumer`).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this consumer's dead letters.
        #[arg(long, requires = "all")]
        consumer: Option<String>,
        /// Act here with the services' NATS and database access (audited as PAYSTREAM_ACTOR)
        /// instead of asking the `paystream.dlq.redrive` endpoint as the operator user.
        #[arg(long)]
        direct: bool,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries from DEAD_LETTERS (the originals stay in their streams).
    Purge {
        /// Dead letter ids (from `dlq list`).
        #[arg(required_unless_present = "all")]
        ids: Vec<u64>,
        /// Every dead letter (or every one of `--consumer`).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this consumer's dead letters.
        #[arg(long, requires = "all")]
        consumer: Option<String>,
        /// Act here (services' access, audited as PAYSTREAM_ACTOR) instead of asking the
        /// `paystream.dlq.purge` endpoint as the operator user.
        #[arg(long)]
        direct: bool,
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Σ debits = Σ credits per currency, and each merchant's ledger balance = wallet balance.
    /// Exits 1 when violated.
    Check {
        /// Print JSON (the scriptable contract) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchDb {
    Sqlite,
    Postgres,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Interval,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Payment,
    Wallet,
    Ledger,
    Dlq,
    Reconciler,
    /// The operator console (web) on PAYSTREAM_CONSOLE_ADDR.
    Console,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every argument of every subcommand, by path (`dlq redrive --all`), with its help text.
    fn arguments(cmd: &clap::Command, path: &str, out: &mut Vec<(String, Option<String>)>) {
        for arg in cmd.get_arguments() {
            if ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            out.push((
                format!("{path} {}", arg.get_id()),
                arg.get_help().map(ToString::to_string),
            ));
        }
        for sub in cmd.get_subcommands() {
            arguments(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// What `paystream <path…> --help` prints.
    fn help_of(path: &[&str]) -> String {
        let args = std::iter::once("paystream")
            .chain(path.iter().copied())
            .chain(["--help"]);
        let err = super::command().try_get_matches_from(args).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        err.to_string()
    }

    #[test]
    fn every_argument_is_described() {
        let mut args = Vec::new();
        arguments(&Cli::command(), "paystream", &mut args);
        let undescribed: Vec<&String> = args
            .iter()
            .filter(|(_, help)| help.as_deref().is_none_or(str::is_empty))
            .map(|(name, _)| name)
            .collect();
        assert!(
            undescribed.is_empty(),
            "without a description: {undescribed:?}"
        );
        assert!(args.len() > 100, "all subcommands walked: {}", args.len());
    }

    #[test]
    fn a_client_command_shows_only_what_it_uses() {
        let pay = help_of(&["pay"]);
        assert!(pay.lines().count() < 40, "{pay}");
        for unrelated in ["drift", "--partitions", "--database-url", "--psp-timeout"] {
            assert!(
                !pay.contains(unrelated),
                "{unrelated} in pay --help:\n{pay}"
            );
        }
        for heading in ["NATS connection:", "--buyer", "--context"] {
            assert!(pay.contains(heading), "{heading} missing:\n{pay}");
        }
        let up = help_of(&["up"]);
        for heading in [
            "NATS connection:",
            "Storage:",
            "PSP:",
            "PSP simulator:",
            "Pipeline:",
            "Reconciliation:",
        ] {
            assert!(up.contains(heading), "{heading} missing:\n{up}");
        }
        assert!(up.contains("--psp-sim-drift-missing-rate"), "{up}");
        let sim = help_of(&["psp-sim"]);
        assert!(
            sim.contains("--psp-sim-latency-ms") && sim.contains("--http-addr"),
            "{sim}"
        );
        for unrelated in [
            "--partitions",
            "--psp-timeout",
            "--database-url",
            "--recon-at",
        ] {
            assert!(
                !sim.contains(unrelated),
                "{unrelated} in psp-sim --help:\n{sim}"
            );
        }
        let migrate = help_of(&["migrate"]);
        assert!(migrate.contains("--database-url"), "{migrate}");
        assert!(!migrate.contains("--psp-sim-latency-ms"), "{migrate}");
    }
}
