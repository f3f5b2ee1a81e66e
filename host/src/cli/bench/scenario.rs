//! The seed's load scenarios: what one iteration sends.

use clap::ValueEnum;

/// One iteration's requests, in order; each needs the previous one's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// POST /payments/authorize.
    Authorize,
    /// authorize, then capture it in full.
    AuthorizeCapture,
    /// authorize, capture, then refund part of it (the seed's full flow).
    Full,
    /// GET /noop: the peer comparison's no-op component, on payfn or on
    /// `wasmtime serve` alike (docs/BENCHMARKS.md).
    Noop,
}

/// One request of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Authorize,
    Capture,
    Refund,
    Noop,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Authorize => "authorize",
            Step::Capture => "capture",
            Step::Refund => "refund",
            Step::Noop => "noop",
        }
    }

    /// The path, given the payment id from the authorize step.
    pub fn path(self, payment: &str) -> String {
        match self {
            Step::Authorize => "/payments/authorize".to_string(),
            Step::Capture => format!("/payments/{payment}/capture"),
            Step::Refund => format!("/payments/{payment}/refund"),
            Step::Noop => "/noop".to_string(),
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Step::Authorize => r#"{"amount":15000,"currency":"KRW","orderId":"bench"}"#,
            Step::Capture => "{}",
            Step::Refund => r#"{"amount":5000}"#,
            Step::Noop => "",
        }
    }

    /// The status a correct answer has.
    pub fn expected(self) -> u16 {
        match self {
            Step::Authorize => 201,
            Step::Capture | Step::Refund | Step::Noop => 200,
        }
    }
}

impl Scenario {
    pub fn steps(self) -> &'static [Step] {
        match self {
            Scenario::Authorize => &[Step::Authorize],
            Scenario::AuthorizeCapture => &[Step::Authorize, Step::Capture],
            Scenario::Full => &[Step::Authorize, Step::Capture, Step::Refund],
            Scenario::Noop => &[Step::Noop],
        }
    }
}
