//! `jobhost seed`: queue jobs, all or nothing.
//!
//! Jobs are streamed into one transaction as their payloads are read and checked, so memory
//! stays flat however many are queued; the first bad payload (or any error) rolls the whole
//! transaction back and nothing is queued. The write lock is held while the jobs are added,
//! so a very large seed makes workers of the same database wait for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use jobhost_core::config::Config;
use jobhost_store::{Access, NewJob, Refusal, Store, millis};

use crate::cli::SeedArgs;
use crate::settings::MAX_SEED_COUNT;

pub async fn run(config: &Config, args: SeedArgs) -> Result<ExitCode> {
    if !args.processor_elsewhere {
        let known = jobhost_sandbox::processors::names(config)?;
        if !known.contains(&args.processor) {
            bail!(
                "--processor {}: no such processor on this host (it has: {}); add {}.wasm to {}, or pass \
                 --processor-elsewhere if it is installed where the workers run",
                args.processor,
                known.join(", "),
                args.processor,
                config.processors.dir.display()
            );
        }
    }
    let max_payload = config.jobs.max_payload.0;
    let template = NewJob {
        id: String::new(),
        pool: args.pool.clone(),
        processor: args.processor.clone(),
        payload: String::new(),
        priority: args.priority,
        max_attempts: config.retry.max_attempts,
        delay_ms: args.delay.map_or(0, |delay| millis(delay.0)),
    };

    // Everything that can be checked before the database is opened is, so a refused seed
    // does not create one.
    if let Some(payload) = &args.payload {
        jobhost_store::check_payload(payload.as_bytes(), max_payload)
            .map_err(|err| anyhow::anyhow!("--payload {err}; nothing was queued"))?;
    }
    let payload_lines = args.payload_file.as_deref().map(open_payload_file).transpose()?;

    let store = Store::open(&config.database, Access::CreateIfMissing).await?;
    let payloads: Box<dyn Iterator<Item = Result<String, Refusal>> + Send> = match (payload_lines, &args.payload_file) {
        (Some(reader), Some(path)) => Box::new(payload_lines_of(reader, path.clone(), max_payload)),
        _ => match &args.payload {
            Some(payload) => Box::new(std::iter::repeat_n(Ok(payload.trim().to_owned()), args.count as usize)),
            None => Box::new((0..args.count).map(|seq| Ok(format!(r#"{{"seq":{seq}}}"#)))),
        },
    };
    let jobs = payloads.map(|payload| Ok(NewJob { id: NewJob::new_id(), payload: payload?, ..template.clone() }));
    let queued = store.enqueue(jobs).await?;
    if args.json {
        crate::outln!("{}", serde_json::json!({"queued": queued, "pool": args.pool}))?;
    } else {
        crate::outln!("queued {queued} job(s) in pool {}", args.pool)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn open_payload_file(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open --payload-file {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

/// The checked payload of every non-blank line of `reader` (read from `path`); a bad line
/// is a refusal naming the line and column, which rolls back the whole seed.
fn payload_lines_of(
    reader: Box<dyn BufRead + Send>,
    path: PathBuf,
    max_payload: u64,
) -> impl Iterator<Item = Result<String, Refusal>> + Send {
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
            if let Err(err) = jobhost_store::check_payload(text.as_bytes(), max_payload) {
                return Some(Err(Refusal(format!("{} line {number} {err}; nothing was queued", path.display()))));
            }
            if pushed == MAX_SEED_COUNT {
                return Some(Err(Refusal(format!(
                    "{} holds more than {MAX_SEED_COUNT} payloads: split it; nothing was queued",
                    path.display()
                ))));
            }
            pushed += 1;
            return Some(Ok(text.trim().to_owned()));
        }
    })
}
