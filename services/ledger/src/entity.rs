//! The ledger's tables. Architecture Invariant: only this crate writes them, and entries are only
//! ever inserted, never updated or deleted.

pub mod entry {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger_entries")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub event_id: String,
        pub payment_id: String,
        pub account: String,
        pub currency: String,
        pub debit: i64,
        pub credit: i64,
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}
