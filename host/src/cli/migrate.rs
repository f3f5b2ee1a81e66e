//! `payfn migrate`: bring every shard's schema, and the control store's, up
//! to date, then exit.
//!
//! Hosts migrate at start by default; production setups that keep schema
//! changes a separate, reviewed step set `migrate = false` on their shards
//! and run this instead.

use clap::Args;

use super::AppArgs;
use crate::shards;
use crate::versions::store::ControlStore;

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
        let migrated = shards::migrate(shard, &state_dir, args.create)
            .await
            .map_err(|e| e.context(format!("shard `{}`", shard.name)))?;
        let latest = migrated.all.last().map_or("none".to_string(), i64::to_string);
        let all = migrated.all.len();
        match migrated.now.len() {
            0 => eprintln!("  up to date: {all} migrations, latest {latest}"),
            now => eprintln!("  {now} migrations applied now, {all} in all, latest {latest}"),
        }
    }
    eprintln!("migrating the control store");
    if let (true, Some(url)) = (args.create, config.control.server_url()?) {
        create_database(&url).await?;
    }
    let store = ControlStore::open(&config.control, &state_dir).await?;
    eprintln!("  {} is up to date", store.describe());
    Ok(())
}

/// Creates the control store's database on its server if it is missing.
async fn create_database(url: &str) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase;
    if url.starts_with("mysql") || url.starts_with("mariadb") {
        if !sqlx::MySql::database_exists(url).await? {
            sqlx::MySql::create_database(url).await?;
        }
    } else if url.starts_with("postgres") && !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}
