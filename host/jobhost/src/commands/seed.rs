//! `jobhost seed`: queue jobs, all or nothing.
//!
//! Jobs are streamed into one transaction as their payloads are read and checked, so memory
//! stays flat however many are queued; the first bad payload (or any error) rolls the whole
//! transaction back and nothing is queued. The write lock is held while the jobs are added,
//! so a very large seed makes workers of the same database wait for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use jobhost_core::config::Config;
use jobhost_store::{Access, InvalidJob, JobField, JobRequest, JobRules, NewJob, Refusal, Store};

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
    let mut jobs = payloads.map(|payload| {
        let Payload { line, text } = payload?;
        let request = JobRequest {
            pool: args.pool.clone(),
            processor: args.processor.clone(),
            payload: text,
            priority: args.priority,
            max_attempts: config.retry.max_attempts,
            delay: args.delay.map(|delay| delay.0),
            run_at: None,
        };
        NewJob::new(request, &rules).map_err(|err| Refusal(refusal(&err, line, &args, config)))
    });
    // The first job shows whatever is wrong with the flags (and a first payload that breaks
    // a rule) before the database is opened, so a refused seed does not create one.
    let first = jobs.next().transpose().map_err(|Refusal(why)| anyhow::anyhow!(why))?;

    let store = Store::open(&config.database, Access::CreateIfMissing).await?;
    let queued = store.enqueue(first.map(Ok).into_iter().chain(jobs)).await?;
    if args.json {
        crate::outln!("{}", serde_json::json!({"queued": queued, "pool": args.pool}))?;
    } else {
        crate::outln!("queued {queued} job(s) in pool {}", args.pool)?;
    }
    Ok(ExitCode::SUCCESS)
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
