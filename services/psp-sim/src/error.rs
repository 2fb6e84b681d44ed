//! The one error type of the simulator crate: what can stop it from opening, serving or
//! answering from its store.

/// Why a simulator operation failed.
#[derive(thiserror::Error, Debug)]
pub enum SimError {
    /// A configuration value is out of its documented range.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// A file or directory the configuration names (the store, its directory, a TLS file)
    /// could not be used; `what` is the setting or the role, so the message says which.
    #[error("{what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    /// The SQLite store could not be opened, read or written.
    #[error("simulator store: {0}")]
    Store(#[from] sea_orm::DbErr),
    /// The store holds a value this code never writes (hand-edited or foreign file).
    #[error("simulator store holds an unexpected value: {0}")]
    Corrupt(String),
    /// The HTTP listener failed while serving.
    #[error("serving the simulator's HTTP API: {0}")]
    Io(#[from] std::io::Error),
}
