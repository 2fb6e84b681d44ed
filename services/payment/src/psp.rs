//! The PSP boundary: a trait, and its HTTP adapter for Stripe-like APIs (and `paystream psp-sim`).
//! The payment_id is the Idempotency-Key of every call, so a retry can never charge twice.

use std::future::Future;
use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use paystream_common::ids::{MerchantId, PaymentId};
use paystream_common::money::{Amount, Currency};
use paystream_common::telemetry::names;
use paystream_common::text::bounded;
use serde::{Deserialize, Serialize};

use crate::gate::Health;
use crate::pipeline::Answer;

/// What the PSP said about a charge or refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PspOutcome {
    /// Money moved.
    Succeeded { psp_reference: String },
    /// The PSP refused; no money moved.
    Declined {
        psp_reference: Option<String>,
        code: String,
    },
    /// The request may or may not have reached the PSP (timeout, reset, 5xx, an unreadable
    /// answer). Never a failure: it is resolved by asking the PSP with the same key.
    Indeterminate { error: String },
    /// 401/403, or a certificate we cannot verify: our configuration is wrong. Not the payment's
    /// fault: nothing is recorded against it.
    ConfigError { error: String },
    /// 429: the PSP did not process the request. Try again after `retry_after` (its
    /// `Retry-After`, when it sent one), with the same key.
    RateLimited { retry_after: Option<Duration> },
}

impl Answer for PspOutcome {
    fn health(&self) -> Health {
        match self {
            PspOutcome::Indeterminate { .. } => Health::Failed,
            PspOutcome::RateLimited { .. } => Health::RateLimited,
            _ => Health::Answered,
        }
    }

    fn rate_limited(&self) -> Option<Option<Duration>> {
        match self {
            PspOutcome::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// What the PSP knows of a key (`GET /v1/payments/{key}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Never received: safe to execute again with the same key.
    NotFound,
    Known(PspPayment),
    Indeterminate {
        error: String,
    },
    ConfigError {
        error: String,
    },
    RateLimited {
        retry_after: Option<Duration>,
    },
}

impl Answer for Lookup {
    fn health(&self) -> Health {
        match self {
            Lookup::Indeterminate { .. } => Health::Failed,
            Lookup::RateLimited { .. } => Health::RateLimited,
            _ => Health::Answered,
        }
    }

    fn rate_limited(&self) -> Option<Option<Duration>> {
        match self {
            Lookup::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PspPayment {
    pub psp_reference: String,
    pub status: String,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub charge_count: u32,
    #[serde(default)]
    pub refund_count: u32,
    /// The refund's reference, once refunded.
    #[serde(default)]
    pub refund_reference: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeRequest<'a> {
    #[serde(skip)]
    pub payment_id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    pub merchant_id: &'a MerchantId,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: &'a std::collections::BTreeMap<String, String>,
}

pub trait Psp: Send + Sync + 'static {
    fn charge(&self, req: &ChargeRequest<'_>) -> impl Future<Output = PspOutcome> + Send;
    fn refund(
        &self,
        payment_id: PaymentId,
        amount: Amount,
    ) -> impl Future<Output = PspOutcome> + Send;
    fn lookup(&self, payment_id: PaymentId) -> impl Future<Output = Lookup> + Send;
}

/// After the PSP refuses our credentials (401/403, or a charge endpoint that does not exist), no
/// call is sent for this long: a wrong key pages (`paystream_psp_credentials_refused`), it does
/// not keep hammering the PSP with calls that cannot succeed. The payments wait (EXECUTING) and
/// complete once the key is fixed.
pub const CREDENTIALS_HOLD: Duration = Duration::from_secs(30);

/// The HTTP adapter.
#[derive(Clone)]
pub struct HttpPsp {
    base: String,
    client: reqwest::Client,
    api_key: Option<String>,
    /// Until when calls are withheld after a refusal of our configuration, and which (shared by
    /// clones).
    refused_until: std::sync::Arc<std::sync::Mutex<Option<(Instant, Refusal)>>>,
}

#[derive(Deserialize)]
struct ChargeAnswer {
    psp_reference: Option<String>,
    status: String,
    decline_code: Option<String>,
}

/// Why the HTTP adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PspSetupError {
    #[error("PAYSTREAM_PSP_CA {path}: {error}")]
    Ca { path: String, error: String },
    #[error("PSP HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The CA certificates of the PEM file `path` (`PAYSTREAM_PSP_CA`), trusted beside the system's
/// roots by every client of the PSP (this adapter, the reconciler's downloads).
pub fn extra_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, PspSetupError> {
    let ca_error = |error: String| PspSetupError::Ca {
        path: path.display().to_string(),
        error,
    };
    let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| ca_error(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(ca_error("holds no certificate".into()));
    }
    Ok(certs)
}

impl HttpPsp {
    /// An adapter for the PSP at `base` (`http://` or `https://`). HTTPS trusts the system's roots
    /// and, when given, the CA certificates of the PEM file `ca` (`PAYSTREAM_PSP_CA`).
    pub fn new(
        base: &str,
        api_key: Option<String>,
        timeout: Duration,
        connect_timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, PspSetupError> {
        paystream_common::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(1024);
        if let Some(path) = ca {
            builder = builder.tls_certs_merge(extra_roots(path)?);
        }
        let client = builder.build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
            api_key,
            refused_until: Default::default(),
        })
    }

    /// Why a call to `op` is not sent now, while a credentials refusal holds.
    fn withheld(&self, op: &'static str) -> Option<String> {
        let (until, refusal) = (*self.refused_until.lock().ok()?)?;
        let left = until.checked_duration_since(Instant::now())?;
        counter!(names::PSP_CALLS_WITHHELD, "op" => op).increment(1);
        let why = match refusal {
            Refusal::Credentials => {
                "it refused our credentials (check PAYSTREAM_PSP_URL and PAYSTREAM_PSP_API_KEY)"
            }
            Refusal::Certificate => "its certificate is not trusted (check PAYSTREAM_PSP_CA)",
        };
        Some(format!(
            "not calling the PSP for {}s more: {why}",
            left.as_secs() + 1
        ))
    }

    /// Starts (a refusal) or ends (any other answer) the hold.
    fn note_credentials(&self, refused: Option<Refusal>) {
        if let Ok(mut until) = self.refused_until.lock() {
            *until = refused.map(|r| (Instant::now() + CREDENTIALS_HOLD, r));
        }
        let flag = |r| if refused == Some(r) { 1.0 } else { 0.0 };
        metrics::gauge!(names::PSP_CREDENTIALS_REFUSED).set(flag(Refusal::Credentials));
        metrics::gauge!(names::PSP_CERTIFICATE_REFUSED).set(flag(Refusal::Certificate));
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn post(
        &self,
        op: &'static str,
        path: &str,
        key: PaymentId,
        body: &impl Serialize,
    ) -> PspOutcome {
        if let Some(error) = self.withheld(op) {
            return PspOutcome::ConfigError { error };
        }
        let started = Instant::now();
        let sent = self
            .request(reqwest::Method::POST, path)
            .header("Idempotency-Key", key.to_string())
            .json(body)
            .send()
            .await;
        let outcome = match sent {
            Err(e) if certificate_refused(&e) => PspOutcome::ConfigError {
                error: describe(&e),
            },
            Err(e) => PspOutcome::Indeterminate {
                error: describe(&e),
            },
            Ok(resp) if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                PspOutcome::RateLimited {
                    retry_after: retry_after(&resp),
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let wrong_endpoint = op == "charge" && matches!(status.as_u16(), 404 | 405);
                if matches!(status.as_u16(), 401 | 403) || wrong_endpoint {
                    // Our credentials or our URL are wrong: not the payment's fault. (A refund's
                    // 404 is an answer: the PSP has no charge to refund.)
                    PspOutcome::ConfigError {
                        error: format!(
                            "PSP answered {status}: check PAYSTREAM_PSP_URL and PAYSTREAM_PSP_API_KEY"
                        ),
                    }
                } else if status.is_success() {
                    match resp.json::<ChargeAnswer>().await {
                        Ok(a) if a.status == "succeeded" && a.psp_reference.is_some() => {
                            PspOutcome::Succeeded {
                                psp_reference: a.psp_reference.unwrap_or_default(),
                            }
                        }
                        Ok(a) if a.status == "declined" => PspOutcome::Declined {
                            psp_reference: a.psp_reference,
                            code: a.decline_code.unwrap_or_else(|| "declined".into()),
                        },
                        Ok(a) => PspOutcome::Indeterminate {
                            error: format!("PSP answered status {:?}", bounded(&a.status, 32)),
                        },
                        Err(e) => PspOutcome::Indeterminate {
                            error: describe(&e),
                        },
                    }
                } else if status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 429) {
                    // The PSP refused the request itself (bad request, unknown payment): nothing moved.
                    let text = resp.text().await.unwrap_or_default();
                    PspOutcome::Declined {
                        psp_reference: None,
                        code: format!("psp_rejected_{}: {}", status.as_u16(), bounded(&text, 200)),
                    }
                } else {
                    PspOutcome::Indeterminate {
                        error: format!("PSP answered {status}"),
                    }
                }
            }
        };
        let label = match &outcome {
            PspOutcome::Succeeded { .. } => "succeeded",
            PspOutcome::Declined { .. } => "declined",
            PspOutcome::Indeterminate { .. } => "unknown",
            PspOutcome::ConfigError { .. } => "config_error",
            PspOutcome::RateLimited { .. } => "rate_limited",
        };
        let error = match &outcome {
            PspOutcome::ConfigError { error } => error.as_str(),
            _ => "",
        };
        self.observe(op, label, started, error);
        outcome
    }

    /// Counts a call and its latency, and starts or ends a configuration hold.
    fn observe(&self, op: &'static str, label: &'static str, started: Instant, error: &str) {
        counter!(names::PSP_REQUESTS, "op" => op, "outcome" => label).increment(1);
        histogram!(names::PSP_REQUEST_DURATION, "op" => op).record(started.elapsed().as_secs_f64());
        if label == "rate_limited" {
            counter!(names::PSP_RATE_LIMITED, "op" => op).increment(1);
        }
        let refusal = match label {
            "config_error" if error.contains(CERTIFICATE_REFUSED) => Some(Refusal::Certificate),
            "config_error" => Some(Refusal::Credentials),
            _ => None,
        };
        self.note_credentials(refusal);
    }
}

/// `Retry-After` in whole seconds (the form PSPs send); an HTTP date or garbage is ignored.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(RETRY_AFTER_MAX_S)))
}

/// How a call refused for the PSP's certificate is described (and told from a 401).
const CERTIFICATE_REFUSED: &str =
    "certificate not trusted (check PAYSTREAM_PSP_CA and PAYSTREAM_PSP_URL)";

/// Which configuration the PSP (or its certificate) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Credentials,
    Certificate,
}

/// A `Retry-After` longer than this is read as this: the payment waits, it is not parked.
const RETRY_AFTER_MAX_S: u64 = 60;

/// Whether the call failed because the PSP's certificate did not verify: a configuration error
/// (our trust store or `PAYSTREAM_PSP_CA`), never a sign of the payment's fate. rustls's error sits
/// inside an `io::Error`, whose `source()` skips it, so each level is also unwrapped by hand.
/// Tested end to end against the simulator over HTTPS (`e2e::real_psp::https_*`).
fn certificate_refused(e: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            && matches!(inner, rustls::Error::InvalidCertificate(_))
        {
            return true;
        }
        // reqwest's connector boxes the error on the way: its text is what is left to read
        // (rustls's `InvalidCertificate` displays as "invalid peer certificate: …").
        if err.to_string().contains("invalid peer certificate") {
            return true;
        }
        next = err.source();
    }
    false
}

/// The whole chain of an error, one cause after the other (reqwest's own text hides the cause).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(err) = next {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = err.source();
    }
    text
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if certificate_refused(e) {
        CERTIFICATE_REFUSED
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() {
        "unreadable answer"
    } else {
        "transport"
    };
    format!("PSP {kind}: {}", bounded(&chain(e), 300))
}

#[derive(Serialize)]
struct RefundBody {
    payment_id: PaymentId,
    amount: Amount,
}

impl Psp for HttpPsp {
    async fn charge(&self, req: &ChargeRequest<'_>) -> PspOutcome {
        self.post("charge", "/v1/payments", req.payment_id, req)
            .await
    }

    async fn refund(&self, payment_id: PaymentId, amount: Amount) -> PspOutcome {
        self.post(
            "refund",
            "/v1/refunds",
            payment_id,
            &RefundBody { payment_id, amount },
        )
        .await
    }

    async fn lookup(&self, payment_id: PaymentId) -> Lookup {
        if let Some(error) = self.withheld("lookup") {
            return Lookup::ConfigError { error };
        }
        let started = Instant::now();
        let sent = self
            .request(reqwest::Method::GET, &format!("/v1/payments/{payment_id}"))
            .send()
            .await;
        let result = match sent {
            Err(e) if certificate_refused(&e) => Lookup::ConfigError {
                error: describe(&e),
            },
            Err(e) => Lookup::Indeterminate {
                error: describe(&e),
            },
            Ok(resp) => match resp.status().as_u16() {
                404 => Lookup::NotFound,
                429 => Lookup::RateLimited {
                    retry_after: retry_after(&resp),
                },
                401 | 403 => Lookup::ConfigError {
                    error: format!("PSP answered {}", resp.status()),
                },
                200 => match resp.json::<PspPayment>().await {
                    Ok(p) => Lookup::Known(p),
                    Err(e) => Lookup::Indeterminate {
                        error: describe(&e),
                    },
                },
                _ => Lookup::Indeterminate {
                    error: format!("PSP answered {}", resp.status()),
                },
            },
        };
        let label = match &result {
            Lookup::NotFound => "not_found",
            Lookup::Known(_) => "succeeded",
            Lookup::Indeterminate { .. } => "unknown",
            Lookup::ConfigError { .. } => "config_error",
            Lookup::RateLimited { .. } => "rate_limited",
        };
        let error = match &result {
            Lookup::ConfigError { error } => error.as_str(),
            _ => "",
        };
        self.observe("lookup", label, started, error);
        result
    }
}
