//! Logs, metrics and the health endpoints. Every metric paystream exports is catalogued here and
//! registered at start-up with a zero value, so dashboards and alerts never query a missing series.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::events::EventKind;
use crate::shutdown::Shutdown;
use crate::state::PaymentState;

/// Logs to stderr; `RUST_LOG` filters (default: `default_level` for paystream, warn for the
/// libraries' chatter). `json`: one object per line, the event's fields at the top level beside
/// `timestamp`, `level`, `target` and `message`, and the current span's (`payment_id`, …) under
/// `span`.
pub fn init_tracing(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default_level},sqlx=warn,sea_orm=warn,async_nats=warn"
        ))
    });
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

pub mod names {
    pub const INGRESS_MESSAGES: &str = "paystream_ingress_messages_total";
    pub const INGRESS_REJECTED: &str = "paystream_ingress_rejected_total";
    pub const PAYMENT_TRANSITIONS: &str = "paystream_payment_transitions_total";
    pub const PSP_REQUESTS: &str = "paystream_psp_requests_total";
    pub const PSP_REQUEST_DURATION: &str = "paystream_psp_request_duration_seconds";
    pub const OUTBOX_PUBLISHED: &str = "paystream_outbox_published_total";
    pub const OUTBOX_BACKLOG: &str = "paystream_outbox_backlog";
    pub const OUTBOX_PUBLISH_ERRORS: &str = "paystream_outbox_publish_errors_total";
    pub const EVENTS_APPLIED: &str = "paystream_events_applied_total";
    pub const EVENTS_DUPLICATE: &str = "paystream_events_duplicate_total";
    pub const CONSUMER_MESSAGES: &str = "paystream_consumer_messages_total";
    pub const CONSUMER_BATCH_SIZE: &str = "paystream_consumer_batch_size";
    pub const RECORD_GROUP_SIZE: &str = "paystream_payment_record_group_size";
    pub const CONSUMER_BATCH_DURATION: &str = "paystream_consumer_batch_duration_seconds";
    pub const CONSUMER_RETRIES: &str = "paystream_consumer_retries_total";
    pub const CONSUMER_TERMINATED: &str = "paystream_consumer_terminated_total";
    pub const PAYMENT_E2E: &str = "paystream_payment_end_to_end_seconds";
    pub const READY: &str = "paystream_ready";
    pub const SWEEPER_ATTEMPTS: &str = "paystream_sweeper_attempts_total";
    pub const SWEEPER_EXHAUSTED: &str = "paystream_sweeper_exhausted";
    pub const PAYMENT_CORRUPT_ROWS: &str = "paystream_payment_corrupt_rows_total";
    pub const PAYMENTS_UNKNOWN: &str = "paystream_payments_unknown";
    pub const DEAD_LETTERS: &str = "paystream_dead_letters_total";
    pub const DLQ_DEPTH: &str = "paystream_dlq_depth";
    pub const DLQ_CAPACITY: &str = "paystream_dlq_capacity";
    pub const DEAD_LETTERS_WAITING: &str = "paystream_dead_letters_waiting";
    pub const DLQ_REDRIVES: &str = "paystream_dlq_redrives_total";
    pub const DLQ_PURGES: &str = "paystream_dlq_purges_total";
    pub const PUBLISH_CONFLICTS: &str = "paystream_publish_conflicts_total";
    pub const PARTITIONS_OWNED: &str = "paystream_partitions_owned";
    pub const PARTITION_HANDOVERS: &str = "paystream_partition_handovers_total";
    pub const MEMBERS_LIVE: &str = "paystream_members_live";
    pub const OUTBOX_RELAY_ACTIVE: &str = "paystream_outbox_relay_active";
    pub const NATS_SERVER_ERRORS: &str = "paystream_nats_server_errors_total";
    pub const OPERATOR_REQUESTS: &str = "paystream_operator_requests_total";
    pub const PSP_CREDENTIALS_REFUSED: &str = "paystream_psp_credentials_refused";
    pub const PSP_CALLS_WITHHELD: &str = "paystream_psp_calls_withheld_total";
    pub const PSP_CERTIFICATE_REFUSED: &str = "paystream_psp_certificate_refused";
    pub const PSP_IN_FLIGHT: &str = "paystream_psp_in_flight";
    pub const PSP_RATE_LIMITED: &str = "paystream_psp_rate_limited_total";
    pub const PSP_RATE_LIMIT: &str = "paystream_psp_rate_limit_requests_per_second";
    pub const PSP_CIRCUIT_STATE: &str = "paystream_psp_circuit_state";
    pub const PSP_CIRCUIT_TRANSITIONS: &str = "paystream_psp_circuit_transitions_total";
    pub const RECON_RUNS: &str = "paystream_recon_runs_total";
    pub const RECON_ROWS: &str = "paystream_recon_rows_total";
    pub const RECON_CORRECTIONS: &str = "paystream_recon_corrections_total";
    pub const RECON_ROW_ERRORS: &str = "paystream_recon_row_errors_total";
    pub const RECON_DURATION: &str = "paystream_recon_duration_seconds";
    pub const RECON_LAST_RUN: &str = "paystream_recon_last_run_timestamp_seconds";
    pub const RECON_MANUAL_REVIEW: &str = "paystream_recon_manual_review_rows";
    pub const CONSUMER_LAG: &str = "paystream_consumer_lag";
    pub const LEDGER_IMBALANCE: &str = "paystream_ledger_imbalance_minor";
    pub const PAYMENTS_UNKNOWN_OLDEST: &str = "paystream_payments_unknown_oldest_seconds";
    pub const BUILD_INFO: &str = "paystream_build_info";
}

/// Kinds of `-ERR` the NATS server reports to a connection.
pub const NATS_SERVER_ERROR_KINDS: [&str; 4] =
    ["permission", "authorization", "slow_consumer", "other"];
/// Mutating operator endpoints (`paystream.dlq.redrive`, …), as audit actions.
pub const OPERATOR_ACTIONS: [&str; 4] = ["dlq.redrive", "dlq.purge", "recon.run", "recon.resolve"];
/// What became of an operator request: done, refused (no trustworthy identity), failed.
pub const OPERATOR_OUTCOMES: [&str; 3] = ["ok", "refused", "error"];

/// Services whose consumer lag is reported: the durable consumers they own are named after them
/// (`wallet`, or `wallet-p3` once consumers are per partition).
pub const LAG_SERVICES: [&str; 4] = ["payment", "wallet", "ledger", "dlq"];

/// Consumers whose series are pre-registered.
pub const CONSUMERS: [&str; 3] = ["payment", "wallet", "ledger"];
/// Ingress fields a rejection can name.
pub const REJECTION_FIELDS: [&str; 9] = [
    "subject",
    "payload",
    "payment_id",
    "buyer_id",
    "merchant_id",
    "amount",
    "currency",
    "metadata",
    "reason",
];
/// Columns of a payment row that `paystream_payment::store::parse_row` checks.
pub const PAYMENT_COLUMNS: [&str; 10] = [
    "payment_id",
    "buyer_id",
    "merchant_id",
    "amount",
    "currency",
    "state",
    "version",
    "attempts",
    "metadata",
    "request_seq",
];
pub const PSP_OPS: [&str; 3] = ["charge", "refund", "lookup"];
/// States of the PSP circuit breaker, the `to` label of its transitions.
pub const PSP_CIRCUIT_STATES: [&str; 3] = ["closed", "half_open", "open"];
pub const PSP_OUTCOMES: [&str; 6] = [
    "succeeded",
    "declined",
    "unknown",
    "not_found",
    "config_error",
    "rate_limited",
];
/// Reasons a message is retried (`Verdict::Retry` labels).
pub const RETRY_REASONS: [&str; 8] = [
    "database",
    "abandoned",
    "psp_rate_limited",
    "psp_config",
    "psp_unknown",
    "payment_in_flight",
    "cancel_before_payment",
    "out_of_order",
];
/// Reasons a message is terminated beyond the ingress fields (`Verdict::Term` labels).
pub const TERM_REASONS: [&str; 3] = ["event", "refund_refused", "database"];
/// Reconciliation classes (DESIGN.md), the `class` label of `paystream_recon_rows_total`.
pub const RECON_CLASSES: [&str; 7] = [
    "matched",
    "missing_internal",
    "missing_external",
    "amount_mismatch",
    "status_mismatch",
    "duplicate_external",
    "unknown_payment",
];
/// Classes reconciliation corrects on its own, the `class` label of
/// `paystream_recon_corrections_total`.
pub const RECON_CORRECTABLE_CLASSES: [&str; 3] =
    ["missing_internal", "amount_mismatch", "status_mismatch"];
/// Verdict kinds of the consumer loop.
pub const CONSUMER_OUTCOMES: [&str; 3] = ["ack", "retry", "term"];

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// A reconciliation run takes from a second to many minutes.
const RECON_SECONDS_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global Prometheus recorder (once per process) and registers the catalogue.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CONSUMER_BATCH_SIZE.into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::RECORD_GROUP_SIZE.into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::RECON_DURATION.into()),
                        RECON_SECONDS_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            register_catalogue();
            // Histogram samples pile up in the recorder until drained: a scrape drains them, but
            // with nobody scraping (no Prometheus, or between scrapes) they grew without bound —
            // 110 MB over a million payments in `paystream bench --backlog`. `install_recorder`
            // leaves this upkeep to its caller.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("the metrics upkeep thread starts");
            handle
        })
        .clone()
}

fn register_catalogue() {
    use names::*;
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the version of paystream this process runs."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
    // process_max_fds, process_start_time_seconds, …: refreshed at every scrape.
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
    describe_counter!(
        INGRESS_MESSAGES,
        "Ingress messages decoded, by kind and wire format."
    );
    describe_counter!(
        INGRESS_REJECTED,
        "Ingress messages refused as invalid, by the field named."
    );
    describe_counter!(
        PAYMENT_TRANSITIONS,
        "Payment state transitions, by target state."
    );
    describe_counter!(PSP_REQUESTS, "PSP calls by operation and outcome.");
    describe_histogram!(
        PSP_REQUEST_DURATION,
        Unit::Seconds,
        "PSP call latency by operation."
    );
    describe_counter!(
        OUTBOX_PUBLISHED,
        "Events published from the outbox, by type."
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Events committed but not yet acknowledged by JetStream."
    );
    describe_counter!(
        OUTBOX_PUBLISH_ERRORS,
        "Outbox publish attempts that failed and will be retried."
    );
    describe_counter!(EVENTS_APPLIED, "Events applied, by consumer and type.");
    describe_counter!(
        EVENTS_DUPLICATE,
        "Redelivered events recognised by event_id and skipped."
    );
    describe_counter!(
        CONSUMER_MESSAGES,
        "Messages handled by consumer and verdict (ack, retry, term)."
    );
    describe_histogram!(CONSUMER_BATCH_SIZE, "Messages per consumer batch.");
    describe_histogram!(
        RECORD_GROUP_SIZE,
        "PSP outcomes committed per transaction by the payment service's group commit."
    );
    let _ = histogram!(RECORD_GROUP_SIZE);
    describe_histogram!(
        CONSUMER_BATCH_DURATION,
        Unit::Seconds,
        "Time to handle one consumer batch."
    );
    describe_counter!(
        CONSUMER_RETRIES,
        "Messages NAKed for redelivery after a transient failure, by consumer and reason."
    );
    describe_counter!(
        CONSUMER_TERMINATED,
        "Messages terminated (dead-lettered at once), by consumer and reason."
    );
    describe_histogram!(
        PAYMENT_E2E,
        Unit::Seconds,
        "From ingress publish to the event applied, by consumer."
    );
    describe_gauge!(
        READY,
        "1 when streams, consumers and the database are ready."
    );

    describe_counter!(
        NATS_SERVER_ERRORS,
        "Errors the NATS server reported to this process, by kind (permission: a subject this user may not use)."
    );
    describe_counter!(
        OPERATOR_REQUESTS,
        "Mutating operator requests over NATS, by action and outcome (refused: no server-stamped identity)."
    );
    describe_gauge!(
        PSP_CREDENTIALS_REFUSED,
        "1 while PSP calls are withheld because the PSP refused our credentials (401/403)."
    );
    describe_counter!(
        PSP_CALLS_WITHHELD,
        "PSP calls not sent because the PSP refused our credentials moments ago, by operation."
    );
    describe_gauge!(
        PSP_CERTIFICATE_REFUSED,
        "1 while the PSP's TLS certificate does not verify (a configuration error, like a 401)."
    );
    describe_gauge!(PSP_IN_FLIGHT, "PSP calls in flight in this instance.");
    describe_counter!(
        PSP_RATE_LIMITED,
        "PSP answers 429 (rate limited: nothing was processed), by operation."
    );
    describe_gauge!(
        PSP_RATE_LIMIT,
        "Requests per second the adaptive limiter allows the PSP now."
    );
    describe_gauge!(
        PSP_CIRCUIT_STATE,
        "The PSP circuit breaker: 0 closed, 1 half-open (probing), 2 open (no new calls)."
    );
    describe_counter!(
        PSP_CIRCUIT_TRANSITIONS,
        "Circuit breaker transitions, by the state entered."
    );
    gauge!(PSP_CREDENTIALS_REFUSED).set(0.0);
    gauge!(PSP_CERTIFICATE_REFUSED).set(0.0);
    gauge!(PSP_IN_FLIGHT).set(0.0);
    gauge!(PSP_RATE_LIMIT).set(0.0);
    gauge!(PSP_CIRCUIT_STATE).set(0.0);
    for to in PSP_CIRCUIT_STATES {
        counter!(PSP_CIRCUIT_TRANSITIONS, "to" => to).absolute(0);
    }
    for op in PSP_OPS {
        counter!(PSP_RATE_LIMITED, "op" => op).absolute(0);
    }
    for op in PSP_OPS {
        counter!(PSP_CALLS_WITHHELD, "op" => op).absolute(0);
    }
    for kind in NATS_SERVER_ERROR_KINDS {
        counter!(NATS_SERVER_ERRORS, "kind" => kind).absolute(0);
    }
    for action in OPERATOR_ACTIONS {
        for outcome in OPERATOR_OUTCOMES {
            counter!(OPERATOR_REQUESTS, "action" => action, "outcome" => outcome).absolute(0);
        }
    }
    for kind in ["request", "cancel"] {
        for format in ["json", "msgpack"] {
            counter!(INGRESS_MESSAGES, "kind" => kind, "format" => format).absolute(0);
        }
    }
    for field in REJECTION_FIELDS {
        counter!(INGRESS_REJECTED, "field" => field).absolute(0);
    }
    for state in PaymentState::ALL {
        counter!(PAYMENT_TRANSITIONS, "state" => state.as_str()).absolute(0);
    }
    for op in PSP_OPS {
        for outcome in PSP_OUTCOMES {
            counter!(PSP_REQUESTS, "op" => op, "outcome" => outcome).absolute(0);
        }
        let _ = histogram!(PSP_REQUEST_DURATION, "op" => op);
    }
    for kind in EventKind::ALL {
        counter!(OUTBOX_PUBLISHED, "type" => kind.as_str()).absolute(0);
    }
    gauge!(OUTBOX_BACKLOG).set(0.0);
    counter!(OUTBOX_PUBLISH_ERRORS).absolute(0);
    for consumer in CONSUMERS {
        for kind in EventKind::ALL {
            counter!(EVENTS_APPLIED, "consumer" => consumer, "type" => kind.as_str()).absolute(0);
        }
        counter!(EVENTS_DUPLICATE, "consumer" => consumer).absolute(0);
        for reason in RETRY_REASONS {
            counter!(CONSUMER_RETRIES, "consumer" => consumer, "reason" => reason).absolute(0);
        }
        for reason in TERM_REASONS.iter().chain(REJECTION_FIELDS.iter()) {
            counter!(CONSUMER_TERMINATED, "consumer" => consumer, "reason" => *reason).absolute(0);
        }
        for verdict in CONSUMER_OUTCOMES {
            counter!(CONSUMER_MESSAGES, "consumer" => consumer, "verdict" => verdict).absolute(0);
        }
        let _ = histogram!(CONSUMER_BATCH_SIZE, "consumer" => consumer);
        let _ = histogram!(CONSUMER_BATCH_DURATION, "consumer" => consumer);
        let _ = histogram!(PAYMENT_E2E, "consumer" => consumer);
    }
    gauge!(READY).set(0.0);
    describe_counter!(
        SWEEPER_ATTEMPTS,
        "Sweeper attempts on unresolved payments, by outcome (success, failure, unknown, config_error)."
    );
    describe_gauge!(
        SWEEPER_EXHAUSTED,
        "Payments the sweeper gave up on (attempts exhausted): left for reconciliation."
    );
    describe_gauge!(PAYMENTS_UNKNOWN, "Payments in UNKNOWN right now.");
    for outcome in [
        "success",
        "failure",
        "unknown",
        "config_error",
        "refunded",
        "refund_declined",
    ] {
        counter!(SWEEPER_ATTEMPTS, "outcome" => outcome).absolute(0);
    }
    gauge!(SWEEPER_EXHAUSTED).set(0.0);
    describe_counter!(
        PAYMENT_CORRUPT_ROWS,
        "Payment rows read whose column does not hold what it must, by column: the row is named in the log and never acted on."
    );
    for column in PAYMENT_COLUMNS {
        counter!(PAYMENT_CORRUPT_ROWS, "column" => column).absolute(0);
    }
    gauge!(PAYMENTS_UNKNOWN).set(0.0);
    describe_counter!(
        DEAD_LETTERS,
        "Messages dead-lettered, by consumer and kind (terminated, max_deliveries)."
    );
    describe_gauge!(DLQ_DEPTH, "Entries in DEAD_LETTERS awaiting an operator.");
    describe_gauge!(
        DLQ_CAPACITY,
        "Most entries DEAD_LETTERS keeps (its max_msgs; 0 until first read): past it the oldest go."
    );
    describe_gauge!(
        DEAD_LETTERS_WAITING,
        "Dead letters recorded by their consumer and not yet seen in DEAD_LETTERS (the dlq service republishes those whose advisory was lost)."
    );
    describe_counter!(
        DLQ_REDRIVES,
        "Dead letters redriven (from the audit trail)."
    );
    describe_counter!(DLQ_PURGES, "Dead letters purged (from the audit trail).");
    for consumer in CONSUMERS {
        for kind in ["terminated", "max_deliveries"] {
            counter!(DEAD_LETTERS, "consumer" => consumer, "kind" => kind).absolute(0);
        }
    }
    gauge!(DLQ_DEPTH).set(0.0);
    gauge!(DLQ_CAPACITY).set(0.0);
    gauge!(DEAD_LETTERS_WAITING).set(0.0);
    counter!(DLQ_REDRIVES).absolute(0);
    counter!(DLQ_PURGES).absolute(0);
    describe_counter!(
        PUBLISH_CONFLICTS,
        "Event publishes refused because another producer had moved the buyer's subject (Nats-Expected-Last-Subject-Sequence); each is retried on the new sequence."
    );
    describe_gauge!(
        PARTITIONS_OWNED,
        "Buyer partitions this instance consumes, by consumer."
    );
    describe_counter!(
        PARTITION_HANDOVERS,
        "Partitions taken (direction=gained) or given up (direction=released) by this instance, by consumer."
    );
    describe_gauge!(
        MEMBERS_LIVE,
        "Live instances of the service as this instance last saw them, by consumer."
    );
    describe_gauge!(
        OUTBOX_RELAY_ACTIVE,
        "1 while this instance holds the outbox-relay lease (one relay publishes at a time)."
    );
    counter!(PUBLISH_CONFLICTS).absolute(0);
    for consumer in CONSUMERS {
        gauge!(PARTITIONS_OWNED, "consumer" => consumer).set(0.0);
        gauge!(MEMBERS_LIVE, "consumer" => consumer).set(0.0);
        for direction in ["gained", "released"] {
            counter!(PARTITION_HANDOVERS, "consumer" => consumer, "direction" => direction)
                .absolute(0);
        }
    }
    gauge!(OUTBOX_RELAY_ACTIVE).set(0.0);
    describe_gauge!(
        CONSUMER_LAG,
        "Messages a service's durable consumers have not finished: num_pending + num_ack_pending."
    );
    for service in LAG_SERVICES {
        gauge!(CONSUMER_LAG, "consumer" => service).set(0.0);
    }
    describe_gauge!(
        LEDGER_IMBALANCE,
        "Σ debits − Σ credits of the ledger per currency (0 when balanced), from a periodic check."
    );
    // From start-up, before the ledger holds any currency (an empty ledger balances): one series
    // without a currency, so alerts and dashboards find the metric in every process.
    gauge!(LEDGER_IMBALANCE).set(0.0);
    describe_gauge!(
        PAYMENTS_UNKNOWN_OLDEST,
        Unit::Seconds,
        "Age of the oldest payment in UNKNOWN (0 when none)."
    );
    gauge!(PAYMENTS_UNKNOWN_OLDEST).set(0.0);
    register_recon();
}

fn register_recon() {
    use names::*;
    describe_counter!(
        RECON_RUNS,
        "Reconciliation runs finished, by outcome (ok, failed)."
    );
    describe_counter!(
        RECON_ROWS,
        "Settlement rows (and our unmatched payments) classified, by class."
    );
    describe_counter!(
        RECON_CORRECTIONS,
        "Corrections published through the payment domain, by class."
    );
    describe_counter!(
        RECON_ROW_ERRORS,
        "Settlement-file lines that could not be parsed (reported with their line numbers)."
    );
    describe_histogram!(
        RECON_DURATION,
        Unit::Seconds,
        "Duration of one reconciliation run."
    );
    describe_gauge!(
        RECON_LAST_RUN,
        Unit::Seconds,
        "Unix time at which the last reconciliation run completed."
    );
    describe_gauge!(
        RECON_MANUAL_REVIEW,
        "Rows left for manual review by the last reconciliation run."
    );
    for outcome in ["ok", "failed"] {
        counter!(RECON_RUNS, "outcome" => outcome).absolute(0);
    }
    for class in RECON_CLASSES {
        counter!(RECON_ROWS, "class" => class).absolute(0);
    }
    for class in RECON_CORRECTABLE_CLASSES {
        counter!(RECON_CORRECTIONS, "class" => class).absolute(0);
    }
    counter!(RECON_ROW_ERRORS).absolute(0);
    let _ = histogram!(RECON_DURATION);
    gauge!(RECON_LAST_RUN).set(0.0);
    gauge!(RECON_MANUAL_REVIEW).set(0.0);
}

/// What `/readyz` waits for. Each component flips its flag; ready means all set.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Default)]
struct ReadinessInner {
    components: std::sync::Mutex<Vec<(String, Arc<AtomicBool>)>>,
}

impl Readiness {
    /// Registers a component, not ready until its flag is set.
    pub fn component(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.inner
            .components
            .lock()
            .expect("readiness lock")
            .push((name.to_owned(), flag.clone()));
        flag
    }

    /// Names of the components that are not ready; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let list = self.inner.components.lock().expect("readiness lock");
        list.iter()
            .filter(|(_, f)| !f.load(Ordering::Relaxed))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    readiness: Readiness,
    /// Reads this process's CPU time, memory and file descriptors for each scrape.
    process: metrics_process::Collector,
}

/// Serves `/metrics`, `/livez` and `/readyz` until shutdown. Binds before returning, so a bad
/// address is a start-up error.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let upkeep = metrics.clone();
    let mut upkeep_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                () = upkeep_stop.wait() => break,
            }
        }
    });
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                s.process.collect();
                s.metrics.render()
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                let missing = s.readiness.not_ready();
                gauge!(names::READY).set(if missing.is_empty() { 1.0 } else { 0.0 });
                if missing.is_empty() {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}", missing.join(", ")),
                    )
                }
            }),
        )
        .with_state(HttpState {
            metrics,
            readiness,
            process: metrics_process::Collector::default(),
        });
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.into_future())
            .await;
    });
    Ok((bound, handle))
}
