//! The command line: `payfn up`, `build`, `migrate`, `keys issue`,
//! `reconcile`, and the admin API's `deploy`, `activate`, `rollback`,
//! `versions`, `events`, `shards`.

mod admin_client;
mod bench;
mod build;
mod deploy;
mod events;
mod keys;
mod migrate;
mod reconcile;
mod shards;
mod up;

pub use build::build_one;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;
use crate::runtime_config::RuntimeConfig;

/// Runs payment steps as isolated WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "payfn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text`, or `json` (one object
    /// per line, for log collectors).
    #[arg(long, global = true, value_enum, default_value_t, env = "PAYFN_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the application described by spin.toml.
    Up(up::UpArgs),
    /// Run every component's build command.
    Build(AppArgs),
    /// Apply the schema migrations to every shard, then exit.
    Migrate(migrate::MigrateArgs),
    /// Check settlement against the captures and refunds it sums (and
    /// re-publish lost events with --repair); exit 1 when drift remains.
    Reconcile(reconcile::ReconcileArgs),
    /// Merchant API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Upload a component version and activate it (or canary it) on every host.
    Deploy(deploy::DeployArgs),
    /// Make an uploaded version serve every invocation of a component.
    Activate(deploy::ActivateArgs),
    /// Return a component to its previous version, or end its canary.
    Rollback(deploy::RollbackArgs),
    /// List components, their versions and figures, and the hosts.
    Versions(deploy::VersionsArgs),
    /// Events the Kafka triggers gave up on: list them, re-drive them.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Load a running host with the seed's scenarios (open model).
    Bench(bench::BenchArgs),
    /// The shard set: status, merchant moves, rebalancing.
    #[command(subcommand)]
    Shards(shards::ShardsCommand),
}

/// Where the application and its state live.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// The application manifest.
    #[arg(long, short = 'f', default_value = "spin.toml", env = "PAYFN_MANIFEST")]
    pub manifest: PathBuf,
    /// The runtime config; default: runtime-config.toml beside the manifest
    /// if present, else the embedded defaults.
    #[arg(long, env = "PAYFN_RUNTIME_CONFIG")]
    pub runtime_config: Option<PathBuf>,
    /// Local state (shard files, compile cache, dev key secret); default:
    /// .payfn beside the manifest.
    #[arg(long, env = "PAYFN_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl AppArgs {
    fn app_dir(&self) -> &Path {
        match self.manifest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| self.app_dir().join(".payfn"))
    }

    /// The runtime config and the file it came from, if any.
    pub fn runtime_config(&self) -> anyhow::Result<(RuntimeConfig, Option<PathBuf>)> {
        let path = match &self.runtime_config {
            Some(path) => Some(path.clone()),
            None => Some(self.app_dir().join("runtime-config.toml")).filter(|p| p.exists()),
        };
        Ok((RuntimeConfig::load(path.as_deref())?, path))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Build(args) => build::run(&args),
        Command::Migrate(args) => migrate::run(args).await,
        Command::Keys(command) => keys::run(command),
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Activate(args) => deploy::activate(args).await,
        Command::Rollback(args) => deploy::rollback(args).await,
        Command::Versions(args) => deploy::versions(args).await,
        Command::Events(command) => events::run(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Shards(command) => shards::run(command).await,
    }
}
