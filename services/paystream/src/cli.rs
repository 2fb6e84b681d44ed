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
pub enum Service {
    Payment,
    Wallet,
    Ledger,
}
