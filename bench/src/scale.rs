//! Section 6, scale: does a big backlog slow the store down? Claim+complete latency and
//! `status` time with 1,000 and with 1,000,000 pending jobs, in-process, one connection, on
//! SQLite and on PostgreSQL.
//!
//! Each size gets a fresh pool (a SQLite file, or a fresh schema on the benchmark's PostgreSQL
//! server; the large one is kept for the server section's page timings when it runs later)
//! seeded with one streamed `Store::enqueue` call (one transaction, the jobs fed from
//! an iterator); that call is timed and reported as the seeding time. Then, in one process, a
//! claim (batch size 1) and its completion, as two transactions exactly like section 2, are
//! timed together as one sample; the p50 over the samples is the latency. `Store::status(None)`
//! — what `jobhost status` runs — is timed afterwards, median of 5. A few warm-up pairs run
//! first, so both sizes start with the statements prepared and the pages they touch cached.
//!
//! On PostgreSQL the planner's statistics matter: right after the bulk load the table has
//! none (autovacuum gathers them within about a minute), and the claim is planned as if the
//! table were empty — it reads every pending job through `jobs_by_status` and sorts them. So
//! on PostgreSQL a few pairs are timed first, as they come, straight after seeding (reported
//! on their own row), then the benchmark runs `ANALYZE` on the schema (what autovacuum would
//! do) before the warm-up and the measured pairs.

use std::time::{Duration, Instant};

use anyhow::Result;
use jobhost_core::config::DatabaseConfig;
use jobhost_store::{Access, RetryPolicy, Store};

use crate::report::{Report, Row, micros, millis, number, per_second, times};
use crate::store::{activate, claim_and_complete, enqueue};
use crate::support::{Backend, Bench, PgServer, Pool, Shelf, block_on, median_duration, retry_policy};

pub const SECTION: &str = "scale";
const WARM_UP: usize = 20;
const STATUS_RUNS: usize = 5;
const TARGET_SLOWDOWN: f64 = 2.0;
/// Pairs timed on PostgreSQL straight after seeding, before `ANALYZE`.
const BEFORE_ANALYZE: usize = 10;

pub fn run<'a>(bench: &'a Bench, report: &mut Report, shelf: &mut Shelf<'a>) -> Result<()> {
    let small = 1_000;
    let large = bench.pick(1_000_000, 100_000);
    let pairs = 1_000;
    report.note(format!(
        "scale: p50 of {pairs} claim+complete pairs (two transactions each) and median of {STATUS_RUNS} \
         `Store::status(None)` calls, on pools (a SQLite file; a fresh schema of the PostgreSQL server, fsync off) seeded by one \
         streamed `Store::enqueue` with {small} and {large} pending jobs (plus the jobs the pairs use); on \
         PostgreSQL {BEFORE_ANALYZE} pairs are timed straight after seeding, then `ANALYZE` runs (what autovacuum \
         does within a minute of a bulk load) before the warm-up and the measured pairs"
    ));
    run_on(bench, report, shelf, Backend::Sqlite, small, large, pairs)?;
    match bench.pg() {
        Ok(server) => run_on(bench, report, shelf, Backend::Postgres(server), small, large, pairs)?,
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

fn run_on<'a>(
    bench: &Bench,
    report: &mut Report,
    shelf: &mut Shelf<'a>,
    backend: Backend<'a>,
    small: u64,
    large: u64,
    pairs: usize,
) -> Result<()> {
    let name = backend.name();
    let (at_small, _) = measure(bench, backend, small, pairs)?;
    let (at_large, large_pool) = measure(bench, backend, large, pairs)?;
    shelf.keep(backend, large_pool);
    for (jobs, at) in [(small, &at_small), (large, &at_large)] {
        let jobs_text = number(jobs as f64, 0);
        report.add(Row::info(SECTION, format!("{name}: claim+complete p50, {jobs_text} pending"), micros(at.pair_p50)));
        report.add(Row::info(SECTION, format!("{name}: status, {jobs_text} pending (median)"), millis(at.status)));
        if let Some(unanalyzed) = at.before_analyze {
            report.add(Row::info(
                SECTION,
                format!(
                    "{name}: claim+complete p50, {jobs_text} pending, straight after seeding \
                     (no planner statistics yet; {BEFORE_ANALYZE} pairs)"
                ),
                micros(unanalyzed),
            ));
        }
    }
    report.add(Row::info(
        SECTION,
        format!("{name}: seeding {} jobs with one streamed Store::enqueue", number(at_large.seeded as f64, 0)),
        format!(
            "{:.1} s ({})",
            at_large.seeding.as_secs_f64(),
            per_second(at_large.seeded as f64 / at_large.seeding.as_secs_f64(), "jobs")
        ),
    ));
    let slowdown = at_large.pair_p50.as_secs_f64() / at_small.pair_p50.as_secs_f64();
    report.add(Row::goal(
        SECTION,
        format!("{name}: claim+complete p50 at {} ÷ at {}", number(large as f64, 0), number(small as f64, 0)),
        times(slowdown),
        "≤ 2×",
        slowdown <= TARGET_SLOWDOWN,
    ));
    Ok(())
}

struct AtSize {
    pair_p50: Duration,
    status: Duration,
    seeded: u64,
    seeding: Duration,
    /// On PostgreSQL, the p50 of the pairs timed before `ANALYZE`.
    before_analyze: Option<Duration>,
}

/// Measures a fresh pool of `backend` with `pending` jobs, and returns it with the jobs in it.
fn measure<'a>(bench: &Bench, backend: Backend<'a>, pending: u64, pairs: usize) -> Result<(AtSize, Pool<'a>)> {
    let pool = Pool::on(bench, backend, "")?;
    let measured = measure_at(&pool.database(), pool.postgres(), pending, pairs)?;
    Ok((measured, pool))
}

fn measure_at(config: &DatabaseConfig, pg: Option<(&PgServer, &str)>, pending: u64, pairs: usize) -> Result<AtSize> {
    let store = block_on(Store::open(config, Access::CreateIfMissing))?;
    let extra = if pg.is_some() { BEFORE_ANALYZE } else { 0 };
    let seeded = pending + (extra + WARM_UP + pairs) as u64;
    let started = Instant::now();
    enqueue(&store, seeded)?;
    let seeding = started.elapsed();
    let worker_id = "scale-bench";
    activate(&store, worker_id, None)?;
    let retry = retry_policy();
    let before_analyze = match pg {
        Some((server, schema)) => {
            let samples = time_pairs(&store, worker_id, &retry, BEFORE_ANALYZE)?;
            server.analyze(schema)?;
            Some(median_duration(&samples))
        }
        None => None,
    };
    for _ in 0..WARM_UP {
        claim_and_complete(&store, worker_id, &retry)?;
    }
    let samples = time_pairs(&store, worker_id, &retry, pairs)?;
    let mut status = Vec::with_capacity(STATUS_RUNS);
    for _ in 0..STATUS_RUNS {
        let started = Instant::now();
        block_on(store.status(None))?;
        status.push(started.elapsed());
    }
    Ok(AtSize {
        pair_p50: median_duration(&samples),
        status: median_duration(&status),
        seeded,
        seeding,
        before_analyze,
    })
}

/// Times `pairs` claim+complete pairs, one sample each.
pub fn time_pairs(store: &Store, worker_id: &str, retry: &RetryPolicy, pairs: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let started = Instant::now();
        anyhow::ensure!(claim_and_complete(store, worker_id, retry)?, "the scale pool ran dry");
        samples.push(started.elapsed());
    }
    Ok(samples)
}
