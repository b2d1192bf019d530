//! `jobhost reap`: find workers that stopped heartbeating, mark them `lost`, and send the
//! jobs they held (and any job whose lease expired) back through the retry policy as
//! `worker_lost` attempts.
//!
//! Reaping is safe to run at any time and from any number of processes: each pass is one
//! transaction, and a worker that was only slow finds its late complete refused (fenced),
//! never overwriting the job's next attempt.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use jobhost_core::config::Config;
use jobhost_store::{Access, RetryPolicy, Store};

use crate::settings::ReapSettings;

#[derive(Debug, Serialize)]
struct ReapReport {
    reaped_count: usize,
    reaped_workers: Vec<String>,
    jobs_released: u64,
    jobs_poisoned: u64,
}

pub async fn run(config: &Config, args: ReapSettings) -> Result<ExitCode> {
    let store = Store::open(&config.database, Access::Existing).await?;
    let reaped = store
        .reap(
            args.pool.as_deref(),
            config.reaper.stale_after.0,
            config.checker.start_grace.0,
            &RetryPolicy::from_config(&config.retry),
        )
        .await?;
    let report = ReapReport {
        reaped_count: reaped.workers.len(),
        reaped_workers: reaped.workers,
        jobs_released: reaped.recovery.released,
        jobs_poisoned: reaped.recovery.poisoned,
    };
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
