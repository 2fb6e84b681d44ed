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
                // 32 MiB of page cache instead of SQLite's 2 MiB: past a few thousand payments
                // the indexes no longer fit 2 MiB and every lookup became a pread (`perf`: 4% of
                // the bench's samples in pread alone).
                .pragma("cache_size", "-32768")
                // A service process checkpoints beside the writer (`checkpointer`), not inside
                // its commits: SQLite's automatic checkpoint every 1,000 pages copied them and
                // fsynced while every service waited on the one connection (`perf`: 9% of the
                // bench's samples, and its p99 spikes). The automatic one stays, at 64 MiB: it
                // restarts a WAL that continuous writes never let the checkpointer finish (by
                // then nearly all of it is copied, so it is quick), and it bounds the WAL by
                // itself in processes without a checkpointer or if that one fails.
                .pragma("wal_autocheckpoint", WAL_FRAMES_MAX.to_string())
                .pragma("journal_size_limit", "67108864")
        });
    } else {
        opts.max_connections(16).min_connections(1);
    }
    Database::connect(opts).await
}

/// WAL frames (pages) past which SQLite's own checkpoint restarts the WAL: 64 MiB.
const WAL_FRAMES_MAX: u32 = 16_384;
/// How often the checkpointer moves the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Failed checkpoints in a row (10 s of them) before the checkpointer warns.
const CHECKPOINT_FAILURES_WARN: u32 = 40;

/// A service process's SQLite checkpointer, until `shutdown`: every [`CHECKPOINT_EVERY`], on a
/// connection of its own (opened like `db`'s), a `PASSIVE` checkpoint copies what no reader still
/// needs into the database file without blocking the writer, which goes on appending to the WAL.
/// Nothing to do for PostgreSQL but wait for `shutdown`. A failure (another process checkpointing at the same moment) is
/// retried next round; SQLite's own checkpoint at 64 MiB stays as the backstop.
pub async fn checkpointer(db: DatabaseConnection, mut shutdown: crate::shutdown::Shutdown) {
    use sea_orm::sqlx::Connection;
    if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
        // Runs as long as its siblings all the same: a service task that ends early means trouble.
        shutdown.wait().await;
        return;
    }
    let options = (*db.get_sqlite_connection_pool().connect_options()).clone();
    drop(db);
    let mut conn = None;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = shutdown.wait() => break,
        }
        let result = match &mut conn {
            Some(c) => sea_orm::sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *c)
                .await
                .map(|_| ()),
            None => sea_orm::sqlx::SqliteConnection::connect_with(&options)
                .await
                .map(|c| conn = Some(c)),
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures.is_multiple_of(CHECKPOINT_FAILURES_WARN) {
                    tracing::warn!(error = %e, failures, "SQLite checkpoints failing; SQLite's own checkpoint bounds the WAL meanwhile");
                } else {
                    tracing::debug!(error = %e, "checkpoint skipped");
                }
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
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
