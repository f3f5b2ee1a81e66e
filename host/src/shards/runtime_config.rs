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
    /// Whether merchants the directory does not know yet may be placed
    /// here (existing merchants stay wherever the directory has them).
    #[serde(default = "default_true")]
    pub accept_new: bool,
    /// This shard's share of new merchants, against the other shards that
    /// accept them (0: none).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The backend; `sqlite` is the embedded one.
    #[serde(flatten)]
    pub backend: BackendConfig,
}

fn default_weight() -> u32 {
    1
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
    /// A MariaDB or MySQL database.
    #[serde(alias = "mariadb")]
    Mysql(ServerConfig),
    /// A PostgreSQL database.
    #[serde(alias = "postgresql")]
    Postgres(ServerConfig),
}

/// A shard on a database server: where it is, and how the host's pool of
/// connections to it behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `mysql://user:pass@host:3306/db` or `postgres://user@host:5432/db`.
    pub url: Option<String>,
    /// The name of an environment variable holding the URL instead (keeps
    /// passwords out of files). Exactly one of `url` / `url_env`.
    pub url_env: Option<String>,
    /// Connections per host. Each invocation holds one for its transaction.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections kept open while idle.
    #[serde(default)]
    pub min_connections: u32,
    /// How long an invocation waits for a connection (including connecting);
    /// past it the request fails with 503 `shard_unavailable`.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// Longest a single statement may run, set on every session.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest a statement waits for a row lock before failing with
    /// `conflict` (MariaDB rounds it up to whole seconds).
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// Idle connections above `min_connections` close after this.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Connections are replaced after this, so server-side failovers and
    /// configuration changes reach every connection.
    #[serde(default = "default_max_lifetime_ms")]
    pub max_lifetime_ms: u64,
    /// Apply the dialect's migrations at start. `false`: run `payfn migrate`
    /// beforehand; the host then refuses to use a database that is behind.
    #[serde(default = "default_true")]
    pub migrate: bool,
}

impl ServerConfig {
    /// The connection URL, from `url` or the variable `url_env` names.
    pub fn url(&self, shard: &str) -> anyhow::Result<String> {
        crate::secrets::url_or_env(&format!("shard `{shard}`:"), self.url.as_ref(), self.url_env.as_ref())?
            .ok_or_else(|| {
                anyhow::anyhow!("runtime config: shard `{shard}` needs exactly one of `url` and `url_env`")
            })
    }
}

fn default_max_connections() -> u32 {
    32
}
fn default_acquire_timeout_ms() -> u64 {
    2_000
}
fn default_statement_timeout_ms() -> u64 {
    5_000
}
fn default_lock_timeout_ms() -> u64 {
    3_000
}
fn default_idle_timeout_ms() -> u64 {
    600_000
}
fn default_max_lifetime_ms() -> u64 {
    1_800_000
}
fn default_true() -> bool {
    true
}

fn default_readers() -> u32 {
    4
}

/// merchant id -> shard pins: recorded in the merchant directory at start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Explicit merchant -> shard pins: a merchant without a directory entry
    /// is placed there; one the directory has elsewhere refuses the start
    /// (a move is `payfn shards move`).
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
            accept_new: true,
            weight: default_weight(),
            backend: BackendConfig::Sqlite { path: None, readers: default_readers() },
        })
        .collect()
}
