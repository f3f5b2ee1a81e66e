//! The runtime config: which backends, shards, limits and keys a host uses.
//!
//! A TOML file (`runtime-config.toml` beside `spin.toml`, or
//! `--runtime-config`); every section is optional and an absent file means
//! the embedded defaults: two SQLite shards, in-process kv, a development
//! key secret, the seed's rate limits.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::broker::runtime_config::KafkaConfig;
use crate::engine::EngineConfig;
use crate::keys::KeysConfig;
use crate::kv::runtime_config::KvConfig;
use crate::shards::runtime_config::{default_shards, RoutingConfig, ShardConfig};
use crate::triggers::http::HttpConfig;
use crate::versions::config::ControlConfig;

/// The whole runtime config. Sections it does not know are kept for the
/// capabilities; [`RuntimeConfig::load`] refuses those no capability reads.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub kv: KvConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default = "default_shards")]
    pub shards: Vec<ShardConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub retention: crate::retention::RetentionConfig,
    #[serde(default)]
    pub reconcile: crate::reconcile::ReconcileConfig,
    /// How fast merchant moves copy and delete (`[moves]`).
    #[serde(default)]
    pub moves: crate::moves::pace::MovesConfig,
    /// The sections capabilities read (`[variables]`, `[key_value_store]`),
    /// as written; each capability parses its own at start. Shown redacted:
    /// they may hold secrets.
    #[serde(flatten)]
    pub capability_sections: Sections,
}

/// Capability sections of the runtime config; `Debug` shows only their
/// names, since a variables provider's values may be secrets.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Sections(pub std::collections::BTreeMap<String, toml::Value>);

impl std::fmt::Debug for Sections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        // An empty document is exactly the defaults.
        toml::from_str("").expect("the empty runtime config is valid")
    }
}

impl RuntimeConfig {
    /// Reads `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the runtime config {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("invalid runtime config {}: {e}", path.display()))
    }

    /// Parses runtime-config text, refusing sections no one reads.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        for section in config.capability_sections.0.keys() {
            if crate::capabilities::Capabilities::owner_of_section(section).is_none() {
                anyhow::bail!("unknown section `{section}`");
            }
        }
        Ok(config)
    }
}

/// `text` (humantime's syntax) as a duration within `(min, max)`, or a
/// message naming `[section] key`: how sections with durations validate.
pub fn bounded_duration(
    section: &str,
    key: &str,
    text: &str,
    (min, max): (&str, &str),
) -> Result<std::time::Duration, String> {
    let parse = |t: &str| humantime::parse_duration(t);
    let value = parse(text).map_err(|e| {
        format!(
            "invalid [{section}] {key} = {text:?}: {e} (write a duration such as \"500ms\", \"60s\", \"5m\", \"24h\" or \"7d\")"
        )
    })?;
    let (low, high) = (parse(min).expect("a valid bound"), parse(max).expect("a valid bound"));
    if value < low || value > high {
        return Err(format!("invalid [{section}] {key} = {text:?}: it must be between {min} and {max}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_layout() {
        let config = RuntimeConfig::default();
        let names: Vec<_> = config.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shard-1", "shard-2"]);
        assert_eq!(config.http.rate_limits.capacity_for("refund"), 15_000);
        assert_eq!(config.http.rate_limits.capacity_for("authorize"), 30_000);
    }

    #[test]
    fn the_documented_example_is_the_default() {
        let text = include_str!("../../infra/runtime-config/embedded.toml");
        let example: RuntimeConfig = toml::from_str(text).unwrap();
        assert_eq!(format!("{example:?}"), format!("{:?}", RuntimeConfig::default()));
    }

    #[test]
    fn the_production_examples_parse_and_name_their_backends() {
        for (text, backend) in [
            (include_str!("../../infra/runtime-config/production.toml"), "Mysql"),
            (include_str!("../../infra/runtime-config/production-postgres.toml"), "Postgres"),
            (include_str!("../../infra/runtime-config/distributed.toml"), "Mysql"),
        ] {
            let config: RuntimeConfig = toml::from_str(text).unwrap();
            assert_eq!(config.shards.len(), 2);
            for shard in &config.shards {
                assert!(format!("{:?}", shard.backend).starts_with(backend), "{:?}", shard.backend);
            }
        }
    }

    #[test]
    fn server_shards_need_exactly_one_url() {
        let config: RuntimeConfig =
            toml::from_str("[[shards]]\nname = \"a\"\nbackend = \"postgres\"\nmax_connections = 4").unwrap();
        let crate::shards::runtime_config::BackendConfig::Postgres(server) = &config.shards[0].backend else {
            panic!("a postgres shard");
        };
        let err = server.url("a").unwrap_err().to_string();
        assert!(err.contains("exactly one of `url` and `url_env`"), "{err}");
        assert!(toml::from_str::<RuntimeConfig>(
            "[[shards]]\nname = \"a\"\nbackend = \"mariadb\"\nurl = \"mysql://x\""
        )
        .is_ok());
    }

    #[test]
    fn unknown_shard_keys_are_named() {
        let err =
            toml::from_str::<RuntimeConfig>("[[shards]]\nname = \"a\"\nbackend = \"sqlite\"\npaht = \"x\"")
                .unwrap_err()
                .to_string();
        assert!(err.contains("paht"), "{err}");
    }

    #[test]
    fn kafka_assignment_defaults_to_group_and_names_bad_values() {
        use crate::broker::runtime_config::Assignment;
        let assignment = |extra: &str| {
            let text = format!("[kafka]\nbackend = \"kafka\"\nbrokers = \"b:9092\"\n{extra}");
            toml::from_str::<RuntimeConfig>(&text).map(|c| match c.kafka {
                KafkaConfig::Kafka { assignment, .. } => assignment,
                KafkaConfig::Embedded { .. } => unreachable!("backend = kafka"),
            })
        };
        assert_eq!(assignment("").unwrap(), Assignment::Group);
        assert_eq!(assignment("assignment = \"group\"").unwrap(), Assignment::Group);
        assert_eq!(assignment("assignment = \"all-partitions\"").unwrap(), Assignment::AllPartitions);
        let err = assignment("assignment = \"everything\"").unwrap_err().to_string();
        assert!(err.contains("everything"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<RuntimeConfig>("[engine]\ntimeout = 5").unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
        let err = RuntimeConfig::parse("[engin]\ntimeout_ms = 5").unwrap_err().to_string();
        assert!(err.contains("unknown section `engin`"), "{err}");
    }

    #[test]
    fn capability_sections_are_kept_and_never_shown() {
        let config = RuntimeConfig::parse("[variables]\nvalues = { token = \"hunter2\" }").unwrap();
        assert!(config.capability_sections.0.contains_key("variables"));
        let shown = format!("{config:?}");
        assert!(shown.contains("variables") && !shown.contains("hunter2"), "{shown}");
    }
}
