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
    /// 401/403: our credentials are wrong. Not the payment's fault: nothing is recorded against it.
    ConfigError { error: String },
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
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeRequest<'a> {
    #[serde(skip)]
    pub payment_id: PaymentId,
    pub amount: i64,
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
    /// Until when calls are withheld after a credentials refusal (shared by clones).
    refused_until: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

#[derive(Deserialize)]
struct Answer {
    psp_reference: Option<String>,
    status: String,
    decline_code: Option<String>,
}

impl HttpPsp {
    pub fn new(
        base: &str,
        api_key: Option<String>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
            api_key,
            refused_until: Default::default(),
        })
    }

    /// Why a call to `op` is not sent now, while a credentials refusal holds.
    fn withheld(&self, op: &'static str) -> Option<String> {
        let until = (*self.refused_until.lock().ok()?)?;
        let left = until.checked_duration_since(Instant::now())?;
        counter!(names::PSP_CALLS_WITHHELD, "op" => op).increment(1);
        Some(format!(
            "not calling the PSP for {}s more: it refused our credentials \
             (check PAYSTREAM_PSP_URL and PAYSTREAM_PSP_API_KEY)",
            left.as_secs() + 1
        ))
    }

    /// Starts (a refusal) or ends (any other answer) the hold.
    fn note_credentials(&self, refused: bool) {
        if let Ok(mut until) = self.refused_until.lock() {
            *until = refused.then(|| Instant::now() + CREDENTIALS_HOLD);
        }
        metrics::gauge!(names::PSP_CREDENTIALS_REFUSED).set(if refused { 1.0 } else { 0.0 });
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
            Err(e) => PspOutcome::Indeterminate {
                error: describe(&e),
            },
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
                    match resp.json::<Answer>().await {
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
        };
        counter!(names::PSP_REQUESTS, "op" => op, "outcome" => label).increment(1);
        histogram!(names::PSP_REQUEST_DURATION, "op" => op).record(started.elapsed().as_secs_f64());
        self.note_credentials(matches!(outcome, PspOutcome::ConfigError { .. }));
        outcome
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() {
        "unreadable answer"
    } else {
        "transport"
    };
    format!("PSP {kind}: {}", bounded(&e.to_string(), 200))
}

#[derive(Serialize)]
struct RefundBody {
    payment_id: PaymentId,
    amount: i64,
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
            &RefundBody {
                payment_id,
                amount: amount.minor(),
            },
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
            Err(e) => Lookup::Indeterminate {
                error: describe(&e),
            },
            Ok(resp) => match resp.status().as_u16() {
                404 => Lookup::NotFound,
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
        };
        counter!(names::PSP_REQUESTS, "op" => "lookup", "outcome" => label).increment(1);
        histogram!(names::PSP_REQUEST_DURATION, "op" => "lookup")
            .record(started.elapsed().as_secs_f64());
        self.note_credentials(matches!(result, Lookup::ConfigError { .. }));
        result
    }
}
