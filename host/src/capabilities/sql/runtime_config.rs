//! The `[[shards]]` and `[routing]` sections of the runtime config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// One shard. (Unknown keys are refused by the flattened backend table;
/// serde cannot deny them on a struct with a flattened field.)
#[derive(Debug, Clone, Deserialize)]
pub struct ShardConfig {
    /// The shard's name, as the routing table and the logs use it.
    pub name: String,
    /// The backend; `sqlite` is the embedded one.
    #[serde(flatten)]
    pub backend: BackendConfig,
}

/// How a shard is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// A SQLite database file; relative paths are under the state directory.
    Sqlite {
        /// Defaults to `shards/<name>.db` in the state directory.
        path: Option<PathBuf>,
        /// Read connections (writes go through one connection: SQLite has
        /// one writer, and queueing in the host is fairer than busy-waiting).
        #[serde(default = "default_readers")]
        readers: u32,
    },
}

fn default_readers() -> u32 {
    4
}

/// merchant id -> shard.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Explicit merchant -> shard pins, overriding the default rule.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
}

/// The embedded default: the seed's two shards, even merchant ids on the
/// first and odd on the second.
pub fn default_shards() -> Vec<ShardConfig> {
    ["shard-1", "shard-2"]
        .into_iter()
        .map(|name| ShardConfig {
            name: name.to_string(),
            backend: BackendConfig::Sqlite { path: None, readers: default_readers() },
        })
        .collect()
}
