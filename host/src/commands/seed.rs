//! `jobhost seed`: queue jobs, all or nothing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::SeedArgs;
use crate::config::Config;
use crate::store::{NewJob, Store, millis};

pub fn run(config: &Config, args: SeedArgs) -> Result<ExitCode> {
    let payloads = match &args.payload_file {
        Some(path) => read_payload_lines(path)?,
        None => {
            if args.count == 0 {
                bail!("--count must be at least 1");
            }
            match &args.payload {
                Some(payload) => {
                    check_json(payload).context("--payload is not valid JSON")?;
                    vec![payload.trim().to_owned(); args.count as usize]
                }
                None => (0..args.count).map(|seq| format!(r#"{{"seq":{seq}}}"#)).collect(),
            }
        }
    };
    if args.pool.trim().is_empty() {
        bail!("--pool must not be empty");
    }
    crate::processors::validate_name(&args.processor).map_err(anyhow::Error::msg).context("--processor")?;
    let max_attempts = args.max_attempts.unwrap_or(config.retry.max_attempts);
    if max_attempts == 0 {
        bail!("--max-attempts must be at least 1 (the first run counts as an attempt)");
    }
    let delay_ms = args.delay.map_or(0, |delay| millis(delay.0));
    let jobs: Vec<NewJob> = payloads
        .into_iter()
        .map(|payload| NewJob {
            pool: args.pool.clone(),
            processor: args.processor.clone(),
            payload,
            priority: args.priority,
            max_attempts,
            delay_ms,
        })
        .collect();

    let mut store = Store::open(&config.database)?;
    let queued = store.enqueue(&jobs)?.len();
    if args.json {
        println!("{}", serde_json::json!({"queued": queued, "pool": args.pool}));
    } else {
        println!("queued {queued} job(s) in pool {}", args.pool);
    }
    Ok(ExitCode::SUCCESS)
}

fn check_json(text: &str) -> Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)?;
    Ok(())
}

/// One payload per non-blank line; any invalid line fails the whole file, naming the line.
fn read_payload_lines(path: &Path) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open --payload-file {}", path.display()))?;
        Box::new(BufReader::new(file))
    };
    let mut payloads = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {} line {}", path.display(), index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        check_json(&line).with_context(|| {
            format!(
                "{} line {} is not valid JSON (nothing was queued): each line must hold one JSON value",
                path.display(),
                index + 1
            )
        })?;
        payloads.push(line.trim().to_owned());
    }
    if payloads.is_empty() {
        bail!("{} holds no payloads: write one JSON value per line", path.display());
    }
    Ok(payloads)
}
