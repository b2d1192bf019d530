//! `jobhost seed`: queue jobs, all or nothing.
//!
//! Jobs are streamed into one transaction as their payloads are read and checked, so memory
//! stays flat however many are queued; the first bad payload (or any error) rolls the whole
//! transaction back and nothing is queued. The write lock is held while the jobs are added,
//! so a very large seed makes workers of the same database wait for it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::SeedArgs;
use crate::config::Config;
use crate::settings::MAX_SEED_COUNT;
use crate::store::{self, Access, NewJob, Store, millis};

pub fn run(config: &Config, args: SeedArgs) -> Result<ExitCode> {
    if !args.processor_elsewhere {
        let known = crate::processors::names(config)?;
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
        store::check_payload(payload.as_bytes(), max_payload)
            .map_err(|err| anyhow::anyhow!("--payload {err}; nothing was queued"))?;
    }
    let payload_lines = args.payload_file.as_deref().map(open_payload_file).transpose()?;

    let mut store = Store::open(&config.database, Access::CreateIfMissing)?;
    let mut enqueue = store.enqueue()?;
    let mut job = template;
    match (payload_lines, &args.payload_file) {
        (Some(reader), Some(path)) => {
            for_each_payload_line(reader, path, max_payload, |payload| {
                job.payload = payload;
                enqueue.push(&job)?;
                Ok(())
            })?;
        }
        _ => {
            if let Some(payload) = &args.payload {
                job.payload = payload.trim().to_owned();
            }
            for seq in 0..args.count {
                if args.payload.is_none() {
                    job.payload = format!(r#"{{"seq":{seq}}}"#);
                }
                enqueue.push(&job)?;
            }
        }
    }
    let queued = enqueue.commit()?;
    if args.json {
        crate::outln!("{}", serde_json::json!({"queued": queued, "pool": args.pool}))?;
    } else {
        crate::outln!("queued {queued} job(s) in pool {}", args.pool)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn open_payload_file(path: &Path) -> Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open --payload-file {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

/// Hands `push` one checked payload per non-blank line of `reader` (read from `path`). Any
/// bad line stops the reading with an error naming the line and column.
fn for_each_payload_line(
    reader: Box<dyn BufRead>,
    path: &Path,
    max_payload: u64,
    mut push: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let mut pushed: u64 = 0;
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| {
            format!("{} line {number} cannot be read (is it UTF-8 text?); nothing was queued", path.display())
        })?;
        // Editors on some systems start a UTF-8 file with a byte-order mark; it is not JSON.
        let line = if index == 0 { line.trim_start_matches('\u{feff}') } else { &line };
        if line.trim().is_empty() {
            continue;
        }
        store::check_payload(line.as_bytes(), max_payload)
            .map_err(|err| anyhow::anyhow!("{} line {number} {err}; nothing was queued", path.display()))?;
        if pushed == MAX_SEED_COUNT {
            bail!("{} holds more than {MAX_SEED_COUNT} payloads: split it; nothing was queued", path.display());
        }
        push(line.trim().to_owned())?;
        pushed += 1;
    }
    if pushed == 0 {
        bail!("{} holds no payloads: write one JSON value per line", path.display());
    }
    Ok(())
}
