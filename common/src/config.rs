//! `Config`: the one typed configuration, from `PAYSTREAM_*` environment variables and flags.
//! Nothing else in paystream reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Parses a duration in jiff's friendly format — `250ms`, `1.5s`, `1h30m`, `2 minutes` — or
/// ISO 8601 (`PT1H30M`); a bare whole number is seconds. Negative or overflowing durations are
/// refused. (The value itself is not repeated in the error: clap names it and where it came
/// from.)
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let text = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        format!("{s}s")
    } else {
        s.to_owned()
    };
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{e} (expected e.g. 250ms, 1.5s, 1h30m)"))?;
    Duration::try_from(signed).map_err(|_| "a duration cannot be negative".to_owned())
}

/// A value clap refused, restated with where it came from: when the flag was not on the command
/// line the value came from its environment variable, and the message names that variable
/// instead of the flag a person never typed. `None` when the error is not about a value or the
/// flag was given.
pub fn name_the_source(err: &clap::Error, cmd: &clap::Command, args: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let flag = format!("--{long}");
    if args
        .iter()
        .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    {
        return None;
    }
    let env = env_of(cmd, long)?;
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let cause = match (
        std::error::Error::source(err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(cause), _) => cause.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => "not accepted".to_owned(),
    };
    Some(format!("invalid value '{value}' for {env}: {cause}"))
}

/// The environment variable of the flag `--long` in `cmd` or any of its subcommands.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|c| env_of(c, long)))
}

/// A retry schedule such as `1s,5s,30s,2m`: delay before delivery n+1 is entry n (the last entry
/// repeats). Bounded: 1 to 16 steps, each at most one day.
#[derive(Clone, PartialEq, Eq)]
pub struct Backoff(pub Vec<Duration>);

impl Backoff {
    pub fn parse(s: &str) -> Result<Self, String> {
        let steps = s
            .split(',')
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() || steps.len() > 16 {
            return Err("backoff needs 1 to 16 steps".into());
        }
        if steps
            .iter()
            .any(|d| d.is_zero() || *d > Duration::from_secs(86_400))
        {
            return Err("each backoff step must be between 1ms and 24h".into());
        }
        Ok(Self(steps))
    }

    /// Delay before the next attempt after `delivered` deliveries (1-based).
    pub fn delay_after(&self, delivered: i64) -> Duration {
        let i = usize::try_from(delivered.max(1) - 1).unwrap_or(usize::MAX);
        self.0[i.min(self.0.len() - 1)]
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| format!("{d:?}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses a share of requests, 0.0–1.0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{s}: a rate is between 0.0 and 1.0"))
    }
}

/// Redacts a secret in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A database URL whose `Debug` hides the password (`postgres://user:***@host/db`).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    /// The URL with its password replaced by `***`, for logs and messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Drops the password from a `scheme://user:password@host…` URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What every command needs: where NATS is and who the caller is on it, the data dir (where
/// `up` leaves its NATS URL, passwords and contexts) and the log format. The binary reads these
/// for every subcommand; the services' settings are in [`Config`].
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "NATS connection")]
pub struct ClientConfig {
    /// NATS server(s), comma-separated. Unset: `up` starts its own nats-server and the client
    /// commands find it through `<data dir>/nats.url`.
    #[arg(global = true, long, env = "PAYSTREAM_NATS_URL")]
    pub nats_url: Option<String>,
    /// Where `up` keeps its NATS URL, passwords and contexts (found there by the other commands),
    /// its SQLite file, reports and embedded NATS store.
    #[arg(
        global = true,
        help_heading = "Storage",
        long,
        env = "PAYSTREAM_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,
    /// NATS user name (with `PAYSTREAM_NATS_PASSWORD`). Unset, with `up`'s embedded server: the
    /// user for the command's role, from `<data dir>/nats-users.json`.
    #[arg(global = true, long, env = "PAYSTREAM_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password of PAYSTREAM_NATS_USER.
    #[arg(
        global = true,
        long,
        env = "PAYSTREAM_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<Secret>,
    /// A file holding the NATS password (a compose or Kubernetes secret, e.g.
    /// `/run/secrets/nats_paystream_password`), instead of `PAYSTREAM_NATS_PASSWORD`; read when
    /// connecting, without its trailing newline.
    #[arg(
        global = true,
        long,
        env = "PAYSTREAM_NATS_PASSWORD_FILE",
        conflicts_with = "nats_password"
    )]
    pub nats_password_file: Option<PathBuf>,
    /// A NATS creds file (JWT + nkey seed), instead of user and password.
    #[arg(global = true, long, env = "PAYSTREAM_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// A NATS CLI context (`~/.config/nats/context/NAME.json`, or a path to such a file): its
    /// url, user and password or creds, and ca are used where the PAYSTREAM_NATS_* settings
    /// leave them unset. `up` writes one per role.
    #[arg(
        global = true,
        long = "context",
        env = "NATS_CONTEXT",
        value_name = "NAME"
    )]
    pub nats_context: Option<String>,
    /// PEM file of the CA that signed the NATS server's certificate; when set, TLS is required.
    #[arg(global = true, long, env = "PAYSTREAM_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Log lines as `text` (for people) or `json` (one object per line, for log collectors).
    #[arg(global = true, help_heading = "Logging", long, env = "PAYSTREAM_LOG_FORMAT", default_value = "text", value_parser = LogFormat::parse)]
    pub log_format: LogFormat,
}

/// The services' configuration (`up`, `serve`, `psp-sim`, `migrate`, `bench`, and `--direct`).
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// The connection settings every command shares; the binary parses them once for all
    /// subcommands and puts them here.
    #[arg(skip = ClientConfig::default())]
    pub client: ClientConfig,
    /// `sqlite://…` or `postgres://…`. Unset: `<data dir>/paystream.sqlite`.
    #[arg(help_heading = "Storage", long, env = "DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Where `/metrics`, `/livez` and `/readyz` are served (long-running commands only).
    #[arg(
        help_heading = "Service",
        long,
        env = "PAYSTREAM_HTTP_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub http_addr: SocketAddr,
    /// Where the operator console is served (`serve console`, and `up`).
    #[arg(
        help_heading = "Operator console",
        long,
        env = "PAYSTREAM_CONSOLE_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    pub console_addr: SocketAddr,
    /// A console session ends after this long without a request (its NATS connection closes).
    #[arg(help_heading = "Operator console", long, env = "PAYSTREAM_CONSOLE_SESSION_TTL", default_value = "30m", value_parser = parse_duration)]
    pub console_session_ttl: Duration,
    /// PSP base URL. When set, `up` starts no simulator.
    #[arg(help_heading = "PSP", long, env = "PAYSTREAM_PSP_URL")]
    pub psp_url: Option<String>,
    /// Sent as `Authorization: Bearer …` to the PSP.
    #[arg(
        help_heading = "PSP",
        long,
        env = "PAYSTREAM_PSP_API_KEY",
        hide_env_values = true
    )]
    pub psp_api_key: Option<Secret>,
    /// Gives up on a PSP call after this long; the payment becomes UNKNOWN, never FAILURE.
    #[arg(help_heading = "PSP", long, env = "PAYSTREAM_PSP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub psp_timeout: Duration,
    /// Connection set-up bound for PSP calls.
    #[arg(help_heading = "PSP", long, env = "PAYSTREAM_PSP_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub psp_connect_timeout: Duration,
    /// PSP calls in flight at once per payment service instance (charges, refunds and the
    /// sweeper's lookups together). Throughput is bounded by this ÷ the PSP's latency.
    #[arg(help_heading = "PSP", long, env = "PAYSTREAM_PSP_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub psp_concurrency: u16,
    /// Most PSP requests per second per instance (the PSP's published limit). Unset: the adaptive
    /// limiter only slows down when the PSP answers 429.
    #[arg(help_heading = "PSP", long, env = "PAYSTREAM_PSP_RATE_LIMIT", value_parser = parse_requests_per_s)]
    pub psp_rate_limit: Option<f64>,
    /// PEM file of a CA trusted for the PSP's certificate, beside the system's roots.
    #[arg(help_heading = "PSP", long, env = "PAYSTREAM_PSP_CA")]
    pub psp_ca: Option<PathBuf>,

    /// Where `up` and `psp-sim` bind the simulator.
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub psp_sim_addr: SocketAddr,
    /// The simulator's median latency (ms).
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_LATENCY_MS",
        default_value_t = 0
    )]
    pub psp_sim_latency_ms: u64,
    /// With `PAYSTREAM_PSP_SIM_LATENCY_MS` as the median, makes the simulator's latency
    /// log-normal with this 99th percentile (at least the median). Unset: a fixed latency.
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_LATENCY_P99_MS"
    )]
    pub psp_sim_latency_p99_ms: Option<u64>,
    /// Most requests/s the simulator answers (every `/v1` route but `/v1/sim/*`); the excess is
    /// answered 429 with `Retry-After`. Unset: no limit.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub psp_sim_rate_limit: Option<u32>,
    /// PEM certificate chain the simulator serves HTTPS with (needs `PAYSTREAM_PSP_SIM_TLS_KEY`).
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_TLS_CERT"
    )]
    pub psp_sim_tls_cert: Option<PathBuf>,
    /// PEM private key of `PAYSTREAM_PSP_SIM_TLS_CERT`.
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_TLS_KEY"
    )]
    pub psp_sim_tls_key: Option<PathBuf>,
    /// Share of simulator requests answered 5xx.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_ERROR_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_error_rate: f64,
    /// Share of simulator requests held until the client gives up (PAYSTREAM_PSP_SIM_HANG).
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_TIMEOUT_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_timeout_rate: f64,
    /// Share of simulator charges made whose answer is dropped.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_LOST_RESPONSE_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_lost_response_rate: f64,
    /// Share of simulator charges declined.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_DECLINE_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_decline_rate: f64,
    /// How long the simulator holds a request it times out or whose answer it loses.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_HANG", default_value = "30s", value_parser = parse_duration)]
    pub psp_sim_hang: Duration,
    /// When set, the simulator answers 401 to requests without this bearer key.
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_API_KEY",
        hide_env_values = true
    )]
    pub psp_sim_api_key: Option<Secret>,
    /// Seed for the simulator's random faults (unset: random).
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_SEED")]
    pub psp_sim_seed: Option<u64>,

    /// Settlement-file drift of the simulator (reconciliation tests): share of rows left out.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_DRIFT_MISSING_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_drift_missing_rate: f64,
    /// Share of settlement rows whose amount is changed.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_DRIFT_AMOUNT_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_drift_amount_rate: f64,
    /// Share of settlement rows written twice.
    #[arg(help_heading = "PSP simulator", long, env = "PAYSTREAM_PSP_SIM_DRIFT_DUPLICATE_RATE", default_value = "0", value_parser = parse_rate)]
    pub psp_sim_drift_duplicate_rate: f64,
    /// Extra settlement rows per day for payments the simulator never received.
    #[arg(
        help_heading = "PSP simulator",
        long,
        env = "PAYSTREAM_PSP_SIM_DRIFT_UNKNOWN_ROWS",
        default_value_t = 0
    )]
    pub psp_sim_drift_unknown_rows: u32,

    /// Buyer partitions of every stream (`{{partition(N, …)}}`).
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_PARTITIONS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub partitions: u16,
    /// Deliveries before a message is dead-lettered; must exceed the backoff steps.
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_MAX_DELIVER", default_value_t = 5, value_parser = clap::value_parser!(i64).range(2..=100))]
    pub max_deliver: i64,
    /// Delay before each redelivery.
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_BACKOFF", default_value = "1s,5s,30s,2m", value_parser = Backoff::parse)]
    pub backoff: Backoff,
    /// Most messages one consumer batch handles (one transaction per batch).
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_BATCH_MAX", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub batch_max: u16,
    /// How often the sweeper looks for payments stuck in EXECUTING, REFUNDING or UNKNOWN.
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// An EXECUTING payment older than this is the sweeper's (must exceed PAYSTREAM_PSP_TIMEOUT).
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_EXECUTING_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub executing_timeout: Duration,
    /// Sweeper attempts per payment before it is left for reconciliation.
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_SWEEP_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub sweep_max_attempts: i32,
    /// How often the ledger service sums debits and credits per currency for
    /// `paystream_ledger_imbalance_minor` (a full scan of the ledger: keep it minutes on a big one).
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_LEDGER_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ledger_check_interval: Duration,
    /// An instance whose membership heartbeat is older than this is taken for dead and its
    /// partitions move to the others (heartbeats go every quarter of it).
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_MEMBER_TTL", default_value = "5s", value_parser = parse_duration)]
    pub member_ttl: Duration,
    /// Most entries DEAD_LETTERS keeps (then the oldest go); the PaystreamDeadLettersNearlyFull
    /// alert fires at half of it.
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_DEAD_LETTERS_MAX_MSGS", default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(10..=100_000_000))]
    pub dead_letters_max_msgs: i64,
    /// Stream replicas (3 on a cluster).
    #[arg(help_heading = "Pipeline", long, env = "PAYSTREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Who operator actions (dlq redrive/purge) are recorded as in the audit trail.
    #[arg(
        help_heading = "Operator actions",
        long,
        env = "PAYSTREAM_ACTOR",
        default_value = "cli"
    )]
    pub actor: String,

    /// Crash points for tests (`name@n,…`: abort on the n-th hit). Never set in production.
    #[arg(
        help_heading = "Pipeline",
        long,
        env = "PAYSTREAM_FAILPOINTS",
        hide = true
    )]
    pub failpoints: Option<String>,

    /// The nats-server binary `up` runs when `PAYSTREAM_NATS_URL` is unset (2.11 or newer).
    /// Unset: `.venv/bin/nats-server`, then `nats-server` on PATH.
    #[arg(
        help_heading = "Embedded NATS server (up)",
        long,
        env = "PAYSTREAM_NATS_SERVER_BIN"
    )]
    pub nats_server_bin: Option<PathBuf>,
    /// Client port of the nats-server that `up` starts.
    #[arg(
        help_heading = "Embedded NATS server (up)",
        long,
        env = "PAYSTREAM_EMBEDDED_NATS_PORT",
        default_value_t = 4333
    )]
    pub embedded_nats_port: u16,

    /// Local time of the nightly reconciliation (`HH:MM` or `HH:MM:SS`), in `PAYSTREAM_RECON_TZ`;
    /// it reconciles the previous day.
    #[arg(help_heading = "Reconciliation", long, env = "PAYSTREAM_RECON_AT", default_value = "00:00", value_parser = parse_time_of_day)]
    pub recon_at: jiff::civil::Time,
    /// IANA time zone of `PAYSTREAM_RECON_AT` (e.g. `Europe/Paris`).
    #[arg(help_heading = "Reconciliation", long, env = "PAYSTREAM_RECON_TZ", default_value = "UTC", value_parser = parse_time_zone)]
    pub recon_tz: jiff::tz::TimeZone,
    /// Directory where settlement files are dropped (`<YYYY-MM-DD>.csv`); a file there is used
    /// instead of fetching the day's file from the PSP.
    #[arg(
        help_heading = "Reconciliation",
        long,
        env = "PAYSTREAM_RECON_DROP_DIR"
    )]
    pub recon_drop_dir: Option<PathBuf>,
}

/// How log lines are written (`PAYSTREAM_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".to_owned()),
        }
    }
}

/// Parses `HH:MM` or `HH:MM:SS` (24-hour).
pub fn parse_time_of_day(s: &str) -> Result<jiff::civil::Time, String> {
    let shaped = matches!(s.len(), 5 | 8)
        && s.bytes().enumerate().all(|(i, b)| match i {
            2 | 5 => b == b':',
            _ => b.is_ascii_digit(),
        })
        // jiff reads second 60 (a leap second) as 59; a schedule has no use for it.
        && s.get(6..8).is_none_or(|sec| sec < "60");
    let parsed = if s.len() == 5 {
        jiff::civil::Time::strptime("%H:%M", s)
    } else {
        jiff::civil::Time::strptime("%H:%M:%S", s)
    };
    match parsed {
        Ok(t) if shaped => Ok(t),
        _ => Err(format!(
            "{s:?}: expected a time of day such as 00:00 or 23:59:30"
        )),
    }
}

/// Parses a positive number of requests per second.
pub fn parse_requests_per_s(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => Err(format!(
            "{s:?}: expected requests per second, a number in (0, 1000000]"
        )),
    }
}

/// Parses an IANA time zone name.
pub fn parse_time_zone(s: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(s).map_err(|e| format!("{s:?}: not a known time zone: {e}"))
}

/// Where the NATS CLI keeps the context `name`: `$XDG_CONFIG_HOME/nats/context/<name>.json`
/// (`~/.config` when unset), as the `nats` CLI reads it; a name holding a `/` or ending in
/// `.json` is taken for the file's path.
pub fn nats_context_path(name: &str) -> PathBuf {
    if name.contains('/') || name.ends_with(".json") {
        return PathBuf::from(name);
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    config_home
        .join("nats")
        .join("context")
        .join(format!("{name}.json"))
}

impl Config {
    /// The database URL in force: `DATABASE_URL`, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.0.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.client.data_dir.join("paystream.sqlite").display()
            ),
        }
    }

    /// Checks relations between settings that no single flag can.
    pub fn validate(&self) -> Result<(), String> {
        if self.executing_timeout <= self.psp_timeout {
            return Err(format!(
                "PAYSTREAM_EXECUTING_TIMEOUT ({:?}) must exceed PAYSTREAM_PSP_TIMEOUT ({:?}): the sweeper \
                 must not take a payment whose PSP call may still be under way",
                self.executing_timeout, self.psp_timeout
            ));
        }
        Ok(())
    }
}

impl ClientConfig {
    /// File through which `up` tells client commands where its embedded NATS listens.
    pub fn nats_url_file(&self) -> PathBuf {
        self.data_dir.join("nats.url")
    }

    /// The passwords `up` generated for its embedded NATS users (mode 0600).
    pub fn nats_users_file(&self) -> PathBuf {
        self.data_dir.join("nats-users.json")
    }

    /// Where `up` writes a NATS CLI context per user of its embedded server, laid out as the
    /// `nats` CLI reads them with `XDG_CONFIG_HOME=<data dir>/config`.
    pub fn nats_contexts_dir(&self) -> PathBuf {
        self.data_dir.join("config").join("nats").join("context")
    }
}

impl Default for ClientConfig {
    /// Nothing configured: `./data`, text logs (what the flags default to).
    fn default() -> Self {
        Self {
            nats_url: None,
            nats_user: None,
            nats_password: None,
            nats_password_file: None,
            nats_creds: None,
            nats_context: None,
            nats_tls_ca: None,
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_backoff() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2 minutes"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("PT10S"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        // Read as 40 s by the hand-written parser of old (the minutes wrapped around u64).
        assert!(parse_duration("6148914691236517206m").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
        let b = Backoff::parse("1s,5s,30s,2m").unwrap();
        assert_eq!(b.delay_after(1), Duration::from_secs(1));
        assert_eq!(b.delay_after(4), Duration::from_secs(120));
        assert_eq!(b.delay_after(40), Duration::from_secs(120));
        assert!(Backoff::parse("0s").is_err());
    }

    /// A command with one duration flag backed by a variable that only this test sets.
    fn duration_command() -> clap::Command {
        clap::Command::new("paystream").arg(
            clap::Arg::new("psp_timeout")
                .long("psp-timeout")
                .env("PAYSTREAM_TEST_ONLY_PSP_TIMEOUT")
                .value_parser(parse_duration),
        )
    }

    #[test]
    fn a_refused_value_names_the_variable_or_the_flag_it_came_from() {
        let overflow = "6148914691236517206m";
        let args = ["paystream".to_owned(), format!("--psp-timeout={overflow}")];
        let err = duration_command().try_get_matches_from(&args).unwrap_err();
        assert_eq!(
            name_the_source(&err, &duration_command(), &args),
            None,
            "given as a flag: clap's own message, which names the flag"
        );
        assert!(err.to_string().contains("--psp-timeout"), "{err}");

        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("PAYSTREAM_TEST_ONLY_PSP_TIMEOUT", overflow) };
        let args = ["paystream".to_owned()];
        let err = duration_command().try_get_matches_from(&args).unwrap_err();
        let msg = name_the_source(&err, &duration_command(), &args).expect("from the environment");
        assert!(
            msg.starts_with(&format!(
                "invalid value '{overflow}' for PAYSTREAM_TEST_ONLY_PSP_TIMEOUT: "
            )),
            "{msg}"
        );
        assert!(!msg.contains("--psp-timeout"), "{msg}");
        assert_eq!(msg.matches(overflow).count(), 1, "the value once: {msg}");
    }

    #[test]
    fn recon_schedule_settings() {
        assert_eq!(
            parse_time_of_day("00:00"),
            Ok(jiff::civil::time(0, 0, 0, 0))
        );
        assert_eq!(
            parse_time_of_day("23:59:30"),
            Ok(jiff::civil::time(23, 59, 30, 0))
        );
        for bad in ["24:00", "7:00", "00:00:60", "noon", ""] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
        assert!(parse_time_zone("Europe/Paris").is_ok());
        assert!(parse_time_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn config_debug_redacts_every_secret() {
        let cfg = Config::load_from([
            "paystream",
            "--database-url=postgres://pay:db-s3cret@db.internal:5432/paystream",
            "--nats-user=paystream",
            "--nats-password=nats-s3cret",
            "--psp-api-key=psp-s3cret",
            "--psp-sim-api-key=sim-s3cret",
        ])
        .unwrap();
        let debug = format!("{cfg:?}");
        for secret in ["db-s3cret", "nats-s3cret", "psp-s3cret", "sim-s3cret"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("postgres://pay:***@db.internal:5432/paystream"));
        assert_eq!(
            cfg.database_url(),
            "postgres://pay:db-s3cret@db.internal:5432/paystream"
        );
        assert_eq!(
            redact_url("sqlite://./data/x.sqlite?mode=rwc"),
            "sqlite://./data/x.sqlite?mode=rwc"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn log_format_is_text_or_json() {
        let cfg = Config::load_from(["paystream"]).unwrap();
        assert_eq!(cfg.client.log_format, LogFormat::Text);
        let cfg = Config::load_from(["paystream", "--log-format=json"]).unwrap();
        assert_eq!(cfg.client.log_format, LogFormat::Json);
        let err = Config::load_from(["paystream", "--log-format=xml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--log-format"), "{err}");
    }

    #[test]
    fn nats_password_or_its_file_not_both() {
        let err = Config::load_from([
            "paystream",
            "--nats-password=p",
            "--nats-password-file=/run/secrets/p",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}

#[derive(clap::Parser)]
struct Standalone {
    #[command(flatten)]
    client: ClientConfig,
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Parses the configuration from these arguments and the environment, as the binary does.
    /// For tests and embedding: `Config::load_from(["paystream", "--partitions", "4"])`.
    pub fn load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        Standalone::try_parse_from(args).map(|s| Self {
            client: s.client,
            ..s.config
        })
    }

    /// The services' configuration from the environment alone (for `--direct`), with these
    /// connection settings.
    pub fn from_env(client: ClientConfig) -> Result<Self, clap::Error> {
        Self::load_from(["paystream"]).map(|c| Self { client, ..c })
    }
}
