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
