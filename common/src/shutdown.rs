//! Graceful shutdown. One `Shutdown` is created by the command; every long-running task holds a
//! clone, stops taking new work once it fires, and finishes what it has in hand.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The handle that triggers shutdown.
pub struct Trigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been requested (at once if it already was).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    /// Consumes the handle and resolves once shutdown has been requested: an owned future, for
    /// APIs that take `impl Future + 'static`.
    pub async fn into_future(mut self) {
        self.wait().await
    }
}

/// Set once SIGINT or SIGTERM has arrived, by the listener `listen_for_signals` installs.
static SIGNALLED: std::sync::OnceLock<watch::Receiver<bool>> = std::sync::OnceLock::new();

/// Listens for SIGINT and SIGTERM from now on (call it first thing in a long-running command,
/// inside the runtime): a signal that arrives while the process is still starting is remembered
/// and `signal()` resolves at once, instead of the default action killing the process in the
/// middle of its start.
pub fn listen_for_signals() {
    SIGNALLED.get_or_init(|| {
        let (tx, rx) = watch::channel(false);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                    let _ = tx.send(true);
                });
            }
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        rx
    });
}

/// Whether a signal has arrived (only known after `listen_for_signals`).
pub fn signalled() -> bool {
    SIGNALLED.get().is_some_and(|rx| *rx.borrow())
}

/// Resolves on SIGINT or SIGTERM (at once if one arrived since `listen_for_signals`).
pub async fn signal() {
    match SIGNALLED.get() {
        Some(rx) => {
            let mut rx = rx.clone();
            let _ = rx.wait_for(|fired| *fired).await;
        }
        None => os_signal().await,
    }
    tracing::info!("shutdown requested: draining in-flight work");
}

async fn os_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
}
