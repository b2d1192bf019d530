//! `jobhost reap`: find workers that stopped heartbeating, mark them `lost`, and send the
//! jobs they held (and any job whose lease expired) back through the retry policy as
//! `worker_lost` attempts.
//!
//! Reaping is safe to run at any time and from any number of processes: each pass is one
//! transaction, and a worker that was only slow finds its late complete refused (fenced),
//! never overwriting the job's next attempt.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::cli::ReapArgs;
use crate::config::Config;
use crate::store::{Access, RetryPolicy, Store};

#[derive(Debug, Serialize)]
pub struct ReapReport {
    pub reaped_count: usize,
    pub reaped_workers: Vec<String>,
    pub jobs_released: u64,
    pub jobs_poisoned: u64,
}

pub async fn run(config: &Config, args: ReapArgs) -> Result<ExitCode> {
    let stale_after = config.reaper.stale_after.0;
    let store = Store::open(&config.database, Access::Existing).await?;
    let report = reap_once(&store, config, args.pool.as_deref(), stale_after).await?;
    if args.json {
        crate::outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        crate::outln!(
            "reaped {} worker(s); {} job(s) released for retry, {} poisoned",
            report.reaped_count,
            report.jobs_released,
            report.jobs_poisoned
        )?;
        for worker in &report.reaped_workers {
            crate::outln!("  lost: {worker}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One reaping pass; the checker's `--interval` loop calls this every round.
pub async fn reap_once(
    store: &Store,
    config: &Config,
    pool: Option<&str>,
    stale_after: Duration,
) -> Result<ReapReport> {
    let reaped =
        store.reap(pool, stale_after, config.checker.start_grace.0, &RetryPolicy::from_config(&config.retry)).await?;
    for worker in &reaped.workers {
        tracing::warn!(worker_id = worker, "worker marked lost: no heartbeat within {stale_after:?}");
    }
    Ok(ReapReport {
        reaped_count: reaped.workers.len(),
        reaped_workers: reaped.workers,
        jobs_released: reaped.recovery.released,
        jobs_poisoned: reaped.recovery.poisoned,
    })
}
