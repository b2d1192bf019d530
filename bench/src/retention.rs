//! Section 11, retention: does deleting old jobs hold up claims? Claim+complete p99 on a pool
//! holding 1,000,000 completed jobs finished a month ago, first with nothing deleting, then
//! while `jobhost::retention::run` (what `serve` and `check --interval` run) deletes all of
//! them, in the same run, on SQLite and on PostgreSQL.
//!
//! Seeding uses the store's public API only: a store opened on a clock set a month back
//! (`Store::open_with_clock`) queues the old jobs with one streamed `Store::enqueue`, then
//! completes them in turns that settle the last 1,000 claimed and claim the next 1,000, so
//! they finished a month ago as far as the pool knows. The measured pairs run on a second
//! store on the real clock, exactly as the scale section's (two transactions each); the
//! retention loop runs on a third, on a thread of its own, as it does in a process beside
//! the server's work. Pairs go on, in chunks with fresh jobs queued between them (untimed),
//! until the retention loop has deleted every old job; the p99 of those pairs is compared
//! with the p99 of the same number of pairs before it started.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use jobhost::retention;
use jobhost::shutdown::{self, Stage};
use jobhost_core::config::{Keep, RetentionConfig};
use jobhost_core::units::HumanDuration;
use jobhost_store::{Access, ClaimRequest, Clock, Store};

use crate::report::{Report, Row, micros, number, per_second, times};
use crate::scale::time_pairs;
use crate::store::{LEASE, POOL, activate, check_settled, claim_and_complete, enqueue, finished};
use crate::support::{Backend, Bench, Pool, block_on, percentile_duration, retry_policy};

pub const SECTION: &str = "retention";
const TARGET_SLOWDOWN: f64 = 2.0;
const MONTH: Duration = Duration::from_secs(30 * 86_400);
/// Jobs claimed and completed per turn while seeding.
const SEED_TURN: u32 = 1_000;
/// Pairs timed between two looks at whether the old jobs are gone.
const CHUNK: usize = 200;
const WARM_UP: usize = 20;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let old = bench.pick(1_000_000, 100_000);
    let baseline = bench.pick(2_000, 500);
    report.note(format!(
        "retention: claim+complete p99 (two transactions each, one connection) on a pool holding {old} jobs \
         completed a month ago (seeded through a store on a clock set a month back), {baseline} pairs with \
         nothing deleting, then pairs in chunks of {CHUNK} while `jobhost::retention::run` (batches of {}, \
         retention.completed 7d) deletes all of them on a thread and connection of its own",
        retention::BATCH
    ));
    run_on(bench, report, Backend::Sqlite, old, baseline)?;
    match bench.pg() {
        Ok(server) => run_on(bench, report, Backend::Postgres(server), old, baseline)?,
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

fn run_on(bench: &Bench, report: &mut Report, backend: Backend<'_>, old: u64, baseline: usize) -> Result<()> {
    let name = backend.name();
    let pool = Pool::on(bench, backend, "")?;
    let config = pool.database();
    let started = Instant::now();
    seed_old_completed(&config, old)?;
    let seeding = started.elapsed();
    if let Some((server, schema)) = pool.postgres() {
        // What autovacuum does within a minute of a bulk load.
        server.analyze(schema)?;
    }

    let store = block_on(Store::open(&config, Access::Existing))?;
    let worker_id = "retention-bench";
    activate(&store, worker_id, None)?;
    let retry = retry_policy();
    enqueue(&store, (WARM_UP + baseline) as u64)?;
    for _ in 0..WARM_UP {
        claim_and_complete(&store, worker_id, &retry)?;
    }
    let quiet = time_pairs(&store, worker_id, &retry, baseline)?;

    let settings = RetentionConfig {
        completed: Keep::For(HumanDuration(Duration::from_secs(7 * 86_400))),
        cancelled: Keep::Forever,
        poisoned: Keep::Forever,
        interval: HumanDuration(Duration::from_secs(3_600)),
    };
    let (trigger, stop) = shutdown::channel();
    let deleting = Instant::now();
    let retention_config = config.clone();
    let deleter = std::thread::spawn(move || {
        block_on(async {
            let store = Store::open(&retention_config, Access::Existing).await?;
            retention::run(&store, &settings, stop).await;
            anyhow::Ok(())
        })
    });
    let mut during = Vec::new();
    let fresh_completed = (WARM_UP + baseline) as u64;
    let deleted_after = loop {
        enqueue(&store, CHUNK as u64)?;
        during.extend(time_pairs(&store, worker_id, &retry, CHUNK)?);
        let completed = block_on(store.status(None))?.jobs.completed;
        if completed <= fresh_completed + during.len() as u64 {
            break deleting.elapsed();
        }
        ensure!(!deleter.is_finished(), "the retention loop ended before it deleted the old jobs");
        ensure!(deleting.elapsed() < Duration::from_secs(3_600), "the old jobs were not deleted within an hour");
    };
    trigger.advance(Stage::Draining);
    deleter.join().map_err(|_| anyhow::anyhow!("the retention thread panicked"))??;

    let quiet_p99 = percentile_duration(&quiet, 99.0);
    let during_p99 = percentile_duration(&during, 99.0);
    let old_text = number(old as f64, 0);
    report.add(Row::info(
        SECTION,
        format!("{name}: seeding {old_text} old completed jobs (enqueue, then claim+complete {SEED_TURN} per turn)"),
        format!("{:.1} s", seeding.as_secs_f64()),
    ));
    report.add(Row::info(
        SECTION,
        format!("{name}: claim+complete p99, nothing deleting ({} pairs)", quiet.len()),
        micros(quiet_p99),
    ));
    report.add(Row::info(
        SECTION,
        format!("{name}: claim+complete p99 while retention deletes {old_text} old jobs ({} pairs)", during.len()),
        micros(during_p99),
    ));
    report.add(Row::info(
        SECTION,
        format!("{name}: retention deleting {old_text} jobs beside the claims"),
        format!(
            "{:.1} s ({})",
            deleted_after.as_secs_f64(),
            per_second(old as f64 / deleted_after.as_secs_f64(), "jobs")
        ),
    ));
    let slowdown = during_p99.as_secs_f64() / quiet_p99.as_secs_f64();
    report.add(Row::goal(
        SECTION,
        format!("{name}: claim+complete p99 while deleting ÷ with no deletion"),
        times(slowdown),
        "≤ 2×",
        slowdown <= TARGET_SLOWDOWN,
    ));
    Ok(())
}

/// Queues `count` jobs and completes them all, on a clock a month back.
fn seed_old_completed(config: &jobhost_core::config::DatabaseConfig, count: u64) -> Result<()> {
    let month_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.saturating_sub(MONTH);
    let clock = Clock::Manual(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(month_ago.as_millis() as i64)));
    let store = block_on(Store::open_with_clock(config, Access::CreateIfMissing, 1, clock))?;
    enqueue(&store, count)?;
    let worker_id = "retention-seeder";
    activate(&store, worker_id, None)?;
    let retry = retry_policy();
    let claim = ClaimRequest { pool: POOL, worker_id, lease: LEASE, limit: SEED_TURN, flow: &[] };
    let mut claimed = block_on(store.turn(&[], Some(claim), &retry))?.claimed;
    let mut completed = 0;
    while !claimed.is_empty() {
        let done: Vec<_> = claimed.iter().map(finished).collect();
        let turn = block_on(store.turn(&done, Some(claim), &retry))?;
        check_settled(&done, &turn.settled)?;
        completed += done.len() as u64;
        claimed = turn.claimed;
    }
    ensure!(completed == count, "seeding completed {completed} of {count} jobs");
    Ok(())
}
