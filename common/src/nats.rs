//! Connecting to NATS: one client per process, authenticated (user and password, or a creds
//! file), over TLS when a CA is configured, reconnecting forever once connected (services ride
//! out an outage; readiness reports it meanwhile). What cannot heal by waiting — a refused
//! password, a TLS failure, a permission the server denies — is an error, never a silent retry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{
    Client, ClientError, ConnectErrorKind, ConnectOptions, Event, ServerError, jetstream,
};

use crate::config::{ClientConfig, Secret};
use crate::telemetry::names;
use crate::text::error_chain;

/// paystream's NATS users (nats/accounts.conf); `system` is the server's system account's.
pub const USERS: [&str; 5] = ["paystream", "checkout", "operator", "viewer", "system"];

/// What a process does on NATS, which decides the user it takes from `up`'s generated
/// credentials when none is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The services (and the commands that need their powers, like `dlq redrive --direct`).
    Service,
    /// `pay`, `cancel`: publish on the ingress subjects.
    Checkout,
    /// The operator actions that go through the `paystream.>` endpoints (redrive, purge,
    /// recon run).
    Operator,
    /// The read-only queries (status, balance, ledger check, dlq list/show, recon report, audit).
    Viewer,
}

impl Role {
    pub fn user(self) -> &'static str {
        match self {
            Self::Service => "paystream",
            Self::Checkout => "checkout",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no NATS server configured: set PAYSTREAM_NATS_URL, or start `paystream up` (it writes {0})"
    )]
    NoUrl(String),
    #[error(
        "PAYSTREAM_NATS_USER is set to {0:?} but neither PAYSTREAM_NATS_PASSWORD nor \
         PAYSTREAM_NATS_PASSWORD_FILE is"
    )]
    NoPassword(String),
    #[error("PAYSTREAM_NATS_PASSWORD_FILE {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("NATS context {path}: {source}")]
    Context {
        path: String,
        source: std::io::Error,
    },
    #[error("reading NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "NATS at {url} refused the credentials of {who} (authorization violation): check \
         PAYSTREAM_NATS_USER/PAYSTREAM_NATS_PASSWORD or PAYSTREAM_NATS_CREDS"
    )]
    Refused { url: String, who: String },
    #[error(
        "TLS to NATS at {url} failed (check PAYSTREAM_NATS_TLS_CA or the context's ca): {detail}"
    )]
    Tls { url: String, detail: String },
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    /// Waiting cannot fix it: wrong credentials, TLS set-up, a bad URL.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Connect { source, .. }
            if matches!(source.kind(), ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns))
    }
}

/// The part of a NATS CLI context (`~/.config/nats/context/<name>.json`, as `nats context save`
/// writes it) that paystream uses; the other fields are the CLI's own.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct NatsContext {
    pub url: String,
    pub user: String,
    pub password: String,
    pub creds: String,
    pub ca: String,
}

impl NatsContext {
    /// The context `--context`/`NATS_CONTEXT` names, if one does.
    pub fn selected(cfg: &ClientConfig) -> Result<Option<Self>, ConnectError> {
        let Some(name) = &cfg.nats_context else {
            return Ok(None);
        };
        let path = crate::config::nats_context_path(name);
        let error = |source| ConnectError::Context {
            path: path.display().to_string(),
            source,
        };
        let text = std::fs::read_to_string(&path).map_err(error)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| error(std::io::Error::other(e)))
    }
}

/// Some non-empty text.
fn given(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// The URL in force: `PAYSTREAM_NATS_URL`, the selected NATS context's, or the one `up` wrote
/// into the data dir.
pub fn resolve_url(cfg: &ClientConfig) -> Result<String, ConnectError> {
    if let Some(url) = &cfg.nats_url {
        return Ok(url.clone());
    }
    if let Some(url) = NatsContext::selected(cfg)?
        .as_ref()
        .and_then(|c| given(&c.url))
    {
        return Ok(url.to_owned());
    }
    let file = cfg.nats_url_file();
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConnectError::NoUrl(file.display().to_string()))
}

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (a server without authorization, e.g. the test harness's).
    Anonymous,
    UserPassword {
        user: String,
        password: Secret,
    },
    Creds(std::path::PathBuf),
    /// A creds file's content (the console's sign-in: never written to disk).
    CredsText(Secret),
}

impl Auth {
    /// For messages: never the password.
    pub fn who(&self) -> String {
        match self {
            Self::Anonymous => "an anonymous client".into(),
            Self::UserPassword { user, .. } => format!("user {user:?}"),
            Self::Creds(p) => format!("creds file {}", p.display()),
            Self::CredsText(_) => "the creds given".into(),
        }
    }
}

/// The credentials in force for `role`: `PAYSTREAM_NATS_CREDS`, else `PAYSTREAM_NATS_USER` and
/// `PAYSTREAM_NATS_PASSWORD` (or the file `PAYSTREAM_NATS_PASSWORD_FILE`), else the selected NATS
/// context's creds file or user and password, else — when the server is `up`'s embedded one,
/// found through the data dir — the role's user from the passwords `up` generated; else none.
pub fn resolve_auth(cfg: &ClientConfig, role: Role) -> Result<Auth, ConnectError> {
    if let Some(path) = &cfg.nats_creds {
        return Ok(Auth::Creds(path.clone()));
    }
    if let Some(user) = &cfg.nats_user {
        let password = match (&cfg.nats_password, &cfg.nats_password_file) {
            (Some(password), _) => password.clone(),
            (None, Some(path)) => password_file(path)?,
            (None, None) => return Err(ConnectError::NoPassword(user.clone())),
        };
        return Ok(Auth::UserPassword {
            user: user.clone(),
            password,
        });
    }
    let context = NatsContext::selected(cfg)?;
    if let Some(ctx) = &context {
        if let Some(creds) = given(&ctx.creds) {
            return Ok(Auth::Creds(creds.into()));
        }
        if let Some(user) = given(&ctx.user) {
            return Ok(Auth::UserPassword {
                user: user.to_owned(),
                password: Secret(ctx.password.clone()),
            });
        }
    }
    let context_url = context.as_ref().and_then(|c| given(&c.url)).is_some();
    if cfg.nats_url.is_none() && !context_url {
        let file = cfg.nats_users_file();
        if let Ok(text) = std::fs::read_to_string(&file) {
            let users: BTreeMap<String, String> =
                serde_json::from_str(&text).map_err(|e| ConnectError::Credentials {
                    path: file.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            if let Some(password) = users.get(role.user()) {
                return Ok(Auth::UserPassword {
                    user: role.user().to_owned(),
                    password: Secret(password.clone()),
                });
            }
        }
    }
    Ok(Auth::Anonymous)
}

/// A password kept in a file (a mounted secret), without the newline an editor or `echo` leaves.
fn password_file(path: &Path) -> Result<Secret, ConnectError> {
    let error = |source| ConnectError::PasswordFile {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(error)?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(error(std::io::Error::other("the file is empty")));
    }
    Ok(Secret(password.to_owned()))
}

/// The passwords of `up`'s embedded server: read from the data dir, or generated (random, 122
/// bits each) and written there with mode 0600 on the first start. Kept across restarts so that
/// client commands and other processes using the data dir keep working.
pub fn embedded_users(cfg: &ClientConfig) -> std::io::Result<BTreeMap<String, Secret>> {
    let file = cfg.nats_users_file();
    let existing: Option<BTreeMap<String, String>> = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|m: &BTreeMap<String, String>| USERS.iter().all(|u| m.contains_key(*u)));
    let users = match existing {
        Some(m) => m,
        None => {
            let m: BTreeMap<String, String> = USERS
                .iter()
                .map(|u| ((*u).to_owned(), uuid::Uuid::new_v4().simple().to_string()))
                .collect();
            std::fs::create_dir_all(&cfg.data_dir)?;
            write_private(&file, serde_json::to_string_pretty(&m)?.as_bytes())?;
            m
        }
    };
    Ok(users.into_iter().map(|(u, p)| (u, Secret(p))).collect())
}

/// Writes a NATS CLI context (`nats --context <user>`) for every user of `up`'s embedded server
/// at `url`, each file 0600 in a 0700 directory: the services' `paystream`, `checkout`,
/// `operator` (with the JetStream API prefix through which OPS reads PAYSTREAM's streams),
/// `viewer` and the system account's `system`. Returns the directory.
pub fn write_contexts(
    cfg: &ClientConfig,
    url: &str,
    users: &BTreeMap<String, Secret>,
) -> std::io::Result<std::path::PathBuf> {
    let dir = cfg.nats_contexts_dir();
    std::fs::create_dir_all(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    for (user, password) in users {
        let mut context = serde_json::json!({
            "description": format!("paystream up: user {user}"),
            "url": url,
            "user": user,
            "password": password.0,
        });
        if user == Role::Operator.user() {
            context["jetstream_api_prefix"] = "$JS.PAYSTREAM.API".into();
        }
        let text = serde_json::to_string_pretty(&context)?;
        write_private(&dir.join(format!("{user}.json")), text.as_bytes())?;
    }
    Ok(dir)
}

/// Writes a file only its owner can read (created 0600, never world-readable for an instant).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// The server errors a connection has seen since it was made: a permission violation is only
/// reported asynchronously (the request it refused just times out), so callers that wait on the
/// server check here to tell "NATS is slow" from "NATS said no".
#[derive(Debug, Clone, Default)]
pub struct ServerErrors(Arc<Mutex<Refusals>>);

#[derive(Debug, Default)]
struct Refusals {
    count: u64,
    last: Option<String>,
}

impl ServerErrors {
    /// The last permission or authorization error the server reported, if any.
    pub fn last_refusal(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.last.clone())
    }

    fn count(&self) -> u64 {
        self.0.lock().map(|g| g.count).unwrap_or(0)
    }

    /// Resolves once the server refuses something after this call (polled; for racing a request
    /// that the refusal would otherwise leave waiting for its timeout).
    pub fn refused(&self) -> impl std::future::Future<Output = String> + use<> {
        let this = self.clone();
        let before = this.count();
        async move {
            loop {
                if this.count() > before
                    && let Some(r) = this.last_refusal()
                {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn record(&self, error: &ServerError) {
        let (kind, text) = match error {
            ServerError::AuthorizationViolation => {
                ("authorization", "authorization violation".to_owned())
            }
            ServerError::SlowConsumer(_) => ("slow_consumer", String::new()),
            ServerError::Other(t) if t.to_ascii_lowercase().contains("permissions violation") => {
                ("permission", t.clone())
            }
            ServerError::Other(_) => ("other", String::new()),
        };
        self.count_and_keep(kind, text);
    }

    fn count_and_keep(&self, kind: &'static str, text: String) {
        metrics::counter!(names::NATS_SERVER_ERRORS, "kind" => kind).increment(1);
        if !text.is_empty()
            && let Ok(mut g) = self.0.lock()
        {
            g.count += 1;
            g.last = Some(text);
        }
    }
}

/// Connects as the configured user (or `up`'s user for this role). `retry` is for services:
/// while the server is unreachable they wait for it (with a bounded backoff), but refused
/// credentials or a TLS failure end the wait at once with an error naming the cause. Commands
/// fail fast.
pub async fn connect_as(
    cfg: &ClientConfig,
    name: &str,
    role: Role,
    retry: bool,
) -> Result<(Client, ServerErrors), ConnectError> {
    let errors = ServerErrors::default();
    let client = connect_reporting(cfg, name, role, retry, &errors).await?;
    Ok((client, errors))
}

/// As `connect_as`, reporting the server's errors into `errors` (which the caller may already be
/// watching).
pub async fn connect_reporting(
    cfg: &ClientConfig,
    name: &str,
    role: Role,
    retry: bool,
    errors: &ServerErrors,
) -> Result<Client, ConnectError> {
    let url = resolve_url(cfg)?;
    let auth = resolve_auth(cfg, role)?;
    let mut delay = Duration::from_millis(200);
    loop {
        match connect_once(cfg, &url, &auth, name, errors).await {
            Ok(c) => return Ok(c),
            Err(e) if retry && !e.is_permanent() && !crate::shutdown::signalled() => {
                tracing::warn!(error = %e, ?delay, "NATS not reachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects once as `auth` (the console's sign-in), reporting the server's errors.
pub async fn connect_with(
    cfg: &ClientConfig,
    name: &str,
    auth: &Auth,
) -> Result<(Client, ServerErrors), ConnectError> {
    let errors = ServerErrors::default();
    let url = resolve_url(cfg)?;
    let client = connect_once(cfg, &url, auth, name, &errors).await?;
    Ok((client, errors))
}

/// Connects as a service (`retry_forever`) or a command.
pub async fn connect(
    cfg: &ClientConfig,
    name: &str,
    retry_forever: bool,
) -> Result<Client, ConnectError> {
    connect_as(cfg, name, Role::Service, retry_forever)
        .await
        .map(|(c, _)| c)
}

async fn connect_once(
    cfg: &ClientConfig,
    url: &str,
    auth: &Auth,
    name: &str,
    errors: &ServerErrors,
) -> Result<Client, ConnectError> {
    let seen = errors.clone();
    let mut opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None)
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                match &event {
                    Event::ServerError(e) => {
                        seen.record(e);
                        tracing::error!(%event, "NATS server error");
                    }
                    // A reconnect the server refuses (a password rotated under us) is reported
                    // by async-nats as a client error naming the connect error's kind.
                    Event::ClientError(ClientError::Other(e)) if e.contains("authorization") => {
                        seen.count_and_keep("authorization", e.clone());
                        tracing::error!(%event, "NATS refused our credentials on reconnect");
                    }
                    _ => tracing::info!(%event, "nats connection event"),
                }
            }
        });
    match auth {
        Auth::Anonymous => {}
        Auth::UserPassword { user, password } => {
            opts = opts.user_and_password(user.clone(), password.0.clone());
        }
        Auth::Creds(path) => {
            opts =
                opts.credentials_file(path)
                    .await
                    .map_err(|source| ConnectError::Credentials {
                        path: path.display().to_string(),
                        source,
                    })?;
        }
        Auth::CredsText(text) => {
            opts = opts
                .credentials(&text.0)
                .map_err(|source| ConnectError::Credentials {
                    path: "(creds given at sign-in)".into(),
                    source,
                })?;
        }
    }
    let context_ca = match &cfg.nats_tls_ca {
        Some(_) => None,
        None => {
            NatsContext::selected(cfg)?.and_then(|c| given(&c.ca).map(std::path::PathBuf::from))
        }
    };
    if let Some(ca) = cfg.nats_tls_ca.as_ref().or(context_ca.as_ref()) {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    match opts.connect(servers).await {
        Ok(client) => Ok(client),
        Err(source) => Err(match source.kind() {
            _ if is_tls_failure(&source) => ConnectError::Tls {
                url: url.to_owned(),
                detail: error_chain(&source),
            },
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                ConnectError::Refused {
                    url: url.to_owned(),
                    who: auth.who(),
                }
            }
            ConnectErrorKind::Tls => ConnectError::Tls {
                url: url.to_owned(),
                detail: error_chain(&source),
            },
            _ => ConnectError::Connect {
                url: url.to_owned(),
                source,
            },
        }),
    }
}

/// A failed TLS handshake (an untrusted or mismatched certificate) is reported by async-nats as
/// an I/O error; the rustls error inside it says what it is.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The JetStream context: outstanding publish acks are bounded, so a producer cannot run away
/// from the server.
pub fn jetstream(client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(1024)
        .backpressure_on_inflight(true)
        .build(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> ClientConfig {
        let mut all = vec!["paystream"];
        all.extend_from_slice(args);
        crate::config::Config::load_from(all).unwrap().client
    }

    #[test]
    fn configured_credentials_win_and_a_user_needs_a_password() {
        let c = cfg(&[
            "--nats-url=nats://x:1",
            "--nats-creds=/etc/x.creds",
            "--nats-user=u",
        ]);
        assert_eq!(
            resolve_auth(&c, Role::Checkout).unwrap(),
            Auth::Creds("/etc/x.creds".into())
        );
        let c = cfg(&["--nats-url=nats://x:1", "--nats-user=u"]);
        assert!(matches!(
            resolve_auth(&c, Role::Service),
            Err(ConnectError::NoPassword(_))
        ));
        let c = cfg(&["--nats-url=nats://x:1"]);
        assert_eq!(resolve_auth(&c, Role::Service).unwrap(), Auth::Anonymous);
    }

    #[test]
    fn a_nats_cli_context_fills_in_what_the_settings_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ops.json");
        std::fs::write(
            &file,
            r#"{"description": "x", "url": "nats://ctx:4222", "user": "operator", "password": "pw", "nkey": ""}"#,
        )
        .unwrap();
        let context = format!("--context={}", file.display());
        let c = cfg(&[&context]);
        assert_eq!(resolve_url(&c).unwrap(), "nats://ctx:4222");
        assert_eq!(
            resolve_auth(&c, Role::Viewer).unwrap(),
            Auth::UserPassword {
                user: "operator".into(),
                password: Secret("pw".into())
            }
        );
        // PAYSTREAM_NATS_* win over the context's.
        let c = cfg(&[
            &context,
            "--nats-url=nats://own:1",
            "--nats-user=viewer",
            "--nats-password=v",
        ]);
        assert_eq!(resolve_url(&c).unwrap(), "nats://own:1");
        assert!(matches!(
            resolve_auth(&c, Role::Viewer).unwrap(),
            Auth::UserPassword { user, .. } if user == "viewer"
        ));
        // A context that is missing or unreadable is named.
        let c = cfg(&["--context=/nonexistent/ops.json"]);
        let err = resolve_url(&c).unwrap_err().to_string();
        assert!(
            err.starts_with("NATS context /nonexistent/ops.json: "),
            "{err}"
        );
    }

    #[test]
    fn a_password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nats_paystream_password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let with_file = |path: &Path| {
            cfg(&[
                "--nats-url=nats://x:1",
                "--nats-user=paystream",
                &format!("--nats-password-file={}", path.display()),
            ])
        };
        assert_eq!(
            resolve_auth(&with_file(&file), Role::Service).unwrap(),
            Auth::UserPassword {
                user: "paystream".into(),
                password: Secret("s3cret".into())
            }
        );
        let missing = dir.path().join("missing");
        let err = resolve_auth(&with_file(&missing), Role::Service).unwrap_err();
        assert!(
            err.to_string().starts_with("PAYSTREAM_NATS_PASSWORD_FILE ") && err.is_permanent(),
            "{err}"
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            resolve_auth(&with_file(&file), Role::Service),
            Err(ConnectError::PasswordFile { .. })
        ));
    }

    #[tokio::test]
    async fn an_unreadable_creds_file_is_a_clear_error_not_a_retry() {
        let c = cfg(&[
            "--nats-url=nats://127.0.0.1:1",
            "--nats-creds=/nonexistent/paystream.creds",
        ]);
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            connect_as(&c, "t", Role::Service, true),
        )
        .await
        .expect("not retried")
        .expect_err("no such file");
        assert!(err.is_permanent());
        assert!(
            err.to_string().contains("/nonexistent/paystream.creds"),
            "{err}"
        );
    }

    #[test]
    fn embedded_users_are_generated_once_private_and_picked_by_role() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&[&format!("--data-dir={}", dir.path().display())]);
        let first = embedded_users(&c).unwrap();
        assert_eq!(first.len(), 5);
        assert_eq!(embedded_users(&c).unwrap(), first, "kept across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(c.nats_users_file())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let Auth::UserPassword { user, password } = resolve_auth(&c, Role::Checkout).unwrap()
        else {
            panic!("the embedded checkout user");
        };
        assert_eq!(user, "checkout");
        assert_eq!(&password, &first["checkout"]);
    }
}
