//! Posting rules: the balanced set of entries each event posts. Pure; the only place that decides
//! which accounts money moves between.

use paystream_common::events::{EventKind, PaymentEvent};

/// One ledger line: exactly one of `debit_minor` / `credit_minor` is non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account: String,
    pub currency: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
}

pub fn clearing_account(currency: &str) -> String {
    format!("psp_clearing:{currency}")
}

pub fn merchant_account(merchant_id: &str) -> String {
    format!("merchant:{merchant_id}")
}

/// The entries an event posts. Money reaching a merchant is a debit of PSP clearing (the PSP owes
/// us) and a credit of the merchant (we owe the merchant); a refund or negative adjustment is the
/// reverse. `failed` moves nothing.
pub fn entries(e: &PaymentEvent) -> Vec<Entry> {
    let delta = match e.kind {
        EventKind::Failed => return Vec::new(),
        _ => e.merchant_delta_minor(),
    };
    if delta == 0 {
        return Vec::new();
    }
    let currency = e.currency.to_string();
    let amount = delta.abs();
    let clearing = clearing_account(&currency);
    let merchant = merchant_account(e.merchant_id.as_str());
    let (debit, credit) = if delta > 0 {
        (clearing, merchant)
    } else {
        (merchant, clearing)
    };
    let posting = vec![
        Entry {
            account: debit,
            currency: currency.clone(),
            debit_minor: amount,
            credit_minor: 0,
        },
        Entry {
            account: credit,
            currency,
            debit_minor: 0,
            credit_minor: amount,
        },
    ];
    assert!(is_balanced(&posting), "a posting balances");
    posting
}

/// Σ debits = Σ credits, per currency.
pub fn is_balanced(entries: &[Entry]) -> bool {
    let mut sums: std::collections::BTreeMap<&str, i128> = std::collections::BTreeMap::new();
    for e in entries {
        *sums.entry(&e.currency).or_default() +=
            i128::from(e.debit_minor) - i128::from(e.credit_minor);
    }
    sums.values().all(|v| *v == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_common::ids::{BuyerId, MerchantId, PaymentId};
    use paystream_common::money::Currency;
    use proptest::prelude::*;

    fn event(kind: EventKind, amount: i64, delta: Option<i64>) -> PaymentEvent {
        PaymentEvent {
            event_id: uuid::Uuid::nil(),
            kind,
            payment_id: PaymentId::new_random(),
            buyer_id: BuyerId::parse("b").unwrap(),
            merchant_id: MerchantId::parse("m").unwrap(),
            amount,
            currency: Currency::parse("EUR").unwrap(),
            version: 1,
            occurred_at: String::new(),
            psp_reference: None,
            reason: None,
            requested_at_ms: None,
            delta_minor: delta,
            stream_seq: None,
        }
    }

    #[test]
    fn succeeded_and_cancelled_mirror() {
        let s = entries(&event(EventKind::Succeeded, 500, None));
        assert_eq!(s[0].account, "psp_clearing:EUR");
        assert_eq!(s[0].debit_minor, 500);
        assert_eq!(s[1].account, "merchant:m");
        assert_eq!(s[1].credit_minor, 500);
        let c = entries(&event(EventKind::Cancelled, 500, None));
        assert_eq!(c[0].account, "merchant:m");
        assert_eq!(c[0].debit_minor, 500);
        assert!(entries(&event(EventKind::Failed, 500, None)).is_empty());
    }

    proptest! {
        #[test]
        fn every_posting_balances(amount in 1i64..1_000_000_000_000, delta in -1_000_000_000_000i64..1_000_000_000_000, k in 0usize..4) {
            let e = event(EventKind::ALL[k], amount, Some(delta));
            let posting = entries(&e);
            prop_assert!(is_balanced(&posting));
            let merchant: i64 = posting.iter().filter(|p| p.account == "merchant:m").map(|p| p.credit_minor - p.debit_minor).sum();
            let expected = if e.kind == EventKind::Failed { 0 } else { e.merchant_delta_minor() };
            prop_assert_eq!(merchant, expected);
        }
    }
}
