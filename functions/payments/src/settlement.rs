//! Settlement: per merchant, UTC day and currency, what was captured and
//! refunded, the fee and what is paid out.
//!
//! Fee rule: `fee = round_half_up(gross_captured × fee_bps / 10_000)`,
//! computed on the day's total captured amount (not per capture, so rounding
//! never accumulates); refunds do not return the fee, as with most
//! processors. `net = gross_captured − refunded − fee` (may be negative on a
//! day with more refunds than captures).

use std::collections::HashMap;

use payfn_sdk::sql::{self, Batch, Dialect, Row};
use payfn_sdk::ApiError;
use serde_json::{json, Value};

/// Which settlement row: a merchant's day in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub merchant_id: i64,
    pub day: String,
    pub currency: String,
}

/// One change to a settlement row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A capture of this amount (`payment.captured`).
    Capture(i64),
    /// A refund of this amount (`payment.refunded`).
    Refund(i64),
}

/// One settlement row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub merchant_id: i64,
    pub day: String,
    pub currency: String,
    pub gross_captured: i64,
    pub refunded: i64,
    pub capture_count: i64,
    pub refund_count: i64,
    pub fee: i64,
    pub net: i64,
    pub updated_at: String,
    pub version: i64,
}

/// `amount × bps / 10_000`, rounded half up, without overflow for any
/// amount the API accepts.
pub fn fee(gross: i64, fee_bps: i64) -> i64 {
    let scaled = i128::from(gross) * i128::from(fee_bps);
    ((scaled + 5_000) / 10_000) as i64
}

impl Settlement {
    pub fn empty(merchant_id: i64, day: &str, currency: &str) -> Self {
        Settlement {
            merchant_id,
            day: day.to_string(),
            currency: currency.to_string(),
            gross_captured: 0,
            refunded: 0,
            capture_count: 0,
            refund_count: 0,
            fee: 0,
            net: 0,
            updated_at: String::new(),
            version: 0,
        }
    }

    pub fn key(&self) -> Key {
        Key { merchant_id: self.merchant_id, day: self.day.clone(), currency: self.currency.clone() }
    }

    /// Adds `change` to the totals and recomputes fee and net (the caller
    /// moves `version` on, by one per change).
    pub fn apply(&mut self, change: Change, fee_bps: i64, at: &str) {
        match change {
            Change::Capture(amount) => {
                self.gross_captured += amount;
                self.capture_count += 1;
            }
            Change::Refund(amount) => {
                self.refunded += amount;
                self.refund_count += 1;
            }
        }
        self.updated_at = at.to_string();
        self.settle(fee_bps);
    }

    /// Recomputes fee and net from the totals.
    pub fn settle(&mut self, fee_bps: i64) {
        self.fee = fee(self.gross_captured, fee_bps);
        self.net = self.gross_captured - self.refunded - self.fee;
    }

    pub fn to_json(&self) -> Value {
        json!({
            "currency": self.currency,
            "grossCaptured": self.gross_captured,
            "refunded": self.refunded,
            "captureCount": self.capture_count,
            "refundCount": self.refund_count,
            "fee": self.fee,
            "net": self.net,
            "updatedAt": self.updated_at,
        })
    }

    fn from_row(row: Row<'_>) -> Result<Self, ApiError> {
        Ok(Settlement {
            merchant_id: row.i64("merchant_id")?,
            day: row.text("day")?,
            currency: row.text("currency")?,
            gross_captured: row.i64("gross_captured")?,
            refunded: row.i64("refunded")?,
            capture_count: row.i64("capture_count")?,
            refund_count: row.i64("refund_count")?,
            fee: row.i64("fee")?,
            net: row.i64("net")?,
            updated_at: row.text("updated_at")?,
            version: row.i64("version")?,
        })
    }
}

const COLUMNS: &str = "merchant_id, day, currency, gross_captured, refunded, capture_count, refund_count, \
                       fee, net, updated_at, version";

/// The merchant's settlements of `day`, one per currency.
pub fn for_day(merchant_id: i64, day: &str) -> Result<Vec<Settlement>, ApiError> {
    let rows = sql::query(
        &format!("SELECT {COLUMNS} FROM settlements WHERE merchant_id = ? AND day = ? ORDER BY currency"),
        &[merchant_id.into(), day.into()],
    )?;
    rows.iter().map(Settlement::from_row).collect()
}

/// Keys per locking `SELECT`: well under every dialect's placeholder limit.
const KEYS_PER_STATEMENT: usize = 100;

/// The rows of `keys` that exist, locked for this transaction (one
/// statement per hundred keys: a run's rows cost one round trip, not one
/// each).
pub fn load_many(keys: &[Key]) -> Result<HashMap<Key, Settlement>, ApiError> {
    let mut found = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        // A disjunction of primary-key equalities: every dialect's planner
        // reads (and locks) only those rows; a row-value IN list is not
        // planned as well by all of them.
        let matches = vec!["(merchant_id = ? AND day = ? AND currency = ?)"; chunk.len()].join(" OR ");
        let params: Vec<sql::Value> = chunk
            .iter()
            .flat_map(|k| [k.merchant_id.into(), k.day.as_str().into(), k.currency.as_str().into()])
            .collect();
        let rows = sql::query(
            &format!("SELECT {COLUMNS} FROM settlements WHERE {matches}{}", sql::for_update_suffix()),
            &params,
        )?;
        for row in rows.iter() {
            let settlement = Settlement::from_row(row)?;
            found.insert(settlement.key(), settlement);
        }
    }
    Ok(found)
}

/// Adds to `writes` the rows of `changed` (each with whether it existed
/// when [`load_many`] locked it): new rows in one multi-row `INSERT` (a row
/// inserted meanwhile by someone else makes it fail, and the run is
/// retried), existing ones in one multi-row upsert, which only ever meets
/// rows this transaction holds locked (SQLite: its write transaction
/// excludes every other writer), so it updates each in place.
pub fn save_many(changed: &[(bool, &Settlement)], writes: &mut Batch) {
    let values = |s: &Settlement| -> [sql::Value; 11] {
        [
            s.merchant_id.into(),
            s.day.as_str().into(),
            s.currency.as_str().into(),
            s.gross_captured.into(),
            s.refunded.into(),
            s.capture_count.into(),
            s.refund_count.into(),
            s.fee.into(),
            s.net.into(),
            s.updated_at.as_str().into(),
            s.version.into(),
        ]
    };
    let insert = |rows: &[&Settlement]| {
        let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
        let params: Vec<sql::Value> = rows.iter().flat_map(|s| values(s)).collect();
        (format!("INSERT INTO settlements ({COLUMNS}) VALUES {placeholders}"), params)
    };
    let rows_where = |existed: bool| -> Vec<&Settlement> {
        changed.iter().filter(|(e, _)| *e == existed).map(|(_, s)| *s).collect()
    };
    for chunk in rows_where(false).chunks(KEYS_PER_STATEMENT) {
        let (statement, params) = insert(chunk);
        writes.push(statement, params, chunk.len() as u64);
    }
    let existing = rows_where(true);
    let updated = "gross_captured, refunded, capture_count, refund_count, fee, net, updated_at, version";
    for chunk in existing.chunks(KEYS_PER_STATEMENT) {
        let (statement, params) = insert(chunk);
        let (statement, per_row) = match sql::dialect() {
            // MySQL counts an updated row twice.
            Dialect::Mysql => {
                let set: Vec<String> = updated.split(", ").map(|c| format!("{c} = VALUES({c})")).collect();
                (format!("{statement} ON DUPLICATE KEY UPDATE {}", set.join(", ")), 2)
            }
            Dialect::Postgres | Dialect::Sqlite => {
                let set: Vec<String> = updated.split(", ").map(|c| format!("{c} = excluded.{c}")).collect();
                (
                    format!(
                        "{statement} ON CONFLICT (merchant_id, day, currency) DO UPDATE SET {}",
                        set.join(", ")
                    ),
                    1,
                )
            }
        };
        writes.push(statement, params, per_row * chunk.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::{fee, Change, Settlement};

    #[test]
    fn applying_changes_sums_them_and_settles_the_total() {
        let mut s = Settlement::empty(7, "2026-12-03", "EUR");
        s.apply(Change::Capture(10_000), 250, "t1");
        assert_eq!((s.gross_captured, s.capture_count, s.fee, s.net), (10_000, 1, 250, 9_750));
        s.apply(Change::Capture(5_000), 250, "t2");
        s.apply(Change::Refund(2_000), 250, "t3");
        assert_eq!((s.gross_captured, s.refunded, s.capture_count, s.refund_count), (15_000, 2_000, 2, 1));
        // The fee is on the day's total (15,000 × 2.5 %), not per capture.
        assert_eq!((s.fee, s.net, s.updated_at.as_str()), (375, 15_000 - 2_000 - 375, "t3"));
    }

    #[test]
    fn fee_rounds_half_up_on_the_total() {
        assert_eq!(fee(10_000, 250), 250);
        assert_eq!(fee(15_000, 250), 375);
        assert_eq!(fee(19, 250), 0); // 0.475
        assert_eq!(fee(20, 250), 1); // 0.5 rounds up
        assert_eq!(fee(0, 250), 0);
        assert_eq!(fee(1_000_000_000_000_000, 10_000), 1_000_000_000_000_000);
    }
}
