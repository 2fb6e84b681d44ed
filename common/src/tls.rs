//! The process's TLS crypto provider: ring, for every rustls client and server in it (the NATS
//! client, the PSP adapter, the reconciler's downloads). reqwest is built without a provider of its
//! own (its default would pull aws-lc, which needs cmake and a C toolchain), so one must be
//! installed before any HTTP client is built: `main` does it first thing, and so does the test kit.

/// Installs ring as the process's default provider; a second call (or one after another part
/// installed it) changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
