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
        /// How the Kafka triggers' consumers get their partitions.
        #[serde(default)]
        assignment: Assignment,
    },
}

/// How a Kafka trigger's consumer gets its partitions (`[kafka] assignment`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assignment {
    /// Consumer-group membership (`"group"`, the default): the broker's group
    /// coordinator splits the partitions among the hosts of a group and moves
    /// a dead host's partitions to the others after `session.timeout.ms`.
    /// Strategy `cooperative-sticky` unless `settings` names another.
    #[default]
    Group,
    /// Every host reads every partition (`"all-partitions"`); the group id
    /// only keys the committed offsets. For brokers whose group coordinator
    /// cannot be trusted with failover (tansu 0.6: see docs/ARCHITECTURE.md).
    /// Effects stay exactly-once through `processed_events`, but every host
    /// does all the work.
    AllPartitions,
}

fn default_partitions() -> u32 {
    4
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::Embedded { path: None, partitions: default_partitions() }
    }
}
