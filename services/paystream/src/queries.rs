//! The query commands' answers: the same structs serve the CLI (`--json`) and, later, the NATS
//! service endpoints.

use std::collections::BTreeMap;

use paystream_common::ids::{MerchantId, PaymentId};
use paystream_common::time::rfc3339_ms;
use paystream_ledger::check::{self, Report};
use sea_orm::{DatabaseConnection, DbErr};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadInput(String),
    #[error("payment {0} not found")]
    NotFound(String),
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub state: String,
    pub at: String,
    pub cause: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub payment_id: String,
    pub buyer_id: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: String,
    pub state: String,
    pub history: Vec<HistoryEntry>,
    pub attempts: i32,
    pub version: i32,
    pub psp_reference: Option<String>,
    pub decline_code: Option<String>,
    pub last_error: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

pub async fn status(db: &DatabaseConnection, payment_id: &str) -> Result<Status, QueryError> {
    let id = PaymentId::parse(payment_id)
        .map_err(|e| QueryError::BadInput(format!("payment_id: {e}")))?;
    let (row, hist) = paystream_payment::store::status(db, id)
        .await?
        .ok_or_else(|| QueryError::NotFound(id.to_string()))?;
    Ok(Status {
        payment_id: row.payment_id,
        buyer_id: row.buyer_id,
        merchant_id: row.merchant_id,
        amount: row.amount,
        currency: row.currency,
        state: row.state,
        history: hist
            .into_iter()
            .map(|h| HistoryEntry {
                state: h.state,
                at: rfc3339_ms(h.at_ms),
                cause: h.cause,
            })
            .collect(),
        attempts: row.attempts,
        version: row.version,
        psp_reference: row.psp_reference,
        decline_code: row.decline_code,
        last_error: row.last_error,
        metadata: serde_json::from_str(&row.metadata).unwrap_or_default(),
        created_at: rfc3339_ms(row.created_at_ms),
        updated_at: rfc3339_ms(row.updated_at_ms),
    })
}

impl Status {
    pub fn table(&self) -> String {
        let mut out = format!(
            "payment  {}\nbuyer    {}\nmerchant {}\namount   {} {}\nstate    {}\nattempts {}\n",
            self.payment_id,
            self.buyer_id,
            self.merchant_id,
            self.amount,
            self.currency,
            self.state,
            self.attempts
        );
        if let Some(r) = &self.psp_reference {
            out.push_str(&format!("psp ref  {r}\n"));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .history
            .iter()
            .map(|h| vec![h.at.clone(), h.state.clone(), h.cause.clone()])
            .collect();
        out.push_str(&crate::output::table(&["AT", "STATE", "CAUSE"], &rows));
        out
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Balance {
    pub merchant_id: String,
    pub balances: BTreeMap<String, i64>,
}

pub async fn balance(db: &DatabaseConnection, merchant_id: &str) -> Result<Balance, QueryError> {
    let m = MerchantId::parse(merchant_id)
        .map_err(|e| QueryError::BadInput(format!("merchant_id: {e}")))?;
    let balances = paystream_wallet::store::balances(db, m.as_str()).await?;
    Ok(Balance {
        merchant_id: m.to_string(),
        balances,
    })
}

impl Balance {
    pub fn table(&self) -> String {
        if self.balances.is_empty() {
            return format!("merchant {} has no balance yet\n", self.merchant_id);
        }
        let rows: Vec<Vec<String>> = self
            .balances
            .iter()
            .map(|(c, b)| vec![c.clone(), b.to_string()])
            .collect();
        format!(
            "merchant {}\n{}",
            self.merchant_id,
            crate::output::table(&["CURRENCY", "BALANCE (minor units)"], &rows)
        )
    }
}

pub async fn ledger_check(db: &DatabaseConnection) -> Result<Report, QueryError> {
    let totals = paystream_ledger::store::totals_by_currency(db).await?;
    let ledger = paystream_ledger::store::merchant_balances(db).await?;
    let wallet = paystream_wallet::store::all_balances(db).await?;
    Ok(check::check(&totals, &ledger, &wallet))
}

pub fn ledger_check_table(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .totals
        .iter()
        .map(|(c, t)| vec![c.clone(), t.debits.to_string(), t.credits.to_string()])
        .collect();
    let mut out = crate::output::table(&["CURRENCY", "DEBITS", "CREDITS"], &rows);
    out.push_str(&format!("merchants checked: {}\n", r.merchants_checked));
    if r.ok {
        out.push_str(
            "ok: Σ debits = Σ credits, and every merchant's ledger balance equals its wallet\n",
        );
    } else {
        for v in &r.violations {
            out.push_str(&format!(
                "VIOLATION: {}\n",
                serde_json::to_string(v).unwrap_or_default()
            ));
        }
    }
    out
}
