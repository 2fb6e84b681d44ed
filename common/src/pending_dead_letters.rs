//! Dead letters recorded by the consumer that gives up, in the step that gives up: before its
//! `+TERM`, or with the failure of a message's last delivery (`deliveries == max_deliver`). The
//! server's advisory stays the primary feed into DEAD_LETTERS, but it is a plain message: sent
//! while DEAD_LETTERS has no leader, nobody stores or retries it. The dlq service's `dlq_land`
//! republishes any entry here that DEAD_LETTERS lacks, in the advisory's form, then marks it
//! landed (`landed_at_ms`).
//!
//! Architecture Invariant: only the consumer loop inserts rows; only `dlq_land` marks them.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::Expr;
use sea_orm::{QueryOrder, QuerySelect, Set};
use serde::Serialize;

pub mod pending {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "pending_dead_letters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub stream: String,
        /// The durable consumer that gave up (`wallet-p3`), as the advisory names it.
        #[sea_orm(primary_key, auto_increment = false)]
        pub durable: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub stream_seq: i64,
        /// The original's subject as stored.
        pub subject: String,
        /// `terminated` or `max_deliveries`.
        pub kind: String,
        pub deliveries: i64,
        pub reason: String,
        pub at_ms: i64,
        /// When DEAD_LETTERS was seen to hold it (its advisory, or our republish).
        pub landed_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub const TERMINATED: &str = "terminated";
pub const MAX_DELIVERIES: &str = "max_deliveries";

/// Whether a failed delivery was the message's last: the server dead-letters it (MAX_DELIVERIES)
/// instead of delivering it again.
pub fn is_last_delivery(delivered: i64, max_deliver: i64) -> bool {
    max_deliver > 0 && delivered >= max_deliver
}

/// The `Nats-Msg-Id` of a republished dead letter: one per message per durable consumer, so
/// repeated republishes (a retry after a lost publish ack, two dlq instances) are stored once
/// within DEAD_LETTERS' duplicate window.
pub fn msg_id(stream: &str, durable: &str, stream_seq: i64) -> String {
    format!("dead-letter-{stream}-{durable}-{stream_seq}")
}

/// The subject the server's own advisory for this dead letter has.
pub fn advisory_subject(kind: &str, stream: &str, durable: &str) -> String {
    let event = if kind == TERMINATED {
        "MSG_TERMINATED"
    } else {
        "MAX_DELIVERIES"
    };
    format!("$JS.EVENT.ADVISORY.CONSUMER.{event}.{stream}.{durable}")
}

/// The advisory's body, with the fields the server's has (`dlq` reads either the same way).
#[derive(Debug, Serialize)]
pub struct Advisory {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub timestamp: String,
    pub stream: String,
    pub consumer: String,
    pub stream_seq: i64,
    pub deliveries: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The advisory the server would have sent for `row`.
pub fn advisory(row: &pending::Model) -> Advisory {
    let terminated = row.kind == TERMINATED;
    Advisory {
        kind: if terminated {
            "io.nats.jetstream.advisory.v1.terminated"
        } else {
            "io.nats.jetstream.advisory.v1.max_deliver"
        },
        id: msg_id(&row.stream, &row.durable, row.stream_seq),
        timestamp: crate::time::rfc3339_ms(row.at_ms),
        stream: row.stream.clone(),
        consumer: row.durable.clone(),
        stream_seq: row.stream_seq,
        deliveries: row.deliveries,
        // A MAX_DELIVERIES advisory has no reason; ours carries the last error.
        reason: Some(row.reason.clone()),
    }
}

/// Records one dead letter (again: a repeated termination of the same message is one row).
pub async fn record(db: &DatabaseConnection, row: pending::Model) -> Result<(), DbErr> {
    pending::Entity::insert(pending::ActiveModel {
        stream: Set(row.stream),
        durable: Set(row.durable),
        stream_seq: Set(row.stream_seq),
        subject: Set(row.subject),
        kind: Set(row.kind),
        deliveries: Set(row.deliveries),
        reason: Set(crate::text::bounded(&row.reason, 1000)),
        at_ms: Set(row.at_ms),
        landed_at_ms: Set(None),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// Entries not yet seen in DEAD_LETTERS, recorded before `before_ms`, oldest first.
pub async fn waiting(
    db: &DatabaseConnection,
    before_ms: i64,
    limit: u64,
) -> Result<Vec<pending::Model>, DbErr> {
    pending::Entity::find()
        .filter(pending::Column::LandedAtMs.is_null())
        .filter(pending::Column::AtMs.lt(before_ms))
        .order_by_asc(pending::Column::AtMs)
        .limit(limit)
        .all(db)
        .await
}

/// How many entries wait to be seen in DEAD_LETTERS.
pub async fn count_waiting(db: &DatabaseConnection) -> Result<u64, DbErr> {
    pending::Entity::find()
        .filter(pending::Column::LandedAtMs.is_null())
        .count(db)
        .await
}

/// Marks one entry landed.
pub async fn mark_landed(
    db: &DatabaseConnection,
    stream: &str,
    durable: &str,
    stream_seq: i64,
    at_ms: i64,
) -> Result<(), DbErr> {
    pending::Entity::update_many()
        .col_expr(pending::Column::LandedAtMs, Expr::value(at_ms))
        .filter(pending::Column::Stream.eq(stream))
        .filter(pending::Column::Durable.eq(durable))
        .filter(pending::Column::StreamSeq.eq(stream_seq))
        .exec(db)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str) -> pending::Model {
        pending::Model {
            stream: "PAYMENTS".into(),
            durable: "payment-p3".into(),
            stream_seq: 42,
            subject: "payments.request.3.b-1".into(),
            kind: kind.into(),
            deliveries: 1,
            reason: "invalid request: amount".into(),
            at_ms: 1_700_000_000_000,
            landed_at_ms: None,
        }
    }

    #[test]
    fn republished_advisory_reads_like_the_servers() {
        let a = advisory(&row(TERMINATED));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.terminated");
        assert_eq!(v["stream"], "PAYMENTS");
        assert_eq!(v["consumer"], "payment-p3");
        assert_eq!(v["stream_seq"], 42);
        assert_eq!(v["deliveries"], 1);
        assert_eq!(v["reason"], "invalid request: amount");
        assert_eq!(
            advisory_subject(TERMINATED, "PAYMENTS", "payment-p3"),
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.PAYMENTS.payment-p3"
        );
        let m = advisory(&row(MAX_DELIVERIES));
        assert_eq!(m.kind, "io.nats.jetstream.advisory.v1.max_deliver");
        assert_eq!(
            advisory_subject(MAX_DELIVERIES, "PAYMENTS", "payment-p3"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PAYMENTS.payment-p3"
        );
    }

    #[test]
    fn one_msg_id_per_message_and_consumer() {
        assert_eq!(
            msg_id("PAYMENTS", "payment-p3", 42),
            msg_id("PAYMENTS", "payment-p3", 42)
        );
        assert_ne!(
            msg_id("PAYMENTS", "payment-p3", 42),
            msg_id("PAYMENTS", "payment-p3", 43)
        );
        assert_ne!(
            msg_id("PAYMENT_EVENTS", "wallet-p3", 42),
            msg_id("PAYMENT_EVENTS", "ledger-p3", 42)
        );
    }

    #[test]
    fn only_the_last_delivery_is_dead() {
        assert!(!is_last_delivery(4, 5));
        assert!(is_last_delivery(5, 5));
        assert!(is_last_delivery(6, 5));
        // max_deliver -1: unlimited
        assert!(!is_last_delivery(100, -1));
    }
}
