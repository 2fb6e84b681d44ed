//! The wallet's tables. Architecture Invariant: only this crate writes them.

pub mod balance {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallet_balances")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub merchant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub currency: String,
        /// Minor units; can go negative only if refunds outrun credits (reported by `ledger check`).
        pub balance: i64,
        pub updated_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod applied {
    use sea_orm::entity::prelude::*;

    /// One row per event applied: the de-duplication record, written in the same transaction as
    /// the balance change.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallet_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub payment_id: String,
        pub applied_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}
