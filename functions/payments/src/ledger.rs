//! Double-entry postings.
//!
//! Accounts (per merchant; debits positive, credits negative):
//! - `authorization_hold`: funds held on the customer's card. Authorize
//!   debits it; capture and void release it in full.
//! - `merchant_pending`: the merchant's claim on held funds (credit side of
//!   the hold).
//! - `processor_receivable`: money the processor will collect for captures.
//! - `merchant_payable`: money owed to the merchant (captures minus refunds).
//!
//! So per merchant: `authorization_hold` sums to the amount of AUTHORIZED
//! payments and `-merchant_payable` to captured minus refunded.

use payfn_sdk::sql::Batch;

use crate::{clock, Payment};

pub const AUTHORIZATION_HOLD: &str = "authorization_hold";
pub const MERCHANT_PENDING: &str = "merchant_pending";
pub const PROCESSOR_RECEIVABLE: &str = "processor_receivable";
pub const MERCHANT_PAYABLE: &str = "merchant_payable";

/// One balanced set of ledger entries for one change of one payment.
pub struct Posting<'a> {
    pub payment: &'a Payment,
    pub kind: &'static str,
    pub entries: Vec<(&'static str, i64)>,
}

impl<'a> Posting<'a> {
    pub fn new(payment: &'a Payment, kind: &'static str) -> Self {
        Self { payment, kind, entries: Vec::new() }
    }

    /// Moves `amount` from `credit` to `debit`.
    pub fn transfer(mut self, debit: &'static str, credit: &'static str, amount: i64) -> Self {
        assert!(amount > 0, "ledger transfers are positive");
        self.entries.push((debit, amount));
        self.entries.push((credit, -amount));
        self
    }

    /// Adds the entries to `writes`. The posting must balance; a bug that
    /// breaks this traps the component and rolls everything back.
    pub fn write(self, writes: &mut Batch, at: &str) {
        let posting_id = &clock::new_id("pst");
        let sum: i64 = self.entries.iter().map(|(_, a)| a).sum();
        assert_eq!(sum, 0, "unbalanced posting {posting_id}");
        assert!(!self.entries.is_empty(), "empty posting {posting_id}");
        // One multi-row INSERT for the whole posting: one statement
        // instead of one per entry (docs/BENCHMARKS.md).
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; self.entries.len()].join(", ");
        let mut params = Vec::with_capacity(self.entries.len() * 8);
        for (account, amount) in &self.entries {
            params.extend([
                posting_id.as_str().into(),
                self.kind.into(),
                self.payment.id.as_str().into(),
                self.payment.merchant_id.into(),
                (*account).into(),
                (*amount).into(),
                self.payment.currency.as_str().into(),
                at.into(),
            ]);
        }
        writes.push(
            format!(
                "INSERT INTO ledger_entries \
                 (posting_id, kind, payment_id, merchant_id, account, amount, currency, created_at) \
                 VALUES {rows}"
            ),
            params,
            self.entries.len() as u64,
        );
    }
}
