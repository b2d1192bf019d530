//! `jobhost pools`: every pool (those holding jobs and those paused) with its counts and
//! pause; `pools pause POOL` and `pools resume POOL`.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use jobhost_core::config::Config;
use jobhost_store::{Access, Millis, PoolSnapshot, Store};

use crate::cli::{PoolsArgs, PoolsCommand};
use crate::output::{for_stdout, format_time};

pub async fn run(config: &Config, args: PoolsArgs) -> Result<ExitCode> {
    let store = Store::open(&config.database, Access::Existing).await?;
    match args.command {
        None => list(&store, args.json).await,
        Some(PoolsCommand::Pause { pool, reason, json }) => {
            store.pause_pool(&pool, reason.as_deref()).await?;
            let paused = store.pool(&pool).await?;
            if json {
                crate::outln!("{}", serde_json::to_string(&paused)?)?;
            } else {
                crate::outln!(
                    "pool {pool} is paused {}: workers claim none of its jobs (those running finish) until \
                     `jobhost pools resume {pool}`",
                    pool_pause(&paused)
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(PoolsCommand::Resume { pool, json }) => {
            let was_paused = store.resume_pool(&pool).await?;
            if json {
                crate::outln!("{}", serde_json::to_string(&store.pool(&pool).await?)?)?;
            } else if was_paused {
                crate::outln!("pool {pool} resumed: workers claim its jobs again")?;
            } else {
                crate::outln!("pool {pool} was not paused: nothing changed")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(store: &Store, json: bool) -> Result<ExitCode> {
    let pools = store.pools().await?;
    if json {
        crate::outln!("{}", json!({ "pools": pools }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if pools.is_empty() {
        crate::outln!("no pools: none holds jobs and none is paused")?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "{:<20}  {:<7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
        "POOL",
        "STATE",
        "PENDING",
        "READY",
        "CLAIMED",
        "COMPLETED",
        "POISONED",
        "CANCELLED"
    )?;
    for pool in &pools {
        let jobs = &pool.jobs;
        crate::outln!(
            "{:<20}  {:<7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
            pool.pool,
            if pool.paused { "paused" } else { "running" },
            jobs.pending,
            pool.ready,
            jobs.claimed,
            jobs.completed,
            jobs.poisoned,
            jobs.cancelled
        )?;
        if pool.paused {
            crate::outln!("  paused {}", pool_pause(pool))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "since TIME (REASON)", as people read a pause; the reason escaped for a terminal.
pub fn pause_note(paused_at: Option<Millis>, reason: Option<&str>) -> String {
    let since = paused_at.map_or_else(|| "-".to_owned(), format_time);
    match reason {
        Some(reason) => format!("since {since} ({})", for_stdout(reason)),
        None => format!("since {since}"),
    }
}

fn pool_pause(pool: &PoolSnapshot) -> String {
    pause_note(pool.paused_at, pool.paused_reason.as_deref())
}
