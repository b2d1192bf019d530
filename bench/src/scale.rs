//! Section 6, scale: does a big backlog slow the store down? Claim+complete latency and
//! `status` time with 1,000 and with 1,000,000 pending jobs, in-process, one connection.
//!
//! Each size gets a fresh file seeded with `Store::enqueue` in transactions of 50,000 jobs
//! (not timed). Then, in one process, a claim (batch size 1) and its completion, as two
//! transactions exactly like section 2, are timed together as one sample; the p50 over the
//! samples is the latency. `Store::status(None)` — what `jobhost status` runs — is timed
//! afterwards, median of 5. A few warm-up pairs run first, so both sizes start with the
//! statements prepared and the pages they touch cached.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jobhost::config::DatabaseConfig;
use jobhost::store::{Access, NewWorker, Store};

use crate::report::{Report, Row, micros, millis, number, times};
use crate::store::{POOL, claim_and_complete, enqueue};
use crate::support::{Bench, median_duration};

const SECTION: &str = "scale";
const WARM_UP: usize = 20;
const STATUS_RUNS: usize = 5;
const TARGET_SLOWDOWN: f64 = 2.0;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let small = 1_000;
    let large = bench.pick(1_000_000, 100_000);
    let pairs = 1_000;
    report.note(format!(
        "scale: p50 of {pairs} claim+complete pairs (two transactions each) and median of {STATUS_RUNS} \
         `Store::status(None)` calls, on files seeded with {small} and {large} pending jobs"
    ));
    let at_small = measure(small, pairs)?;
    let at_large = measure(large, pairs)?;
    for (jobs, at) in [(small, &at_small), (large, &at_large)] {
        report.add(Row::info(
            SECTION,
            format!("claim+complete p50, {} pending", number(jobs as f64, 0)),
            micros(at.pair_p50),
        ));
        report.add(Row::info(
            SECTION,
            format!("status, {} pending (median)", number(jobs as f64, 0)),
            millis(at.status),
        ));
    }
    let slowdown = at_large.pair_p50.as_secs_f64() / at_small.pair_p50.as_secs_f64();
    report.add(Row::goal(
        SECTION,
        format!("claim+complete p50 at {} ÷ at {}", number(large as f64, 0), number(small as f64, 0)),
        times(slowdown),
        "≤ 2×",
        slowdown <= TARGET_SLOWDOWN,
    ));
    Ok(())
}

struct AtSize {
    pair_p50: Duration,
    status: Duration,
}

fn measure(pending: u64, pairs: usize) -> Result<AtSize> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder for the scale benchmark")?;
    let config = DatabaseConfig { path: dir.path().join("scale.db"), ..DatabaseConfig::default() };
    let mut store = Store::open(&config, Access::CreateIfMissing)?;
    enqueue(&mut store, pending + (WARM_UP + pairs) as u64)?;
    let worker_id = "scale-bench";
    store.activate_worker(&NewWorker { id: worker_id.to_string(), pool: POOL.to_string(), host: None, pid: None })?;
    for _ in 0..WARM_UP {
        claim_and_complete(&mut store, worker_id)?;
    }
    let mut samples = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let started = Instant::now();
        anyhow::ensure!(claim_and_complete(&mut store, worker_id)?, "the scale pool ran dry");
        samples.push(started.elapsed());
    }
    let mut status = Vec::with_capacity(STATUS_RUNS);
    for _ in 0..STATUS_RUNS {
        let started = Instant::now();
        store.status(None)?;
        status.push(started.elapsed());
    }
    Ok(AtSize { pair_p50: median_duration(&samples), status: median_duration(&status) })
}
