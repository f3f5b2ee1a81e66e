//! `payfn migrate`: bring every shard's schema up to date, then exit.
//!
//! Hosts migrate at start by default; production setups that keep schema
//! changes a separate, reviewed step set `migrate = false` on their shards
//! and run this instead.

use clap::Args;

use super::AppArgs;
use crate::capabilities::sql;

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    app: AppArgs,
    /// Create a shard's database first if it does not exist (MariaDB,
    /// PostgreSQL; the user needs the right to create databases).
    #[arg(long)]
    create: bool,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let (config, _) = args.app.runtime_config()?;
    let state_dir = args.app.state_dir();
    for shard in &config.shards {
        eprintln!("migrating shard `{}`", shard.name);
        let applied = sql::migrate(shard, &state_dir, args.create)
            .await
            .map_err(|e| e.context(format!("shard `{}`", shard.name)))?;
        let latest = applied.last().map_or("none".to_string(), i64::to_string);
        eprintln!("  {} migrations applied, latest {latest}", applied.len());
    }
    Ok(())
}
