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
        /// `ssl.ca.location`, `message.timeout.ms`...), applied to every
        /// client. Values of secret settings (`sasl.password`...) are never
        /// shown; put them in `settings_env` instead of the file.
        #[serde(default)]
        settings: BTreeMap<String, String>,
        /// librdkafka settings whose values come from the environment:
        /// setting name -> variable name (`"sasl.password" =
        /// "KAFKA_PASSWORD"`). A variable that is not set refuses the start.
        #[serde(default)]
        settings_env: BTreeMap<String, String>,
        /// Partitions of the topics payfn creates at start.
        #[serde(default = "default_partitions")]
        partitions: u32,
        /// How the Kafka triggers' consumers get their partitions.
        #[serde(default)]
        assignment: Assignment,
        /// Replicas of each partition of the topics payfn creates (default
        /// 3). On a cluster of fewer brokers, lowered to the broker count
        /// with a warning. Checked by [`Replication::new`].
        #[serde(default = "default_replication_factor")]
        replication_factor: u16,
        /// `min.insync.replicas` of the topics payfn creates: the replicas
        /// that must hold a write before an `acks=all` producer is answered.
        /// Default: the replication factor used minus one, at least 1.
        min_insync_replicas: Option<u16>,
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

fn default_replication_factor() -> u16 {
    3
}

/// The replication of the topics payfn creates on Kafka (`[kafka]
/// replication_factor` and `min_insync_replicas`), checked at start.
///
/// The cluster may have fewer brokers than the configured factor (a
/// single-broker development broker such as tansu): [`Replication::on_cluster`]
/// then lowers the factor to the broker count, and `min.insync.replicas`
/// with it. Topics that already exist are never changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    factor: u16,
    /// `None`: derived from the factor used (see [`Replication::on_cluster`]).
    min_insync: Option<u16>,
}

/// What a topic created on a given cluster gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicReplication {
    /// The replication factor used.
    pub factor: u16,
    /// The `min.insync.replicas` used.
    pub min_insync: u16,
    /// Whether the configured values had to be lowered to fit the cluster.
    pub lowered: bool,
}

impl Replication {
    /// Refuses what no cluster could honour: a factor of 0, a
    /// `min_insync_replicas` of 0 or above the factor (with `acks=all` no
    /// write would ever be acknowledged).
    pub fn new(factor: u16, min_insync: Option<u16>) -> anyhow::Result<Self> {
        anyhow::ensure!(factor >= 1, "invalid [kafka] replication_factor = 0: it must be at least 1");
        if let Some(min) = min_insync {
            anyhow::ensure!(min >= 1, "invalid [kafka] min_insync_replicas = 0: it must be at least 1");
            anyhow::ensure!(
                min <= factor,
                "invalid [kafka] min_insync_replicas = {min}: it must not exceed replication_factor = {factor} \
                 (with acks=all no write could ever be acknowledged)"
            );
        }
        Ok(Self { factor, min_insync })
    }

    /// The configured replication factor.
    pub fn factor(&self) -> u16 {
        self.factor
    }

    /// The configured `min.insync.replicas`, if set.
    pub fn min_insync(&self) -> Option<u16> {
        self.min_insync
    }

    /// What a topic created on a cluster of `brokers` brokers gets: the
    /// factor, at most `brokers`; `min.insync.replicas` as configured but at
    /// most that factor, or by default that factor minus one, at least 1 (so
    /// one replica may be down without stopping writes: 3 -> 2, 2 -> 1, 1 -> 1).
    pub fn on_cluster(&self, brokers: usize) -> TopicReplication {
        let brokers = u16::try_from(brokers.max(1)).unwrap_or(u16::MAX);
        let factor = self.factor.min(brokers);
        let min_insync = match self.min_insync {
            Some(min) => min.min(factor),
            None => factor.saturating_sub(1).max(1),
        };
        TopicReplication { factor, min_insync, lowered: factor < self.factor }
    }
}

/// `settings` with every `settings_env` entry filled in from the
/// environment; the error names the setting and the variable, never a value.
pub fn resolve_settings(
    settings: &BTreeMap<String, String>,
    settings_env: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut resolved = settings.clone();
    for (setting, var) in settings_env {
        anyhow::ensure!(
            !settings.contains_key(setting),
            "runtime config: [kafka] `{setting}` is in both settings and settings_env; keep one"
        );
        let value = std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "runtime config: [kafka] settings_env: `{setting}` names `{var}`, which is not set"
            )
        })?;
        resolved.insert(setting.clone(), value);
    }
    Ok(resolved)
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::Embedded { path: None, partitions: default_partitions() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[kafka]` section of `extra` on the kafka backend, parsed and checked.
    fn replication(extra: &str) -> anyhow::Result<Replication> {
        let text = format!("backend = \"kafka\"\nbrokers = \"b:9092\"\n{extra}");
        match toml::from_str::<KafkaConfig>(&text)? {
            KafkaConfig::Kafka { replication_factor, min_insync_replicas, .. } => {
                Replication::new(replication_factor, min_insync_replicas)
            }
            KafkaConfig::Embedded { .. } => unreachable!("backend = kafka"),
        }
    }

    fn applied(factor: u16, min_insync: u16, lowered: bool) -> TopicReplication {
        TopicReplication { factor, min_insync, lowered }
    }

    #[test]
    fn replication_defaults_to_three_with_two_in_sync() {
        let r = replication("").unwrap();
        assert_eq!((r.factor(), r.min_insync()), (3, None));
        assert_eq!(r.on_cluster(3), applied(3, 2, false));
        assert_eq!(r.on_cluster(5), applied(3, 2, false));
    }

    #[test]
    fn replication_explicit_values_are_kept() {
        let r = replication("replication_factor = 5\nmin_insync_replicas = 3").unwrap();
        assert_eq!((r.factor(), r.min_insync()), (5, Some(3)));
        assert_eq!(r.on_cluster(6), applied(5, 3, false));
        // min.insync.replicas may equal the factor (no replica may be down).
        assert_eq!(
            replication("replication_factor = 2\nmin_insync_replicas = 2").unwrap().on_cluster(2),
            applied(2, 2, false)
        );
        // The default min.insync.replicas follows an explicit factor.
        assert_eq!(replication("replication_factor = 1").unwrap().on_cluster(3), applied(1, 1, false));
        assert_eq!(replication("replication_factor = 4").unwrap().on_cluster(4), applied(4, 3, false));
    }

    #[test]
    fn replication_is_lowered_to_the_broker_count() {
        let default = replication("").unwrap();
        // A single-broker development cluster (tansu).
        assert_eq!(default.on_cluster(1), applied(1, 1, true));
        // The default min.insync.replicas follows the factor used.
        assert_eq!(default.on_cluster(2), applied(2, 1, true));
        // An explicit one is capped at the factor used.
        let explicit = replication("replication_factor = 3\nmin_insync_replicas = 3").unwrap();
        assert_eq!(explicit.on_cluster(2), applied(2, 2, true));
        assert_eq!(explicit.on_cluster(1), applied(1, 1, true));
        // No broker listed is counted as one.
        assert_eq!(default.on_cluster(0), applied(1, 1, true));
    }

    #[test]
    fn invalid_replication_is_refused_with_a_message() {
        let err = replication("replication_factor = 0").unwrap_err().to_string();
        assert!(err.contains("replication_factor = 0") && err.contains("at least 1"), "{err}");
        let err = replication("min_insync_replicas = 4").unwrap_err().to_string();
        assert!(err.contains("min_insync_replicas = 4") && err.contains("replication_factor = 3"), "{err}");
        let err = replication("replication_factor = 2\nmin_insync_replicas = 3").unwrap_err().to_string();
        assert!(err.contains("min_insync_replicas = 3") && err.contains("replication_factor = 2"), "{err}");
        let err = replication("min_insync_replicas = 0").unwrap_err().to_string();
        assert!(err.contains("min_insync_replicas = 0"), "{err}");
        let err = replication("replication_factor = -1").unwrap_err().to_string();
        assert!(err.contains("replication_factor") || err.contains("-1"), "{err}");
    }

    #[test]
    fn settings_env_fills_settings_from_the_environment() {
        let settings = BTreeMap::from([("security.protocol".to_string(), "SASL_SSL".to_string())]);
        let env = |var: &str| BTreeMap::from([("sasl.password".to_string(), var.to_string())]);
        std::env::set_var("PAYFN_TEST_KAFKA_PASSWORD", "hunter2");
        let resolved = resolve_settings(&settings, &env("PAYFN_TEST_KAFKA_PASSWORD")).unwrap();
        assert_eq!(resolved.get("sasl.password").map(String::as_str), Some("hunter2"));
        assert_eq!(resolved.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        let err = resolve_settings(&settings, &env("PAYFN_TEST_KAFKA_UNSET")).unwrap_err().to_string();
        assert!(err.contains("sasl.password") && err.contains("PAYFN_TEST_KAFKA_UNSET"), "{err}");
        let both = BTreeMap::from([("sasl.password".to_string(), "x".to_string())]);
        let err = resolve_settings(&both, &env("PAYFN_TEST_KAFKA_PASSWORD")).unwrap_err().to_string();
        assert!(err.contains("both") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn replication_keys_belong_to_the_kafka_backend() {
        let err = toml::from_str::<KafkaConfig>("backend = \"embedded\"\nreplication_factor = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("replication_factor"), "{err}");
    }
}
