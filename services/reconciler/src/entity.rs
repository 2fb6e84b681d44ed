//! The reconciler's tables. Architecture Invariant: only this crate writes them.

pub mod run {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_runs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub run_id: String,
        /// The settlement day, `YYYY-MM-DD`.
        pub date: String,
        /// `running`, `ok` or `failed`.
        pub status: String,
        /// Where the file came from (path or URL).
        pub source: String,
        pub started_at_ms: i64,
        pub finished_at_ms: Option<i64>,
        /// The JSON report of a finished run.
        pub report: Option<String>,
        pub error: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod row {
    use sea_orm::entity::prelude::*;

    /// A row that did not match (matched rows are only counted), or one of our payments the
    /// file lacks (`line` 0).
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_rows")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub run_id: String,
        pub line: i64,
        pub class: String,
        pub psp_reference: Option<String>,
        pub payment_id: String,
        pub kind: String,
        /// The file's amount (none for `missing_external`).
        pub amount_minor: Option<i64>,
        /// Ours (none for `unknown_payment`).
        pub our_amount_minor: Option<i64>,
        pub currency: String,
        /// `applied`, `already_applied`, `skipped`, or none (manual review).
        pub correction: Option<String>,
        pub detail: String,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod correction {
    use sea_orm::entity::prelude::*;

    /// One correction, unique per (class, psp_reference): a row is corrected at most once.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_corrections")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub class: String,
        pub psp_reference: String,
        pub payment_id: String,
        pub date: String,
        /// The run and file line that caused it.
        pub run_id: String,
        pub line: i64,
        /// The events published, e.g. `succeeded+adjusted`.
        pub events: String,
        pub delta_minor: i64,
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod file_row {
    use sea_orm::entity::prelude::*;

    /// A run's first occurrence of each row (staging, deleted when the run ends): finds
    /// duplicates and our payments the file lacks by query.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recon_file_rows")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub run_id: String,
        pub line: i64,
        pub psp_reference: String,
        pub payment_id: String,
        pub kind: String,
    }

    impl ActiveModelBehavior for ActiveModel {}
}
