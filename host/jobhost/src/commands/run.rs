//! `jobhost run NAME`: run one processor once, outside the pool, and print how it ended.
//!
//! This is the loop a processor author lives in, so it uses exactly the path a worker uses
//! (registry, compile cache, sandbox, the processor's configured limits) with three knobs on
//! top: `--fuel`, `--timeout` and `--memory`. The guest sees `JOB_ID=run-<uuid>`,
//! `JOB_ATTEMPT=1` and `JOB_POOL=default`. Exit status is 0 only for the `ok` outcome.
//!
//! `--json` prints one object whose shape other tools rely on:
//! `{"processor", "outcome", "result", "exit_code", "message", "stderr", "fuel_used",
//! "duration_ms"}`, with `null` for fields that do not apply to the outcome.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use jobhost_core::config::Config;
use jobhost_sandbox::processors::Registry;
use jobhost_sandbox::{JobInput, Outcome, RunReport, Sandbox};

use crate::cli::RunArgs;
use crate::output::for_stdout;

/// The pool name a one-off run reports to its processor.
const RUN_POOL: &str = "default";

pub async fn run(config: &Config, args: RunArgs) -> Result<ExitCode> {
    let payload = read_payload(config, &args)?;
    let limits = config.limits_for(&args.name);
    let sandbox = Sandbox::new(1)?;
    let registry = Arc::new(Registry::new(config, &sandbox));
    let report = match registry.load(&args.name).await {
        Ok(program) => {
            let job_id = format!("run-{}", uuid::Uuid::new_v4());
            let job =
                JobInput { job_id: &job_id, attempt: 1, pool: RUN_POOL, processor: &args.name, payload: &payload };
            sandbox.run(&program, job, &limits, &config.grants_for(&args.name)).await
        }
        Err(err) => RunReport::load_error(err.to_string()),
    };
    if args.json {
        crate::outln!("{}", report_json(&args.name, &report))?;
    } else {
        print_report(&args.name, &report)?;
    }
    Ok(match report.outcome {
        Outcome::Ok(_) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// The payload bytes, checked as `seed` checks a job's payload (the processor contract
/// promises JSON on stdin).
fn read_payload(config: &Config, args: &RunArgs) -> Result<Vec<u8>> {
    let max_payload = config.jobs.max_payload.0;
    if let Some(text) = &args.payload {
        jobhost_store::check_payload(text.as_bytes(), max_payload)
            .map_err(|err| anyhow::anyhow!("--payload {err}: pass one JSON document, e.g. --payload '{{\"x\": 1}}'"))?;
        return Ok(text.clone().into_bytes());
    }
    let Some(path) = &args.payload_file else {
        return Ok(b"{}".to_vec());
    };
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("cannot read --payload-file - (stdin)")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("cannot read --payload-file {}", path.display()))?
    };
    jobhost_store::check_payload(&bytes, max_payload)
        .map_err(|err| anyhow::anyhow!("--payload-file {} {err}: it must hold one JSON document", path.display()))?;
    Ok(bytes)
}

fn report_json(name: &str, report: &RunReport) -> Value {
    let (result, exit_code) = match &report.outcome {
        Outcome::Ok(result) => (result.clone(), json!(0)),
        Outcome::Exit(code) => (Value::Null, json!(code)),
        _ => (Value::Null, Value::Null),
    };
    let ran = !matches!(report.outcome, Outcome::LoadError(_));
    json!({
        "processor": name,
        "outcome": report.outcome.kind(),
        "result": result,
        "exit_code": exit_code,
        "message": report.outcome.message(),
        "stderr": ran.then_some(&report.stderr),
        "fuel_used": report.fuel_used,
        "duration_ms": duration_ms(report),
    })
}

fn print_report(name: &str, report: &RunReport) -> std::io::Result<()> {
    crate::outln!(
        "{name}: {} in {:.3} ms, {} fuel used",
        report.outcome.kind(),
        duration_ms(report),
        report.fuel_used
    )?;
    match &report.outcome {
        Outcome::Ok(result) => {
            crate::outln!("{}", for_stdout(&serde_json::to_string_pretty(result).expect("a Value always serializes")))?;
        }
        outcome => {
            if let Some(message) = outcome.message() {
                crate::outln!("{}", for_stdout(&message))?;
            }
        }
    }
    if !report.stderr.is_empty() {
        crate::outln!("--- stderr ---\n{}", for_stdout(report.stderr.trim_end()))?;
    }
    Ok(())
}

fn duration_ms(report: &RunReport) -> f64 {
    report.duration.as_micros() as f64 / 1000.0
}
