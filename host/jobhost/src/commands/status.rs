//! `jobhost status`: job counts by status, the ready backlog, and workers by status.

use std::process::ExitCode;

use anyhow::Result;

use jobhost_core::config::Config;
use jobhost_store::{Access, Store, WorkerStatus};

use crate::cli::StatusArgs;
use crate::commands::pools::pause_note;

pub async fn run(config: &Config, args: StatusArgs) -> Result<ExitCode> {
    let store = Store::open(&config.database, Access::Existing).await?;
    let status = store.status(args.pool.as_deref()).await?;
    if args.json {
        crate::outln!("{}", serde_json::to_string(&status)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = &status.jobs;
    let workers = &status.workers;
    let scope = args.pool.as_deref().map_or_else(|| "all pools".to_owned(), |p| format!("pool {p}"));
    crate::outln!("jobs ({scope})")?;
    crate::outln!("  pending   {:>10}   (ready now: {})", jobs.pending, status.ready)?;
    crate::outln!("  claimed   {:>10}", jobs.claimed)?;
    crate::outln!("  completed {:>10}", jobs.completed)?;
    crate::outln!("  poisoned  {:>10}", jobs.poisoned)?;
    crate::outln!("  cancelled {:>10}", jobs.cancelled)?;
    if let Some(age) = status.oldest_ready_age_ms {
        crate::outln!("  oldest ready job has waited {age} ms")?;
    }
    for paused in &status.paused_pools {
        crate::outln!(
            "pool {} is paused {}: its jobs are not claimed until `jobhost pools resume`",
            paused.pool,
            pause_note(Some(paused.paused_at), paused.reason.as_deref())
        )?;
    }
    crate::outln!("workers")?;
    for (worker_status, count) in workers.by_status() {
        crate::outln!("  {:<10}{count:>10}", worker_status.as_str())?;
    }
    if !status.hosts.is_empty() {
        let [starting, active, terminated, lost] = WorkerStatus::ALL;
        crate::outln!("workers by host ({starting}, {active}, {terminated}, {lost})")?;
        for (host, workers) in &status.hosts {
            let host = if host.is_empty() { "(unknown)" } else { host };
            crate::outln!(
                "  {host:<24} {:>6} {:>6} {:>10} {:>6}",
                workers.starting,
                workers.active,
                workers.terminated,
                workers.lost
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
