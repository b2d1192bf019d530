//! Section 1, end to end: how fast the real binary drains a pool of echo jobs, on SQLite and
//! on PostgreSQL, and what each job costs on PostgreSQL.
//!
//! Each run is a fresh pool: a temporary folder with its config, and the database — a SQLite
//! file in it, or a fresh schema on the benchmark's PostgreSQL server (named in the pool's
//! config, `database.schema`, dropped after the run). `jobhost seed` queues the jobs, a
//! throwaway `jobhost run echo` fills the compiled-module cache (so workers start warm, as on
//! any machine that ran jobhost before), then `jobhost check --max-workers 2` spawns two
//! `jobhost work` processes exactly as an operator would. Nothing is in-process: every claim,
//! sandboxed run and completion goes through the worker the checker launched.
//!
//! The clock starts just before `check` is launched and stops at the latest `finished_at`
//! the workers wrote, read through the store (`Store::list_jobs`) once `Store::status` says
//! every job is `completed`. The pool is polled every 20 ms on SQLite (read-only) and every
//! 100 ms on PostgreSQL (so the polls' share of the per-job cost stays small); polling adds no error to
//! the end time. Workers are waited for between runs so one run never competes with the next.
//!
//! The per-job cost on PostgreSQL is the run's delta, divided by the jobs, of: transactions
//! the server committed in the database (`pg_stat_database.xact_commit`, read after the
//! workers' connections closed, which flushes their counters); the server's CPU time (user +
//! system of the postmaster and all its processes, live ones from `/proc/PID/stat`, exited
//! ones through the postmaster's child times); and the client's, the `jobhost` processes (the
//! checker and the workers it spawned, which this benchmark adopts as their subreaper and
//! reaps, so `getrusage(RUSAGE_CHILDREN)` counts them). Both include the benchmark's polls.
//! On SQLite the store runs inside the jobhost processes, so only their CPU is given.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jobhost_store::JobStatus;

use crate::report::{Report, Row, number, per_second};
use crate::support::{
    Backend, Bench, Pool, become_subreaper, block_on, children_cpu_seconds, epoch_millis, list, median, reap_children,
    status,
};

pub const SECTION: &str = "end to end";
const WORKERS: u32 = 2;
/// Jobs in flight per worker: one at a time, a few, and batches large enough that store
/// commits stop dominating tiny jobs.
const CONCURRENCY: [u32; 4] = [1, 4, 16, 64];
const SQLITE_TARGET: f64 = 10_000.0;
const POSTGRES_TARGET: f64 = 5_000.0;
/// No completion for this long means the pool is stuck, not slow.
const STALL: Duration = Duration::from_secs(60);

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let jobs = bench.pick(10_000, 2_000);
    report.note(format!(
        "end to end: `jobhost seed --count {jobs}` (echo), a warm-up `jobhost run echo`, then \
         `jobhost check --max-workers {WORKERS}` with `worker.concurrency` set in the pool's config, on a fresh \
         SQLite file and on a fresh schema of the PostgreSQL server (fsync off, see the header); time from launching check to the last job's `finished_at`; \
         median of {} run(s). Per-job cost on PostgreSQL: deltas over the run of `pg_stat_database.xact_commit`, \
         of the server's CPU (postmaster and its processes, /proc) and of the jobhost processes' CPU (check and \
         its workers, reaped by the benchmark as subreaper), each divided by the jobs; medians of the runs",
        bench.runs
    ));
    // The server first: its postmaster daemonizes, and must not become one of our orphans.
    let pg = bench.pg();
    become_subreaper()?;
    run_on(bench, report, Backend::Sqlite, jobs)?;
    match pg {
        Ok(server) => run_on(bench, report, Backend::Postgres(server), jobs)?,
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

fn run_on(bench: &Bench, report: &mut Report, backend: Backend<'_>, jobs: u64) -> Result<()> {
    let name = backend.name();
    let mut best = (0.0, 0);
    let mut costs = Vec::new();
    for concurrency in CONCURRENCY {
        let mut rates = Vec::with_capacity(bench.runs);
        let mut runs = Vec::with_capacity(bench.runs);
        for _ in 0..bench.runs {
            let run = drain(bench, backend, jobs, concurrency)?;
            rates.push(run.rate);
            runs.push(run);
        }
        let rate = median(&rates);
        if rate > best.0 {
            best = (rate, concurrency);
        }
        report.add(Row::info(
            SECTION,
            format!("{name}: {} echo jobs, {WORKERS} workers × concurrency {concurrency}", number(jobs as f64, 0)),
            per_second(rate, "jobs"),
        ));
        costs.push((concurrency, cost_text(&runs, jobs)));
    }
    let (rate, concurrency) = best;
    let (target, target_text) = match backend {
        Backend::Sqlite => (SQLITE_TARGET, "≥ 10,000 jobs/s"),
        Backend::Postgres(_) => (POSTGRES_TARGET, "≥ 5,000 jobs/s"),
    };
    report.add(Row::goal(
        SECTION,
        format!("{name}: best of the above (concurrency {concurrency})"),
        per_second(rate, "jobs"),
        target_text,
        rate >= target,
    ));
    for (concurrency, cost) in costs {
        report.add(Row::info(SECTION, format!("{name}: cost per job, concurrency {concurrency}"), cost));
    }
    Ok(())
}

/// One drain of a fresh pool.
struct Drained {
    rate: f64,
    /// CPU seconds of the jobhost processes.
    client_cpu: f64,
    /// On PostgreSQL: transactions committed and the server's CPU seconds (when it is local).
    server: Option<(i64, Option<f64>)>,
}

/// The medians of the runs' per-job costs, as one cell.
fn cost_text(runs: &[Drained], jobs: u64) -> String {
    let per_job = |values: Vec<f64>| median(&values) / jobs as f64;
    let client = format!("{} µs client CPU", number(per_job(runs.iter().map(|r| r.client_cpu * 1e6).collect()), 0));
    let Some(servers) = runs.iter().map(|run| run.server).collect::<Option<Vec<_>>>() else {
        return format!("{client} (jobhost processes, store included)");
    };
    let xacts = per_job(servers.iter().map(|(xacts, _)| *xacts as f64).collect());
    let cpu = match servers.iter().map(|(_, cpu)| cpu.map(|s| s * 1e6)).collect::<Option<Vec<_>>>() {
        Some(cpu) => format!("{} µs server CPU", number(per_job(cpu), 0)),
        None => "server CPU unknown (not a local process)".to_string(),
    };
    format!("{} transactions, {cpu}, {client}", number(xacts, 2))
}

fn drain(bench: &Bench, backend: Backend<'_>, jobs: u64, concurrency: u32) -> Result<Drained> {
    let pool = Pool::on(bench, backend, &format!("worker:\n  concurrency: {concurrency}\n"))?;
    pool.seed(jobs, "echo", 3)?;
    pool.warm_echo()?;
    let server = match backend {
        Backend::Sqlite => None,
        Backend::Postgres(server) => Some(server),
    };
    let poll = match backend {
        Backend::Sqlite => Duration::from_millis(20),
        Backend::Postgres(_) => Duration::from_millis(100),
    };
    let observer = pool.observe()?;
    reap_children(Duration::from_secs(30))?;

    let client_before = children_cpu_seconds();
    let server_before = match server {
        Some(server) => Some((server.xact_commit()?, server.cpu_seconds())),
        None => None,
    };
    let launched = epoch_millis();
    let status_code = pool
        .command(&["check", "--max-workers", &WORKERS.to_string()])
        .status()
        .context("cannot launch `jobhost check`")?;
    ensure!(
        status_code.success(),
        "`jobhost check` failed ({status_code}); run it by hand on a seeded pool to see why"
    );

    let mut progress = (0, Instant::now());
    loop {
        let counts = status(&observer)?.jobs;
        let (completed, failed) = (counts.completed, counts.poisoned + counts.cancelled);
        if completed == jobs {
            break;
        }
        if failed > 0 || progress.1.elapsed() > STALL {
            bail!(
                "the end-to-end run ({}, concurrency {concurrency}) stopped at {completed}/{jobs} completed \
                 with {failed} failed; worker logs:\n{}",
                backend.name(),
                log_tails(&pool)
            );
        }
        if completed > progress.0 {
            progress = (completed, Instant::now());
        }
        std::thread::sleep(poll);
    }
    let finished = list(&observer, Some(JobStatus::Completed), jobs)?
        .iter()
        .filter_map(|job| job.finished_at)
        .max()
        .context("completed jobs without a finished_at")?;
    wait_for_workers_to_exit(&pool, &observer, poll)?;
    drop(observer);
    reap_children(Duration::from_secs(30))?;
    let client_cpu = children_cpu_seconds() - client_before;
    let server = match (server, server_before) {
        (Some(server), Some((xacts_before, cpu_before))) => {
            // The backends of the closed connections flush their counters as they exit.
            std::thread::sleep(Duration::from_millis(300));
            let xacts = server.xact_commit()? - xacts_before;
            let cpu = server.cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
            Some((xacts, cpu))
        }
        _ => None,
    };
    let elapsed_ms = (finished - launched).max(1);
    Ok(Drained { rate: jobs as f64 * 1000.0 / elapsed_ms as f64, client_cpu, server })
}

/// Workers exit on their own once no job is ready; the next run waits for that.
fn wait_for_workers_to_exit(pool: &Pool, observer: &jobhost_store::Store, poll: Duration) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers = block_on(observer.status(None))?.workers;
        if workers.starting + workers.active == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the workers of a drained pool did not exit within 30 s; worker logs:\n{}",
            log_tails(pool)
        );
        std::thread::sleep(poll);
    }
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
