//! Every SQL statement of the payment service. A state change, its history row and its event
//! (outbox) are written in one transaction; nothing else in the crate touches the database.

use std::collections::HashMap;

use metrics::counter;
use paystream_common::db::begin_write;
use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
use paystream_common::ingress::CancelRequest;
use paystream_common::money::{Amount, Currency};
use paystream_common::payment::{
    self as domain, CancelIntent, Cancellation, Change, Payment, Plan, Requested,
};
use paystream_common::state::{IllegalTransition, PaymentState};
use paystream_common::telemetry::names;
use paystream_common::time::now_ms;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use crate::entity::{history, outbox, payment};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
}

/// A payment row whose column does not hold what it must: named, never guessed around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment row {payment_id:?}: column {column} holds {value:?}, which is not {what}")]
pub struct CorruptRow {
    pub payment_id: String,
    pub column: &'static str,
    pub value: String,
    pub what: &'static str,
}

/// Parses a payment row into typed values, once. Counted in `paystream_payment_corrupt_rows_total`
/// when it fails.
pub fn parse_row(row: &payment::Model) -> Result<Payment, CorruptRow> {
    let corrupt = |column: &'static str, value: String, what: &'static str| {
        counter!(names::PAYMENT_CORRUPT_ROWS, "column" => column).increment(1);
        CorruptRow {
            payment_id: row.payment_id.clone(),
            column,
            value,
            what,
        }
    };
    Ok(Payment {
        payment_id: PaymentId::parse(&row.payment_id)
            .map_err(|_| corrupt("payment_id", row.payment_id.clone(), "a UUID"))?,
        buyer_id: BuyerId::parse(&row.buyer_id)
            .map_err(|_| corrupt("buyer_id", row.buyer_id.clone(), "a buyer id"))?,
        merchant_id: MerchantId::parse(&row.merchant_id)
            .map_err(|_| corrupt("merchant_id", row.merchant_id.clone(), "a merchant id"))?,
        amount: Amount::new(row.amount)
            .map_err(|_| corrupt("amount", row.amount.to_string(), "an amount in 1..=10^12"))?,
        currency: Currency::parse(&row.currency)
            .map_err(|_| corrupt("currency", row.currency.clone(), "an ISO 4217 code"))?,
        state: PaymentState::parse(&row.state)
            .ok_or_else(|| corrupt("state", row.state.clone(), "a payment state"))?,
        version: u32::try_from(row.version)
            .map_err(|_| corrupt("version", row.version.to_string(), "a version ≥ 0"))?,
        attempts: u32::try_from(row.attempts)
            .map_err(|_| corrupt("attempts", row.attempts.to_string(), "a count ≥ 0"))?,
        metadata: serde_json::from_str(&row.metadata)
            .map_err(|_| corrupt("metadata", row.metadata.clone(), "a JSON map of strings"))?,
        psp_reference: row.psp_reference.clone(),
        request_seq: u64::try_from(row.request_seq)
            .map_err(|_| corrupt("request_seq", row.request_seq.to_string(), "a sequence ≥ 0"))?,
        requested_at_ms: row.requested_at_ms,
        cancel: row.cancel_requested_at_ms.map(|at| CancelIntent {
            reason: row.cancel_reason.clone(),
            requested_at_ms: at,
        }),
    })
}

/// A column value that came from a typed one and must fit its column.
fn column_i32(n: u32) -> i32 {
    i32::try_from(n).expect("counts and versions stay below 2^31")
}

async fn load_locked(
    txn: &DatabaseTransaction,
    ids: impl IntoIterator<Item = String>,
) -> Result<HashMap<String, payment::Model>, DbErr> {
    let mut q = payment::Entity::find().filter(payment::Column::PaymentId.is_in(ids));
    if txn.get_database_backend() == DbBackend::Postgres {
        q = q.lock_exclusive();
    }
    Ok(q.all(txn)
        .await?
        .into_iter()
        .map(|m| (m.payment_id.clone(), m))
        .collect())
}

fn history_row(
    payment_id: &str,
    state: PaymentState,
    cause: String,
    at_ms: i64,
) -> history::ActiveModel {
    history::ActiveModel {
        payment_id: Set(payment_id.to_owned()),
        state: Set(state.as_str().to_owned()),
        cause: Set(cause),
        at_ms: Set(at_ms),
        ..Default::default()
    }
}

/// The row of a payment first recorded now, its lease running to `lease_until`.
fn new_row(p: &Payment, now: i64, lease_until: i64) -> payment::ActiveModel {
    payment::ActiveModel {
        payment_id: Set(p.payment_id.to_string()),
        buyer_id: Set(p.buyer_id.to_string()),
        merchant_id: Set(p.merchant_id.to_string()),
        amount: Set(p.amount.minor()),
        currency: Set(p.currency.to_string()),
        state: Set(p.state.as_str().to_owned()),
        version: Set(column_i32(p.version)),
        attempts: Set(column_i32(p.attempts)),
        metadata: Set(serde_json::to_string(&p.metadata).expect("a map of strings serializes")),
        request_seq: Set(i64::try_from(p.request_seq).expect("a stream sequence fits in i64")),
        requested_at_ms: Set(p.requested_at_ms),
        psp_reference: Set(None),
        decline_code: Set(None),
        last_error: Set(None),
        next_attempt_at_ms: Set(None),
        lease_until_ms: Set(Some(lease_until)),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
        cancel_requested_at_ms: Set(None),
        cancel_reason: Set(None),
    }
}

/// Records each request (NOT_STARTED → EXECUTING, before any PSP call) as `payment::plan`
/// decides, and returns the plans. `reqs` holds distinct payment ids.
pub async fn begin_execution(
    db: &DatabaseConnection,
    reqs: &[Requested],
    lease: std::time::Duration,
) -> Result<Vec<Plan>, StoreError> {
    let txn = begin_write(db).await?;
    let existing = load_locked(&txn, reqs.iter().map(|r| r.req.payment_id.to_string())).await?;
    let now = now_ms();
    // Until the batch's PSP calls are surely over, the sweeper keeps off these payments.
    let lease_until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut new_rows = Vec::new();
    let mut hist = Vec::new();
    let mut plans = Vec::with_capacity(reqs.len());
    for r in reqs {
        let id = r.req.payment_id.to_string();
        let stored = existing.get(&id).map(parse_row).transpose()?;
        let plan = domain::plan(stored.as_ref(), r)?;
        if let Plan::Execute { attempt, history } = &plan {
            match stored {
                None => new_rows.push(new_row(&r.new_payment(), now, lease_until)),
                Some(p) => {
                    let to = history.last().map_or(p.state, |(s, _)| *s);
                    payment::Entity::update_many()
                        .col_expr(payment::Column::State, Expr::value(to.as_str()))
                        .col_expr(payment::Column::Attempts, Expr::value(column_i32(*attempt)))
                        .col_expr(payment::Column::UpdatedAtMs, Expr::value(now))
                        .col_expr(payment::Column::LeaseUntilMs, Expr::value(lease_until))
                        .filter(payment::Column::PaymentId.eq(id.as_str()))
                        .exec(&txn)
                        .await?;
                }
            }
            for (state, cause) in history {
                hist.push(history_row(&id, *state, cause.clone(), now));
            }
        }
        plans.push(plan);
    }
    let inserted = new_rows.len();
    if !new_rows.is_empty() {
        payment::Entity::insert_many(new_rows)
            .exec_without_returning(&txn)
            .await?;
    }
    if !hist.is_empty() {
        history::Entity::insert_many(hist)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    counter!(names::PAYMENT_TRANSITIONS, "state" => "NOT_STARTED").increment(inserted as u64);
    let executing = plans
        .iter()
        .filter(|p| matches!(p, Plan::Execute { .. }))
        .count();
    counter!(names::PAYMENT_TRANSITIONS, "state" => "EXECUTING").increment(executing as u64);
    Ok(plans)
}

/// Decides cancellations (`payment::cancellation`) against their payments' rows, locked, and
/// writes what each comes to in one transaction: a SUCCESS payment's refund intent (REFUNDING,
/// the cancellation kept on the payment, leased for `lease` while this instance refunds), or a
/// cancellation recorded on a payment whose outcome is not in. Returns one decision per
/// cancellation, in order; a corrupt row is its own error.
pub async fn accept_cancellations(
    db: &DatabaseConnection,
    cancels: &[(CancelRequest, i64)],
    lease: std::time::Duration,
) -> Result<Vec<Result<Cancellation, CorruptRow>>, StoreError> {
    let txn = begin_write(db).await?;
    let rows = load_locked(&txn, cancels.iter().map(|(c, _)| c.payment_id.to_string())).await?;
    let now = now_ms();
    let lease_until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut current: HashMap<String, Payment> = HashMap::new();
    let mut decisions = Vec::with_capacity(cancels.len());
    let mut hist = Vec::new();
    let mut refunding = 0;
    for (c, published_ms) in cancels {
        let id = c.payment_id.to_string();
        let payment = match rows.get(&id) {
            None => None,
            Some(row) => match current.entry(id.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(e) => match parse_row(row) {
                    Ok(p) => Some(e.insert(p)),
                    Err(corrupt) => {
                        decisions.push(Err(corrupt));
                        continue;
                    }
                },
            },
        };
        let decision = domain::cancellation(payment.as_deref(), c);
        let keep = |p: &mut Payment| {
            p.cancel.get_or_insert_with(|| CancelIntent {
                reason: c.reason.clone(),
                requested_at_ms: *published_ms,
            });
        };
        match (&decision, payment) {
            (Cancellation::Refund(_), Some(p)) => {
                keep(p);
                let intent = domain::refund_intent(p, "refund intent (cancellation)".into());
                let to = domain::apply(p, &intent, Uuid::now_v7, now)?.to;
                write_cancel(&txn, p, Some(lease_until), now).await?;
                hist.push(history_row(&id, to, intent.cause, now));
                refunding += 1;
            }
            (Cancellation::Defer(state), Some(p)) if p.cancel.is_none() => {
                keep(p);
                write_cancel(&txn, p, None, now).await?;
                hist.push(history_row(
                    &id,
                    *state,
                    "cancellation recorded; carried out once the outcome is known".into(),
                    now,
                ));
            }
            _ => {}
        }
        decisions.push(Ok(decision));
    }
    if !hist.is_empty() {
        history::Entity::insert_many(hist)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    counter!(names::PAYMENT_TRANSITIONS, "state" => "REFUNDING").increment(refunding);
    Ok(decisions)
}

/// Writes a payment's state and recorded cancellation; `lease_until` keeps the sweeper off while
/// this instance refunds (`None`: leave the lease as it is).
async fn write_cancel(
    txn: &DatabaseTransaction,
    p: &Payment,
    lease_until: Option<i64>,
    now: i64,
) -> Result<(), DbErr> {
    use payment::Column as C;
    let cancel = p.cancel.as_ref();
    let mut upd = payment::Entity::update_many()
        .col_expr(C::State, Expr::value(p.state.as_str()))
        .col_expr(
            C::CancelRequestedAtMs,
            Expr::value(cancel.map(|c| c.requested_at_ms)),
        )
        .col_expr(
            C::CancelReason,
            Expr::value(cancel.and_then(|c| c.reason.clone())),
        );
    // Only the refund intent is a state change; a payment still EXECUTING keeps its
    // `updated_at_ms`, which tells the sweeper how long its charge has been under way.
    if let Some(until) = lease_until {
        upd = upd
            .col_expr(C::UpdatedAtMs, Expr::value(now))
            .col_expr(C::LeaseUntilMs, Expr::value(until))
            .col_expr(C::NextAttemptAtMs, Expr::value(Option::<i64>::None));
    }
    upd.filter(C::PaymentId.eq(p.payment_id.to_string()))
        .exec(txn)
        .await?;
    Ok(())
}

/// What happened to one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Applied; the state the payment is in after it (REFUNDING when a charge carried out a
    /// cancellation recorded earlier).
    Applied(PaymentState),
    /// The payment had already moved on (another instance, or the sweeper, got there first).
    Skipped(PaymentState),
    Missing,
}

/// Applies changes through the state machine, in one transaction with their events.
pub async fn record(
    db: &DatabaseConnection,
    changes: &[Change],
) -> Result<Vec<Recorded>, StoreError> {
    let txn = begin_write(db).await?;
    let results = record_in(&txn, changes).await?;
    txn.commit().await?;
    count_transitions(&results);
    Ok(results)
}

/// Counts committed transitions in `paystream_payment_transitions_total`.
pub fn count_transitions(results: &[Recorded]) {
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    for r in results {
        if let Recorded::Applied(to) = r {
            *counts.entry(to.as_str()).or_default() += 1;
        }
    }
    for (state, n) in counts {
        counter!(names::PAYMENT_TRANSITIONS, "state" => state).increment(n);
    }
}

/// `record` inside the caller's write transaction (begun with `begin_write`), so that another
/// record of the caller (reconciliation's correction key) commits or rolls back with the change.
/// The caller commits, then calls `count_transitions`. What each change does is
/// `payment::apply`'s decision; this writes it.
pub async fn record_in(
    txn: &DatabaseTransaction,
    changes: &[Change],
) -> Result<Vec<Recorded>, StoreError> {
    let rows = load_locked(txn, changes.iter().map(|c| c.payment_id.to_string())).await?;
    let now = now_ms();
    let mut hist = Vec::new();
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(changes.len());
    // Each payment as the changes so far leave it, and what its row becomes after all of them,
    // written at the end in a few statements rather than one per change.
    let mut current: HashMap<String, Payment> = HashMap::new();
    let mut finals: HashMap<String, Final> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for c in changes {
        let id = c.payment_id.to_string();
        let Some(row) = rows.get(&id) else {
            results.push(Recorded::Missing);
            continue;
        };
        let p = match current.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(parse_row(row)?),
        };
        let applied = match domain::apply(p, c, Uuid::now_v7, now) {
            Ok(applied) => applied,
            Err(illegal) => {
                // Someone else recorded the outcome first (a redelivery racing the sweeper):
                // the change is refused by the state machine, never applied.
                tracing::info!(payment_id = %id, %illegal, cause = %c.cause, "change refused by the state machine");
                results.push(Recorded::Skipped(p.state));
                continue;
            }
        };
        let f = finals.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            Final::default()
        });
        f.state = Some(applied.to);
        f.version = column_i32(p.version);
        if c.psp_reference.is_some() {
            f.psp_reference.clone_from(&c.psp_reference);
        }
        if c.decline_code.is_some() {
            f.decline_code.clone_from(&c.decline_code);
        }
        if c.last_error.is_some() {
            f.last_error.clone_from(&c.last_error);
        }
        f.attempts_added += i32::from(c.attempted);
        f.next_attempt_at_ms = c.retry_at_ms;
        hist.push(history_row(&id, applied.to, c.cause.clone(), now));
        // A cancellation recorded while the outcome was unknown is carried out now that it is a
        // charge: the refund intent commits with the charge, and the refund is due at once.
        let mut to = applied.to;
        if let Some(intent) = domain::deferred_refund(p, c.trigger) {
            let refunding = domain::apply(p, &intent, Uuid::now_v7, now)?;
            debug_assert!(
                refunding.event.is_none(),
                "the refund intent publishes nothing"
            );
            to = refunding.to;
            f.state = Some(to);
            f.next_attempt_at_ms = None;
            hist.push(history_row(&id, to, intent.cause, now));
        }
        if let Some(event) = applied.event {
            events.push(outbox::ActiveModel {
                event_id: Set(event.event_id.to_string()),
                payment_id: Set(id.clone()),
                buyer_id: Set(row.buyer_id.clone()),
                kind: Set(event.kind.as_str().to_owned()),
                version: Set(column_i32(event.version)),
                subject: Set(domain::event_subject(p)),
                payload: Set(event.encode()),
                created_at_ms: Set(now),
                published_at_ms: Set(None),
                stream_seq: Set(None),
                ..Default::default()
            });
        }
        results.push(Recorded::Applied(to));
    }
    for ids in order.chunks(UPDATE_ROWS_MAX) {
        let rows: Vec<(&String, &Final)> = ids.iter().map(|id| (id, &finals[id])).collect();
        let n = update_finals(txn, &rows, now).await?;
        assert_eq!(n, rows.len() as u64, "the locked payment rows exist");
    }
    if !hist.is_empty() {
        history::Entity::insert_many(hist)
            .exec_without_returning(txn)
            .await?;
    }
    if !events.is_empty() {
        outbox::Entity::insert_many(events)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(results)
}

/// Rows one batched UPDATE names: its `CASE` arms grow with it, so a batch is split.
const UPDATE_ROWS_MAX: usize = 64;

/// A payment row after all of a transaction's changes to it.
#[derive(Default)]
struct Final {
    state: Option<PaymentState>,
    version: i32,
    psp_reference: Option<String>,
    decline_code: Option<String>,
    last_error: Option<String>,
    attempts_added: i32,
    next_attempt_at_ms: Option<i64>,
}

/// A column's new value for one payment, if it changes.
type ValueOf = dyn Fn(&Final) -> Option<Expr>;

/// `CASE WHEN payment_id = … THEN … END` over `rows` (those for which `value` gives one); a row
/// without a value keeps `column`. `None` when no row has a value: the column is left alone.
fn case_of(
    rows: &[(&String, &Final)],
    column: payment::Column,
    value: impl Fn(&Final) -> Option<Expr>,
) -> Option<Expr> {
    let mut case = sea_orm::sea_query::CaseStatement::new();
    let mut arms = 0;
    for (id, f) in rows {
        if let Some(v) = value(f) {
            case = case.case(payment::Column::PaymentId.eq(id.as_str()), v);
            arms += 1;
        }
    }
    (arms > 0).then(|| case.finally(Expr::col(column)).into())
}

/// Writes `rows` in one UPDATE; returns the rows it changed. A recorded change ends any sweeper
/// lease; UNKNOWN carries its next attempt time.
async fn update_finals(
    txn: &DatabaseTransaction,
    rows: &[(&String, &Final)],
    now: i64,
) -> Result<u64, DbErr> {
    use payment::Column as C;
    let mut upd = payment::Entity::update_many()
        .col_expr(C::UpdatedAtMs, Expr::value(now))
        .col_expr(C::LeaseUntilMs, Expr::value(Option::<i64>::None))
        .filter(C::PaymentId.is_in(rows.iter().map(|(id, _)| id.as_str())));
    let columns: [(C, &ValueOf); 7] = [
        (C::State, &|f| f.state.map(|s| Expr::value(s.as_str()))),
        (C::Version, &|f| Some(Expr::value(f.version))),
        (C::PspReference, &|f| {
            f.psp_reference.clone().map(Expr::value)
        }),
        (C::DeclineCode, &|f| f.decline_code.clone().map(Expr::value)),
        (C::LastError, &|f| f.last_error.clone().map(Expr::value)),
        (C::Attempts, &|f| {
            (f.attempts_added > 0).then(|| Expr::col(C::Attempts).add(f.attempts_added))
        }),
        (C::NextAttemptAtMs, &|f| {
            Some(Expr::value(f.next_attempt_at_ms))
        }),
    ];
    for (column, value) in columns {
        if let Some(case) = case_of(rows, column, value) {
            upd = upd.col_expr(column, case);
        }
    }
    Ok(upd.exec(txn).await?.rows_affected)
}

/// Reads payments by id (no lock), for decisions that a later `record` re-checks. A corrupt row
/// is its own error, beside the others.
pub async fn load(
    db: &DatabaseConnection,
    ids: &[PaymentId],
) -> Result<HashMap<PaymentId, Result<Payment, CorruptRow>>, DbErr> {
    let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let rows: HashMap<String, payment::Model> = payment::Entity::find()
        .filter(payment::Column::PaymentId.is_in(keys))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.payment_id.clone(), m))
        .collect();
    Ok(ids
        .iter()
        .filter_map(|id| Some((*id, parse_row(rows.get(&id.to_string())?))))
        .collect())
}

/// A payment and its history, oldest first.
pub async fn status(
    db: &DatabaseConnection,
    payment_id: PaymentId,
) -> Result<Option<(payment::Model, Vec<history::Model>)>, DbErr> {
    let id = payment_id.to_string();
    let Some(row) = payment::Entity::find_by_id(id.clone()).one(db).await? else {
        return Ok(None);
    };
    let hist = history::Entity::find()
        .filter(history::Column::PaymentId.eq(id))
        .order_by_asc(history::Column::Id)
        .all(db)
        .await?;
    Ok(Some((row, hist)))
}

/// Oldest unpublished events first.
pub async fn outbox_pending(
    db: &DatabaseConnection,
    limit: u64,
) -> Result<Vec<outbox::Model>, DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::PublishedAtMs.is_null())
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

pub async fn outbox_backlog(db: &DatabaseConnection) -> Result<u64, DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::PublishedAtMs.is_null())
        .count(db)
        .await
}

/// Marks events as acknowledged by JetStream, with their stream sequence.
pub async fn mark_published(db: &DatabaseConnection, acked: &[(i64, u64)]) -> Result<(), DbErr> {
    let txn = begin_write(db).await?;
    let now = now_ms();
    for chunk in acked.chunks(UPDATE_ROWS_MAX) {
        let mut seqs = sea_orm::sea_query::CaseStatement::new();
        for (id, seq) in chunk {
            seqs = seqs.case(
                outbox::Column::Id.eq(*id),
                Expr::value(i64::try_from(*seq).unwrap_or(i64::MAX)),
            );
        }
        outbox::Entity::update_many()
            .col_expr(outbox::Column::PublishedAtMs, Expr::value(now))
            .col_expr(outbox::Column::StreamSeq, seqs.into())
            .filter(outbox::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .exec(&txn)
            .await?;
    }
    txn.commit().await
}

/// Payments the sweeper should look at now: EXECUTING for longer than `executing_before_ms`
/// allows (a crash mid-call), or UNKNOWN or REFUNDING and due, and not leased (by a sweeper, or by the intake
/// whose PSP call may still be under way).
pub async fn sweep_candidates(
    db: &DatabaseConnection,
    now: i64,
    executing_before_ms: i64,
    limit: u64,
) -> Result<Vec<payment::Model>, DbErr> {
    use sea_orm::Condition;
    let stale_executing = Condition::all()
        .add(payment::Column::State.eq(PaymentState::Executing.as_str()))
        .add(payment::Column::UpdatedAtMs.lt(executing_before_ms));
    let due_unknown = Condition::all()
        .add(payment::Column::State.eq(PaymentState::Unknown.as_str()))
        .add(
            Condition::any()
                .add(payment::Column::NextAttemptAtMs.is_null())
                .add(payment::Column::NextAttemptAtMs.lte(now)),
        );
    // A refund intent is due when written without a refund under way (a cancellation recorded
    // before the charge), or when its refund's answer was lost and its retry time has come.
    let due_refunding = Condition::all()
        .add(payment::Column::State.eq(PaymentState::Refunding.as_str()))
        .add(
            Condition::any()
                .add(payment::Column::NextAttemptAtMs.is_null())
                .add(payment::Column::NextAttemptAtMs.lte(now)),
        );
    payment::Entity::find()
        .filter(
            Condition::any()
                .add(stale_executing)
                .add(due_unknown)
                .add(due_refunding),
        )
        .filter(
            Condition::any()
                .add(payment::Column::LeaseUntilMs.is_null())
                .add(payment::Column::LeaseUntilMs.lt(now)),
        )
        .order_by_asc(payment::Column::UpdatedAtMs)
        .limit(limit)
        .all(db)
        .await
}

/// Takes a lease on each payment that nobody else holds; returns the ids this caller now holds.
/// Two sweepers never work on the same payment at once (and if a lease expired mid-work, the
/// state machine still lets only one outcome through).
pub async fn claim(
    db: &DatabaseConnection,
    ids: &[String],
    now: i64,
    lease_until_ms: i64,
) -> Result<Vec<String>, DbErr> {
    use sea_orm::Condition;
    let txn = begin_write(db).await?;
    let mut held = Vec::with_capacity(ids.len());
    for id in ids {
        let n = payment::Entity::update_many()
            .col_expr(payment::Column::LeaseUntilMs, Expr::value(lease_until_ms))
            .filter(payment::Column::PaymentId.eq(id.as_str()))
            .filter(payment::Column::State.is_in([
                PaymentState::Executing.as_str(),
                PaymentState::Unknown.as_str(),
                PaymentState::Refunding.as_str(),
            ]))
            .filter(
                Condition::any()
                    .add(payment::Column::LeaseUntilMs.is_null())
                    .add(payment::Column::LeaseUntilMs.lt(now)),
            )
            .exec(&txn)
            .await?
            .rows_affected;
        if n == 1 {
            held.push(id.clone());
        }
    }
    txn.commit().await?;
    Ok(held)
}

/// Gives leases back without a state change (e.g. the PSP refused our credentials).
pub async fn release(db: &DatabaseConnection, ids: &[String]) -> Result<(), DbErr> {
    payment::Entity::update_many()
        .col_expr(
            payment::Column::LeaseUntilMs,
            Expr::value(Option::<i64>::None),
        )
        .filter(payment::Column::PaymentId.is_in(ids.iter().cloned()))
        .exec(db)
        .await
        .map(|_| ())
}

/// `(UNKNOWN now, unresolved past the sweeper's bound)`: the latter wait for reconciliation.
pub async fn unresolved_counts(
    db: &DatabaseConnection,
    attempts_max: i32,
) -> Result<(u64, u64), DbErr> {
    let in_flight = [
        PaymentState::Executing.as_str(),
        PaymentState::Unknown.as_str(),
    ];
    let unknown = payment::Entity::find()
        .filter(payment::Column::State.eq(PaymentState::Unknown.as_str()))
        .count(db)
        .await?;
    let exhausted = payment::Entity::find()
        .filter(payment::Column::State.is_in(in_flight))
        .filter(payment::Column::Attempts.gte(attempts_max))
        .count(db)
        .await?;
    Ok((unknown, exhausted))
}

/// When the oldest payment now in UNKNOWN was created (ms since the epoch), if any.
pub async fn oldest_unknown_created_ms(db: &DatabaseConnection) -> Result<Option<i64>, DbErr> {
    payment::Entity::find()
        .select_only()
        .column_as(payment::Column::CreatedAtMs.min(), "oldest")
        .filter(payment::Column::State.eq(PaymentState::Unknown.as_str()))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await
        .map(Option::flatten)
}
