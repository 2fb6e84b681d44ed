//! The command line: one binary, `paystream`, whose subcommands are the services, the simulator
//! and the operator and client commands. Configuration flags are global (and environment
//! variables); `--json` goes after the subcommand and its arguments.

use clap::{Parser, Subcommand, ValueEnum};
use paystream_common::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "paystream",
    version,
    about = "Payment event pipeline on NATS JetStream"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything in one process: payment, wallet and ledger services, the PSP simulator and (when
    /// PAYSTREAM_NATS_URL is unset) a nats-server of its own. SQLite by default.
    Up,
    /// One service, for deployments that run each separately.
    Serve {
        #[arg(value_enum)]
        service: Service,
    },
    /// The PSP simulator alone.
    PspSim,
    /// Applies the database migrations and exits.
    Migrate,
    /// Publishes a payment request (MessagePack) and prints the JetStream receipt.
    Pay {
        #[arg(long)]
        buyer: String,
        #[arg(long)]
        merchant: String,
        /// Minor units (cents), 1..=10^12.
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Default: a new random UUID.
        #[arg(long)]
        payment_id: Option<String>,
        /// Metadata entry, repeatable: `--meta sim=decline`.
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Publishes a cancellation of a payment.
    Cancel {
        payment_id: String,
        #[arg(long)]
        buyer: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A payment's state and history.
    Status {
        payment_id: String,
        #[arg(long)]
        json: bool,
    },
    /// One payment's whole life on one time axis: request, states, PSP attempts, events and
    /// when wallet and ledger applied them, dead letters and redrives, reconciliation. Asks the
    /// `paystream.timeline` endpoint (as the operator user unless credentials are given).
    Timeline {
        payment_id: String,
        /// Skip this many entries (they are in time order).
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Show at most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// A merchant's wallet balances.
    Balance {
        merchant_id: String,
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
        #[arg(long)]
        json: bool,
    },
    /// The audit trail of operator actions (who, when, what, result), oldest first.
    Audit {
        /// Show at most this many of the newest entries.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
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
        /// A settlement file to use instead of the drop directory's or the PSP's.
        #[arg(long)]
        file: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The report of a day's latest run.
    Report {
        #[arg(long)]
        date: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Every dead letter, oldest first.
    List {
        #[arg(long)]
        consumer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with the original's headers, decoded payload and every failed attempt.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Republish the originals for reprocessing (effects stay exactly-once), then remove the
    /// entries. Goes through the `paystream.dlq.redrive` endpoint (NATS permissions decide).
    Redrive {
        #[arg(required_unless_present = "all")]
        ids: Vec<u64>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this consumer's dead letters.
        #[arg(long, requires = "all")]
        consumer: Option<String>,
        /// Act here with the services' NATS and database access (audited as PAYSTREAM_ACTOR)
        /// instead of asking the `paystream.dlq.redrive` endpoint as the operator user.
        #[arg(long)]
        direct: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove entries from DEAD_LETTERS (the originals stay in their streams).
    Purge {
        #[arg(required_unless_present = "all")]
        ids: Vec<u64>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(long, requires = "all")]
        consumer: Option<String>,
        /// Act here (services' access, audited as PAYSTREAM_ACTOR) instead of asking the
        /// `paystream.dlq.purge` endpoint as the operator user.
        #[arg(long)]
        direct: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Σ debits = Σ credits per currency, and each merchant's ledger balance = wallet balance.
    /// Exits 1 when violated.
    Check {
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
