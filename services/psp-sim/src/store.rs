//! The simulator's own SQLite store, and the only place that knows SQL.
//!
//! Four tables: `payments` holds the stored answer of every key received; `movements` holds
//! one row per time money actually moved (a charge or a refund), which is what settlement files
//! list and what `charge_count`/`refund_count` count; `attempts` counts POSTs of scripted keys
//! whose first POST must fail, so "first" survives restarts; `counters` holds the count of
//! rate-limited requests, which are counted in memory and folded in (see
//! [`Store::save_rate_limited`]) so that a 429 never waits for the database.
//!
//! Invariant: at most one charge and one refund per payment. Every write is atomic and runs
//! behind a process-wide writer lock: a charge is one `INSERT … ON CONFLICT DO NOTHING` into
//! `payments` whose trigger `payments_charge` adds the charge movement in the same statement
//! (the hot path: one round trip to SQLite); a refund is one IMMEDIATE transaction that reads
//! then writes. A unique index on `movements (payment_id, kind)` refuses a second movement even
//! if that logic were wrong.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::clock::now_ms;
use crate::error::SimError;
use crate::record::{
    ChargeAnswer, ChargeOutcome, ChargeStatus, DECLINE_CODE, MovementKind, PaymentRecord,
    RefundOutcome, Settled,
};
use crate::request::{ChargeRequest, IdempotencyKey};
use crate::stats::Stats;

/// Connections in the pool: one writer at a time plus readers (status, settlement files), which
/// WAL lets run beside it.
const POOL_CONNECTIONS_MAX: u32 = 4;
/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_id    TEXT    NOT NULL PRIMARY KEY,
    amount        INTEGER NOT NULL,
    currency      TEXT    NOT NULL,
    merchant_id   TEXT    NOT NULL,
    psp_reference TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('succeeded', 'declined')),
    decline_code  TEXT,
    created_at_ms INTEGER NOT NULL,
    settles       INTEGER NOT NULL CHECK (settles IN (0, 1))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS movements (
    seq           INTEGER PRIMARY KEY,
    payment_id    TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('charge', 'refund')),
    psp_reference TEXT    NOT NULL,
    merchant_id   TEXT    NOT NULL,
    amount        INTEGER NOT NULL,
    currency      TEXT    NOT NULL,
    settled_at_ms INTEGER NOT NULL,
    settles       INTEGER NOT NULL CHECK (settles IN (0, 1))
);
CREATE UNIQUE INDEX IF NOT EXISTS movements_once ON movements (payment_id, kind);
CREATE INDEX IF NOT EXISTS movements_by_settled_at ON movements (settled_at_ms);
CREATE TRIGGER IF NOT EXISTS payments_charge AFTER INSERT ON payments
WHEN NEW.status = 'succeeded'
BEGIN
    INSERT INTO movements (payment_id, kind, psp_reference, merchant_id, amount, currency,
                           settled_at_ms, settles)
    VALUES (NEW.payment_id, 'charge', NEW.psp_reference, NEW.merchant_id, NEW.amount,
            NEW.currency, NEW.created_at_ms, NEW.settles);
END;
CREATE TABLE IF NOT EXISTS attempts (
    payment_id TEXT    NOT NULL PRIMARY KEY,
    posts      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL CHECK (value >= 0)
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('rate_limited', 0) ON CONFLICT (name) DO NOTHING;
";

/// A payment about to be recorded, with the decisions already taken for it.
pub(crate) struct NewCharge<'a> {
    pub(crate) key: &'a IdempotencyKey,
    pub(crate) request: &'a ChargeRequest,
    /// Decided by a script or the dice; only used if this request creates the payment.
    pub(crate) declined: bool,
    /// False for `never_settle`: the charge never appears in a settlement file.
    pub(crate) settles: bool,
}

/// A position in a settlement day: the last row already read, as (settled_at_ms, seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) settled_at_ms: i64,
    pub(crate) seq: i64,
}

impl Cursor {
    /// Before every row settled at or after `settled_at_ms` (sequences start at 1).
    pub(crate) fn start(settled_at_ms: i64) -> Self {
        Self {
            settled_at_ms,
            seq: 0,
        }
    }
}

/// The opened store.
pub(crate) struct Store {
    /// Pool of at most [`POOL_CONNECTIONS_MAX`] connections to the SQLite file.
    db: DatabaseConnection,
    /// Serialises writes in this process, so same-key requests queue here in arrival order
    /// instead of meeting SQLITE_BUSY. Each write is one statement or one IMMEDIATE
    /// transaction, so it stays atomic even against another process on the same file.
    writer: Arc<Mutex<()>>,
    /// Charges waiting for the group-commit writer (`charge_writer`).
    charges: tokio::sync::mpsc::UnboundedSender<QueuedCharge>,
    /// Requests answered 429 and not yet added to the `counters` row: a 429 costs an atomic
    /// increment, never a write.
    rate_limited_unsaved: AtomicU64,
    /// Held while unsaved counts move into the table and while stats read both, so a count is
    /// never seen in both places or in neither.
    counts: Mutex<()>,
}

/// A charge queued for the group-commit writer; `reply` says whether it created the payment.
struct QueuedCharge {
    key: String,
    amount_minor: i64,
    currency: String,
    merchant_id: String,
    psp_reference: String,
    status: &'static str,
    decline_code: Option<String>,
    settles: bool,
    reply: tokio::sync::oneshot::Sender<Result<bool, SimError>>,
}

/// Charges written by one statement at most.
const CHARGE_GROUP_MAX: usize = 256;

/// Writes queued charges in groups: whatever is queued when the previous group is committed
/// (up to [`CHARGE_GROUP_MAX`]) goes in one `INSERT … ON CONFLICT DO NOTHING RETURNING`, so one
/// statement, atomic, with the `payments_charge` trigger adding each charge movement. Within a
/// group the first request of a key creates the payment; a later one (a client retrying at once)
/// finds it created and replays it, as it would one group later.
async fn charge_writer(
    db: DatabaseConnection,
    writer: Arc<Mutex<()>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<QueuedCharge>,
) {
    let mut group = Vec::with_capacity(CHARGE_GROUP_MAX);
    while queue.recv_many(&mut group, CHARGE_GROUP_MAX).await > 0 {
        let lock = writer.lock().await;
        // Read the clock under the lock, so settlement order follows commit order.
        let now_ms = now_ms();
        let mut sql = String::from(
            "INSERT INTO payments (payment_id, amount, currency, merchant_id, psp_reference,
                                   status, decline_code, created_at_ms, settles) VALUES ",
        );
        let mut values: Vec<Value> = Vec::with_capacity(group.len() * 9);
        for (i, c) in group.iter().enumerate() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?,?,?,?)"
            });
            values.extend([
                c.key.as_str().into(),
                c.amount_minor.into(),
                c.currency.as_str().into(),
                c.merchant_id.as_str().into(),
                c.psp_reference.as_str().into(),
                c.status.into(),
                c.decline_code.clone().into(),
                now_ms.into(),
                i64::from(c.settles).into(),
            ]);
        }
        sql.push_str(" ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id");
        let result = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                sql,
                values,
            ))
            .await;
        drop(lock);
        match result {
            Ok(rows) => {
                let mut created: std::collections::HashSet<String> = rows
                    .iter()
                    .filter_map(|r| r.try_get_by_index::<String>(0).ok())
                    .collect();
                for c in group.drain(..) {
                    // `remove`: only the first request of a key in the group created it.
                    let _ = c.reply.send(Ok(created.remove(&c.key)));
                }
            }
            Err(e) => {
                let text = e.to_string();
                for c in group.drain(..) {
                    let _ = c
                        .reply
                        .send(Err(SimError::Store(sea_orm::DbErr::Custom(text.clone()))));
                }
            }
        }
    }
}

impl Store {
    /// Opens (creating if absent) the SQLite file at `path`, its directory and its tables.
    pub(crate) async fn open(path: &Path) -> Result<Self, SimError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| SimError::File {
                    what: "simulator data directory",
                    path: dir.to_path_buf(),
                    reason: format!("cannot create it: {e}"),
                })?;
        }
        let unusable = |e: sea_orm::DbErr| SimError::File {
            what: "simulator store",
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let file = path.to_path_buf();
        let mut options = ConnectOptions::new(sqlite_url(path));
        options
            .max_connections(POOL_CONNECTIONS_MAX)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |opts| {
                opts.filename(&file)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(BUSY_TIMEOUT)
            });
        let db = Database::connect(options).await.map_err(unusable)?;
        db.execute_unprepared(SCHEMA).await.map_err(unusable)?;
        let writer = Arc::new(Mutex::new(()));
        let (charges, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(charge_writer(db.clone(), writer.clone(), queue));
        Ok(Self {
            db,
            writer,
            charges,
            rate_limited_unsaved: AtomicU64::new(0),
            counts: Mutex::new(()),
        })
    }

    /// Counts one request answered 429, in memory until the next [`Store::save_rate_limited`].
    pub(crate) fn count_rate_limited(&self) {
        self.rate_limited_unsaved.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the rate-limited requests counted since the last save to the store: one small write,
    /// run every second while serving and once at shutdown, so a crash forgets at most the last
    /// second's count. On failure the count stays in memory for the next save.
    pub(crate) async fn save_rate_limited(&self) -> Result<(), SimError> {
        let _counts = self.counts.lock().await;
        let unsaved = self.rate_limited_unsaved.load(Ordering::Relaxed);
        if unsaved == 0 {
            return Ok(());
        }
        let added = i64::try_from(unsaved)
            .map_err(|_| SimError::Corrupt(format!("{unsaved} unsaved 429s")))?;
        {
            let _writer = self.writer.lock().await;
            self.db
                .execute_raw(statement(
                    "UPDATE counters SET value = value + ? WHERE name = 'rate_limited'",
                    [added.into()],
                ))
                .await?;
        }
        self.rate_limited_unsaved
            .fetch_sub(unsaved, Ordering::Relaxed);
        Ok(())
    }

    /// Counts one more POST of a scripted key and returns the count, 1 for the first ever.
    pub(crate) async fn count_post(&self, key: &IdempotencyKey) -> Result<i64, SimError> {
        let _writer = self.writer.lock().await;
        let row = self
            .db
            .query_one_raw(statement(
                "INSERT INTO attempts (payment_id, posts) VALUES (?, 1)
                 ON CONFLICT (payment_id) DO UPDATE SET posts = posts + 1
                 RETURNING posts",
                [key.as_str().into()],
            ))
            .await?
            .ok_or_else(|| SimError::Corrupt("attempt upsert returned no row".into()))?;
        let posts: i64 = row.try_get_by_index(0)?;
        assert!(posts >= 1, "a counted POST is at least the first");
        Ok(posts)
    }

    /// Records a payment and charges it unless declined, or replays the stored answer when
    /// the key was already recorded.
    pub(crate) async fn charge(&self, charge: &NewCharge<'_>) -> Result<ChargeOutcome, SimError> {
        let request = charge.request;
        let answer = ChargeAnswer {
            psp_reference: format!("ch_{}", Uuid::new_v4().simple()),
            status: if charge.declined {
                ChargeStatus::Declined
            } else {
                ChargeStatus::Succeeded
            },
            decline_code: charge.declined.then(|| DECLINE_CODE.to_owned()),
        };
        // Group commit: charges arriving together are written by one statement (one commit, one
        // WAL append) instead of one each; each waits until its group is committed.
        let (reply, committed) = tokio::sync::oneshot::channel();
        let queued = QueuedCharge {
            key: charge.key.as_str().to_owned(),
            amount_minor: request.amount_minor,
            currency: request.currency.as_str().to_owned(),
            merchant_id: request.merchant_id.as_str().to_owned(),
            psp_reference: answer.psp_reference.clone(),
            status: answer.status.as_str(),
            decline_code: answer.decline_code.clone(),
            settles: charge.settles,
            reply,
        };
        self.charges
            .send(queued)
            .map_err(|_| SimError::Corrupt("the charge writer has stopped".into()))?;
        let inserted = committed
            .await
            .map_err(|_| SimError::Corrupt("the charge writer has stopped".into()))??;
        let inserted = u64::from(inserted);
        assert!(inserted <= 1, "one VALUES row inserts at most one payment");
        if inserted == 1 {
            Ok(ChargeOutcome::Created(answer))
        } else {
            // Payment rows are never updated, so the stored answer can be read without a lock.
            replay_charge(&self.db, charge).await
        }
    }

    /// Refunds the charge of payment `key`, or replays the refund already made for it.
    pub(crate) async fn refund(
        &self,
        key: &IdempotencyKey,
        amount_minor: i64,
    ) -> Result<RefundOutcome, SimError> {
        let _writer = self.writer.lock().await;
        // Read the clock under the lock, so settlement order follows commit order.
        let now_ms = now_ms();
        let tx = self.begin_write().await?;
        let row = tx
            .query_one_raw(statement(
                "SELECT p.amount, p.currency, p.merchant_id, p.status, r.psp_reference, r.amount
                 FROM payments p
                 LEFT JOIN movements r ON r.payment_id = p.payment_id AND r.kind = 'refund'
                 WHERE p.payment_id = ?",
                [key.as_str().into()],
            ))
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(RefundOutcome::NotCharged);
        };
        let (charged_minor, currency, merchant_id, status, refunded, refunded_minor): (
            i64,
            String,
            String,
            String,
            Option<String>,
            Option<i64>,
        ) = row.try_get_many_by_index()?;
        let refused = match (refunded, refunded_minor) {
            (Some(reference), Some(previous)) if previous == amount_minor => {
                Some(RefundOutcome::Replayed(reference))
            }
            (Some(_), _) => Some(RefundOutcome::KeyReused),
            (None, _) if ChargeStatus::parse(&status)? == ChargeStatus::Declined => {
                Some(RefundOutcome::Declined)
            }
            (None, _) if amount_minor > charged_minor => Some(RefundOutcome::ExceedsCharge),
            (None, _) => None,
        };
        if let Some(outcome) = refused {
            tx.rollback().await?;
            return Ok(outcome);
        }
        let psp_reference = format!("re_{}", Uuid::new_v4().simple());
        tx.execute_raw(statement(
            "INSERT INTO movements (payment_id, kind, psp_reference, merchant_id, amount, currency,
                                    settled_at_ms, settles)
             VALUES (?, 'refund', ?, ?, ?, ?, ?, 1)",
            [
                key.as_str().into(),
                psp_reference.as_str().into(),
                merchant_id.into(),
                amount_minor.into(),
                currency.into(),
                now_ms.into(),
            ],
        ))
        .await?;
        tx.commit().await?;
        Ok(RefundOutcome::Created(psp_reference))
    }

    /// What the store knows of `key`; `None` if it was never recorded.
    pub(crate) async fn payment(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<PaymentRecord>, SimError> {
        let row = self
            .db
            .query_one_raw(statement(
                "SELECT p.psp_reference, p.status, p.decline_code, p.amount, p.currency,
                        p.merchant_id, p.created_at_ms,
                        (SELECT COUNT(*) FROM movements m
                          WHERE m.payment_id = p.payment_id AND m.kind = 'charge'),
                        (SELECT COUNT(*) FROM movements m
                          WHERE m.payment_id = p.payment_id AND m.kind = 'refund'),
                        (SELECT m.psp_reference FROM movements m
                          WHERE m.payment_id = p.payment_id AND m.kind = 'refund'
                          ORDER BY m.seq LIMIT 1)
                 FROM payments p WHERE p.payment_id = ?",
                [key.as_str().into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.try_get_by_index(1)?;
        Ok(Some(PaymentRecord {
            answer: ChargeAnswer {
                psp_reference: row.try_get_by_index(0)?,
                status: ChargeStatus::parse(&status)?,
                decline_code: row.try_get_by_index(2)?,
            },
            amount_minor: row.try_get_by_index(3)?,
            currency: row.try_get_by_index(4)?,
            merchant_id: row.try_get_by_index(5)?,
            created_at_ms: row.try_get_by_index(6)?,
            charge_count: row.try_get_by_index(7)?,
            refund_count: row.try_get_by_index(8)?,
            refund_reference: row.try_get_by_index(9)?,
        }))
    }

    /// Counts over the whole store (and the 429s not saved yet); scans, so meant for checks,
    /// not for the hot path.
    pub(crate) async fn stats(&self) -> Result<Stats, SimError> {
        let counts = self.counts.lock().await;
        let row = self
            .db
            .query_one_raw(statement(
                "SELECT (SELECT COUNT(*) FROM payments),
                        (SELECT COUNT(*) FROM movements WHERE kind = 'charge'),
                        (SELECT COUNT(*) FROM movements WHERE kind = 'refund'),
                        (SELECT COUNT(*) FROM (SELECT 1 FROM movements WHERE kind = 'charge'
                                               GROUP BY payment_id HAVING COUNT(*) > 1)),
                        (SELECT COUNT(*) FROM (SELECT 1 FROM movements WHERE kind = 'refund'
                                               GROUP BY payment_id HAVING COUNT(*) > 1)),
                        (SELECT value FROM counters WHERE name = 'rate_limited')",
                [],
            ))
            .await?
            .ok_or_else(|| SimError::Corrupt("stats query returned no row".into()))?;
        let unsaved = self.rate_limited_unsaved.load(Ordering::Relaxed);
        drop(counts);
        let (payments, charges, refunds, double_charges, double_refunds, rate_limited): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = row.try_get_many_by_index()?;
        Ok(Stats {
            payments: count(payments)?,
            charges: count(charges)?,
            refunds: count(refunds)?,
            double_charges: count(double_charges)?,
            double_refunds: count(double_refunds)?,
            rate_limited: count(rate_limited)?.saturating_add(unsaved),
        })
    }

    /// Up to `limit` settling movements after `cursor` and before `end_ms`, in settlement
    /// order. Walks the `settled_at_ms` index; each page is its own short read.
    pub(crate) async fn settled_page(
        &self,
        cursor: Cursor,
        end_ms: i64,
        limit: u32,
    ) -> Result<Vec<Settled>, SimError> {
        let rows = self
            .db
            .query_all_raw(statement(
                "SELECT seq, psp_reference, payment_id, merchant_id, kind, amount, currency,
                        settled_at_ms
                 FROM movements
                 WHERE settled_at_ms >= ? AND settled_at_ms < ?
                   AND (settled_at_ms > ? OR seq > ?)
                   AND settles = 1
                 ORDER BY settled_at_ms, seq
                 LIMIT ?",
                [
                    cursor.settled_at_ms.into(),
                    end_ms.into(),
                    cursor.settled_at_ms.into(),
                    cursor.seq.into(),
                    limit.into(),
                ],
            ))
            .await?;
        rows.into_iter()
            .map(|row| {
                let (
                    seq,
                    psp_reference,
                    payment_id,
                    merchant_id,
                    kind,
                    amount_minor,
                    currency,
                    settled_at_ms,
                ): (i64, String, String, String, String, i64, String, i64) =
                    row.try_get_many_by_index()?;
                Ok(Settled {
                    seq,
                    psp_reference,
                    payment_id,
                    merchant_id,
                    kind: MovementKind::parse(&kind)?,
                    amount_minor,
                    currency,
                    settled_at_ms,
                })
            })
            .collect()
    }

    async fn begin_write(&self) -> Result<DatabaseTransaction, SimError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        Ok(self.db.begin_with_options(options).await?)
    }
}

/// The stored answer for a key that is already recorded, or `KeyReused` if the stored request
/// differs in amount, currency or merchant.
async fn replay_charge(
    db: &impl ConnectionTrait,
    charge: &NewCharge<'_>,
) -> Result<ChargeOutcome, SimError> {
    let row = db
        .query_one_raw(statement(
            "SELECT amount, currency, merchant_id, psp_reference, status, decline_code
             FROM payments WHERE payment_id = ?",
            [charge.key.as_str().into()],
        ))
        .await?
        .ok_or_else(|| SimError::Corrupt("conflicting payment row vanished".into()))?;
    let (amount_minor, currency, merchant_id, psp_reference, status, decline_code): (
        i64,
        String,
        String,
        String,
        String,
        Option<String>,
    ) = row.try_get_many_by_index()?;
    let request = charge.request;
    if amount_minor != request.amount_minor
        || currency != request.currency
        || merchant_id != request.merchant_id
    {
        return Ok(ChargeOutcome::KeyReused);
    }
    Ok(ChargeOutcome::Replayed(ChargeAnswer {
        psp_reference,
        status: ChargeStatus::parse(&status)?,
        decline_code,
    }))
}

fn count(n: i64) -> Result<u64, SimError> {
    u64::try_from(n).map_err(|_| SimError::Corrupt(format!("negative count {n}")))
}

fn statement<const N: usize>(sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// A `sqlite://` URL for `path`, escaping the characters the URL parser would take as syntax.
/// The exact path is also set on the options, so this only has to be recognisable.
fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for c in path.display().to_string().chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3F"),
            '#' => url.push_str("%23"),
            other => url.push(other),
        }
    }
    url
}
