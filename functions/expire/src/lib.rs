//! Authorization expiry, run by a timer trigger once per shard: voids
//! authorizations older than its variable `max_age_secs` (default 7 days, as card
//! networks and Stripe do) through the same state change, ledger posting
//! and outbox event as a requested void (`reason: "expired"`).
//!
//! A capture racing the expiry: both lock the payment row (on SQLite, the
//! shard's write transaction), so exactly one of them sees AUTHORIZED; the
//! other finds the new status and does nothing (expiry) or answers 409
//! (capture).

use std::time::{Duration, SystemTime};

use payfn_sdk::bindings::exports::payfn::host::timer_handler::Tick;
use payfn_sdk::sql;
use payfn_sdk::{variables, ApiError};
use payments::{steps, store, Status};

payfn_sdk::timer_step!(on_tick);

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

fn on_tick(tick: Tick) -> Result<String, String> {
    expire(&tick).map_err(|e| format!("{}: {}", e.code, e.message))
}

fn expire(tick: &Tick) -> Result<String, ApiError> {
    let max_age = Duration::from_secs(variables::parse_or("max_age_secs", DEFAULT_MAX_AGE.as_secs()));
    let cutoff = SystemTime::now().checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
    // Timestamps are RFC 3339 UTC with milliseconds: they compare as text.
    let cutoff = humantime::format_rfc3339_millis(cutoff).to_string();
    let skip_locked = sql::skip_locked_suffix();
    let due = sql::query(
        &format!(
            "SELECT id, merchant_id FROM payments WHERE status = 'AUTHORIZED' AND created_at < ? \
               AND NOT EXISTS (SELECT 1 FROM moving_merchants m WHERE m.merchant_id = payments.merchant_id) \
             ORDER BY created_at LIMIT ?{skip_locked}"
        ),
        &[cutoff.as_str().into(), i64::from(tick.batch_size).into()],
    )?;
    let mut voided = 0;
    for row in due.iter() {
        let payment = store::load(row.i64("merchant_id")?, &row.text("id")?, true)?;
        if payment.status == Status::Authorized {
            steps::void(&payment, "expired", None)?;
            voided += 1;
        }
    }
    Ok(if voided == 0 {
        String::new()
    } else {
        format!("shard {}: expired {voided} authorizations", tick.shard)
    })
}
