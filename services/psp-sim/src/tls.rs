//! HTTPS: the certificate and key from `PAYSTREAM_PSP_SIM_TLS_CERT`/`_KEY`, loaded once when the
//! simulator opens (so a bad file stops it at start-up, naming the variable and the path), and a
//! listener that completes TLS handshakes beside the accept loop, so one slow or silent client
//! delays no other. rustls with the ring provider only (aws-lc would need cmake).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::SimError;

/// Longest a client may take to complete its handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; past it, new connections wait in the kernel's backlog.
const HANDSHAKES_MAX: usize = 1_024;

const CERT_VAR: &str = "PAYSTREAM_PSP_SIM_TLS_CERT";
const KEY_VAR: &str = "PAYSTREAM_PSP_SIM_TLS_KEY";

/// Reads the PEM certificate chain at `cert` and the PEM private key at `key` into an acceptor
/// speaking HTTP/1.1 over TLS 1.2 or 1.3.
pub(crate) async fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, SimError> {
    let cert_pem = read(CERT_VAR, cert).await?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(CERT_VAR, cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(CERT_VAR, cert, "no CERTIFICATE block in it".into()));
    }
    let key_pem = read(KEY_VAR, key).await?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad(KEY_VAR, key, format!("no PEM private key in it: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(CERT_VAR, cert, format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            bad(
                KEY_VAR,
                key,
                format!("unusable with the certificate {}: {e}", cert.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, SimError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| bad(var, path, format!("cannot read it: {e}")))
}

fn bad(var: &'static str, path: &Path, reason: String) -> SimError {
    SimError::File {
        what: var,
        path: path.to_path_buf(),
        reason,
    }
}

/// A TCP listener whose connections come out with their TLS handshake done.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    /// Handshakes under way, at most [`HANDSHAKES_MAX`]; `None` for one that failed.
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        Self {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    /// Cancel-safe, as `axum::serve` needs at shutdown: a TCP accept and a finished handshake
    /// are both taken whole or not at all.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                (tcp, peer) = axum::serve::Listener::accept(&mut self.tcp),
                    if self.handshakes.len() < HANDSHAKES_MAX =>
                {
                    let acceptor = self.acceptor.clone();
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Some((tls, peer)),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                None
                            }
                        }
                    });
                }
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
