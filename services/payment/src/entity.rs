//! The payment service's tables. Architecture Invariant: only this crate writes them.

pub mod payment {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: String,
        pub buyer_id: String,
        pub merchant_id: String,
        pub amount: i64,
        pub currency: String,
        pub state: String,
        /// Events emitted so far; the next event carries `version + 1`.
        pub version: i32,
        /// PSP charge attempts (first try and retries with the same key).
        pub attempts: i32,
        /// Client metadata, JSON.
        pub metadata: String,
        /// PAYMENTS stream sequence of the request.
        pub request_seq: i64,
        /// When JetStream stored the request (unix ms): the start of the end-to-end latency.
        pub requested_at_ms: i64,
        pub psp_reference: Option<String>,
        pub decline_code: Option<String>,
        pub last_error: Option<String>,
        /// UNKNOWN payments: when the sweeper may try again (bounded backoff).
        pub next_attempt_at_ms: Option<i64>,
        /// A sweeper instance holds the payment until then; others leave it alone.
        pub lease_until_ms: Option<i64>,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        /// A cancellation accepted before the outcome was known: when JetStream stored it (unix
        /// ms). Carried out (REFUNDING) once the payment is charged.
        pub cancel_requested_at_ms: Option<i64>,
        /// That cancellation's reason, if it gave one.
        pub cancel_reason: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod history {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_history")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub payment_id: String,
        pub state: String,
        pub cause: String,
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod outbox {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub event_id: String,
        pub payment_id: String,
        pub buyer_id: String,
        pub kind: String,
        pub version: i32,
        pub subject: String,
        pub payload: Vec<u8>,
        pub created_at_ms: i64,
        pub published_at_ms: Option<i64>,
        pub stream_seq: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}
