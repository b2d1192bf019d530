//! `jobhost seed`: queue jobs, all or nothing.
//!
//! Jobs are streamed into one transaction as their payloads are read and checked, so memory
//! stays flat however many are queued; the first bad payload (or any error) rolls the whole
//! transaction back and nothing is queued. The write lock is held while the jobs are added,
//! so a very large seed makes workers of the same database wait for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::Serialize;

use jobhost_core::config::Config;
use jobhost_store::{Access, EnqueueOutcome, InvalidJob, JobField, JobRequest, JobRules, NewJob, Refusal, Store};

use crate::cli::SeedArgs;
use crate::settings::MAX_SEED_COUNT;

/// A payload's text, and the line of `--payload-file` it came from.
#[derive(Clone)]
struct Payload {
    line: Option<usize>,
    text: String,
}

pub async fn run(config: &Config, args: SeedArgs) -> Result<ExitCode> {
    let known = (!args.processor_elsewhere).then(|| jobhost_sandbox::processors::names(config)).transpose()?;
    let rules = JobRules { processors: known.as_deref(), max_payload: config.jobs.max_payload.0 };
    let payloads: Box<dyn Iterator<Item = Result<Payload, Refusal>> + Send> = match (&args.payload_file, &args.payload)
    {
        (Some(path), _) => Box::new(payload_lines_of(open_payload_file(path)?, path.clone())),
        (None, Some(payload)) => {
            let payload = Payload { line: None, text: payload.trim().to_owned() };
            Box::new(std::iter::repeat_n(Ok(payload), args.count as usize))
        }
        (None, None) => {
            Box::new((0..args.count).map(|seq| Ok(Payload { line: None, text: format!(r#"{{"seq":{seq}}}"#) })))
        }
    };
    // The line each job came from, kept only when jobs may match others, to name them.
    let keyed = args.unique_key.is_some() || args.unique_key_from.is_some();
    let lines = Arc::new(Mutex::new(Vec::new()));
    // Each job's id in order, kept only when asked for (`--ids`): a large seed stays flat.
    let ids = Arc::new(Mutex::new(Vec::new()));
    let mut jobs = payloads.map({
        let lines = lines.clone();
        let ids = ids.clone();
        let args = &args;
        move |payload| {
            let Payload { line, text } = payload?;
            let unique_key = match (&args.unique_key, &args.unique_key_from) {
                (Some(key), _) => Some(key.clone()),
                (None, Some(pointer)) => Some(key_at(&text, pointer, line, args)?),
                (None, None) => None,
            };
            if keyed {
                lines.lock().expect("never poisoned").push(line);
            }
            let request = JobRequest {
                pool: args.pool.clone(),
                processor: args.processor.clone(),
                payload: text,
                priority: args.priority,
                max_attempts: config.retry.max_attempts,
                delay: args.delay.map(|delay| delay.0),
                run_at: None,
                unique_key,
                unique_within: args.unique_within.map(|within| within.0),
                replace: args.replace,
                after: args.after.clone(),
            };
            let job = NewJob::new(request, &rules).map_err(|err| Refusal(refusal(&err, line, args, config)))?;
            if args.ids {
                ids.lock().expect("never poisoned").push(job.id().to_owned());
            }
            Ok(job)
        }
    });
    // The first job shows whatever is wrong with the flags (and a first payload that breaks
    // a rule) before the database is opened, so a refused seed does not create one.
    let first = jobs.next().transpose().map_err(|Refusal(why)| anyhow::anyhow!(why))?;

    let store = Store::open(&config.database, Access::CreateIfMissing).await?;
    let report = store.enqueue(first.map(Ok).into_iter().chain(jobs)).await?;
    let lines = lines.lock().expect("never poisoned");
    let mut ids = std::mem::take(&mut *ids.lock().expect("never poisoned"));
    for matched in &report.matched {
        if let Some(id) = ids.get_mut(matched.index as usize) {
            id.clone_from(&matched.id);
        }
    }
    let matched: Vec<MatchedJob> = report
        .matched
        .iter()
        .map(|matched| MatchedJob {
            job: matched.index + 1,
            line: lines.get(matched.index as usize).copied().flatten(),
            id: &matched.id,
            outcome: matched.outcome,
        })
        .collect();
    if args.json {
        let mut answer = serde_json::json!({"queued": report.queued, "pool": args.pool, "matched": matched});
        if args.ids {
            answer["ids"] = serde_json::json!(ids);
        }
        crate::outln!("{answer}")?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!("queued {} job(s) in pool {}", report.queued, args.pool)?;
    for id in &ids {
        crate::outln!("{id}")?;
    }
    for matched in &matched {
        let what = match matched.line {
            Some(line) => format!("line {line}"),
            None => format!("job {}", matched.job),
        };
        let verb = match matched.outcome {
            EnqueueOutcome::Replaced => "replaced the payload of",
            EnqueueOutcome::Duplicate | EnqueueOutcome::Queued => "was not queued: its unique key is held by",
        };
        crate::outln!("{what} {verb} job {}", matched.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A job that was not queued because another job held its unique key, as `seed` reports it.
#[derive(Serialize)]
struct MatchedJob<'a> {
    /// Its place among the jobs seeded, from 1.
    job: u64,
    /// Its line of --payload-file.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    /// The job holding the key.
    id: &'a str,
    outcome: EnqueueOutcome,
}

/// The unique key at `pointer` in a payload: a string as it is, a number or boolean as
/// written; anything else is refused, naming the payload.
fn key_at(payload: &str, pointer: &str, line: Option<usize>, args: &SeedArgs) -> Result<String, Refusal> {
    let name = match (line, &args.payload_file) {
        (Some(line), Some(path)) => format!("{} line {line}", path.display()),
        _ => "--payload".to_owned(),
    };
    let value: serde_json::Value = serde_json::from_str(payload)
        .map_err(|err| Refusal(format!("{name} is not valid JSON: {err}; nothing was queued")))?;
    match value.pointer(pointer) {
        Some(serde_json::Value::String(key)) => Ok(key.clone()),
        Some(key @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(key.to_string()),
        _ => Err(Refusal(format!(
            "{name} has no string or number at --unique-key-from {pointer}: give every payload its key there; \
             nothing was queued"
        ))),
    }
}

/// Why a job is refused, naming what was typed: the flag, the line of `--payload-file`, or
/// the config key.
fn refusal(err: &InvalidJob, line: Option<usize>, args: &SeedArgs, config: &Config) -> String {
    let name = match (err.field(), line, &args.payload_file) {
        (JobField::Payload, Some(line), Some(path)) => format!("{} line {line}", path.display()),
        (JobField::Payload, ..) => "--payload".to_owned(),
        (JobField::Pool, ..) => "--pool".to_owned(),
        (JobField::Processor, ..) => "--processor".to_owned(),
        (JobField::MaxAttempts, ..) => config.name("retry.max_attempts"),
        (JobField::Schedule, ..) => "--delay".to_owned(),
        (JobField::UniqueKey, ..) if args.unique_key_from.is_some() => "the key at --unique-key-from".to_owned(),
        (JobField::UniqueKey, ..) => "--unique-key".to_owned(),
        (JobField::After, ..) => "--after".to_owned(),
    };
    let fix = match err {
        InvalidJob::UnknownProcessor { processor, .. } => format!(
            "; add {processor}.wasm to {}, or pass --processor-elsewhere if it is installed where the workers run",
            config.processors.dir.display()
        ),
        InvalidJob::Rule { .. } | InvalidJob::ProcessorName(_) => String::new(),
    };
    format!("{}{fix}; nothing was queued", err.message(&name))
}

fn open_payload_file(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open --payload-file {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

/// Every non-blank line of `reader` (read from `path`) with its number, for [`NewJob::new`]
/// to check.
fn payload_lines_of(
    reader: Box<dyn BufRead + Send>,
    path: PathBuf,
) -> impl Iterator<Item = Result<Payload, Refusal>> + Send {
    let mut pushed: u64 = 0;
    let mut seen_any = false;
    let mut lines = reader.lines().enumerate();
    std::iter::from_fn(move || {
        loop {
            let Some((index, line)) = lines.next() else {
                return (!seen_any).then(|| {
                    Err(Refusal(format!("{} holds no payloads: write one JSON value per line", path.display())))
                });
            };
            let number = index + 1;
            let line = match line {
                Ok(line) => line,
                Err(_) => {
                    return Some(Err(Refusal(format!(
                        "{} line {number} cannot be read (is it UTF-8 text?); nothing was queued",
                        path.display()
                    ))));
                }
            };
            // Editors on some systems start a UTF-8 file with a byte-order mark; it is not JSON.
            let text = if index == 0 { line.trim_start_matches('\u{feff}') } else { &line };
            if text.trim().is_empty() {
                continue;
            }
            seen_any = true;
            if pushed == MAX_SEED_COUNT {
                return Some(Err(Refusal(format!(
                    "{} holds more than {MAX_SEED_COUNT} payloads: split it; nothing was queued",
                    path.display()
                ))));
            }
            pushed += 1;
            return Some(Ok(Payload { line: Some(number), text: text.trim().to_owned() }));
        }
    })
}
