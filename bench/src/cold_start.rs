//! Section 4, cold start: the wall time of one `jobhost work --once` process — start, register,
//! claim one echo job, run it in the sandbox, complete it, deregister, exit — as a cron job or
//! a checker that spawns a worker per job would pay it.
//!
//! Timed from spawning the process to reaping it, stdout discarded, first with the pool idle
//! (the worker's exit is the database's last close, which checkpoints the WAL) and then with
//! another connection open, as beside a `jobhost check --interval` loop. Warm: the compiled-module
//! cache already holds echo (a `jobhost run echo` fills it first), as on any machine that ran
//! jobhost before. Cold: the cache folder is deleted before each run, so the process compiles
//! echo with Cranelift and writes the cache entry. For scale, the same is timed for
//! `jobhost status`, a process that opens the store and reads it but runs no sandbox.
//!
//! To show where a warm start goes, the steps `jobhost work --once` takes are then replayed
//! in-process through the library, each timed on its own (median over the runs): open the
//! store, register, create the sandbox, open the heartbeat's connection, start the async
//! runtime, claim, load echo from the module cache, run it, complete, deregister and close
//! the connections (the last close checkpoints the WAL), shut the runtime and sandbox down.
//! What the process takes beyond their sum is exec, dynamic loading, argument parsing and
//! exit. The replay runs in an already warm process, so its steps are lower bounds and that
//! rest is an upper bound.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use jobhost_core::config::Config;
use jobhost_core::outcome::OutcomeKind;
use jobhost_sandbox::processors::Registry;
use jobhost_sandbox::{JobInput, Outcome, Sandbox};
use jobhost_store::{Access, AttemptReport, ClaimRequest, Finished, NewWorker, Settled, Store};

use crate::report::{Report, Row, millis};
use crate::support::{Bench, Pool, block_on, median_duration, retry_policy, status};

pub const SECTION: &str = "cold start";
const TARGET: Duration = Duration::from_millis(10);

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let warm_runs = bench.pick(20, 5);
    let cold_runs = bench.pick(5, 2);
    report.note(format!(
        "cold start: one `jobhost work --once` process from spawn to exit, median of {warm_runs} runs with \
         the compiled-module cache warm and of {cold_runs} with the cache folder deleted before each run"
    ));
    let pool = Pool::new(bench, "")?;
    // One job per timed run and per replay, plus one for an untimed run that pages the binary in.
    pool.seed((warm_runs * 3 + cold_runs + 1) as u64, "echo", 3)?;
    pool.warm_echo()?;
    time_process(&pool, &["work", "--once"])?;

    let warm = (0..warm_runs).map(|_| time_process(&pool, &["work", "--once"])).collect::<Result<Vec<_>>>()?;
    // The same while another process has the pool open, as under `jobhost check --interval` or
    // beside other workers: then a worker's exit is not the last close of the database, which
    // is the one that checkpoints the WAL (two fsyncs) before it lets go.
    let observer = pool.observe()?;
    status(&observer)?;
    let in_use = (0..warm_runs).map(|_| time_process(&pool, &["work", "--once"])).collect::<Result<Vec<_>>>()?;
    drop(observer);
    let mut cold = Vec::with_capacity(cold_runs);
    for _ in 0..cold_runs {
        let cache = pool.cache_dir();
        std::fs::remove_dir_all(&cache)
            .with_context(|| format!("cannot delete the module cache {}", cache.display()))?;
        cold.push(time_process(&pool, &["work", "--once"])?);
    }
    let completed = status(&pool.observe()?)?.jobs.completed;
    ensure!(
        completed == (2 * warm_runs + cold_runs + 1) as u64,
        "`jobhost work --once` completed {completed} jobs in {} runs: each run should complete one",
        2 * warm_runs + cold_runs + 1
    );
    let status = (0..warm_runs).map(|_| time_process(&pool, &["status"])).collect::<Result<Vec<_>>>()?;

    let steps = replay(&pool, warm_runs)?;

    let warm = median_duration(&warm);
    report.add(Row::goal(
        SECTION,
        "`jobhost work --once`, module cache warm (median)",
        millis(warm),
        "≤ 10 ms",
        warm <= TARGET,
    ));
    report.add(Row::info(
        SECTION,
        "`jobhost work --once`, module cache warm, pool open in another process (median)",
        millis(median_duration(&in_use)),
    ));
    report.add(Row::info(
        SECTION,
        "`jobhost work --once`, module cache deleted (median)",
        millis(median_duration(&cold)),
    ));
    report.add(Row::info(SECTION, "`jobhost status`, for scale (median)", millis(median_duration(&status))));
    let mut in_process = Duration::ZERO;
    for (step, samples) in STEPS.iter().zip(&steps) {
        let step_median = median_duration(samples);
        in_process += step_median;
        report.add(Row::info(SECTION, format!("warm start, in-process step: {step}"), millis(step_median)));
    }
    report.add(Row::info(
        SECTION,
        "warm start, the rest (exec, dynamic loading, arguments, exit; at most)",
        millis(warm.saturating_sub(in_process)),
    ));
    Ok(())
}

/// The steps of `jobhost work --once` that [`replay`] times, in order.
const STEPS: [&str; 11] = [
    "open the store",
    "register the worker",
    "create the sandbox",
    "open the heartbeat connection",
    "start the async runtime",
    "claim one job",
    "load echo from the module cache",
    "run echo",
    "complete the job",
    "deregister, close connections",
    "stop the runtime and sandbox",
];

/// Replays `runs` warm starts in-process; returns the samples of each of [`STEPS`].
fn replay(pool: &Pool, runs: usize) -> Result<Vec<Vec<Duration>>> {
    let mut config = Config::from_file(&pool.path("jobhost.yml"))?;
    config.database = pool.database();
    config.processors.dir = pool.path("processors");
    let lease = config.reaper.stale_after.0;
    let retry = retry_policy();
    let mut samples = vec![Vec::with_capacity(runs); STEPS.len()];
    for run in 0..runs {
        let mut clock = Stopwatch { last: Instant::now(), samples: samples.iter_mut() };
        let worker_id = format!("replay-{run}");
        let store = block_on(Store::open(&config.database, Access::Existing))?;
        clock.lap();
        block_on(store.activate_worker(&NewWorker {
            id: worker_id.clone(),
            pool: "default".to_string(),
            host: None,
            pid: Some(std::process::id()),
            following: false,
        }))?;
        clock.lap();
        let sandbox = Sandbox::new(1)?;
        clock.lap();
        let heartbeat = block_on(Store::open(&config.database, Access::Existing))?;
        clock.lap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        clock.lap();
        let claim = ClaimRequest { pool: "default", worker_id: &worker_id, lease, limit: 1, flow: &[] };
        let job =
            block_on(store.turn(&[], Some(claim), &retry))?.claimed.pop().context("the replay ran out of jobs")?;
        clock.lap();
        let registry = std::sync::Arc::new(Registry::new(&config, &sandbox));
        let program = runtime.block_on(registry.load(&job.processor))?;
        clock.lap();
        let input = JobInput {
            job_id: &job.id,
            attempt: job.attempt,
            pool: &job.pool,
            processor: &job.processor,
            payload: job.payload.as_bytes(),
        };
        let (limits, grants) = (config.limits_for(&job.processor), config.grants_for(&job.processor));
        let ran = runtime.block_on(sandbox.run(&program, input, &limits, &grants));
        clock.lap();
        let Outcome::Ok(result) = &ran.outcome else {
            anyhow::bail!("echo failed in the replay: {}", ran.outcome.message().unwrap_or_default());
        };
        let result = result.to_string();
        let done = [Finished { job: &job, report: AttemptReport::of(OutcomeKind::Ok), result: Some(&result) }];
        let settled = block_on(store.turn(&done, None, &retry))?.settled;
        ensure!(settled == [Settled::Completed], "the replay lost its claim on job {} ({settled:?})", job.id);
        clock.lap();
        block_on(store.deregister_worker(&worker_id))?;
        drop(heartbeat);
        drop(store);
        clock.lap();
        drop(runtime);
        drop(program);
        drop(sandbox);
        clock.lap();
    }
    Ok(samples)
}

/// Hands each lap's time to the next step's samples.
struct Stopwatch<'a> {
    last: Instant,
    samples: std::slice::IterMut<'a, Vec<Duration>>,
}

impl Stopwatch<'_> {
    fn lap(&mut self) {
        let now = Instant::now();
        self.samples.next().expect("one lap per step").push(now - self.last);
        self.last = now;
    }
}

/// The wall time of one `jobhost ARGS` process on `pool`, from spawn to reaping it.
pub fn time_process(pool: &Pool, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let status = pool.command(args).status().context("cannot spawn jobhost")?;
    let elapsed = started.elapsed();
    ensure!(status.success(), "`jobhost {}` failed ({status})", args.join(" "));
    Ok(elapsed)
}
