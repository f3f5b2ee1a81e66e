//! The command line: `payfn up`, `payfn build`, `payfn migrate`, `payfn keys issue`.

mod build;
mod keys;
mod migrate;
mod up;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::runtime_config::RuntimeConfig;

/// Runs payment steps as isolated WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "payfn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the application described by spin.toml.
    Up(up::UpArgs),
    /// Run every component's build command.
    Build(AppArgs),
    /// Apply the schema migrations to every shard, then exit.
    Migrate(migrate::MigrateArgs),
    /// Merchant API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
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
    }
}
