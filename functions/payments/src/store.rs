//! Reading and writing payment rows in the invocation's transaction.

use payfn_sdk::sql::{self, Batch, Row};
use payfn_sdk::ApiError;

use crate::{Payment, Refund, Status};

const COLUMNS: &str = "id, merchant_id, status, amount, captured_amount, refunded_amount, \
                       currency, order_id, metadata, created_at, updated_at, version";

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("payment_not_found", format!("no payment `{id}`"))
}

fn from_row(row: Row<'_>) -> Result<Payment, ApiError> {
    let metadata = match row.opt_text("metadata")? {
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|e| ApiError::internal(format!("stored metadata: {e}")))?,
        ),
        None => None,
    };
    Ok(Payment {
        id: row.text("id")?,
        merchant_id: row.i64("merchant_id")?,
        status: Status::parse(&row.text("status")?)?,
        amount: row.i64("amount")?,
        captured_amount: row.i64("captured_amount")?,
        refunded_amount: row.i64("refunded_amount")?,
        currency: row.text("currency")?,
        order_id: row.opt_text("order_id")?,
        metadata,
        created_at: row.text("created_at")?,
        updated_at: row.text("updated_at")?,
        version: row.i64("version")?,
        refunds: Vec::new(),
    })
}

/// The merchant's payment `id` with its refunds; another merchant's payment
/// is `payment_not_found`, exactly like a missing one. With `lock`, the row
/// stays locked until the transaction ends, so concurrent steps on the same
/// payment run one after the other.
pub fn load(merchant_id: i64, id: &str, lock: bool) -> Result<Payment, ApiError> {
    let suffix = if lock { sql::for_update_suffix() } else { "" };
    let rows = sql::query(
        &format!("SELECT {COLUMNS} FROM payments WHERE id = ? AND merchant_id = ?{suffix}"),
        &[id.into(), merchant_id.into()],
    )?;
    let mut payment = from_row(rows.first().ok_or_else(|| not_found(id))?)?;
    let refunds = sql::query(
        "SELECT id, amount, reason, created_at FROM refunds WHERE payment_id = ? ORDER BY created_at, id",
        &[id.into()],
    )?;
    payment.refunds = refunds
        .iter()
        .map(|r| {
            Ok(Refund {
                id: r.text("id")?,
                amount: r.i64("amount")?,
                reason: r.opt_text("reason")?,
                created_at: r.text("created_at")?,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(payment)
}

/// Adds the insert of a new payment to `writes`.
pub fn insert(writes: &mut Batch, p: &Payment) {
    p.assert_invariants();
    writes.push(
        format!("INSERT INTO payments ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        vec![
            p.id.as_str().into(),
            p.merchant_id.into(),
            p.status.as_str().into(),
            p.amount.into(),
            p.captured_amount.into(),
            p.refunded_amount.into(),
            p.currency.as_str().into(),
            p.order_id.clone().into(),
            p.metadata.as_ref().map(|m| m.to_string()).into(),
            p.created_at.as_str().into(),
            p.updated_at.as_str().into(),
            p.version.into(),
        ],
        1,
    );
}

/// Writes `next`, the new state of `prev`, if nobody changed `prev` since it
/// was read. The transition must be one the state machine allows. Returns
/// `invalid_state` if the row moved underneath (a lost race), which the
/// row lock of [`load`] makes a should-never-happen.
pub fn update(prev: &Payment, next: &mut Payment) -> Result<(), ApiError> {
    write_update(prev, next, None)
}

/// [`update`] for a capture: the same statement also stores the capture's
/// instant (`captured_at = next.updated_at`, the `payment.captured`
/// event's `occurredAt`, whose UTC day settlement files it under) and the
/// id of that event (`capture_event_id`, to be emitted with
/// [`events::emit_with_id`](crate::events::emit_with_id)). Reconciliation
/// recomputes each settlement from these.
pub fn update_captured(prev: &Payment, next: &mut Payment, event_id: &str) -> Result<(), ApiError> {
    write_update(prev, next, Some(event_id))
}

fn write_update(prev: &Payment, next: &mut Payment, capture_event_id: Option<&str>) -> Result<(), ApiError> {
    assert!(prev.status.can_become(next.status), "illegal transition {:?} -> {:?}", prev.status, next.status);
    next.assert_invariants();
    assert!(next.captured_amount >= prev.captured_amount && next.refunded_amount >= prev.refunded_amount);
    next.version = prev.version + 1;
    let mut params: Vec<sql::Value> = vec![
        next.status.as_str().into(),
        next.captured_amount.into(),
        next.refunded_amount.into(),
        next.updated_at.as_str().into(),
        next.version.into(),
    ];
    let statement = match capture_event_id {
        Some(event_id) => {
            params.extend([next.updated_at.as_str().into(), event_id.into()]);
            "UPDATE payments SET status = ?, captured_amount = ?, refunded_amount = ?, updated_at = ?, \
             version = ?, captured_at = ?, capture_event_id = ? WHERE id = ? AND merchant_id = ? AND version = ?"
        }
        None => {
            "UPDATE payments SET status = ?, captured_amount = ?, refunded_amount = ?, updated_at = ?, \
             version = ? WHERE id = ? AND merchant_id = ? AND version = ?"
        }
    };
    params.extend([prev.id.as_str().into(), prev.merchant_id.into(), prev.version.into()]);
    let changed = sql::execute(statement, &params)?;
    if changed == 1 {
        Ok(())
    } else {
        Err(ApiError::conflict("invalid_state", "the payment changed concurrently; read it again"))
    }
}

/// Adds the insert of a refund row to `writes`. `event_id` is the id of its
/// `payment.refunded` event, whose `occurredAt` is `refund.created_at`:
/// reconciliation recomputes each settlement from the two.
pub fn insert_refund(writes: &mut Batch, payment: &Payment, refund: &Refund, event_id: &str) {
    writes.push(
        "INSERT INTO refunds (id, payment_id, merchant_id, amount, reason, created_at, event_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            refund.id.as_str().into(),
            payment.id.as_str().into(),
            payment.merchant_id.into(),
            refund.amount.into(),
            refund.reason.clone().into(),
            refund.created_at.as_str().into(),
            event_id.into(),
        ],
        1,
    );
}
