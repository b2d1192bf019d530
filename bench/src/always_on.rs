//! Section 12, always on: how soon an idle following worker (`jobhost work --follow`) starts
//! a job after its enqueue, from the command line (`jobhost seed`) and from the HTTP API (a
//! single-job `POST /api/v1/jobs` to `jobhost serve`), and what that worker costs while it
//! waits, on SQLite and on PostgreSQL.
//!
//! Enqueue to start is a job's `created_at` (stamped by its enqueue statement) to its first
//! attempt's `started_at` (stamped by the claim that started it), both read back through the
//! store and both on one clock (the server's on PostgreSQL, the machine's on SQLite), in
//! whole milliseconds. Jobs are queued one at a time: each once the previous one completed
//! and the worker had 20 ms to go back to waiting, so every enqueue meets an idle worker.
//! The idle cost is the worker process's CPU time (`/proc/PID/stat`, every thread) over a
//! window with nothing queued. Scheduled ticks: on a pool of its own with one schedule due
//! every second, a following worker (which also queues the ticks) runs them; each tick's
//! lateness is its job's first attempt's `started_at` less the tick's due time, as the
//! schedule's runs record it.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use jobhost_store::{JobStatus, Store};

use crate::report::{Report, Row, number};
use crate::server::{Server, client, post_created};
use crate::support::{Backend, Bench, Pool, block_on, list, percentile_duration, process_cpu_seconds, status};

pub const SECTION: &str = "always on";
const TARGET_P50: Duration = Duration::from_millis(5);
const TARGET_P99: Duration = Duration::from_millis(20);
const TARGET_IDLE_SHARE: f64 = 0.005;
const TARGET_TICK_P99: Duration = Duration::from_secs(1);
/// Longest a single job may take to be started and completed before the run is called off.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let jobs = bench.pick(200, 30);
    let idle = bench.pick(Duration::from_secs(60), Duration::from_secs(5));
    let ticks = bench.pick(60, 10);
    report.note(format!(
        "always on: one `jobhost work --follow` (defaults) on a fresh pool; {jobs} jobs queued one at a time by \
         `jobhost seed`, then {jobs} by single-job `POST /api/v1/jobs` to a `jobhost serve`, each once the previous \
         one completed and 20 ms passed; enqueue to start is the job's created_at to its first attempt's started_at \
         (the claim), whole milliseconds on the database's clock; idle CPU is the worker's utime+stime over {} s with \
         nothing queued; scheduled ticks: {ticks} ticks of a schedule due every second (`* * * * * *`) run by one \
         following worker, lateness = first attempt's started_at − the tick's due time",
        idle.as_secs()
    ));
    run_on(bench, report, Backend::Sqlite, jobs, idle)?;
    tick_lateness(bench, report, Backend::Sqlite, ticks)?;
    match bench.pg() {
        Ok(server) => {
            run_on(bench, report, Backend::Postgres(server), jobs, idle)?;
            tick_lateness(bench, report, Backend::Postgres(server), ticks)?;
        }
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

/// The p99 of how late `ticks` ticks of an every-second schedule started.
fn tick_lateness(bench: &Bench, report: &mut Report, backend: Backend<'_>, ticks: usize) -> Result<()> {
    let name = backend.name();
    let (_pool, store, mut worker) =
        Following::on(bench, backend, "schedules:\n  every-second: {cron: '* * * * * *', processor: echo}\n")?;
    let deadline = Instant::now() + PATIENCE + Duration::from_secs(ticks as u64);
    let runs = loop {
        let runs =
            block_on(store.schedules(ticks as u32))?.into_iter().flat_map(|schedule| schedule.runs).collect::<Vec<_>>();
        let done = status(&store)?.jobs.completed;
        if runs.len() >= ticks && done >= ticks as u64 {
            break runs;
        }
        ensure!(Instant::now() < deadline, "{} of {ticks} ticks queued and {done} run in time", runs.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    worker.stop()?;
    let ids: Vec<&str> = runs.iter().map(|run| run.job_id.as_str()).collect();
    let details = block_on(store.jobs(&ids))?;
    let mut late = Vec::with_capacity(runs.len());
    for run in &runs {
        let detail = details.iter().find(|detail| detail.job.id == run.job_id).context("a tick's job is missing")?;
        let Some(attempt) = detail.attempt_history.first() else { continue };
        late.push(Duration::from_millis((attempt.started_at - run.due_at).max(0) as u64));
    }
    ensure!(!late.is_empty(), "no tick's job had started");
    let p99 = percentile_duration(&late, 99.0);
    report.add(Row::goal(
        SECTION,
        format!("{name}: a scheduled tick's start minus its due time, p99 of {}", late.len()),
        format!("{} ms", p99.as_millis()),
        format!("≤ {} ms", TARGET_TICK_P99.as_millis()),
        p99 <= TARGET_TICK_P99,
    ));
    Ok(())
}

fn run_on(bench: &Bench, report: &mut Report, backend: Backend<'_>, jobs: usize, idle: Duration) -> Result<()> {
    let name = backend.name();
    let (pool, store, mut worker) = Following::on(bench, backend, "")?;
    wait_until(&store, "the following worker to be active", |snapshot| snapshot.workers.active == 1)?;

    let from_cli = enqueue_one_at_a_time(&store, jobs, 0, || pool.ok(&["seed"]))?;
    let server = Server::start(&pool)?;
    let http = client();
    let url = server.url("/api/v1/jobs");
    let from_api =
        enqueue_one_at_a_time(&store, jobs, jobs, || post_created(&http, &url, br#"{"processor":"echo"}"#).map(drop))?;
    drop(server);
    for (entry, delays) in [("`jobhost seed`", from_cli), ("`POST /api/v1/jobs`", from_api)] {
        for (p, target) in [(50.0, TARGET_P50), (99.0, TARGET_P99)] {
            let value = percentile_duration(&delays, p);
            report.add(Row::goal(
                SECTION,
                format!("{name}: enqueue to start on an idle following worker, {entry}, p{p}"),
                format!("{} ms", value.as_millis()),
                format!("≤ {} ms", target.as_millis()),
                value <= target,
            ));
        }
    }

    let pid = worker.0.id();
    let before = process_cpu_seconds(pid).context("cannot read the worker's CPU time")?;
    std::thread::sleep(idle);
    let share = (process_cpu_seconds(pid).context("cannot read the worker's CPU time")? - before) / idle.as_secs_f64();
    report.add(Row::goal(
        SECTION,
        format!("{name}: CPU of one idle following worker over {} s", idle.as_secs()),
        format!("{}% of a core", number(share * 100.0, 2)),
        format!("≤ {}% of a core", number(TARGET_IDLE_SHARE * 100.0, 1)),
        share <= TARGET_IDLE_SHARE,
    ));
    worker.stop()?;
    Ok(())
}

/// Queues `jobs` jobs with `enqueue`, each once the previous one completed (the pool held
/// `done_before` completed jobs first), and returns each one's enqueue-to-start delay.
fn enqueue_one_at_a_time(
    store: &Store,
    jobs: usize,
    done_before: usize,
    mut enqueue: impl FnMut() -> Result<()>,
) -> Result<Vec<Duration>> {
    for done in done_before + 1..=done_before + jobs {
        enqueue()?;
        wait_until(store, "the job to complete", |snapshot| snapshot.jobs.completed == done as u64)?;
        // Back to waiting before the next enqueue: every enqueue meets an idle worker.
        std::thread::sleep(Duration::from_millis(20));
    }
    let completed = list(store, Some(JobStatus::Completed), (done_before + jobs) as u64)?;
    // Newest first: the jobs this call queued.
    let ids: Vec<&str> = completed.iter().take(jobs).map(|job| job.id.as_str()).collect();
    let details = block_on(store.jobs(&ids))?;
    ensure!(details.len() == jobs, "{} of {jobs} jobs read back", details.len());
    details
        .iter()
        .map(|detail| {
            let attempt = detail.attempt_history.first().context("a completed job without an attempt")?;
            Ok(Duration::from_millis((attempt.started_at - detail.job.created_at).max(0) as u64))
        })
        .collect()
}

fn wait_until(store: &Store, what: &str, done: impl Fn(&jobhost_store::StatusSnapshot) -> bool) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done(&status(store)?) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The worker process, stopped by SIGTERM (and reaped) however the section ends.
struct Following(Child);

impl Following {
    /// A fresh pool with `config_yaml`, echo compiled into its cache, an observer's store on
    /// it, and one `jobhost work --follow` on it.
    fn on<'a>(bench: &Bench, backend: Backend<'a>, config_yaml: &str) -> Result<(Pool<'a>, Store, Following)> {
        let pool = Pool::on(bench, backend, config_yaml)?;
        pool.create()?;
        pool.warm_echo()?;
        let store = pool.observe()?;
        let worker = pool
            .command(&["work", "--follow"])
            .stderr(Stdio::null())
            .spawn()
            .context("cannot spawn `jobhost work --follow`")?;
        Ok((pool, store, Following(worker)))
    }

    fn stop(&mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().context("cannot wait for the following worker")?;
        ensure!(status.success(), "the following worker exited {status} after SIGTERM");
        Ok(())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
