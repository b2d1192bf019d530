//! Section 8, server: `jobhost serve` as its clients see it — enqueueing through the HTTP API,
//! long-polls waiting on jobs while a worker drains the pool, and the `/metrics` and overview
//! pages of a pool of a million jobs — on SQLite and on PostgreSQL.
//!
//! The server is the real binary, `jobhost serve --listen 127.0.0.1:0` on a scratch pool (no
//! token), started as a process: the benchmark waits for the one line it prints once it accepts
//! connections (`listening on http://127.0.0.1:PORT`), sends its log to `serve.log` in the
//! pool's folder, and stops it with SIGTERM, insisting on exit status 0. The client is ureq
//! (blocking HTTP/1.1 with keep-alive), one agent — so one connection — per client thread, with
//! every request body serialized before the clock starts. Client and server share the
//! machine's cores, so the throughputs include the client's own CPU.
//!
//! - **Enqueue**, on a fresh pool with no job: single-job `POST /api/v1/jobs` from 8 connections
//!   at once (each thread first opens its connection with an untimed request; the clock runs from
//!   releasing the threads together to the last answer); the latency of one such request, on one
//!   connection, requests one after another; and batches of 1,000 jobs (`{"jobs": [...]}`), one
//!   after another on one connection, after one untimed batch, each run on a fresh pool (how
//!   fast a batch goes in depends on the jobs already there, so the pages part also times
//!   batches into its pool of a million). Every answer must be 201 (a batch's with 1,000 ids),
//!   and afterwards each pool, read through the store, must hold exactly the jobs posted.
//! - **Long-poll**: a fresh pool of 20,000 echo jobs queued through the API in batches; N
//!   waiters (10, then 1,000, each on a fresh pool and server), one thread and connection each,
//!   `GET /api/v1/jobs/{id}?wait=30s` on N of the jobs spread evenly in the order they were
//!   queued. Once the server's `jobhost_server_waiters` gauge reads N, two windows are
//!   measured: 2 s of waiting with no worker, so nothing finishes (the pure cost of waiting),
//!   then `jobhost work --concurrency 64` draining the pool, until every waiter has its answer
//!   (which must say `completed`) and the worker has exited. Over each window: the server's CPU
//!   (utime + stime of `/proc/PID/stat`, all its threads, in 10 ms clock ticks) and its store
//!   queries (the counter `jobhost_server_store_queries_total` read from `/metrics` before and
//!   after, less what one `/metrics` request itself queries, learnt by reading it once more),
//!   each divided by the window's wall time; the cost of waiting should not grow with N. What
//!   the drain costs beyond waiting (at the first window's rate), divided by N, is the cost of
//!   answering one long-poll. A waiter's wake-up latency is the client's clock when the answer
//!   has been read minus the `finished_at` in it (one machine, one clock; `finished_at` is in
//!   milliseconds).
//! - **Pages**: the pool of 1,000,000 pending jobs that the scale section seeded, when it ran
//!   earlier in this benchmark (it keeps it for this section), or else a fresh one seeded by
//!   `jobhost seed --count 1000000`. After 3 warm-up requests, 20 `GET /metrics` and then 20
//!   `GET /` (the overview page) one after another on one connection; p50 and max. The metrics
//!   must count every job of the pool in `jobhost_jobs`, and the page must show its counts.
//!   Then 20 batches of 1,000 jobs into that pool, timed as in the enqueue part.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use ureq::Agent;

use crate::report::{Report, Row, micros, millis, number, per_second, times};
use crate::support::{
    Backend, Bench, Pool, Shelf, median, median_duration, percentile, percentile_duration, process_cpu_seconds, status,
};

pub const SECTION: &str = "server";
/// Client connections posting single jobs at once.
const CONNECTIONS: usize = 8;
/// Single-job requests before anything is timed: connection, statements and pages warm.
const WARM_UP: usize = 20;
pub const BATCH: usize = 1_000;
const BATCH_TARGET: f64 = 50_000.0;
const WAITERS: [usize; 2] = [10, 1_000];
const WAIT: &str = "30s";
const WORKER_CONCURRENCY: &str = "64";
/// How long the waiters wait with nothing finishing before the worker starts.
const IDLE: Duration = Duration::from_secs(2);
const PAGE_WARM_UP: usize = 3;
const PAGE_REQUESTS: usize = 20;
const PAGE_TARGET: Duration = Duration::from_millis(50);
const QUERIES: &str = "jobhost_server_store_queries_total";
const WAITING: &str = "jobhost_server_waiters";
/// How long the server may take to say it listens, to stop after SIGTERM, and the waiters to
/// be registered.
const STARTUP: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);
/// No request of the benchmark should take this long; long-polls end after `WAIT`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A waiter thread only sends a request and parses the answer.
const WAITER_STACK: usize = 256 << 10;

/// How much each part does; smaller in a `--quick` run.
struct Sizes {
    /// Single-job requests per run, over all connections (a multiple of `CONNECTIONS`).
    singles: usize,
    /// Single-job requests timed one by one for the latency.
    latency: usize,
    /// Batches of `BATCH` per run.
    batches: usize,
    /// Jobs the worker drains under the long-polls.
    drained: usize,
    /// Jobs of the pool whose pages are timed.
    big: u64,
    /// Batches of `BATCH` posted into that pool afterwards.
    big_batches: usize,
}

pub fn run<'a>(bench: &'a Bench, report: &mut Report, shelf: &mut Shelf<'a>) -> Result<()> {
    let sizes = Sizes {
        singles: bench.pick(4_000, 800),
        latency: bench.pick(1_000, 200),
        batches: bench.pick(50, 10),
        drained: bench.pick(20_000, 4_000),
        big: bench.pick(1_000_000, 100_000),
        big_batches: bench.pick(20, 5),
    };
    report.note(format!(
        "server: `jobhost serve --listen 127.0.0.1:0` as a process, driven by ureq (HTTP/1.1 keep-alive, one \
         connection per client thread, bodies serialized beforehand; client and server share the cores). Enqueue: \
         {} single-job `POST /api/v1/jobs` over {CONNECTIONS} connections released together, median of {} run(s), \
         and the latency of {} single-job POSTs one after another on one connection, on a fresh pool; {} batches \
         of {BATCH} (`{{\"jobs\": [...]}}`) one after another on one connection after an untimed one, on a fresh \
         pool per run, median of {} run(s); each pool is then checked to hold every job posted. Long-poll: N \
         `GET /api/v1/jobs/{{id}}?wait={WAIT}` on N of {} echo jobs (spread evenly), one connection each; once \
         `{WAITING}` reads N, {:.0} s with nothing finishing, then `jobhost work --concurrency \
         {WORKER_CONCURRENCY}` draining the pool up to the last answer and the worker's exit; over each window the \
         server's CPU (utime+stime of /proc/PID/stat, 10 ms clock ticks) and the delta of `{QUERIES}` (less one \
         `/metrics` request's own), per second, one run each; the drain's cost beyond waiting ÷ N is the cost per \
         answer; wake-up = answer read − the job's `finished_at`. Pages: {PAGE_WARM_UP} warm-up then \
         {PAGE_REQUESTS} requests each of `/metrics` and `/` on one connection, on the scale section's pool of {} \
         pending jobs when it ran before this section, else on one seeded by `jobhost seed --count {}`; then {} \
         batches of {BATCH} into that pool, timed as above",
        sizes.singles,
        bench.runs,
        sizes.latency,
        sizes.batches,
        bench.runs,
        sizes.drained,
        bench.pick(IDLE, IDLE / 2).as_secs_f64(),
        number(sizes.big as f64, 0),
        sizes.big,
        sizes.big_batches,
    ));
    let mut failed = run_on(bench, report, shelf, Backend::Sqlite, &sizes);
    match bench.pg() {
        Ok(server) => failed += run_on(bench, report, shelf, Backend::Postgres(server), &sizes),
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    ensure!(failed == 0, "{failed} part(s) of the server section failed; their rows say why");
    Ok(())
}

/// The three parts on one backend; a part that fails is a row, and the others still run.
/// Returns how many failed.
fn run_on<'a>(bench: &Bench, report: &mut Report, shelf: &mut Shelf<'a>, backend: Backend<'a>, sizes: &Sizes) -> usize {
    let name = backend.name();
    let results = [
        ("enqueue", enqueue(bench, report, backend, sizes)),
        ("long-poll", long_poll(bench, report, backend, sizes)),
        ("pages", pages(bench, report, shelf, backend, sizes)),
    ];
    let mut failed = 0;
    for (part, result) in results {
        if let Err(err) = result {
            failed += 1;
            eprintln!("error in the server section ({name}, {part}): {err:#}");
            report.add(Row::info(SECTION, format!("{name}: {part}"), format!("failed: {err:#}")));
        }
    }
    failed
}

fn enqueue(bench: &Bench, report: &mut Report, backend: Backend<'_>, sizes: &Sizes) -> Result<()> {
    let name = backend.name();
    let pool = Pool::on(bench, backend, "")?;
    pool.create()?;
    let server = Server::start(&pool)?;
    let url = server.url("/api/v1/jobs");
    let client = client();
    let mut posted = 0;
    for seq in 0..WARM_UP {
        post_created(&client, &url, &single_body(seq))?;
        posted += 1;
    }

    let mut single_rates = Vec::with_capacity(bench.runs);
    for _ in 0..bench.runs {
        single_rates.push(concurrent_singles(&url, sizes.singles)?);
        // Each connection's opening request queued a job too.
        posted += sizes.singles + CONNECTIONS;
    }

    let bodies: Vec<Vec<u8>> = (0..sizes.latency).map(single_body).collect();
    let mut latencies = Vec::with_capacity(sizes.latency);
    for body in &bodies {
        let started = Instant::now();
        post_created(&client, &url, body)?;
        latencies.push(started.elapsed());
    }
    posted += sizes.latency;

    server.stop()?;
    let pending = status(&pool.observe()?)?.jobs.pending;
    ensure!(
        pending == posted as u64,
        "the server answered 201 for {posted} jobs, but the pool holds {pending} pending jobs"
    );

    // Batches, each run on a fresh pool: how fast a batch goes in depends on how many jobs
    // the pool holds already (the pages part measures them into a pool of a million).
    let mut batch_rates = Vec::with_capacity(bench.runs);
    for _ in 0..bench.runs {
        let pool = Pool::on(bench, backend, "")?;
        pool.create()?;
        let server = Server::start(&pool)?;
        batch_rates.push(time_batches(&client, &server.url("/api/v1/jobs"), sizes.batches)?);
        server.stop()?;
        let pending = status(&pool.observe()?)?.jobs.pending;
        let posted = (sizes.batches + 1) * BATCH;
        ensure!(pending == posted as u64, "the server accepted {posted} jobs in batches, but the pool holds {pending}");
    }

    report.add(Row::info(
        SECTION,
        format!("{name}: enqueue, single-job POSTs over {CONNECTIONS} connections"),
        per_second(median(&single_rates), "jobs"),
    ));
    for p in [50.0, 99.0] {
        report.add(Row::info(
            SECTION,
            format!("{name}: enqueue, one single-job POST, 1 connection, p{p}"),
            micros(percentile_duration(&latencies, p)),
        ));
    }
    let into = format!("into an empty pool ({} jobs)", number((sizes.batches * BATCH) as f64, 0));
    report.add(batch_row(backend, &into, median(&batch_rates)));
    Ok(())
}

/// Jobs per second of `batches` batches of `BATCH` jobs posted one after another, after one
/// untimed batch; every answer must carry `BATCH` ids.
fn time_batches(client: &Agent, url: &str, batches: usize) -> Result<f64> {
    let bodies: Vec<Vec<u8>> = (0..=batches).map(|batch| batch_body(batch * BATCH, BATCH)).collect();
    let mut started = Instant::now();
    for (i, body) in bodies.iter().enumerate() {
        let ids = ids_of(&post_created(client, url, body)?)?;
        ensure!(ids.len() == BATCH, "a batch of {BATCH} jobs was answered with {} ids", ids.len());
        if i == 0 {
            started = Instant::now();
        }
    }
    Ok((batches * BATCH) as f64 / started.elapsed().as_secs_f64())
}

/// The row of a batch throughput; the target is SQLite's.
fn batch_row(backend: Backend<'_>, into: &str, rate: f64) -> Row {
    let what =
        format!("{}: enqueue, batches of {} jobs, 1 connection, {into}", backend.name(), number(BATCH as f64, 0));
    let value = per_second(rate, "jobs");
    match backend {
        Backend::Sqlite => Row::goal(SECTION, what, value, "≥ 50,000 jobs/s", rate >= BATCH_TARGET),
        Backend::Postgres(_) => Row::info(SECTION, what, value),
    }
}

/// Jobs per second of `total` single-job POSTs, `total / CONNECTIONS` on each of
/// `CONNECTIONS` connections, released together once every connection is open.
fn concurrent_singles(url: &str, total: usize) -> Result<f64> {
    let each = total / CONNECTIONS;
    let barrier = Arc::new(Barrier::new(CONNECTIONS + 1));
    let threads: Vec<JoinHandle<Result<()>>> = (0..CONNECTIONS)
        .map(|connection| {
            let (barrier, url) = (Arc::clone(&barrier), url.to_string());
            std::thread::spawn(move || {
                let client = client();
                let bodies: Vec<Vec<u8>> = (0..each).map(|i| single_body(connection * each + i)).collect();
                let opened = post_created(&client, &url, &single_body(0));
                barrier.wait();
                opened?;
                for body in &bodies {
                    post_created(&client, &url, body)?;
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for thread in threads {
        thread.join().map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok((each * CONNECTIONS) as f64 / started.elapsed().as_secs_f64())
}

/// What the server spent over a window of wall time.
struct Cost {
    window: Duration,
    /// CPU seconds of the server process.
    cpu: f64,
    /// Store queries the server made.
    queries: f64,
}

impl Cost {
    fn cpu_per_second(&self) -> f64 {
        self.cpu / self.window.as_secs_f64()
    }

    fn queries_per_second(&self) -> f64 {
        self.queries / self.window.as_secs_f64()
    }

    fn text(&self) -> String {
        format!(
            "{} ms CPU/s, {} store queries/s",
            number(self.cpu_per_second() * 1e3, 0),
            number(self.queries_per_second(), 0)
        )
    }
}

/// One long-poll run: N waiters, first with nothing finishing, then while a worker drains.
struct LongPolls {
    waiters: usize,
    jobs: usize,
    idle: Cost,
    drain: Cost,
    /// Each waiter's wake-up latency, in milliseconds.
    wake_ups: Vec<f64>,
}

impl LongPolls {
    /// The drain's cost beyond what waiting alone costs (at the idle rate), per answered
    /// long-poll: store queries and CPU seconds.
    fn per_answer(&self) -> (f64, f64) {
        let window = self.drain.window.as_secs_f64();
        let waiters = self.waiters as f64;
        (
            (self.drain.queries - self.idle.queries_per_second() * window) / waiters,
            (self.drain.cpu - self.idle.cpu_per_second() * window) / waiters,
        )
    }
}

fn long_poll(bench: &Bench, report: &mut Report, backend: Backend<'_>, sizes: &Sizes) -> Result<()> {
    let name = backend.name();
    let idle = bench.pick(IDLE, IDLE / 2);
    let mut runs = Vec::with_capacity(WAITERS.len());
    for waiters in WAITERS {
        let run = long_polls(bench, backend, sizes.drained, waiters, idle)?;
        let polls = format!("{name}: {} long-polls", number(waiters as f64, 0));
        let draining = format!(
            "{polls} while `jobhost work --concurrency {WORKER_CONCURRENCY}` drains {} jobs",
            number(run.jobs as f64, 0)
        );
        report.add(Row::info(
            SECTION,
            format!("{polls} waiting, no job finishing ({:.1} s): server cost", idle.as_secs_f64()),
            run.idle.text(),
        ));
        report.add(Row::info(SECTION, format!("{draining}: server cost"), run.drain.text()));
        // With few waiters the CPU share per answer is below what 10 ms clock ticks resolve.
        if waiters == WAITERS[WAITERS.len() - 1] {
            let (queries, cpu) = run.per_answer();
            report.add(Row::info(
                SECTION,
                format!("{draining}: cost per answered long-poll beyond waiting"),
                format!("{} store queries, {} µs server CPU", number(queries, 2), number(cpu * 1e6, 0)),
            ));
        }
        report.add(Row::info(
            SECTION,
            format!("{draining}: wake-up (finished_at → answer read), p50 / p99"),
            format!(
                "{} ms / {} ms",
                number(percentile(&run.wake_ups, 50.0), 0),
                number(percentile(&run.wake_ups, 99.0), 0)
            ),
        ));
        report.add(Row::info(
            SECTION,
            format!("{draining}: the drain ({:.2} s)", run.drain.window.as_secs_f64()),
            per_second(run.jobs as f64 / run.drain.window.as_secs_f64(), "jobs"),
        ));
        runs.push(run);
    }
    if let [few, many] = &runs[..] {
        let ratio = |many: f64, few: f64, unit: &str| {
            if few > 0.0 { times(many / few) } else { format!("{} {unit} vs 0", number(many, 0)) }
        };
        for (when, at_few, at_many) in
            [("waiting", &few.idle, &many.idle), ("during the drain", &few.drain, &many.drain)]
        {
            report.add(Row::info(
                SECTION,
                format!(
                    "{name}: server cost per second {when}, {} ÷ {} long-polls",
                    number(many.waiters as f64, 0),
                    number(few.waiters as f64, 0)
                ),
                format!(
                    "{} CPU, {} store queries",
                    ratio(at_many.cpu_per_second() * 1e3, at_few.cpu_per_second() * 1e3, "ms/s"),
                    ratio(at_many.queries_per_second(), at_few.queries_per_second(), "queries/s")
                ),
            ));
        }
    }
    Ok(())
}

fn long_polls(bench: &Bench, backend: Backend<'_>, jobs: usize, waiters: usize, idle: Duration) -> Result<LongPolls> {
    let pool = Pool::on(bench, backend, "")?;
    pool.create()?;
    pool.warm_echo()?;
    let server = Server::start(&pool)?;
    let client = client();
    let url = server.url("/api/v1/jobs");
    let mut ids = Vec::with_capacity(jobs);
    for start in (0..jobs).step_by(BATCH) {
        ids.extend(ids_of(&post_created(&client, &url, &batch_body(start, BATCH.min(jobs - start)))?)?);
    }
    ensure!(ids.len() == jobs, "queued {jobs} jobs through the API but got {} ids", ids.len());

    let threads = (0..waiters)
        .map(|i| {
            spawn_waiter(server.url(&format!("/api/v1/jobs/{}?wait={WAIT}", ids[(2 * i + 1) * jobs / (2 * waiters)])))
        })
        .collect::<Result<Vec<_>>>()?;
    server.wait_for_waiters(&client, waiters)?;
    let (idle, ()) = server.cost(&client, || {
        std::thread::sleep(idle);
        Ok(())
    })?;

    let log = pool.path("work.log");
    let (drain, (wake_ups, worker_status)) = server.cost(&client, || {
        let mut worker = pool
            .command(&["work", "--concurrency", WORKER_CONCURRENCY])
            .stderr(File::create(&log).with_context(|| format!("cannot create {}", log.display()))?)
            .spawn()
            .context("cannot spawn `jobhost work`")?;
        let mut wake_ups = Vec::with_capacity(waiters);
        let mut failure = None;
        for thread in threads {
            match thread.join().unwrap_or_else(|_| Err(anyhow!("a waiter thread panicked"))) {
                Ok(wake_up) => wake_ups.push(wake_up),
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        let worker_status = worker.wait().context("cannot wait for `jobhost work`")?;
        match failure {
            Some(err) => Err(err.context(format!("a long-poll failed; the server's log: {}", server.log_tail()))),
            None => Ok((wake_ups, worker_status)),
        }
    })?;
    ensure!(
        worker_status.success(),
        "`jobhost work` failed ({worker_status}): {}",
        std::fs::read_to_string(&log).unwrap_or_default().trim()
    );
    server.stop()?;
    let completed = status(&pool.observe()?)?.jobs.completed;
    ensure!(completed == jobs as u64, "the worker completed {completed} of {jobs} jobs");
    Ok(LongPolls { waiters, jobs, idle, drain, wake_ups })
}

/// A thread that long-polls `url` on its own connection and returns its wake-up latency in
/// milliseconds: when the answer was read, less the job's `finished_at`.
fn spawn_waiter(url: String) -> Result<JoinHandle<Result<f64>>> {
    std::thread::Builder::new()
        .name("waiter".to_string())
        .stack_size(WAITER_STACK)
        .spawn(move || {
            let body = get_ok(&client(), &url)?;
            let received = epoch_millis_f64();
            let job: Value = serde_json::from_str(&body).with_context(|| format!("GET {url} answered no JSON"))?;
            ensure!(
                job["status"] == "completed",
                "GET {url} answered with status {} (the wait ended before the job finished?)",
                job["status"]
            );
            let finished = job["finished_at"].as_i64().with_context(|| format!("GET {url}: no finished_at"))?;
            Ok(received - finished as f64)
        })
        .context("cannot start a waiter thread")
}

fn pages<'a>(
    bench: &Bench,
    report: &mut Report,
    shelf: &mut Shelf<'a>,
    backend: Backend<'a>,
    sizes: &Sizes,
) -> Result<()> {
    let name = backend.name();
    let pool = match shelf.take(backend) {
        Some(pool) => {
            println!("  timing the pages on the scale section's pool ({name})");
            pool
        }
        None => {
            let pool = Pool::on(bench, backend, "")?;
            println!("  seeding {} jobs for the page timings ({name})", number(sizes.big as f64, 0));
            pool.seed(sizes.big, "echo", 3)?;
            pool
        }
    };
    let counts = status(&pool.observe()?)?.jobs;
    let jobs = counts.pending + counts.claimed + counts.completed + counts.poisoned + counts.cancelled;
    let server = Server::start(&pool)?;
    let client = client();
    for (path, what) in [("/metrics", "`GET /metrics`"), ("/", "overview page `GET /`")] {
        let url = server.url(path);
        let mut samples = Vec::with_capacity(PAGE_REQUESTS);
        for i in 0..PAGE_WARM_UP + PAGE_REQUESTS {
            let started = Instant::now();
            let body = get_ok(&client, &url)?;
            let elapsed = started.elapsed();
            if path == "/metrics" {
                let counted = sample(&body, "jobhost_jobs");
                ensure!(
                    counted == Some(jobs as f64),
                    "/metrics counts {counted:?} jobs in jobhost_jobs; the pool has {jobs}"
                );
            } else {
                ensure!(body.contains(r#"data-count="pending""#), "the overview page shows no data-count=\"pending\"");
            }
            if i >= PAGE_WARM_UP {
                samples.push(elapsed);
            }
        }
        let what = format!("{name}: {what}, {} jobs in the pool", number(jobs as f64, 0));
        let p50 = median_duration(&samples);
        report.add(Row::goal(
            SECTION,
            format!("{what}, p50 of {PAGE_REQUESTS}"),
            millis(p50),
            "≤ 50 ms",
            p50 <= PAGE_TARGET,
        ));
        let max = samples.iter().max().copied().unwrap_or_default();
        report.add(Row::info(SECTION, format!("{what}, max of {PAGE_REQUESTS}"), millis(max)));
    }
    let rate = time_batches(&client, &server.url("/api/v1/jobs"), sizes.big_batches)?;
    server.stop()?;
    let now = status(&pool.observe()?)?.jobs.pending;
    let posted = ((sizes.big_batches + 1) * BATCH) as u64;
    ensure!(
        now == counts.pending + posted,
        "the server accepted {posted} jobs in batches, but the pool gained {}",
        now - counts.pending
    );
    report.add(batch_row(backend, &format!("into a pool of {} jobs", number(jobs as f64, 0)), rate));
    Ok(())
}

/// A running `jobhost serve` on a free port of 127.0.0.1; SIGTERM when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
    log: PathBuf,
    /// Kept open after the first line, so a later write to stdout never meets a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Server {
    /// Starts `jobhost serve --listen 127.0.0.1:0` on `pool` and waits for its line
    /// `listening on http://…`.
    pub fn start(pool: &Pool) -> Result<Server> {
        let log = pool.path("serve.log");
        let log_file = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = pool
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .env_remove("JOBHOST_TOKEN")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("cannot spawn `jobhost serve`")?;
        let stdout = child.stdout.take().context("`jobhost serve` has no stdout pipe")?;
        let mut server = Server { child, base: String::new(), log, _stdout: None };
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            let _ = sender.send((read, reader));
        });
        let line = match receiver.recv_timeout(STARTUP) {
            Ok((Ok(line), reader)) => {
                server._stdout = Some(reader);
                line
            }
            Ok((Err(err), _)) => bail!("cannot read the stdout of `jobhost serve`: {err}"),
            Err(_) => {
                bail!("`jobhost serve` did not say it listens within {STARTUP:?}; its log: {}", server.log_tail())
            }
        };
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            bail!(
                "`jobhost serve` printed {:?}, not `listening on http://…` ({}); its log: {}",
                line.trim(),
                server.child.try_wait().ok().flatten().map_or("still running".to_string(), |s| s.to_string()),
                server.log_tail()
            );
        };
        server.base = base.trim_end_matches('/').to_string();
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// CPU seconds the server process has used so far (all threads).
    fn cpu_seconds(&self) -> Result<f64> {
        process_cpu_seconds(self.child.id()).context("cannot read the server's /proc/PID/stat (did it exit?)")
    }

    /// A metric's value on `/metrics` (summed over its label sets).
    fn metric(&self, client: &Agent, name: &str) -> Result<f64> {
        let text = get_ok(client, &self.url("/metrics"))?;
        sample(&text, name).with_context(|| format!("/metrics has no sample named {name}"))
    }

    /// What the server spends while `work` runs: its CPU (read just around `work`) and its store
    /// queries (the counter read from `/metrics` before and after, less what one `/metrics`
    /// request itself queries, learnt by reading it once more).
    fn cost<T>(&self, client: &Agent, work: impl FnOnce() -> Result<T>) -> Result<(Cost, T)> {
        let queries_before = self.metric(client, QUERIES)?;
        let cpu_before = self.cpu_seconds()?;
        let started = Instant::now();
        let done = work()?;
        let window = started.elapsed();
        let cpu = self.cpu_seconds()? - cpu_before;
        let queries_after = self.metric(client, QUERIES)?;
        let own = self.metric(client, QUERIES)? - queries_after;
        Ok((Cost { window, cpu, queries: queries_after - queries_before - own }, done))
    }

    /// Waits until the server counts `waiters` long-polls waiting.
    pub fn wait_for_waiters(&self, client: &Agent, waiters: usize) -> Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            let waiting = self.metric(client, WAITING)?;
            if waiting >= waiters as f64 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{WAITING} still reads {waiting} after {STARTUP:?}, with {waiters} long-polls sent"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and insists on a clean exit.
    pub fn stop(mut self) -> Result<()> {
        let status = self.terminate()?;
        ensure!(status.success(), "`jobhost serve` exited with {status} after SIGTERM; its log: {}", self.log_tail());
        Ok(())
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("`jobhost serve` was still running {STOP:?} after SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of the server's log, to explain a failure.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // One line, so it fits a row of the report.
        let tail = lines[lines.len().saturating_sub(20)..].join(" / ");
        if tail.is_empty() { "(empty)".to_string() } else { tail }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(err) = self.terminate() {
            eprintln!("warning: {err:#}");
        }
    }
}

/// An HTTP client with its own connection: keep-alive, no redirects followed, statuses
/// returned rather than turned into errors.
pub fn client() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// POSTs a JSON body and insists on 201 Created; returns the answer's body.
pub fn post_created(client: &Agent, url: &str, body: &[u8]) -> Result<String> {
    let mut response =
        client.post(url).content_type("application/json").send(body).with_context(|| format!("POST {url} failed"))?;
    let text = response.body_mut().read_to_string().with_context(|| format!("cannot read the answer to POST {url}"))?;
    let code = response.status().as_u16();
    ensure!(code == 201, "POST {url} answered {code}, not 201: {}", clip(&text));
    Ok(text)
}

/// GETs `url` and insists on 200 OK; returns the body.
pub fn get_ok(client: &Agent, url: &str) -> Result<String> {
    let mut response = client.get(url).call().with_context(|| format!("GET {url} failed"))?;
    let text = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .with_context(|| format!("cannot read the answer to GET {url}"))?;
    let code = response.status().as_u16();
    ensure!(code == 200, "GET {url} answered {code}, not 200: {}", clip(&text));
    Ok(text)
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(300) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn single_body(seq: usize) -> Vec<u8> {
    json!({"processor": "echo", "payload": {"seq": seq}}).to_string().into_bytes()
}

/// `{"jobs": [...]}` of `count` echo jobs, numbered from `first`.
pub fn batch_body(first: usize, count: usize) -> Vec<u8> {
    let jobs: Vec<Value> =
        (first..first + count).map(|seq| json!({"processor": "echo", "payload": {"seq": seq}})).collect();
    json!({ "jobs": jobs }).to_string().into_bytes()
}

/// The `ids` of a batch's answer, in order.
pub fn ids_of(answer: &str) -> Result<Vec<String>> {
    let answer: Value = serde_json::from_str(answer).context("a batch was answered with something not JSON")?;
    answer["ids"]
        .as_array()
        .context("a batch's answer has no \"ids\" array")?
        .iter()
        .map(|id| id.as_str().map(str::to_string).context("a batch's answer has an id that is not a string"))
        .collect()
}

/// The sum of a metric's samples over all its label sets, in Prometheus/OpenMetrics text;
/// `None` if it has none.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let rest = match rest.strip_prefix('{') {
            Some(labels) => match labels.find('}') {
                Some(end) => &labels[end + 1..],
                None => continue,
            },
            None if rest.starts_with(' ') => rest,
            None => continue,
        };
        if let Some(value) = rest.split_whitespace().next().and_then(|value| value.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// Milliseconds since the Unix epoch, with the fraction.
fn epoch_millis_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_labels() {
        let text = "# TYPE jobhost_jobs gauge\n\
                    jobhost_jobs{pool=\"default\",status=\"pending\"} 3\n\
                    jobhost_jobs{pool=\"default\",status=\"completed\"} 4\n\
                    jobhost_jobs_other 100\n\
                    jobhost_server_store_queries_total 17\n\
                    # EOF\n";
        assert_eq!(sample(text, "jobhost_jobs"), Some(7.0));
        assert_eq!(sample(text, "jobhost_server_store_queries_total"), Some(17.0));
        assert_eq!(sample(text, "jobhost_server_waiters"), None);
    }
}
