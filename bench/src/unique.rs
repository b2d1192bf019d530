//! Section 13, unique jobs: what a unique key costs an enqueue. 10,000 jobs queued with one
//! streamed `Store::enqueue`, each with a key of its own, against the same jobs without keys,
//! in the same run, on SQLite and on PostgreSQL. Every measurement gets a fresh pool, and the
//! two kinds take turns, so neither inherits the other's rows or a warmer cache.

use std::time::{Duration, Instant};

use anyhow::Result;
use jobhost_store::{Access, Store};

use crate::report::{Report, Row, millis, times};
use crate::store::enqueue_with_keys;
use crate::support::{Backend, Bench, Pool, block_on};

pub const SECTION: &str = "unique";
const TARGET_RATIO: f64 = 1.5;
const JOBS: u64 = 10_000;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let rounds = bench.pick(5, 3);
    report.note(format!(
        "unique: {JOBS} jobs queued with one streamed `Store::enqueue`, each with a unique key of its own (no \
         match, so every key is checked, freed where a finished job held it, and indexed), against the same jobs \
         without keys; a fresh pool for each of {rounds} rounds per kind, the kinds taking turns; medians"
    ));
    run_on(bench, report, Backend::Sqlite, rounds)?;
    match bench.pg() {
        Ok(server) => run_on(bench, report, Backend::Postgres(server), rounds)?,
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

fn run_on(bench: &Bench, report: &mut Report, backend: Backend<'_>, rounds: usize) -> Result<()> {
    let name = backend.name();
    let (mut plain, mut keyed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(time_enqueue(bench, backend, false)?);
        keyed.push(time_enqueue(bench, backend, true)?);
    }
    let (plain, keyed) = (median(plain), median(keyed));
    let ratio = keyed.as_secs_f64() / plain.as_secs_f64();
    report.add(Row::info(SECTION, format!("{name}: enqueue {JOBS} jobs without keys"), millis(plain)));
    report.add(Row::info(SECTION, format!("{name}: enqueue {JOBS} jobs, each with a unique key"), millis(keyed)));
    report.add(Row::goal(
        SECTION,
        format!("{name}: enqueue with unique keys ÷ without"),
        times(ratio),
        format!("≤ {}", times(TARGET_RATIO)),
        ratio <= TARGET_RATIO,
    ));
    Ok(())
}

fn time_enqueue(bench: &Bench, backend: Backend<'_>, keyed: bool) -> Result<Duration> {
    let pool = Pool::on(bench, backend, "")?;
    let store = block_on(Store::open(&pool.database(), Access::CreateIfMissing))?;
    let started = Instant::now();
    enqueue_with_keys(&store, JOBS, keyed)?;
    Ok(started.elapsed())
}

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}
