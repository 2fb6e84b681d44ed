//! Database connections: SQLite (the embedded default) and PostgreSQL through the same sea-orm
//! code. Write transactions go through `begin_write` so SQLite takes its write lock up front.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

/// Opens a pool. SQLite: WAL, `synchronous=NORMAL` (a commit survives a process crash; a power
/// loss may lose the last commits, as with PostgreSQL's `synchronous_commit=off`), a busy timeout
/// so concurrent writers wait instead of failing, and the parent directory created.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(postgres_tls_explicit(url));
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
    if let Some(path) = sqlite_path(url) {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbErr::Custom(format!("{}: {e}", dir.display())))?;
        }
        // One connection: every write in the process queues in the pool (woken at once) instead of
        // meeting SQLite's busy handler, whose sleeps of up to 100 ms made p99 latency 4× worse
        // (`paystream bench`: 322 → 79 ms at 1,000 payments/s). Other processes still read
        // concurrently (WAL) and wait on `busy_timeout` for writes.
        opts.max_connections(1).min_connections(1);
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .create_if_missing(true)
        });
    } else {
        opts.max_connections(16).min_connections(1);
    }
    Database::connect(opts).await
}

/// PostgreSQL TLS only when asked for: a URL without `sslmode` gets `sslmode=disable`. sqlx's
/// default (`prefer`) would quietly encrypt whenever the server offers TLS, and on this machine
/// that cut `paystream bench` on PostgreSQL from 1,215 to 528 payments/s (p50 193 ms → 1.2 s at
/// 1,000/s). Set `sslmode=require` (or `verify-full` with `sslrootcert`) in DATABASE_URL for TLS.
fn postgres_tls_explicit(url: &str) -> String {
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !postgres || url.contains("sslmode=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: a deferred
/// read-then-write transaction can fail with SQLITE_BUSY without waiting.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Whether an error is worth retrying (connection lost, lock timeout, serialization conflict) as
/// opposed to a bug or a constraint the data violates.
pub fn is_transient(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        other => {
            let text = other.to_string().to_ascii_lowercase();
            [
                "database is locked",
                "busy",
                "connection",
                "timed out",
                "deadlock",
                "could not serialize",
                "broken pipe",
                "closed",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_paths() {
        assert_eq!(
            super::sqlite_path("sqlite://data/x.sqlite?mode=rwc"),
            Some("data/x.sqlite")
        );
        assert_eq!(super::sqlite_path("sqlite::memory:"), None);
        assert_eq!(super::sqlite_path("postgres://u@h/db"), None);
    }
}
