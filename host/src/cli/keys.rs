//! `payfn keys issue --merchant ID`: prints the merchant's API key alone on
//! stdout, so scripts can capture it.

use anyhow::bail;
use clap::Subcommand;

use super::AppArgs;
use crate::keys::KeyRing;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the API key of a merchant.
    Issue {
        /// The merchant id (a positive integer).
        #[arg(long)]
        merchant: i64,
        #[command(flatten)]
        app: AppArgs,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Issue { merchant, app } => {
            if merchant <= 0 {
                bail!("--merchant must be a positive integer");
            }
            let (config, _) = app.runtime_config()?;
            let ring = KeyRing::load(&config.keys, &app.state_dir())?;
            println!("{}", ring.issue(merchant));
            Ok(())
        }
    }
}
