//! `jobhost status`: job counts by status, the ready backlog, and workers by status.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::config::Config;
use crate::store::Store;

pub fn run(config: &Config, args: StatusArgs) -> Result<ExitCode> {
    let store = Store::open(&config.database)?;
    let status = store.status(args.pool.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = &status.jobs;
    let workers = &status.workers;
    let scope = args.pool.as_deref().map_or_else(|| "all pools".to_owned(), |p| format!("pool {p}"));
    println!("jobs ({scope})");
    println!("  pending   {:>10}   (ready now: {})", jobs.pending, status.ready);
    println!("  claimed   {:>10}", jobs.claimed);
    println!("  completed {:>10}", jobs.completed);
    println!("  poisoned  {:>10}", jobs.poisoned);
    println!("  cancelled {:>10}", jobs.cancelled);
    if let Some(age) = status.oldest_ready_age_ms {
        println!("  oldest ready job has waited {age} ms");
    }
    println!("workers");
    println!("  starting  {:>10}", workers.starting);
    println!("  active    {:>10}", workers.active);
    println!("  terminated{:>10}", workers.terminated);
    println!("  lost      {:>10}", workers.lost);
    Ok(ExitCode::SUCCESS)
}
