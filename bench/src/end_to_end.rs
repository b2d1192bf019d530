//! Section 1, end to end: how fast the real binary drains a pool of echo jobs.
//!
//! Each run is a fresh pool in a temporary folder: `jobhost seed` queues the jobs, a
//! throwaway `jobhost run echo` fills the compiled-module cache (so workers start warm, as
//! on any machine that ran jobhost before), then `jobhost check --max-workers 2` spawns two
//! `jobhost work` processes exactly as an operator would. Nothing is in-process: every claim,
//! sandboxed run and completion goes through the worker the checker launched.
//!
//! The clock starts just before `check` is launched and stops at the latest `finished_at`
//! the workers wrote, read from the database once every job is `completed` (the database is
//! polled read-only every 20 ms, so polling adds no error to the end time). Workers are
//! waited for between runs so one run never competes with the next.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::report::{Report, Row, number, per_second};
use crate::support::{Bench, Pool, count, epoch_millis, median};

const SECTION: &str = "end to end";
const WORKERS: u32 = 2;
/// Jobs in flight per worker: one at a time, a few, and batches large enough that store
/// commits stop dominating tiny jobs.
const CONCURRENCY: [u32; 4] = [1, 4, 16, 64];
const TARGET_JOBS_PER_SECOND: f64 = 10_000.0;
const POLL: Duration = Duration::from_millis(20);
/// No completion for this long means the pool is stuck, not slow.
const STALL: Duration = Duration::from_secs(60);

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let jobs = bench.pick(10_000, 2_000);
    report.note(format!(
        "end to end: `jobhost seed --count {jobs}` (echo), a warm-up `jobhost run echo`, then \
         `jobhost check --max-workers {WORKERS}` with `worker.concurrency` set in the pool's config; \
         time from launching check to the last job's `finished_at`; median of {} run(s)",
        bench.runs
    ));
    let mut best = (0.0, 0);
    for concurrency in CONCURRENCY {
        let mut rates = Vec::with_capacity(bench.runs);
        for _ in 0..bench.runs {
            rates.push(drain(bench, jobs, concurrency)?);
        }
        let rate = median(&rates);
        if rate > best.0 {
            best = (rate, concurrency);
        }
        report.add(Row::info(
            SECTION,
            format!("{} echo jobs, {WORKERS} workers × concurrency {concurrency}", number(jobs as f64, 0)),
            per_second(rate, "jobs"),
        ));
    }
    let (rate, concurrency) = best;
    report.add(Row::goal(
        SECTION,
        format!("best of the above (concurrency {concurrency})"),
        per_second(rate, "jobs"),
        "≥ 10,000 jobs/s",
        rate >= TARGET_JOBS_PER_SECOND,
    ));
    Ok(())
}

/// One drain of a fresh pool; returns jobs per second.
fn drain(bench: &Bench, jobs: u64, concurrency: u32) -> Result<f64> {
    let pool = Pool::new(bench, &format!("worker:\n  concurrency: {concurrency}\n"))?;
    pool.seed(jobs, "echo", 3)?;
    pool.warm_echo()?;
    let conn = pool.observe()?;

    let launched = epoch_millis();
    let status = pool
        .command(&["check", "--max-workers", &WORKERS.to_string()])
        .status()
        .context("cannot launch `jobhost check`")?;
    ensure!(status.success(), "`jobhost check` failed ({status}); run it by hand on a seeded pool to see why");

    let mut progress = (0, Instant::now());
    loop {
        let (completed, failed): (i64, i64) = conn.query_row(
            "SELECT count(*) FILTER (WHERE status = 'completed'),
                    count(*) FILTER (WHERE status IN ('poisoned', 'cancelled')) FROM jobs",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        if completed == jobs as i64 {
            break;
        }
        if failed > 0 || progress.1.elapsed() > STALL {
            bail!(
                "the end-to-end run (concurrency {concurrency}) stopped at {completed}/{jobs} completed \
                 with {failed} failed; worker logs:\n{}",
                log_tails(&pool)
            );
        }
        if completed > progress.0 {
            progress = (completed, Instant::now());
        }
        std::thread::sleep(POLL);
    }
    let finished = count(&conn, "SELECT max(finished_at) FROM jobs")?;
    wait_for_workers_to_exit(&pool)?;
    let elapsed_ms = (finished - launched).max(1);
    Ok(jobs as f64 * 1000.0 / elapsed_ms as f64)
}

/// Workers exit on their own once no job is ready; the next run waits for that.
fn wait_for_workers_to_exit(pool: &Pool) -> Result<()> {
    let conn = pool.observe()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&conn, "SELECT count(*) FROM workers WHERE status IN ('starting', 'active')")? > 0 {
        ensure!(
            Instant::now() < deadline,
            "the workers of a drained pool did not exit within 30 s; worker logs:\n{}",
            log_tails(pool)
        );
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The last lines of every worker log, to explain a run that went wrong.
fn log_tails(pool: &Pool) -> String {
    let Ok(entries) = std::fs::read_dir(pool.path("data/logs")) else {
        return "(no worker logs: the checker spawned no worker)".to_string();
    };
    let mut out = String::new();
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("== {}\n", entry.path().display()));
        for line in &lines[lines.len().saturating_sub(10)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
