//! Section 7, memory: the peak resident set of a `jobhost work` process, read from the kernel's
//! own accounting (`wait4`'s `ru_maxrss`) when the benchmark reaps it.
//!
//! Two workers, both with the default limits (one job in flight, 64 MiB memory cap) and a warm
//! compiled-module cache: one drains a pool of echo jobs; the other runs one job of the
//! allocation-bomb test processor (`tests/fixtures/processors/alloc_bomb.wat`), which grows
//! its memory 1 MiB at a time and touches every byte until the cap refuses it — the worst a
//! job can do to its worker. Its attempt must end as `memory`, or the figure means nothing.
//! The target is 50 MiB of the worker's own plus the cap of the job it runs.

use anyhow::{Context, Result, ensure};
use jobhost_core::config::Limits;
use jobhost_core::outcome::OutcomeKind;

use crate::report::{Report, Row, mib};
use crate::support::{Bench, Pool, block_on, list, run_to_end, status};

pub const SECTION: &str = "memory";
const OWN_MEMORY: u64 = 50 << 20;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let echo_jobs = bench.pick(200, 50);
    let cap = Limits::default().memory.0;
    let target = OWN_MEMORY + cap;
    let target_text = format!("≤ {} (50 MiB + {} cap)", mib(target), mib(cap));
    report.note(format!(
        "memory: peak RSS (`ru_maxrss` from `wait4`) of `jobhost work` draining {echo_jobs} echo jobs, and of \
         `jobhost work --once` running alloc_bomb into its {} cap; module cache warm",
        mib(cap)
    ));

    let pool = Pool::new(bench, "")?;
    pool.seed(echo_jobs, "echo", 3)?;
    pool.warm_echo()?;
    let echo_peak = run_to_end(pool.command(&["work"]))?.peak_rss;
    let completed = status(&pool.observe()?)?.jobs.completed;
    ensure!(completed == echo_jobs, "the echo worker completed {completed} of {echo_jobs} jobs");
    report.add(Row::goal(
        SECTION,
        format!("worker running {echo_jobs} echo jobs, peak RSS"),
        mib(echo_peak),
        &target_text,
        echo_peak <= target,
    ));

    let pool = Pool::new(bench, "")?;
    let fixture = bench.root.join("tests/fixtures/processors/alloc_bomb.wat");
    std::fs::copy(&fixture, pool.path("processors/alloc_bomb.wasm"))
        .with_context(|| format!("cannot copy the test processor {}", fixture.display()))?;
    pool.seed(1, "alloc_bomb", 1)?;
    // Compiles it into the cache; the run itself fails, as it should.
    pool.command(&["run", "alloc_bomb"]).status().context("cannot run jobhost")?;
    let bomb_peak = run_to_end(pool.command(&["work", "--once"]))?.peak_rss;
    let store = pool.observe()?;
    let job = list(&store, None, 1)?.pop().context("the alloc_bomb pool has no job")?;
    let detail = block_on(store.job(&job.id))?.context("the alloc_bomb job vanished")?;
    let outcome = detail
        .attempt_history
        .first()
        .and_then(|attempt| attempt.outcome)
        .context("the alloc_bomb job left no finished attempt")?;
    ensure!(
        outcome == OutcomeKind::Memory,
        "the alloc_bomb job ended as {outcome}, not {}: the cap did not hold",
        OutcomeKind::Memory
    );
    report.add(Row::goal(
        SECTION,
        "worker running alloc_bomb into its cap, peak RSS",
        mib(bomb_peak),
        &target_text,
        bomb_peak <= target,
    ));
    Ok(())
}
