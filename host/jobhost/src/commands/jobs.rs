//! `jobhost jobs …`: list, show, retry, cancel and purge jobs.

use std::process::ExitCode;

use anyhow::Result;

use jobhost_core::config::Config;
use jobhost_core::outcome::OutcomeKind;
use jobhost_store::{Access, IdAnswer, JobFilter, JobMatch, JobStatus, Store};

use crate::cli::{FinishedStatusArg, JobStatusArg, JobsCommand};
use crate::output::for_stdout;

use crate::output::format_time;

pub async fn run(config: &Config, command: JobsCommand) -> Result<ExitCode> {
    let store = Store::open(&config.database, Access::Existing).await?;
    match command {
        JobsCommand::List { pool, status, limit, json } => {
            let matching = JobMatch { pool: pool.as_deref(), status: status.map(job_status), ..JobMatch::default() };
            let filter = JobFilter { matching, after: None, limit };
            let jobs = store.list_jobs(&filter).await?;
            if json {
                crate::outln!("{}", serde_json::to_string(&jobs)?)?;
            } else {
                crate::outln!(
                    "{:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:<24}  {}",
                    "ID",
                    "POOL",
                    "PROCESSOR",
                    "STATUS",
                    "ATTEMPTS",
                    "UPDATED",
                    "HOST"
                )?;
                for job in &jobs {
                    crate::outln!(
                        "{:<36}  {:<10}  {:<12}  {:<9}  {:>8}  {:<24}  {}",
                        job.id,
                        job.pool,
                        job.processor,
                        job.status.as_str(),
                        format!("{}/{}", job.attempts, job.max_attempts),
                        format_time(job.updated_at),
                        job.host.as_deref().unwrap_or("-")
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, json } => {
            let Some(detail) = store.job(&id).await? else {
                anyhow::bail!("no job with id {id}: `jobhost jobs list` shows the ids");
            };
            if json {
                crate::outln!("{}", serde_json::to_string_pretty(&detail)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let job = &detail.job;
            crate::outln!("job        {}", job.id)?;
            crate::outln!("pool       {}", job.pool)?;
            crate::outln!("processor  {}", job.processor)?;
            crate::outln!("status     {}", job.status.as_str())?;
            crate::outln!("priority   {}", job.priority)?;
            if let Some(key) = &job.unique_key {
                crate::outln!("unique key {}", for_stdout(key))?;
            }
            crate::outln!("attempts   {} of {}", job.attempts, job.max_attempts)?;
            crate::outln!("created    {}", format_time(job.created_at))?;
            crate::outln!("run at     {}", job.run_time().describe(format_time))?;
            for parent in &detail.parents {
                crate::outln!("waits for  {} ({})", parent.id, parent.status.as_str())?;
            }
            for child in &detail.children {
                crate::outln!("needed by  {} ({})", child.id, child.status.as_str())?;
            }
            if detail.children_total > detail.children.len() as u64 {
                crate::outln!("           and {} more", detail.children_total - detail.children.len() as u64)?;
            }
            if let Some(finished) = job.finished_at {
                crate::outln!("finished   {}", format_time(finished))?;
            }
            if let Some(worker) = &job.worker_id {
                crate::outln!("worker     {worker} on {}", job.host.as_deref().unwrap_or("an unknown host"))?;
            }
            if let Some(error) = &job.last_error {
                crate::outln!("last error {}", for_stdout(error))?;
            }
            match &detail.payload_error {
                None => crate::outln!("payload    {}", for_stdout(&detail.payload.to_string()))?,
                Some(why) => crate::outln!(
                    "payload    (stored text, not readable as JSON: {why}) {}",
                    for_stdout(detail.payload.as_str().unwrap_or_default())
                )?,
            }
            if let Some(result) = &detail.result {
                crate::outln!("result     {}", for_stdout(&result.to_string()))?;
            }
            crate::outln!("history")?;
            if detail.older_attempts.is_some() {
                crate::outln!(
                    "  (the latest {} of {} attempts; GET /api/v1/jobs/{}/attempts of `jobhost serve` pages through the rest)",
                    detail.attempt_history.len(),
                    job.attempts,
                    job.id
                )?;
            }
            for attempt in &detail.attempt_history {
                let outcome = attempt.outcome.map_or("running", OutcomeKind::as_str);
                let duration = attempt.duration_ms.map_or_else(String::new, |ms| format!(" in {ms} ms"));
                let fuel = attempt.fuel_used.map_or_else(String::new, |fuel| format!(", {fuel} fuel"));
                let code = attempt.short_processor_sha256().map_or_else(String::new, |sha| format!(", code {sha}"));
                crate::outln!(
                    "  #{} {} on {} at {}{duration}{fuel}{code}",
                    attempt.attempt,
                    outcome,
                    attempt.worker_id,
                    format_time(attempt.started_at)
                )?;
                if let Some(message) = &attempt.message {
                    crate::outln!("     {}", for_stdout(message))?;
                }
                if let Some(stderr) = attempt.stderr.as_deref().filter(|s| !s.is_empty()) {
                    for line in stderr.lines() {
                        crate::outln!("     stderr: {}", for_stdout(line))?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Retry { ids, poisoned, pool, json } => {
            if poisoned {
                let poisoned =
                    JobMatch { pool: pool.as_deref(), status: Some(JobStatus::Poisoned), ..JobMatch::default() };
                let count = store.retry_matching(&poisoned).await?;
                report_count(json, "retried", count)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut answers = Vec::with_capacity(ids.len());
            for id in ids {
                let answer = store.retry_job(&id).await?;
                answers.push((id, answer));
            }
            report_answers(&answers, json, "retried", "only poisoned or cancelled jobs can be retried")
        }
        JobsCommand::Cancel { ids, json } => {
            let mut answers = Vec::with_capacity(ids.len());
            for id in ids {
                let answer = store.cancel_job(&id).await?;
                answers.push((id, answer));
            }
            report_answers(&answers, json, "cancelled", "only pending jobs can be cancelled")
        }
        JobsCommand::Purge { older_than, status, json } => {
            let statuses = match status {
                Some(status) => vec![finished_status(status)],
                None => vec![JobStatus::Completed, JobStatus::Poisoned, JobStatus::Cancelled],
            };
            let count = store.purge(older_than.0, &statuses).await?;
            report_count(json, "purged", count)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report_count(json: bool, verb: &str, count: u64) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::json!({ verb: count }))?;
    } else {
        crate::outln!("{verb} {count} job(s)")?;
    }
    Ok(())
}

/// Reports the answer for every id; exits non-zero if any id was refused.
fn report_answers(answers: &[(String, IdAnswer)], json: bool, verb: &str, rule: &str) -> Result<ExitCode> {
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for (id, answer) in answers {
        match *answer {
            IdAnswer::Done => done.push(id.clone()),
            IdAnswer::NotFound => refused.push((id.clone(), "no such job".to_owned())),
            IdAnswer::WrongStatus(status) => refused.push((id.clone(), format!("job is {}: {rule}", status.as_str()))),
            IdAnswer::NoAttemptsLeft => {
                refused.push((id.clone(), "job has used every attempt jobhost can count: queue it anew".to_owned()))
            }
        }
    }
    if json {
        let refused: Vec<_> = refused.iter().map(|(id, why)| serde_json::json!({"id": id, "error": why})).collect();
        crate::outln!("{}", serde_json::json!({ verb: done, "refused": refused }))?;
    } else {
        for id in &done {
            crate::outln!("{verb} {id}")?;
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
