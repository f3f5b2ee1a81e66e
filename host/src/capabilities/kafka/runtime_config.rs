//! The `[kafka]` section of the runtime config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Which broker backs `kafka`, the outbox relay and the Kafka triggers.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KafkaConfig {
    /// The embedded durable event log; the default.
    Embedded {
        /// Defaults to `events.db` in the state directory.
        path: Option<PathBuf>,
        /// Partitions per topic; a key always maps to the same one.
        #[serde(default = "default_partitions")]
        partitions: u32,
    },
    /// A Kafka cluster, through librdkafka.
    Kafka {
        /// `host:port,host:port`
        brokers: String,
        /// Extra librdkafka settings (`security.protocol`, `sasl.*`,
        /// `message.timeout.ms`...), applied to every client.
        #[serde(default)]
        settings: BTreeMap<String, String>,
        /// Partitions of the topics payfn creates at start.
        #[serde(default = "default_partitions")]
        partitions: u32,
    },
}

fn default_partitions() -> u32 {
    4
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::Embedded { path: None, partitions: default_partitions() }
    }
}
