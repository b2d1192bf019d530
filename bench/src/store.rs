//! Section 2, store alone: claim+complete pairs per second on one SQLite file, in 1, 2, 4
//! and 8 OS processes, through `jobhost::store` with no sandbox in the way.
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
//! The files live in the temporary folder, on its real filesystem. The wall time runs from
//! releasing the processes to the last exit. Afterwards the file is checked: every job
//! `completed`, one attempt each. A job with more than one attempt was handed to two workers;
//! the count must be 0.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::ValueEnum;
use jobhost::config::{DatabaseConfig, Synchronous};
use jobhost::outcome::OutcomeKind;
use jobhost::store::{Access, AttemptReport, Batch, ClaimedJob, Fence, NewJob, NewWorker, Store};

use crate::report::{Report, Row, number, per_second};
use crate::support::{Bench, count, median, read_only};

const SECTION: &str = "store";
const PROCESSES: [usize; 4] = [1, 2, 4, 8];
pub const POOL: &str = "bench";
const LEASE: Duration = Duration::from_secs(60);
const RESULT: &str = r#"{"status":"completed","processed":true}"#;
const ENQUEUE_BATCH: usize = 50_000;

/// Jobs per measurement; section 3 runs the original example's store on the same number.
pub fn jobs(bench: &Bench) -> u64 {
    bench.pick(3_000, 500)
}

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let jobs = jobs(bench);
    let dir = std::env::temp_dir();
    report.note(format!(
        "store: {jobs} jobs claimed one at a time and completed by `jobhost-bench store-worker` processes \
         released together, on a file in {}; median of {} run(s)",
        dir.display(),
        bench.runs
    ));
    let mut handed_twice = 0;
    for processes in PROCESSES {
        for shape in [Shape::Separate, Shape::Folded] {
            let mut rates = Vec::with_capacity(bench.runs);
            for _ in 0..bench.runs {
                let run = measure(&dir, jobs, processes, Synchronous::Normal, shape)?;
                rates.push(run.pairs_per_second);
                handed_twice += run.handed_twice;
            }
            report.add(Row::info(
                SECTION,
                format!("claim+complete, {}, {}", processes_text(processes), shape.describe()),
                per_second(median(&rates), "pairs"),
            ));
        }
    }
    report.add(Row::goal(
        SECTION,
        "jobs handed to two workers (all store runs)",
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

#[derive(Clone)]
pub struct StoreRun {
    pub pairs_per_second: f64,
    /// Jobs claimed more than once.
    pub handed_twice: i64,
}

/// Drains a fresh file in `dir` of `jobs` jobs with `processes` store-worker processes.
pub fn measure(dir: &Path, jobs: u64, processes: usize, synchronous: Synchronous, shape: Shape) -> Result<StoreRun> {
    let dir = tempfile::tempdir_in(dir)
        .with_context(|| format!("cannot create a temporary folder in {} for the store benchmark", dir.display()))?;
    let db = dir.path().join("store.db");
    let mut store = Store::open(
        &DatabaseConfig { path: db.clone(), synchronous, ..DatabaseConfig::default() },
        Access::CreateIfMissing,
    )?;
    enqueue(&mut store, jobs)?;
    drop(store);

    let mut workers =
        (0..processes).map(|_| StoreWorker::spawn(&db, synchronous, shape)).collect::<Result<Vec<_>>>()?;
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

    let conn = read_only(&db)?;
    let completed = count(&conn, "SELECT count(*) FROM jobs WHERE status = 'completed'")?;
    ensure!(
        completed == jobs as i64 && done == jobs,
        "the store benchmark lost jobs: {completed} of {jobs} completed, workers counted {done}"
    );
    Ok(StoreRun {
        pairs_per_second: jobs as f64 / elapsed.as_secs_f64(),
        handed_twice: count(&conn, "SELECT count(*) FROM jobs WHERE attempts > 1")?,
    })
}

/// Queues `count` jobs of pool [`POOL`] in transactions of [`ENQUEUE_BATCH`].
pub fn enqueue(store: &mut Store, count: u64) -> Result<()> {
    let mut seq = 0;
    while seq < count {
        let batch: Vec<NewJob> = (seq..count.min(seq + ENQUEUE_BATCH as u64))
            .map(|i| NewJob {
                pool: POOL.to_string(),
                processor: "echo".to_string(),
                payload: format!(r#"{{"seq":{i}}}"#),
                priority: 0,
                max_attempts: 3,
                delay_ms: 0,
            })
            .collect();
        seq += batch.len() as u64;
        store.enqueue_all(&batch)?;
    }
    Ok(())
}

/// A `store-worker` child and the pipes of its start protocol.
struct StoreWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl StoreWorker {
    fn spawn(db: &Path, synchronous: Synchronous, shape: Shape) -> Result<StoreWorker> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let mut command = Command::new(exe);
        command.arg("store-worker").arg("--db").arg(db).arg("--shape");
        command.arg(shape.to_possible_value().expect("no variant is skipped").get_name());
        if synchronous == Synchronous::Full {
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
    /// The database to drain.
    #[arg(long)]
    db: PathBuf,
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
    let mut store = Store::open(
        &DatabaseConfig { path: args.db, synchronous, ..DatabaseConfig::default() },
        Access::CreateIfMissing,
    )?;
    let worker_id = format!("store-worker-{}", std::process::id());
    store.activate_worker(&NewWorker {
        id: worker_id.clone(),
        pool: POOL.to_string(),
        host: None,
        pid: Some(std::process::id()),
    })?;
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).context("cannot read the start signal")?;

    let mut done: u64 = 0;
    match args.shape {
        Shape::Separate => {
            while claim_and_complete(&mut store, &worker_id)? {
                done += 1;
            }
        }
        Shape::Folded => {
            let mut held: Option<ClaimedJob> = None;
            loop {
                let mut batch = store.batch()?;
                if let Some(job) = held.take() {
                    complete(&mut batch, &job)?;
                    done += 1;
                }
                held = batch.claim(POOL, &worker_id, LEASE, 1)?.into_iter().next();
                batch.commit()?;
                if held.is_none() {
                    break;
                }
            }
        }
    }
    store.deregister_worker(&worker_id)?;
    println!("{done}");
    Ok(())
}

/// Claims one job of [`POOL`] in one transaction and completes it in a second; false when
/// no job was ready.
pub fn claim_and_complete(store: &mut Store, worker_id: &str) -> Result<bool> {
    let mut batch = store.batch()?;
    let claimed = batch.claim(POOL, worker_id, LEASE, 1)?;
    batch.commit()?;
    let Some(job) = claimed.into_iter().next() else {
        return Ok(false);
    };
    let mut batch = store.batch()?;
    complete(&mut batch, &job)?;
    batch.commit()?;
    Ok(true)
}

fn complete(batch: &mut Batch<'_>, job: &ClaimedJob) -> Result<()> {
    let report = AttemptReport { fuel_used: Some(0), duration_ms: Some(0), ..AttemptReport::of(OutcomeKind::Ok) };
    let fence = batch.complete(job, RESULT, &report)?;
    ensure!(fence == Fence::Applied, "job {} was taken away from {} while it held it", job.id, job.worker_id);
    Ok(())
}
