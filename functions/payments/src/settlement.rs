//! Settlement: per merchant, UTC day and currency, what was captured and
//! refunded, the fee and what is paid out.
//!
//! Fee rule: `fee = round_half_up(gross_captured × fee_bps / 10_000)`,
//! computed on the day's total captured amount (not per capture, so rounding
//! never accumulates); refunds do not return the fee, as with most
//! processors. `net = gross_captured − refunded − fee` (may be negative on a
//! day with more refunds than captures).

use payfn_sdk::sql::{self, Row};
use payfn_sdk::ApiError;
use serde_json::{json, Value};

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

/// The row for (merchant, day, currency), locked for this transaction, if any.
pub fn load(merchant_id: i64, day: &str, currency: &str) -> Result<Option<Settlement>, ApiError> {
    let rows = sql::query(
        &format!(
            "SELECT {COLUMNS} FROM settlements WHERE merchant_id = ? AND day = ? AND currency = ?{}",
            sql::for_update_suffix()
        ),
        &[merchant_id.into(), day.into(), currency.into()],
    )?;
    rows.first().map(Settlement::from_row).transpose()
}

/// Writes `next` over `prev` (None: a new row).
pub fn save(prev: Option<&Settlement>, next: &mut Settlement) -> Result<(), ApiError> {
    let values = |s: &Settlement| {
        vec![
            s.gross_captured.into(),
            s.refunded.into(),
            s.capture_count.into(),
            s.refund_count.into(),
            s.fee.into(),
            s.net.into(),
            s.updated_at.as_str().into(),
        ]
    };
    match prev {
        None => {
            next.version = 0;
            let mut params =
                vec![next.merchant_id.into(), next.day.as_str().into(), next.currency.as_str().into()];
            params.extend(values(next));
            sql::execute(
                "INSERT INTO settlements (merchant_id, day, currency, gross_captured, refunded, capture_count, \
                 refund_count, fee, net, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                &params,
            )?;
        }
        Some(prev) => {
            next.version = prev.version + 1;
            let mut params = values(next);
            params.extend([
                next.version.into(),
                prev.merchant_id.into(),
                prev.day.as_str().into(),
                prev.currency.as_str().into(),
                prev.version.into(),
            ]);
            let changed = sql::execute(
                "UPDATE settlements SET gross_captured = ?, refunded = ?, capture_count = ?, refund_count = ?, \
                 fee = ?, net = ?, updated_at = ?, version = ? \
                 WHERE merchant_id = ? AND day = ? AND currency = ? AND version = ?",
                &params,
            )?;
            if changed != 1 {
                return Err(ApiError::shard_unavailable("settlement row changed concurrently; retry"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fee;

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
