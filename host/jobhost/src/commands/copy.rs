//! `jobhost copy --to TARGET`: move a pool — jobs, attempt history, results — to another
//! database, e.g. from the embedded SQLite default to a PostgreSQL server many machines share.

use std::process::ExitCode;

use anyhow::Result;

use jobhost_core::config::{Config, DatabaseConfig};
use jobhost_store::{Access, Store};

use crate::cli::CopyArgs;

pub async fn run(config: &Config, args: CopyArgs) -> Result<ExitCode> {
    let source = Store::open(&config.database, Access::Existing).await?;
    let target_config = DatabaseConfig { path: args.to.clone(), ..config.database.clone() };
    let target = Store::open(&target_config, Access::CreateIfMissing).await?;
    let copied = source.copy_to(&target, args.into_non_empty).await?;
    if args.json {
        crate::outln!("{}", serde_json::json!({"copied": copied, "to": target.location()}))?;
    } else {
        crate::outln!("copied {copied} job(s) from {} to {}", source.location(), target.location())?;
    }
    Ok(ExitCode::SUCCESS)
}
