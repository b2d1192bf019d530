//! Section 5, sandbox overhead: what it costs to run one echo job in the sandbox, against
//! the usual way of isolating job code, spawning a native process per job.
//!
//! Sandbox side, in-process, exactly the calls a worker makes: `Sandbox::new(1)`, echo
//! loaded once through the processors registry (`Registry::load`, compiled-module cache),
//! then `Sandbox::run` per job on a current-thread tokio runtime. Each sample is one whole
//! run: a fresh wasmtime store with its WASI context and limits, instantiation from the
//! pre-linked module, `_start`, and reading and parsing the output. The first runs are
//! warm-up and not counted.
//!
//! Native side: the same echo program (`processors/echo`) built for the host, spawned once
//! per job with the payload on stdin and its stdout read to the end — fork/exec, dynamic
//! loading and process teardown, with no sandbox limits at all, so it flatters the native side.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jobhost_core::config::Config;
use jobhost_sandbox::processors::Registry;
use jobhost_sandbox::{JobInput, Outcome, Sandbox};

use crate::report::{Report, Row, micros, times};
use crate::support::{Bench, median_duration, percentile_duration};

pub const SECTION: &str = "sandbox";
const PAYLOAD: &[u8] = br#"{"seq":1}"#;
const WARM_UP: usize = 50;
const TARGET_P50: Duration = Duration::from_micros(100);
const TARGET_RATIO: f64 = 10.0;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let sandboxed_runs = bench.pick(2_000, 300);
    let native_runs = bench.pick(300, 50);
    report.note(format!(
        "sandbox: {sandboxed_runs} in-process `Sandbox::run` calls of echo (store, WASI context, \
         instantiate, run, parse output) after {WARM_UP} warm-up runs, against {native_runs} spawns of \
         the same echo built natively (`target/release/echo`), payload on stdin, stdout read"
    ));
    let sandboxed = sandboxed(sandboxed_runs)?;
    let native = native(bench, native_runs)?;

    let (p50, p99) = (median_duration(&sandboxed), percentile_duration(&sandboxed, 99.0));
    let (native_p50, native_p99) = (median_duration(&native), percentile_duration(&native, 99.0));
    let ratio = native_p50.as_secs_f64() / p50.as_secs_f64();
    report.add(Row::goal(SECTION, "echo job in the sandbox, p50", micros(p50), "≤ 100 µs", p50 <= TARGET_P50));
    report.add(Row::info(SECTION, "echo job in the sandbox, p99", micros(p99)));
    report.add(Row::info(SECTION, "echo as a native process spawn, p50", micros(native_p50)));
    report.add(Row::info(SECTION, "echo as a native process spawn, p99", micros(native_p99)));
    report.add(Row::goal(SECTION, "native spawn ÷ sandbox, p50", times(ratio), "≥ 10×", ratio >= TARGET_RATIO));
    Ok(())
}

fn sandboxed(runs: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder for the sandbox benchmark")?;
    let mut config = Config::default();
    config.processors.dir = dir.path().join("processors");
    config.processors.cache_dir = Some(dir.path().join("cache"));
    let limits = config.limits_for("echo");
    let grants = config.grants_for("echo");
    let sandbox = Sandbox::new(1)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a tokio runtime")?;
    let echo = runtime.block_on(std::sync::Arc::new(Registry::new(&config, &sandbox)).load("echo"))?;
    let job = JobInput { job_id: "bench", attempt: 1, pool: "default", processor: "echo", payload: PAYLOAD };
    runtime.block_on(async {
        let mut samples = Vec::with_capacity(runs);
        for i in 0..WARM_UP + runs {
            let started = Instant::now();
            let report = sandbox.run(&echo, job, &limits, &grants).await;
            let elapsed = started.elapsed();
            if !matches!(report.outcome, Outcome::Ok(_)) {
                bail!("echo did not succeed in the sandbox: {}", report.outcome.message().unwrap_or_default());
            }
            if i >= WARM_UP {
                samples.push(elapsed);
            }
        }
        Ok(samples)
    })
}

fn native(bench: &Bench, runs: usize) -> Result<Vec<Duration>> {
    let echo = bench.bin_dir.join("echo");
    ensure!(
        echo.is_file(),
        "{} is missing: build the native echo with `cargo build --release -p echo` (scripts/bench does)",
        echo.display()
    );
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = Command::new(&echo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot spawn {}", echo.display()))?;
        let mut stdin = child.stdin.take().context("echo stdin")?;
        stdin.write_all(PAYLOAD)?;
        drop(stdin);
        let output = child.wait_with_output()?;
        let elapsed = started.elapsed();
        ensure!(
            output.status.success() && output.stdout.starts_with(b"{"),
            "the native echo failed ({})",
            output.status
        );
        samples.push(elapsed);
    }
    Ok(samples)
}
