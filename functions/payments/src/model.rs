//! The payment as stored and as answered.

use payfn_sdk::http::Response;
use payfn_sdk::ApiError;
use serde_json::{json, Value};

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Authorized,
    /// Final: the authorization was refused.
    Declined,
    Captured,
    PartiallyRefunded,
    /// Final: everything captured was refunded.
    Refunded,
    /// Final: the authorization was cancelled before capture.
    Voided,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Authorized => "AUTHORIZED",
            Status::Declined => "DECLINED",
            Status::Captured => "CAPTURED",
            Status::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Status::Refunded => "REFUNDED",
            Status::Voided => "VOIDED",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Ok(match s {
            "AUTHORIZED" => Status::Authorized,
            "DECLINED" => Status::Declined,
            "CAPTURED" => Status::Captured,
            "PARTIALLY_REFUNDED" => Status::PartiallyRefunded,
            "REFUNDED" => Status::Refunded,
            "VOIDED" => Status::Voided,
            other => return Err(ApiError::internal(format!("unknown stored status {other}"))),
        })
    }

    /// The `invalid_state` error for attempting `action` in this status.
    pub fn refuse(self, action: &str) -> ApiError {
        ApiError::conflict("invalid_state", format!("cannot {action} a payment in status {}", self.as_str()))
    }

    /// The one place the state machine is spelled out.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Authorized, Captured)
                | (Authorized, Voided)
                | (Captured, PartiallyRefunded)
                | (Captured, Refunded)
                | (PartiallyRefunded, PartiallyRefunded)
                | (PartiallyRefunded, Refunded)
        )
    }
}

/// A refund of part or all of the captured amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub reason: Option<String>,
    pub created_at: String,
}

/// A payment row plus its refunds.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: String,
    pub merchant_id: i64,
    pub status: Status,
    pub amount: i64,
    pub captured_amount: i64,
    pub refunded_amount: i64,
    pub currency: String,
    pub order_id: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    /// Bumped by every change; updates are conditional on it.
    pub version: i64,
    pub refunds: Vec<Refund>,
}

impl Payment {
    /// What is still refundable.
    pub fn refundable(&self) -> i64 {
        self.captured_amount - self.refunded_amount
    }

    /// Panics (trapping the component, rolling the transaction back) if the
    /// amounts break their bounds: a bug must never commit.
    pub fn assert_invariants(&self) {
        assert!(self.amount > 0, "amount must be positive");
        assert!(
            0 <= self.refunded_amount
                && self.refunded_amount <= self.captured_amount
                && self.captured_amount <= self.amount,
            "amounts out of bounds: {self:?}"
        );
    }

    /// This payment as a `status` response.
    pub fn response(&self, status: u16) -> Response {
        Response::json(status, &self.to_json())
    }

    /// The one response shape of API.md.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status.as_str(),
            "amount": self.amount,
            "capturedAmount": self.captured_amount,
            "refundedAmount": self.refunded_amount,
            "currency": self.currency,
            "orderId": self.order_id,
            "metadata": self.metadata,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "refunds": self.refunds.iter().map(|r| json!({
                "id": r.id,
                "amount": r.amount,
                "reason": r.reason,
                "createdAt": r.created_at,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;

    #[test]
    fn state_machine_allows_only_the_documented_moves() {
        let all = [Authorized, Declined, Captured, PartiallyRefunded, Refunded, Voided];
        let allowed: Vec<_> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Authorized, Captured),
                (Authorized, Voided),
                (Captured, PartiallyRefunded),
                (Captured, Refunded),
                (PartiallyRefunded, PartiallyRefunded),
                (PartiallyRefunded, Refunded),
            ]
        );
    }
}
