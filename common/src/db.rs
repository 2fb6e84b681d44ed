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
        let path = path.to_owned();
        if let Some(dir) = std::path::Path::new(&path).parent() {
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
                // Checkpoints run beside the writer (`checkpointer`), not inside its commits:
                // an automatic one copied ~1,000 pages and fsynced while every service waited on
                // the one connection (`perf`: 9% of the bench's samples, and its p99 spikes).
                .pragma("wal_autocheckpoint", "0")
                .pragma("journal_size_limit", "67108864")
        });
        let db = Database::connect(opts).await?;
        tokio::spawn(checkpointer(
            path.to_owned(),
            db.get_sqlite_connection_pool().clone(),
        ));
        return Ok(db);
    }
    opts.max_connections(16).min_connections(1);
    Database::connect(opts).await
}

/// WAL frames (pages) past which the checkpointer starts the WAL afresh: 64 MiB.
const WAL_FRAMES_MAX: i64 = 16_384;
/// How often the checkpointer moves the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints `path`'s WAL every [`CHECKPOINT_EVERY`] on a connection of its own, `PASSIVE`ly:
/// it copies what no reader still needs and never blocks the writer, which goes on appending to
/// the WAL meanwhile (and restarts it from the top once it was wholly copied). Stops when `main`
/// is closed. Errors (another process checkpointing at the same moment) are skipped: the next
/// round does it.
async fn checkpointer(path: String, main: sea_orm::sqlx::SqlitePool) {
    use sea_orm::sqlx::{Connection, sqlite::SqliteConnectOptions};
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(5));
    let mut conn = loop {
        match sea_orm::sqlx::SqliteConnection::connect_with(&options).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(%path, error = %e, "checkpointer cannot open the database; retrying");
                if main.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !main.is_closed() {
        tick.tick().await;
        // (busy, frames in the WAL, frames copied)
        let passive =
            sea_orm::sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut conn)
                .await;
        match passive {
            // While writes go on, the WAL is never wholly copied here, so it would never start
            // over: past WAL_FRAMES_MAX the writer's own connection copies the (by now small) rest
            // between two of its transactions, and its next write starts the WAL from the top.
            // (A RESTART checkpoint from this connection made the writer wait in SQLite's busy
            // handler, whose sleeps put 200 ms into the bench's p99.)
            Ok((_, frames, _)) if frames > WAL_FRAMES_MAX => {
                if let Err(e) = sea_orm::sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&main)
                    .await
                {
                    tracing::debug!(%path, error = %e, "WAL restart skipped");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%path, error = %e, "checkpoint skipped"),
        }
    }
    let _ = conn.close().await;
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
