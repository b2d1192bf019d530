//! `jobhost schedules`: each configured schedule with its last run, the job it made, and
//! its next run, as the API and the dashboard show them.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use jobhost_core::config::Config;
use jobhost_store::{Access, Store};

use crate::cli::SchedulesArgs;
use crate::output::format_time;
use crate::scheduler::listing;

pub async fn run(config: &Config, args: SchedulesArgs) -> Result<ExitCode> {
    let store = Store::open(&config.database, Access::Existing).await?;
    let schedules = listing(&store, config).await?;
    if args.json {
        crate::outln!("{}", json!({ "schedules": schedules }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if schedules.is_empty() {
        crate::outln!("no schedules: add them under schedules: in the config file")?;
        return Ok(ExitCode::SUCCESS);
    }
    let time = |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), format_time);
    for schedule in &schedules {
        crate::outln!(
            "{}  cron {:?} ({}), {} in pool {}, catch_up {}",
            schedule.name,
            schedule.cron,
            schedule.timezone,
            schedule.processor,
            schedule.pool,
            schedule.catch_up
        )?;
        match &schedule.last_run {
            Some(run) => crate::outln!(
                "  last run  {} (queued {}), job {}",
                format_time(run.due_at),
                format_time(run.enqueued_at),
                run.job_id
            )?,
            None => crate::outln!("  last run  -")?,
        }
        crate::outln!("  next run  {}", time(schedule.next_run_at))?;
    }
    Ok(ExitCode::SUCCESS)
}
