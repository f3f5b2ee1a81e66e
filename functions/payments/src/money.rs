//! Amount and currency rules.

use iso_currency::Currency;
use payfn_sdk::ApiError;
use serde_json::Value;

/// The largest amount accepted, in minor units: 10^15 keeps every sum of
/// amounts far from i64 overflow and beyond any real single payment.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// A positive integer amount in minor units, at most [`MAX_AMOUNT`].
/// Rejects floats, strings, zero, negatives and overflow with `invalid_amount`.
pub fn parse_amount(value: &Value, field: &str) -> Result<i64, ApiError> {
    let invalid = |why: &str| ApiError::invalid_field("invalid_amount", field, format!("`{field}` {why}"));
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(v) if v <= 0 => Err(invalid("must be greater than zero")),
            Some(v) if v > MAX_AMOUNT => Err(invalid("exceeds the maximum amount")),
            Some(v) => Ok(v),
            None if n.is_u64() => Err(invalid("exceeds the maximum amount")),
            None if n.as_f64().is_some_and(|f| f < 0.0) => Err(invalid("must be greater than zero")),
            None => Err(invalid("must be an integer in the currency's minor unit")),
        },
        _ => Err(invalid("must be an integer in the currency's minor unit")),
    }
}

/// An active ISO 4217 alphabetic code, upper case.
pub fn parse_currency(value: &Value) -> Result<String, ApiError> {
    let invalid = |msg: String| ApiError::invalid_field("invalid_currency", "currency", msg);
    let code = value.as_str().ok_or_else(|| invalid("`currency` must be a string".to_string()))?;
    match Currency::from_code(code) {
        Some(c) if c.code() == code => Ok(code.to_string()),
        _ => Err(invalid(format!("`{code}` is not an ISO 4217 currency code in upper case"))),
    }
}

/// The single-payment limit above which the built-in risk rule declines an
/// authorization: the equivalent of roughly USD 1,000,000 per currency group.
/// A real acquirer decision replaces this rule; it exists so DECLINED is a
/// reachable, testable outcome.
pub fn decline_threshold(currency: &str) -> i64 {
    match Currency::from_code(currency).and_then(|c| c.exponent()) {
        Some(0) => 1_000_000_000,
        Some(3) => 1_000_000_000,
        _ => 100_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts() {
        assert_eq!(parse_amount(&json!(1), "amount"), Ok(1));
        assert_eq!(parse_amount(&json!(MAX_AMOUNT), "amount"), Ok(MAX_AMOUNT));
        for bad in [
            json!(0),
            json!(-5),
            json!(1.5),
            json!("100"),
            json!(null),
            json!(u64::MAX),
            json!(MAX_AMOUNT + 1),
            json!(-1.5),
        ] {
            let e = parse_amount(&bad, "amount").unwrap_err();
            assert_eq!(e.code, "invalid_amount", "{bad}");
        }
    }

    #[test]
    fn currencies() {
        assert_eq!(parse_currency(&json!("KRW")).unwrap(), "KRW");
        assert_eq!(parse_currency(&json!("USD")).unwrap(), "USD");
        for bad in [json!("krw"), json!("XYZ"), json!(""), json!(410), json!("KRWW")] {
            assert_eq!(parse_currency(&bad).unwrap_err().code, "invalid_currency", "{bad}");
        }
    }
}
