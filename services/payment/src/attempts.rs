//! Each PSP attempt of a payment (a charge, a sweeper's lookup-and-maybe-charge, a refund): what
//! came of it and how long it took, for `paystream timeline` and the console. An attempt is written
//! by the recorder in the same transaction as the state change it led to, so the two never
//! disagree; an answer that records no change (a 401, a 429) records no attempt either.
//!
//! Architecture Invariant: only the payment service's recorder writes `psp_attempts`.

use std::time::Instant;

use paystream_common::ids::PaymentId;
use paystream_common::time::now_ms;
use sea_orm::entity::prelude::*;
use sea_orm::{ConnectionTrait, QueryOrder, QuerySelect, Set};

use paystream_common::payment::Change;

pub mod attempt {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "psp_attempts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub payment_id: String,
        /// `charge`, `sweep` (lookup, then a charge with the same key if the PSP never saw it),
        /// `refund`.
        pub kind: String,
        /// Who asked: `intake`, `sweeper`, `cancel`.
        pub via: String,
        /// `succeeded`, `declined`, `unknown` (what the state change says the PSP answered).
        pub outcome: String,
        /// The state change's cause (PSP reference, decline code or error).
        pub detail: String,
        pub latency_ms: i64,
        /// When the call started (unix ms).
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// One PSP call, timed; turned into a row once its outcome is known.
#[derive(Debug, Clone)]
pub struct Call {
    kind: &'static str,
    via: &'static str,
    at_ms: i64,
    started: Instant,
}

impl Call {
    pub fn start(kind: &'static str, via: &'static str) -> Self {
        Self {
            kind,
            via,
            at_ms: now_ms(),
            started: Instant::now(),
        }
    }

    /// The attempt that led to `change`.
    pub fn ended(self, change: &Change) -> Attempt {
        use paystream_common::state::Trigger;
        let outcome = match change.trigger {
            Trigger::Charged | Trigger::Refunded => "succeeded",
            Trigger::Declined | Trigger::RefundDeclined => "declined",
            _ => "unknown",
        };
        Attempt {
            payment_id: change.payment_id,
            kind: self.kind,
            via: self.via,
            outcome,
            detail: paystream_common::text::bounded(&change.cause, 512),
            latency_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            at_ms: self.at_ms,
        }
    }
}

/// A finished attempt, waiting for its transaction.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub payment_id: PaymentId,
    pub kind: &'static str,
    pub via: &'static str,
    pub outcome: &'static str,
    pub detail: String,
    pub latency_ms: i64,
    pub at_ms: i64,
}

/// Writes `attempts` inside the caller's transaction.
pub async fn insert(txn: &impl ConnectionTrait, attempts: Vec<Attempt>) -> Result<(), DbErr> {
    if attempts.is_empty() {
        return Ok(());
    }
    let rows = attempts.into_iter().map(|a| attempt::ActiveModel {
        payment_id: Set(a.payment_id.to_string()),
        kind: Set(a.kind.to_owned()),
        via: Set(a.via.to_owned()),
        outcome: Set(a.outcome.to_owned()),
        detail: Set(a.detail),
        latency_ms: Set(a.latency_ms),
        at_ms: Set(a.at_ms),
        ..Default::default()
    });
    attempt::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await
        .map(|_| ())
}

/// A payment's attempts after `after_id`, oldest first, at most `limit`.
pub async fn of_payment(
    db: &impl ConnectionTrait,
    payment_id: &str,
    after_id: i64,
    limit: u64,
) -> Result<Vec<attempt::Model>, DbErr> {
    attempt::Entity::find()
        .filter(attempt::Column::PaymentId.eq(payment_id))
        .filter(attempt::Column::Id.gt(after_id))
        .order_by_asc(attempt::Column::Id)
        .limit(limit)
        .all(db)
        .await
}
