//! `ledger check`: the invariants the ledger must hold at all times, as a pure comparison.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// Σ debits ≠ Σ credits in one currency.
    Unbalanced {
        currency: String,
        debits: i64,
        credits: i64,
    },
    /// A merchant's ledger balance differs from its wallet balance.
    WalletMismatch {
        merchant_id: String,
        currency: String,
        ledger: i64,
        wallet: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub ok: bool,
    pub violations: Vec<Violation>,
    /// Σ debits and Σ credits per currency, for the reader.
    pub totals: BTreeMap<String, Totals>,
    pub merchants_checked: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub debits: i64,
    pub credits: i64,
}

pub fn check(
    totals: &BTreeMap<String, (i64, i64)>,
    ledger: &BTreeMap<(String, String), i64>,
    wallet: &BTreeMap<(String, String), i64>,
) -> Report {
    let mut violations = Vec::new();
    for (currency, (debits, credits)) in totals {
        if debits != credits {
            violations.push(Violation::Unbalanced {
                currency: currency.clone(),
                debits: *debits,
                credits: *credits,
            });
        }
    }
    let keys: std::collections::BTreeSet<_> = ledger.keys().chain(wallet.keys()).collect();
    for key in &keys {
        let l = ledger.get(*key).copied().unwrap_or(0);
        let w = wallet.get(*key).copied().unwrap_or(0);
        if l != w {
            violations.push(Violation::WalletMismatch {
                merchant_id: key.0.clone(),
                currency: key.1.clone(),
                ledger: l,
                wallet: w,
            });
        }
    }
    Report {
        ok: violations.is_empty(),
        violations,
        totals: totals
            .iter()
            .map(|(c, (d, cr))| {
                (
                    c.clone(),
                    Totals {
                        debits: *d,
                        credits: *cr,
                    },
                )
            })
            .collect(),
        merchants_checked: keys
            .iter()
            .map(|k| &k.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_kinds() {
        let totals = BTreeMap::from([("USD".to_string(), (10, 10)), ("EUR".to_string(), (5, 4))]);
        let ledger = BTreeMap::from([(("m".to_string(), "USD".to_string()), 10)]);
        let wallet = BTreeMap::from([(("m".to_string(), "USD".to_string()), 9)]);
        let r = check(&totals, &ledger, &wallet);
        assert!(!r.ok);
        assert_eq!(r.violations.len(), 2);
        let same = check(
            &BTreeMap::from([("USD".to_string(), (10, 10))]),
            &ledger,
            &ledger,
        );
        assert!(same.ok);
    }
}
