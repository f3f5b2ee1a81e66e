//! What librdkafka reports outside any call: a refused SASL handshake, a
//! certificate that does not verify, every broker down. The call that fails
//! next only says "broker transport failure", so the reports are kept and
//! the cause is added to that call's error (the start-up's metadata request,
//! the admin status's Kafka line). "All brokers down" follows every other
//! cause, so it is given only when nothing else was reported.
//!
//! Each kind of report (librdkafka's error code) is logged at most every
//! [`REPEAT_EVERY`]: librdkafka repeats a refused handshake every 50–100 ms.
//! librdkafka's reports never hold a password (it names settings, never
//! prints their values), so they are logged as they come.
//!
//! librdkafka also writes each broker failure as a log line of facility
//! `FAIL`, word for word the report it hands to the error callback (its
//! `rd_kafka_broker_set_error` does both). Those lines go to debug level
//! (target `librdkafka`), so a failure is logged once, as a report; its
//! other log lines keep their level.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

/// How often the same kind of report is logged again while it repeats.
const REPEAT_EVERY: Duration = Duration::from_secs(10);
/// The kind that only says the others' consequence.
const ALL_BROKERS_DOWN: &str = "AllBrokersDown";
/// librdkafka's log facility for a broker failure, which it also reports.
const FAILURE_FACILITY: &str = "FAIL";

/// A client context that logs librdkafka's reports and keeps the last of
/// each kind.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<BTreeMap<String, Seen>>>);

struct Seen {
    report: String,
    at: Instant,
    logged_at: Instant,
}

impl Reports {
    /// The likeliest cause of a failure now: the latest report other than
    /// "all brokers down", else that one; none if librdkafka reported nothing.
    pub fn cause(&self) -> Option<String> {
        let seen = self.lock();
        let latest = |all_down: bool| {
            seen.iter()
                .filter(|(kind, _)| (kind.as_str() == ALL_BROKERS_DOWN) == all_down)
                .max_by_key(|(_, s)| s.at)
                .map(|(_, s)| s.report.clone())
        };
        latest(false).or_else(|| latest(true))
    }

    /// `error` with the cause added, when there is one: what a failed call
    /// tells an operator.
    pub fn explain(&self, error: impl std::fmt::Display) -> String {
        match self.cause() {
            Some(cause) => format!("{error} (the broker's last report: {cause})"),
            None => error.to_string(),
        }
    }

    /// Keeps `report` of `kind`; true if it is to be logged (the first of
    /// its kind, or none of its kind logged for [`REPEAT_EVERY`]).
    fn keep(&self, kind: &str, report: String) -> bool {
        let now = Instant::now();
        let mut seen = self.lock();
        match seen.get_mut(kind) {
            Some(s) => {
                let log = now.duration_since(s.logged_at) >= REPEAT_EVERY;
                *s = Seen { report, at: now, logged_at: if log { now } else { s.logged_at } };
                log
            }
            None => {
                seen.insert(kind.to_string(), Seen { report, at: now, logged_at: now });
                true
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => ALL_BROKERS_DOWN.to_string(),
            Some(code) => format!("{code:?}"),
            None => "other".to_string(),
        };
        let report = format!("{error}: {reason}");
        if self.keep(&kind, report.clone()) {
            tracing::warn!(target: "payfn::kafka", "kafka: {report}");
        }
    }

    /// librdkafka's log lines, at their level, except broker failures: those
    /// are reported to [`Self::error`] too, which logs them throttled.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        let level = if facility == FAILURE_FACILITY { RDKafkaLogLevel::Debug } else { level };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{facility} {line}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{facility} {line}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{facility} {line}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{facility} {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_each_kind_logged_once_while_it_repeats() {
        let reports = Reports::default();
        assert_eq!(reports.explain("transport failure"), "transport failure");
        assert!(reports.keep(ALL_BROKERS_DOWN, "1/1 brokers are down".into()));
        assert_eq!(reports.cause().as_deref(), Some("1/1 brokers are down"), "the only report");
        assert!(reports.keep("Authentication", "SASL authentication error (after 40ms)".into()));
        assert!(!reports.keep(ALL_BROKERS_DOWN, "1/1 brokers are down".into()), "logged again at once");
        assert!(!reports.keep("Authentication", "SASL authentication error (after 85ms)".into()));
        assert_eq!(
            reports.explain("transport failure"),
            "transport failure (the broker's last report: SASL authentication error (after 85ms))",
            "the cause, not its consequence, and the latest of its kind"
        );
    }
}
