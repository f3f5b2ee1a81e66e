//! The `[control]` section of the runtime config: where deployed versions
//! live and how quickly a host picks up a deploy made through another.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where the control store is. Every host of one deployment must name the
/// same one: it is how a deploy reaches all of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The SQLite file when no server is named; relative to the state
    /// directory. Hosts sharing a state directory share it.
    pub path: PathBuf,
    /// `mysql://…/payfn_control` or `postgres://…/payfn_control`: a database
    /// of its own, apart from the shards.
    pub url: Option<String>,
    /// The name of an environment variable holding `url` instead.
    pub url_env: Option<String>,
    /// How often each host checks for a change made through another host.
    /// A deploy reaches every host within about this long.
    pub sync_interval_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("control.db"), url: None, url_env: None, sync_interval_ms: 1_000 }
    }
}

impl ControlConfig {
    /// The server URL, if the store is on a server rather than a file.
    pub fn server_url(&self) -> anyhow::Result<Option<String>> {
        crate::secrets::url_or_env("[control]", self.url.as_ref(), self.url_env.as_ref())
    }

    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.sync_interval_ms.max(50))
    }
}
