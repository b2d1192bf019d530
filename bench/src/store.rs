//! Section 2, store alone: claim+complete pairs per second on one SQLite file, and on one
//! PostgreSQL schema, in 1, 2, 4 and 8 OS processes, through `jobhost_store` with no sandbox
//! in the way.
//!
//! Each process is this benchmark re-invoked as `jobhost-bench store-worker`: it opens its
//! own [`Store`], registers as an active worker, says `ready`, and waits on stdin, so every
//! process starts together when the parent releases them (connection setup is not timed).
//! Then it claims one job at a time (batch size 1) and completes it with a small JSON result,
//! until no job is left, in one of two shapes ([`Shape`]):
//! - **two transactions per job**: claim, commit, complete, commit — the same shape as the
//!   original example's store (a `claim` call, then a `complete` call), measured against it
//!   in section 3;
//! - **one transaction per job**: each transaction completes the job claimed by the previous
//!   one and claims the next, which is what `jobhost work` does (it records finished jobs and
//!   claims their replacements in one batch).
//!
//! The SQLite files live in the temporary folder, on its real filesystem; each PostgreSQL run
//! gets a fresh schema on the benchmark's server (dropped afterwards). The wall time runs from
//! releasing the processes to the last exit. Afterwards the pool is read back through the
//! store (`Store::status`, `Store::list_jobs`): every job `completed`, one attempt each. A job
//! with more than one attempt was handed to two workers; the count must be 0.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::ValueEnum;
use jobhost_core::config::{DatabaseConfig, Synchronous};
use jobhost_core::outcome::OutcomeKind;
use jobhost_store::{
    Access, AttemptReport, ClaimRequest, ClaimedJob, Finished, JobRequest, JobRules, NewJob, NewWorker, Refusal,
    RetryPolicy, Settled, Store,
};

use crate::report::{Report, Row, number, per_second};
use crate::support::{Backend, Bench, PgServer, block_on, list, median, retry_policy, status};

pub const SECTION: &str = "store";
const PROCESSES: [usize; 4] = [1, 2, 4, 8];
pub const POOL: &str = "bench";
pub const LEASE: Duration = Duration::from_secs(60);
const RESULT: &str = r#"{"status":"completed","processed":true}"#;

/// Jobs per measurement; section 3 runs the original example's store on the same number.
pub fn jobs(bench: &Bench) -> u64 {
    bench.pick(3_000, 500)
}

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let jobs = jobs(bench);
    let dir = std::env::temp_dir();
    report.note(format!(
        "store: {jobs} jobs claimed one at a time and completed by `jobhost-bench store-worker` processes \
         released together, on a SQLite file in {} and on a fresh schema of the PostgreSQL server (fsync off, see the header); median of {} \
         run(s); afterwards every job is checked `completed` with one attempt through `Store::status` and \
         `Store::list_jobs`",
        dir.display(),
        bench.runs
    ));
    run_on(bench, report, jobs, Target::Sqlite { dir: &dir, synchronous: Synchronous::Normal })?;
    match bench.pg() {
        Ok(server) => run_on(bench, report, jobs, Target::Postgres(server))?,
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

fn run_on(bench: &Bench, report: &mut Report, jobs: u64, target: Target<'_>) -> Result<()> {
    let name = target.backend().name();
    let mut handed_twice = 0;
    for processes in PROCESSES {
        for shape in [Shape::Separate, Shape::Folded] {
            let mut rates = Vec::with_capacity(bench.runs);
            for _ in 0..bench.runs {
                let run = measure_on(target, jobs, processes, shape)?;
                rates.push(run.pairs_per_second);
                handed_twice += run.handed_twice;
            }
            report.add(Row::info(
                SECTION,
                format!("{name}: claim+complete, {}, {}", processes_text(processes), shape.describe()),
                per_second(median(&rates), "pairs"),
            ));
        }
    }
    report.add(Row::goal(
        SECTION,
        format!("{name}: jobs handed to two workers (all its store runs)"),
        number(handed_twice as f64, 0),
        "0",
        handed_twice == 0,
    ));
    Ok(())
}

/// How a store-worker splits its work into transactions.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Claim in one transaction, complete in the next.
    Separate,
    /// Complete the previous job and claim the next in one transaction.
    Folded,
}

impl Shape {
    pub fn describe(self) -> &'static str {
        match self {
            Shape::Separate => "two transactions per job",
            Shape::Folded => "one transaction per job",
        }
    }
}

pub fn processes_text(processes: usize) -> String {
    if processes == 1 { "1 process".to_string() } else { format!("{processes} processes") }
}

/// Where a store measurement runs.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A fresh file in `dir`.
    Sqlite { dir: &'a Path, synchronous: Synchronous },
    /// A fresh schema on this server.
    Postgres(&'a PgServer),
}

impl<'a> Target<'a> {
    fn backend(self) -> Backend<'a> {
        match self {
            Target::Sqlite { .. } => Backend::Sqlite,
            Target::Postgres(server) => Backend::Postgres(server),
        }
    }
}

#[derive(Clone)]
pub struct StoreRun {
    pub pairs_per_second: f64,
    /// Jobs claimed more than once.
    pub handed_twice: i64,
}

/// Drains a fresh file in `dir` of `jobs` jobs with `processes` store-worker processes.
pub fn measure(dir: &Path, jobs: u64, processes: usize, synchronous: Synchronous, shape: Shape) -> Result<StoreRun> {
    measure_on(Target::Sqlite { dir, synchronous }, jobs, processes, shape)
}

/// Drains a fresh pool of `jobs` jobs with `processes` store-worker processes.
pub fn measure_on(target: Target<'_>, jobs: u64, processes: usize, shape: Shape) -> Result<StoreRun> {
    match target {
        Target::Sqlite { dir, synchronous } => {
            let dir = tempfile::tempdir_in(dir).with_context(|| {
                format!("cannot create a temporary folder in {} for the store benchmark", dir.display())
            })?;
            let config = DatabaseConfig {
                path: dir.path().join("store.db").display().to_string(),
                synchronous,
                ..DatabaseConfig::default()
            };
            drain(&config, jobs, processes, shape)
        }
        Target::Postgres(server) => {
            let schema = PgServer::fresh_schema();
            let drained = drain(&server.config(&schema), jobs, processes, shape);
            server.drop_schema(&schema);
            drained
        }
    }
}

fn drain(config: &DatabaseConfig, jobs: u64, processes: usize, shape: Shape) -> Result<StoreRun> {
    let store = block_on(Store::open(config, Access::CreateIfMissing))?;
    enqueue(&store, jobs)?;
    // Closed while the workers run, as before: on SQLite an extra open connection changes
    // who checkpoints the WAL.
    drop(store);

    let mut workers = (0..processes).map(|_| StoreWorker::spawn(config, shape)).collect::<Result<Vec<_>>>()?;
    for worker in &mut workers {
        let line = worker.read_line()?;
        ensure!(line == "ready", "a store-worker said {line:?} instead of \"ready\"; its error is above");
    }
    let started = Instant::now();
    for worker in &mut workers {
        worker.stdin.write_all(b"go\n").and_then(|()| worker.stdin.flush()).context("cannot release a store-worker")?;
    }
    let mut done = 0;
    for worker in &mut workers {
        let line = worker.read_line()?;
        done += line.parse::<u64>().with_context(|| format!("a store-worker printed {line:?}, not a count"))?;
    }
    for worker in &mut workers {
        let status = worker.child.wait()?;
        ensure!(status.success(), "a store-worker failed ({status}); its error is above");
    }
    let elapsed = started.elapsed();

    let store = block_on(Store::open(config, Access::Existing))?;
    let completed = status(&store)?.jobs.completed;
    ensure!(
        completed == jobs && done == jobs,
        "the store benchmark lost jobs: {completed} of {jobs} completed, workers counted {done}"
    );
    let handed_twice = list(&store, None, jobs)?.iter().filter(|job| job.attempts > 1).count();
    Ok(StoreRun { pairs_per_second: jobs as f64 / elapsed.as_secs_f64(), handed_twice: handed_twice as i64 })
}

/// Queues `count` jobs of pool [`POOL`] with one streamed `Store::enqueue`.
pub fn enqueue(store: &Store, count: u64) -> Result<()> {
    enqueue_with_keys(store, count, false)
}

/// As [`enqueue`]; with `keyed`, each job has a unique key of its own.
pub fn enqueue_with_keys(store: &Store, count: u64, keyed: bool) -> Result<()> {
    enqueue_each(store, count, |i| (format!(r#"{{"seq":{i}}}"#), keyed.then(|| format!("key-{i}"))))
}

/// Queues `count` echo jobs of pool [`POOL`] with one streamed `Store::enqueue`, job `i` with
/// the payload and unique key `job(i)` gives.
pub fn enqueue_each(
    store: &Store,
    count: u64,
    job: impl Fn(u64) -> (String, Option<String>) + Send + Sync,
) -> Result<()> {
    let rules = JobRules { processors: None, max_payload: u64::MAX };
    let jobs = (0..count).map(|i| {
        let (payload, unique_key) = job(i);
        let request = JobRequest {
            pool: POOL.to_string(),
            processor: "echo".to_string(),
            payload,
            priority: 0,
            max_attempts: 3,
            delay: None,
            run_at: None,
            unique_key,
            unique_within: None,
            replace: false,
            after: Vec::new(),
        };
        NewJob::new(request, &rules).map_err(|err| Refusal(err.message("the benchmark's job")))
    });
    let report = block_on(store.enqueue(jobs))?;
    ensure!(report.queued == count, "Store::enqueue queued {} of {count} jobs", report.queued);
    Ok(())
}

/// Registers `worker_id` as an active worker of pool [`POOL`] (of process `pid`, if given), as
/// `jobhost work` registers itself.
pub fn activate(store: &Store, worker_id: &str, pid: Option<u32>) -> Result<()> {
    let worker = NewWorker { id: worker_id.to_string(), pool: POOL.to_string(), host: None, pid, following: false };
    Ok(block_on(store.activate_worker(&worker))?)
}

/// A `store-worker` child and the pipes of its start protocol.
struct StoreWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl StoreWorker {
    fn spawn(config: &DatabaseConfig, shape: Shape) -> Result<StoreWorker> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let mut command = Command::new(exe);
        command.arg("store-worker").arg("--db").arg(&config.path).arg("--schema").arg(&config.schema);
        command.arg("--shape").arg(shape.to_possible_value().expect("no variant is skipped").get_name());
        if config.synchronous == Synchronous::Full {
            command.arg("--full-sync");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot spawn a store-worker process")?;
        let stdin = child.stdin.take().context("store-worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("store-worker stdout")?);
        Ok(StoreWorker { child, stdin, stdout })
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).context("cannot read from a store-worker")?;
        Ok(line.trim().to_string())
    }
}

/// `jobhost-bench store-worker`: one process of the store benchmark (internal).
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The pool to drain: a SQLite file or a PostgreSQL URL.
    #[arg(long)]
    db: String,
    /// On PostgreSQL, the schema of the pool.
    #[arg(long)]
    schema: Option<String>,
    /// Open it with `synchronous = FULL` (an fsync per commit) instead of NORMAL.
    #[arg(long)]
    full_sync: bool,
    #[arg(long, value_enum)]
    shape: Shape,
}

/// Registers, prints `ready`, waits for a line on stdin, then claims and completes jobs one at
/// a time until none is left, and prints how many it did.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let synchronous = if args.full_sync { Synchronous::Full } else { Synchronous::Normal };
    let mut config = DatabaseConfig { path: args.db, synchronous, ..DatabaseConfig::default() };
    if let Some(schema) = args.schema {
        config.schema = schema;
    }
    let store = block_on(Store::open(&config, Access::Existing))?;
    let worker_id = format!("store-worker-{}", std::process::id());
    activate(&store, &worker_id, Some(std::process::id()))?;
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).context("cannot read the start signal")?;

    let retry = retry_policy();
    let mut done: u64 = 0;
    match args.shape {
        Shape::Separate => {
            while claim_and_complete(&store, &worker_id, &retry)? {
                done += 1;
            }
        }
        Shape::Folded => {
            let mut held: Option<ClaimedJob> = None;
            loop {
                let turn = {
                    let finished: Vec<Finished<'_>> = held.iter().map(finished).collect();
                    let turn = block_on(store.turn(&finished, Some(claim_request(&worker_id)), &retry))?;
                    check_settled(&finished, &turn.settled)?;
                    done += finished.len() as u64;
                    turn
                };
                held = turn.claimed.into_iter().next();
                if held.is_none() {
                    break;
                }
            }
        }
    }
    block_on(store.deregister_worker(&worker_id))?;
    println!("{done}");
    Ok(())
}

fn claim_request(worker_id: &str) -> ClaimRequest<'_> {
    ClaimRequest { pool: POOL, worker_id, lease: LEASE, limit: 1, flow: &[] }
}

pub fn finished(job: &ClaimedJob) -> Finished<'_> {
    Finished {
        job,
        report: AttemptReport { fuel_used: Some(0), duration_ms: Some(0), ..AttemptReport::of(OutcomeKind::Ok) },
        result: Some(RESULT),
    }
}

pub fn check_settled(finished: &[Finished<'_>], settled: &[Settled]) -> Result<()> {
    ensure!(settled.len() == finished.len(), "the store settled {} of {} attempts", settled.len(), finished.len());
    for (attempt, settled) in finished.iter().zip(settled) {
        ensure!(
            *settled == Settled::Completed,
            "job {} was taken away from {} while it held it ({settled:?})",
            attempt.job.id,
            attempt.job.worker_id
        );
    }
    Ok(())
}

/// Claims one job of [`POOL`] in one transaction and completes it in a second; false when
/// no job was ready.
pub fn claim_and_complete(store: &Store, worker_id: &str, retry: &RetryPolicy) -> Result<bool> {
    let turn = block_on(store.turn(&[], Some(claim_request(worker_id)), retry))?;
    let Some(job) = turn.claimed.into_iter().next() else {
        return Ok(false);
    };
    let done = [finished(&job)];
    let turn = block_on(store.turn(&done, None, retry))?;
    check_settled(&done, &turn.settled)?;
    Ok(true)
}
