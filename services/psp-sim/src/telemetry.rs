//! The simulator's metrics: `paystream_psp_sim_requests_total{endpoint, outcome}`, counted once
//! per answered `/v1` request. The recorder is installed by the binary.

/// Name of the request counter.
pub(crate) const REQUESTS_TOTAL: &str = "paystream_psp_sim_requests_total";

/// Which route answered, the `endpoint` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Payments,
    Refunds,
    PaymentStatus,
    Settlements,
    Stats,
    Brownout,
}

impl Endpoint {
    const ALL: [Self; 6] = [
        Self::Payments,
        Self::Refunds,
        Self::PaymentStatus,
        Self::Settlements,
        Self::Stats,
        Self::Brownout,
    ];

    /// `/v1/sim/*`: the simulator's own window, not the PSP's API (never rate-limited, never
    /// browned out).
    pub(crate) fn is_sim_window(self) -> bool {
        matches!(self, Self::Stats | Self::Brownout)
    }

    /// A PSP call a brownout fails: charge, refund, status lookup.
    pub(crate) fn is_psp_call(self) -> bool {
        matches!(self, Self::Payments | Self::Refunds | Self::PaymentStatus)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Payments => "payments",
            Self::Refunds => "refunds",
            Self::PaymentStatus => "payment_status",
            Self::Settlements => "settlements",
            Self::Stats => "stats",
            Self::Brownout => "brownout",
        }
    }
}

/// How a request ended, the `outcome` label. Handlers attach it to their response as an
/// extension; the per-route middleware counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    Declined,
    Error,
    Timeout,
    LostResponse,
    BadRequest,
    Unauthorized,
    Conflict,
    NotFound,
    RateLimited,
}

impl Outcome {
    const ALL: [Self; 10] = [
        Self::Succeeded,
        Self::Declined,
        Self::Error,
        Self::Timeout,
        Self::LostResponse,
        Self::BadRequest,
        Self::Unauthorized,
        Self::Conflict,
        Self::NotFound,
        Self::RateLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::LostResponse => "lost_response",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Conflict => "conflict",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Describes the counter and exports every label pair at zero, so dashboards see the series
/// from start-up.
pub(crate) fn register() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        metrics::Unit::Count,
        "Requests answered by the PSP simulator, by endpoint and outcome."
    );
    for endpoint in Endpoint::ALL {
        for outcome in Outcome::ALL {
            metrics::counter!(
                REQUESTS_TOTAL,
                "endpoint" => endpoint.label(),
                "outcome" => outcome.label()
            )
            .increment(0);
        }
    }
}

/// Counts one answered request.
pub(crate) fn count(endpoint: Endpoint, outcome: Outcome) {
    metrics::counter!(
        REQUESTS_TOTAL,
        "endpoint" => endpoint.label(),
        "outcome" => outcome.label()
    )
    .increment(1);
}
