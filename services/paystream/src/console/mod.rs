//! The operator console (`paystream serve console`, part of `up`): server-rendered pages on
//! `PAYSTREAM_CONSOLE_ADDR`, everything inside the binary. A person signs in with a NATS identity;
//! the console opens a NATS connection as them and asks the `paystream.*` endpoints for every
//! page and action, so NATS permissions decide what each may do and the audit trail names them.
//!
//! - `session`: sessions in memory, expiring, with their CSRF token; no password kept.
//! - `html`: escaping, the page frame, the stylesheet.
//! - `pages`: one handler per page or action.
//!
//! Every answer carries a strict Content-Security-Policy (no script, no framing), `no-store`,
//! `nosniff` and `Referrer-Policy: same-origin` (with `no-referrer` a browser sends `Origin: null`, and the origin check below would refuse every form); every POST must carry the session's CSRF token and, when the
//! browser sends one, an `Origin` of this very host.

pub mod html;
pub mod pages;
pub mod session;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use paystream_common::config::ClientConfig;
use paystream_common::shutdown::Shutdown;

use crate::operator::OperatorError;
use session::{Sessions, View};

pub const COOKIE: &str = "paystream_console";

/// Metric names of the console.
pub mod names {
    pub const REQUESTS: &str = "paystream_console_requests_total";
    pub const REQUEST_DURATION: &str = "paystream_console_request_duration_seconds";
    pub const SIGN_INS: &str = "paystream_console_sign_ins_total";
    pub const SESSIONS: &str = "paystream_console_sessions";
}

/// What every handler shares.
#[derive(Clone)]
pub struct Console {
    pub cfg: ClientConfig,
    pub sessions: Sessions,
    pub ttl: Duration,
}

/// A failed page, rendered as a page of its own with the status it deserves.
pub enum Failure {
    /// No session, or an expired or forged one: the sign-in page, 401.
    NoSession,
    /// A form without the session's CSRF token, or from another origin.
    Forged,
    BadRequest(String),
    NotFound(String),
    /// What the NATS server or the paystream service said.
    Service(OperatorError),
}

impl From<OperatorError> for Failure {
    fn from(e: OperatorError) -> Self {
        Self::Service(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Failure::NoSession => {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::response::Html(pages::sign_in_page(
                        Some("Your session has expired or is not valid: sign in again."),
                        "",
                    )),
                )
                    .into_response();
            }
            Failure::Forged => (
                StatusCode::FORBIDDEN,
                "Refused",
                "This form did not carry this session's token (or came from another site): nothing was done. Go back, reload the page and try again.".to_owned(),
            ),
            Failure::BadRequest(e) => (StatusCode::BAD_REQUEST, "Bad request", e),
            Failure::NotFound(e) => (StatusCode::NOT_FOUND, "Not found", e),
            Failure::Service(e) => match &e {
                OperatorError::NotPermitted(subject, refusal) => (
                    StatusCode::FORBIDDEN,
                    "Not permitted",
                    format!(
                        "The NATS server refused your user {subject}: {refusal}. Nothing was done."
                    ),
                ),
                OperatorError::Refused { code, status, .. } if code == "404" => {
                    (StatusCode::NOT_FOUND, "Not found", status.clone())
                }
                OperatorError::Refused { code, status, .. } if code == "400" => {
                    (StatusCode::BAD_REQUEST, "Bad request", status.clone())
                }
                OperatorError::Refused { code, status, .. } if code == "403" => {
                    (StatusCode::FORBIDDEN, "Not permitted", status.clone())
                }
                OperatorError::NoResponders(_) | OperatorError::TimedOut(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "paystream is not answering",
                    e.to_string(),
                ),
                _ => (StatusCode::BAD_GATEWAY, "Error", e.to_string()),
            },
        };
        (
            status,
            axum::response::Html(html::page(
                title,
                None,
                &format!(
                    r#"<div class="error"><p>{}</p></div><p><a href="/">Back to the overview</a></p>"#,
                    html::esc(&text)
                ),
            )),
        )
            .into_response()
    }
}

impl Console {
    /// The session named by the request's cookie.
    pub fn session(&self, headers: &HeaderMap) -> Result<(String, View), Failure> {
        let id = cookie(headers).ok_or(Failure::NoSession)?;
        let view = self.sessions.get(&id, self.ttl).ok_or(Failure::NoSession)?;
        Ok((id, view))
    }
}

/// The session cookie's value, if the request has one.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Asks `subject` as the signed-in person.
pub async fn call(
    view: &View,
    subject: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    Ok(crate::operator::request(&view.client, &view.errors, subject, body).await?)
}

/// A POST's form, refused unless it carries the session's CSRF token and (when the browser says
/// where it comes from) this host as its origin.
pub fn checked_form(
    headers: &HeaderMap,
    view: &View,
    body: &[u8],
) -> Result<Vec<(String, String)>, Failure> {
    same_origin(headers)?;
    let form = html::form_pairs(body);
    let token = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !session::same(token, &view.csrf) {
        return Err(Failure::Forged);
    }
    Ok(form)
}

/// Refuses a request whose `Origin` is another site's.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Failure> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if origin_host.is_empty() || origin_host != host {
        return Err(Failure::Forged);
    }
    Ok(())
}

/// Security headers and metrics on every answer.
async fn guard(State(c): State<Console>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let page = route_label(req.uri().path());
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    let status = res.status().as_u16().to_string();
    metrics::counter!(names::REQUESTS, "page" => page, "status" => status).increment(1);
    metrics::histogram!(names::REQUEST_DURATION, "page" => page)
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!(names::SESSIONS).set(c.sessions.sweep(c.ttl) as f64);
    res
}

/// The `page` label's values.
const PAGES: [&str; 9] = [
    "overview",
    "signin",
    "signout",
    "dead_letters",
    "recon",
    "payments",
    "audit",
    "static",
    "other",
];

/// A bounded label for the metrics (ids and dates left out).
fn route_label(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "" => "overview",
        "signin" => "signin",
        "signout" => "signout",
        "dead-letters" => "dead_letters",
        "recon" => "recon",
        "payments" => "payments",
        "audit" => "audit",
        "static" => "static",
        _ => "other",
    }
}

pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/signin", get(pages::sign_in_form).post(pages::sign_in))
        .route("/signout", post(pages::sign_out))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/action", post(pages::dead_letter_action))
        .route("/dead-letters/{id}", get(pages::dead_letter))
        .route("/recon", get(pages::recon_runs))
        .route("/recon/{date}", get(pages::recon_rows))
        .route("/recon/{date}/resolve", post(pages::recon_resolve))
        .route("/recon/{date}/csv", get(pages::recon_csv))
        .route("/payments", get(pages::payments))
        .route("/payments/{id}", get(pages::timeline))
        .route("/audit", get(pages::audit))
        .route(
            "/static/console.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    html::CSS,
                )
            }),
        )
        .fallback(|| async { Failure::NotFound("No such page.".into()).into_response() })
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

/// Binds `addr` and serves the console until `shutdown`; returns the bound address.
pub async fn start(
    cfg: &ClientConfig,
    addr: SocketAddr,
    ttl: Duration,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    metrics::describe_counter!(names::REQUESTS, "Console requests, by page and status.");
    metrics::describe_histogram!(
        names::REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Console server time per request, by page."
    );
    metrics::describe_counter!(
        names::SIGN_INS,
        "Console sign-ins, by outcome (ok, refused, error)."
    );
    metrics::describe_gauge!(names::SESSIONS, "Console sessions open.");
    for outcome in ["ok", "refused", "error"] {
        metrics::counter!(names::SIGN_INS, "outcome" => outcome).absolute(0);
    }
    for page in PAGES {
        metrics::counter!(names::REQUESTS, "page" => page, "status" => "200").absolute(0);
    }
    metrics::gauge!(names::SESSIONS).set(0.0);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let console = Console {
        cfg: cfg.clone(),
        sessions: Sessions::default(),
        ttl,
    };
    let app = router(console);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.into_future())
            .await;
    });
    tracing::info!(addr = %bound, "operator console listening");
    Ok((bound, task))
}
