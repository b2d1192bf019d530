//! `jobhost jobs …`: list, show, retry, cancel and purge jobs.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{FinishedStatusArg, JobStatusArg, JobsCommand};
use crate::config::Config;
use crate::store::{IdAnswer, JobFilter, JobStatus, Store};

use super::format_time;

pub fn run(config: &Config, command: JobsCommand) -> Result<ExitCode> {
    let mut store = Store::open(&config.database)?;
    match command {
        JobsCommand::List { pool, status, limit, json } => {
            let filter = JobFilter { pool: pool.as_deref(), status: status.map(job_status), limit };
            let jobs = store.list_jobs(&filter)?;
            if json {
                println!("{}", serde_json::to_string(&jobs)?);
            } else {
                println!(
                    "{:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:<24}",
                    "ID", "POOL", "PROCESSOR", "STATUS", "ATTEMPTS", "UPDATED"
                );
                for job in &jobs {
                    println!(
                        "{:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:<24}",
                        job.id,
                        job.pool,
                        job.processor,
                        job.status.as_str(),
                        format!("{}/{}", job.attempts, job.max_attempts),
                        format_time(job.updated_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, json } => {
            let Some(detail) = store.job(&id)? else {
                anyhow::bail!("no job with id {id}: `jobhost jobs list` shows the ids");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(ExitCode::SUCCESS);
            }
            let job = &detail.job;
            println!("job        {}", job.id);
            println!("pool       {}", job.pool);
            println!("processor  {}", job.processor);
            println!("status     {}", job.status.as_str());
            println!("priority   {}", job.priority);
            println!("attempts   {} of {}", job.attempts, job.max_attempts);
            println!("created    {}", format_time(job.created_at));
            println!("run at     {}", format_time(job.run_at));
            if let Some(finished) = job.finished_at {
                println!("finished   {}", format_time(finished));
            }
            if let Some(worker) = &job.worker_id {
                println!("worker     {worker}");
            }
            if let Some(error) = &job.last_error {
                println!("last error {error}");
            }
            println!("payload    {}", detail.payload);
            if let Some(result) = &detail.result {
                println!("result     {result}");
            }
            println!("history");
            for attempt in &detail.attempt_history {
                let outcome = attempt.outcome.as_deref().unwrap_or("running");
                let duration = attempt.duration_ms.map_or_else(String::new, |ms| format!(" in {ms} ms"));
                let fuel = attempt.fuel_used.map_or_else(String::new, |fuel| format!(", {fuel} fuel"));
                println!(
                    "  #{} {} on {} at {}{duration}{fuel}",
                    attempt.attempt,
                    outcome,
                    attempt.worker_id,
                    format_time(attempt.started_at)
                );
                if let Some(message) = &attempt.message {
                    println!("     {message}");
                }
                if let Some(stderr) = attempt.stderr.as_deref().filter(|s| !s.is_empty()) {
                    for line in stderr.lines() {
                        println!("     stderr: {line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Retry { ids, poisoned, pool, json } => {
            if poisoned {
                let count = store.retry_poisoned(pool.as_deref())?;
                report_count(json, "retried", count);
                return Ok(ExitCode::SUCCESS);
            }
            answer_each(&ids, json, "retried", "only poisoned or cancelled jobs can be retried", |id| {
                store.retry_job(id)
            })
        }
        JobsCommand::Cancel { ids, json } => {
            answer_each(&ids, json, "cancelled", "only pending jobs can be cancelled", |id| store.cancel_job(id))
        }
        JobsCommand::Purge { older_than, status, json } => {
            let statuses = match status {
                Some(status) => vec![finished_status(status)],
                None => vec![JobStatus::Completed, JobStatus::Poisoned, JobStatus::Cancelled],
            };
            let count = store.purge(older_than.0, &statuses)?;
            report_count(json, "purged", count);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report_count(json: bool, verb: &str, count: u64) {
    if json {
        println!("{}", serde_json::json!({ verb: count }));
    } else {
        println!("{verb} {count} job(s)");
    }
}

/// Applies `act` to every id and reports each; exits non-zero if any id was refused.
fn answer_each(
    ids: &[String],
    json: bool,
    verb: &str,
    rule: &str,
    mut act: impl FnMut(&str) -> Result<IdAnswer>,
) -> Result<ExitCode> {
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for id in ids {
        match act(id)? {
            IdAnswer::Done => done.push(id.clone()),
            IdAnswer::NotFound => refused.push((id.clone(), "no such job".to_owned())),
            IdAnswer::WrongStatus(status) => refused.push((id.clone(), format!("job is {}: {rule}", status.as_str()))),
        }
    }
    if json {
        let refused: Vec<_> = refused.iter().map(|(id, why)| serde_json::json!({"id": id, "error": why})).collect();
        println!("{}", serde_json::json!({ verb: done, "refused": refused }));
    } else {
        for id in &done {
            println!("{verb} {id}");
        }
        for (id, why) in &refused {
            eprintln!("error: {id}: {why}");
        }
    }
    Ok(if refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn job_status(status: JobStatusArg) -> JobStatus {
    match status {
        JobStatusArg::Pending => JobStatus::Pending,
        JobStatusArg::Claimed => JobStatus::Claimed,
        JobStatusArg::Completed => JobStatus::Completed,
        JobStatusArg::Poisoned => JobStatus::Poisoned,
        JobStatusArg::Cancelled => JobStatus::Cancelled,
    }
}

fn finished_status(status: FinishedStatusArg) -> JobStatus {
    match status {
        FinishedStatusArg::Completed => JobStatus::Completed,
        FinishedStatusArg::Poisoned => JobStatus::Poisoned,
        FinishedStatusArg::Cancelled => JobStatus::Cancelled,
    }
}
