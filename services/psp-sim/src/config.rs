//! What the simulator is told to do: where its store lives, which faults it injects, how slow
//! and how strict it is (latency, rate limit), whether it speaks HTTPS, and how its settlement
//! files drift. Plain data: the binary maps `PAYSTREAM_PSP_SIM_*` variables and flags into it,
//! and [`SimConfig::validate`] checks every bound once, when the simulator opens.

use std::fmt;
use std::path::PathBuf;

use crate::error::SimError;

/// Longest latency that may be added to an answer: a minute already stalls any client.
pub(crate) const LATENCY_MS_MAX: u64 = 60_000;
/// Longest a timed-out or lost request may be held open.
pub(crate) const HANG_MS_MAX: u64 = 600_000;
/// Most invented rows a settlement file may carry per day.
pub(crate) const UNKNOWN_ROWS_MAX: u32 = 100_000;
/// Longest accepted API key, so a header comparison stays cheap.
const API_KEY_LEN_MAX: usize = 256;
/// Highest rate limit, requests/s: far above what one simulator process can answer.
pub(crate) const RATE_LIMIT_PER_S_MAX: u32 = 1_000_000;

/// Configuration of one simulator instance.
#[derive(Clone)]
pub struct SimConfig {
    /// SQLite file of the simulator's own store, created if absent, so records survive restarts.
    pub store_path: PathBuf,
    /// Added to every `/v1` answer, to exercise the client's deadlines: the exact latency, or the
    /// median when `latency_p99_ms` is set.
    pub latency_ms: u64,
    /// When set, each answer's latency is drawn log-normal with median `latency_ms` and this 99th
    /// percentile (capped at [`LATENCY_MS_MAX`]), the long tail of a real PSP. At least
    /// `latency_ms`, which must then be at least 1.
    pub latency_p99_ms: Option<u64>,
    /// When set, most `/v1` requests per second (every route but `/v1/sim/*`), with a burst of
    /// one second's worth; the excess is answered 429 with `Retry-After` and processes nothing.
    pub rate_limit_per_s: Option<u32>,
    /// PEM certificate chain; with `tls_key`, the simulator serves HTTPS instead of HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`; one of the two without the other is refused.
    pub tls_key: Option<PathBuf>,
    /// Share of requests (0.0–1.0) answered 500 without doing anything.
    pub error_rate: f64,
    /// Share of requests not processed and not answered: held for `hang_ms`, then 504.
    pub timeout_rate: f64,
    /// Share of requests processed (money moves) whose answer is dropped: held, then 504.
    pub lost_response_rate: f64,
    /// Share of new payments declined with `card_declined`; drawn once and stored.
    pub decline_rate: f64,
    /// How long timeouts and lost responses hold a request; the client should give up first.
    pub hang_ms: u64,
    /// When set, every `/v1` request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Seed of the fault dice, for reproducible runs; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// How settlement files differ from the truth, for reconciliation tests.
    pub drift: Drift,
}

/// Settlement-file drift. Each decision is a pure function of the row's `psp_reference`, so the
/// same day always yields the same file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drift {
    /// Share of rows (0.0–1.0) left out of the file.
    pub missing_rate: f64,
    /// Share of rows whose amount is raised by 1–100 minor units.
    pub amount_rate: f64,
    /// Share of rows written twice.
    pub duplicate_rate: f64,
    /// Charge rows for payments the simulator never received, appended to every day that has
    /// at least one real row.
    pub unknown_rows: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            store_path: PathBuf::from("psp-sim.sqlite"),
            latency_ms: 0,
            latency_p99_ms: None,
            rate_limit_per_s: None,
            tls_cert: None,
            tls_key: None,
            error_rate: 0.0,
            timeout_rate: 0.0,
            lost_response_rate: 0.0,
            decline_rate: 0.0,
            hang_ms: 30_000,
            api_key: None,
            seed: None,
            drift: Drift::default(),
        }
    }
}

impl fmt::Debug for SimConfig {
    /// Like a derived `Debug`, but never prints the API key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("store_path", &self.store_path)
            .field("latency_ms", &self.latency_ms)
            .field("latency_p99_ms", &self.latency_p99_ms)
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("error_rate", &self.error_rate)
            .field("timeout_rate", &self.timeout_rate)
            .field("lost_response_rate", &self.lost_response_rate)
            .field("decline_rate", &self.decline_rate)
            .field("hang_ms", &self.hang_ms)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("seed", &self.seed)
            .field("drift", &self.drift)
            .finish()
    }
}

impl SimConfig {
    /// Checks every rate and bound, naming the first field that is out of range.
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("decline_rate", self.decline_rate),
            ("drift.missing_rate", self.drift.missing_rate),
            ("drift.amount_rate", self.drift.amount_rate),
            ("drift.duplicate_rate", self.drift.duplicate_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimError::Config(format!(
                    "{name} must be between 0.0 and 1.0, got {rate}"
                )));
            }
        }
        if self.latency_ms > LATENCY_MS_MAX {
            return Err(SimError::Config(format!(
                "latency_ms must be at most {LATENCY_MS_MAX}, got {}",
                self.latency_ms
            )));
        }
        if let Some(p99_ms) = self.latency_p99_ms {
            if self.latency_ms == 0 {
                return Err(SimError::Config(
                    "latency_p99_ms (PAYSTREAM_PSP_SIM_LATENCY_P99_MS) needs a median latency_ms \
                     (PAYSTREAM_PSP_SIM_LATENCY_MS) of at least 1"
                        .into(),
                ));
            }
            if !(self.latency_ms..=LATENCY_MS_MAX).contains(&p99_ms) {
                return Err(SimError::Config(format!(
                    "latency_p99_ms (PAYSTREAM_PSP_SIM_LATENCY_P99_MS) must be between the median \
                     latency_ms ({}) and {LATENCY_MS_MAX}, got {p99_ms}",
                    self.latency_ms
                )));
            }
        }
        if let Some(rate) = self.rate_limit_per_s
            && !(1..=RATE_LIMIT_PER_S_MAX).contains(&rate)
        {
            return Err(SimError::Config(format!(
                "rate_limit_per_s (PAYSTREAM_PSP_SIM_RATE_LIMIT) must be between 1 and \
                 {RATE_LIMIT_PER_S_MAX}, got {rate}"
            )));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), None) => {
                return Err(SimError::Config(format!(
                    "PAYSTREAM_PSP_SIM_TLS_CERT is set ({}) but PAYSTREAM_PSP_SIM_TLS_KEY is not: \
                     HTTPS needs both",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(SimError::Config(format!(
                    "PAYSTREAM_PSP_SIM_TLS_KEY is set ({}) but PAYSTREAM_PSP_SIM_TLS_CERT is not: \
                     HTTPS needs both",
                    key.display()
                )));
            }
            _ => {}
        }
        if self.hang_ms > HANG_MS_MAX {
            return Err(SimError::Config(format!(
                "hang_ms must be at most {HANG_MS_MAX}, got {}",
                self.hang_ms
            )));
        }
        if self.drift.unknown_rows > UNKNOWN_ROWS_MAX {
            return Err(SimError::Config(format!(
                "drift.unknown_rows must be at most {UNKNOWN_ROWS_MAX}, got {}",
                self.drift.unknown_rows
            )));
        }
        if let Some(key) = &self.api_key {
            let printable = key.bytes().all(|b| b.is_ascii_graphic());
            if key.is_empty() || key.len() > API_KEY_LEN_MAX || !printable {
                return Err(SimError::Config(format!(
                    "api_key must be 1..={API_KEY_LEN_MAX} printable ASCII characters"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(SimConfig::default().validate().is_ok());
    }

    #[test]
    fn rates_outside_unit_interval_are_refused() {
        for rate in [-0.1, 1.5, f64::NAN] {
            let cfg = SimConfig {
                timeout_rate: rate,
                ..SimConfig::default()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("timeout_rate"), "{err}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let cfg = SimConfig {
            hang_ms: HANG_MS_MAX + 1,
            ..SimConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = SimConfig {
            api_key: Some(String::new()),
            ..SimConfig::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn latency_p99_needs_a_median_below_it() {
        let with = |latency_ms, p99_ms| SimConfig {
            latency_ms,
            latency_p99_ms: Some(p99_ms),
            ..SimConfig::default()
        };
        assert!(with(250, 2_000).validate().is_ok());
        assert!(with(250, 250).validate().is_ok());
        for (median, p99) in [(250, 249), (0, 100), (250, LATENCY_MS_MAX + 1)] {
            let err = with(median, p99).validate().unwrap_err().to_string();
            assert!(err.contains("PAYSTREAM_PSP_SIM_LATENCY_P99_MS"), "{err}");
        }
    }

    #[test]
    fn rate_limit_is_bounded() {
        for (rate, ok) in [(1, true), (RATE_LIMIT_PER_S_MAX, true), (0, false)] {
            let cfg = SimConfig {
                rate_limit_per_s: Some(rate),
                ..SimConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "{rate}");
        }
    }

    #[test]
    fn tls_needs_both_files() {
        let cert_only = SimConfig {
            tls_cert: Some("/etc/sim/cert.pem".into()),
            ..SimConfig::default()
        };
        let err = cert_only.validate().unwrap_err().to_string();
        assert!(err.contains("PAYSTREAM_PSP_SIM_TLS_KEY"), "{err}");
        assert!(err.contains("/etc/sim/cert.pem"), "{err}");
        let key_only = SimConfig {
            tls_key: Some("/etc/sim/key.pem".into()),
            ..SimConfig::default()
        };
        let err = key_only.validate().unwrap_err().to_string();
        assert!(err.contains("PAYSTREAM_PSP_SIM_TLS_CERT"), "{err}");
        assert!(err.contains("/etc/sim/key.pem"), "{err}");
    }

    #[test]
    fn debug_hides_the_api_key() {
        let cfg = SimConfig {
            api_key: Some("sk_secret".into()),
            ..SimConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("sk_secret"));
    }
}
