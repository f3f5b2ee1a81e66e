//! `kafka`: produce to the configured broker, only to granted topics.
//!
//! Backends: the embedded event log (durable SQLite file under the state
//! directory; the default) and, in production, Kafka through rdkafka. The
//! relay and the Kafka trigger use the same [`Broker`] handle whatever the
//! backend.

mod embedded;
mod host;
pub mod runtime_config;

use std::path::Path;
use std::sync::Arc;

use super::Capability;
pub use embedded::{EventLog, Record};
use runtime_config::KafkaConfig;

/// The registry entry.
pub const CAPABILITY: Capability = Capability {
    name: "kafka",
    interface: "payfn:host/kafka",
    link: |linker| {
        crate::bindings::kafka::add_to_linker::<_, super::Field<KafkaState>>(linker, |s| &mut s.kafka)
    },
};

/// The shared broker handle, cheap to clone.
#[derive(Clone)]
pub struct Broker(Arc<Backend>);

enum Backend {
    Embedded(EventLog),
}

impl Broker {
    /// Opens the backend the runtime config names.
    pub async fn from_config(config: &KafkaConfig, state_dir: &Path) -> anyhow::Result<Self> {
        match config {
            KafkaConfig::Embedded { path, partitions } => {
                let path = match path {
                    Some(p) if p.is_absolute() => p.clone(),
                    Some(p) => state_dir.join(p),
                    None => state_dir.join("events.db"),
                };
                Ok(Broker(Arc::new(Backend::Embedded(EventLog::open(&path, *partitions).await?))))
            }
        }
    }

    pub fn describe(&self) -> String {
        match &*self.0 {
            Backend::Embedded(log) => format!("embedded event log {}", log.path().display()),
        }
    }

    /// Appends messages; one result per message, in order.
    pub async fn produce(
        &self,
        messages: Vec<crate::bindings::kafka::Message>,
    ) -> Vec<Result<crate::bindings::kafka::Delivery, crate::bindings::kafka::Error>> {
        match &*self.0 {
            Backend::Embedded(log) => log.produce(messages).await,
        }
    }

    /// Partitions of `topic` a consumer group reads.
    pub fn partitions(&self, _topic: &str) -> u32 {
        match &*self.0 {
            Backend::Embedded(log) => log.partitions(),
        }
    }

    /// Up to `max` records of one partition from `group`'s committed position.
    pub async fn fetch(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        max: u32,
    ) -> Result<Vec<Record>, String> {
        match &*self.0 {
            Backend::Embedded(log) => {
                log.fetch(group, topic, partition, max).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Commits `group`'s position in one partition: the next offset to read.
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> Result<(), String> {
        match &*self.0 {
            Backend::Embedded(log) => {
                log.commit(group, topic, partition, next_offset).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Whether the broker answers (readiness).
    pub async fn ping(&self) -> bool {
        match &*self.0 {
            Backend::Embedded(log) => log.ping().await,
        }
    }
}

/// Per-invocation state: the broker and the topics this component may write.
pub struct KafkaState {
    pub broker: Option<Broker>,
    pub topics: Vec<String>,
}
