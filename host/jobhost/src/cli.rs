//! The command line: every command, flag and its help text, in one place.
//!
//! This module only describes the interface (with clap's derive API); [`crate::settings`]
//! settles the parsed [`Cli`] with the config file into a task, which [`crate::run`] hands
//! to its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use jobhost_core::units::{ByteSize, HumanDuration};

#[derive(Debug, Parser)]
#[command(
    name = "jobhost",
    version,
    about = "A durable job pool on SQLite or PostgreSQL whose jobs run in WebAssembly sandboxes",
    long_about = "jobhost keeps jobs in a database (one SQLite file, or a PostgreSQL server that many \
                  machines share) and runs each job's processor (a WASI 0.2 component or a WASI \
                  preview1 module) in a sandbox bounded in CPU, time, memory and output, with only \
                  the capabilities granted to it. `jobhost serve` adds an HTTP API, a dashboard and \
                  Prometheus metrics."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (YAML). Default: ./config/jobhost.yml when it exists, else built-in defaults.
    #[arg(long, global = true, env = "JOBHOST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The pool: a SQLite file, or a PostgreSQL URL (postgres://user@host:port/db); overrides
    /// `database.path`. `seed` creates it; other commands need it to exist.
    #[arg(long, global = true, env = "JOBHOST_DB", value_name = "PATH|URL", hide_env_values = true)]
    pub db: Option<String>,
    /// Folder of drop-in `*.wasm` processors; overrides `processors.dir`.
    #[arg(long, global = true, env = "JOBHOST_PROCESSORS", value_name = "DIR")]
    pub processors_dir: Option<PathBuf>,
    /// This machine's name among those sharing a pool; overrides `worker.host` (default: the hostname).
    #[arg(long, global = true, env = "JOBHOST_HOST", value_name = "NAME")]
    pub host: Option<String>,
    /// Log filter for stderr, e.g. `info`, `debug`, `jobhost=trace`. Default: $RUST_LOG, else `warn`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put jobs in the pool.
    Seed(SeedArgs),
    /// Show job counts by status, the ready backlog and workers by status.
    Status(StatusArgs),
    /// List the configured schedules with their last run, the job it made, and next run.
    Schedules(SchedulesArgs),
    /// List, inspect, retry, cancel and purge jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// List every pool (those holding jobs and those paused) with its counts; pause and
    /// resume a pool.
    Pools(PoolsArgs),
    /// Run worker: claim ready jobs, run each in the sandbox, record the outcome.
    Work(WorkArgs),
    /// Compare ready jobs with live workers and spawn the workers that are missing.
    Check(CheckArgs),
    /// Mark silent workers lost and send the jobs they held back through the retry policy.
    Reap(ReapArgs),
    /// List every processor with its kind, source, size, hash, limits and grants (and
    /// compile it into the cache).
    Processors(ProcessorsArgs),
    /// Run a processor once, outside the pool, and print the outcome.
    Run(RunArgs),
    /// Serve the HTTP API, the web dashboard and Prometheus metrics.
    Serve(ServeArgs),
    /// Copy every job, with its history and results, from this pool (--db) to another, e.g.
    /// from the SQLite default to a PostgreSQL server.
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// How many jobs to queue (with the default payload `{"seq": i}` or --payload).
    #[arg(long, short = 'n', default_value_t = 1, conflicts_with = "payload_file")]
    pub count: u64,
    /// Pool the jobs go into.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Processor that runs the jobs; it must exist on this host unless --processor-elsewhere.
    #[arg(long, default_value = "echo")]
    pub processor: String,
    /// Queue for a processor this host does not have (it is installed where the workers run).
    #[arg(long)]
    pub processor_elsewhere: bool,
    /// JSON payload for every job. Default: `{"seq": i}` with i counting from 0.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// JSON Lines file, one payload per line (`-` reads stdin); one job per non-blank line.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Attempts before a job is poisoned. Default: `retry.max_attempts`.
    #[arg(long, value_name = "K")]
    pub max_attempts: Option<u32>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// Make the jobs ready only after this long, e.g. `30s`.
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<HumanDuration>,
    /// Queue no job while a job of the pool with this key is pending or running (or finished
    /// within --unique-within); the answer names that job.
    #[arg(long, value_name = "KEY", group = "unique")]
    pub unique_key: Option<String>,
    /// Each job's unique key from its payload, at this JSON pointer (e.g. `/order_id`): a
    /// string, or a number or boolean as written. For --payload-file, one key per line.
    #[arg(long, value_name = "POINTER", group = "unique", value_parser = json_pointer)]
    pub unique_key_from: Option<String>,
    /// Also match jobs that completed or were poisoned within this long, e.g. `1h`.
    #[arg(long, value_name = "DURATION", requires = "unique")]
    pub unique_within: Option<HumanDuration>,
    /// Debounce: a matching job that is still pending takes this job's payload (and, with
    /// --delay, its later start), so a burst of enqueues runs once, with the last payload.
    #[arg(long, requires = "unique")]
    pub replace: bool,
    /// Make the jobs wait for these jobs (ids, at most 100): each job becomes ready when every
    /// one has completed, and is cancelled when one is poisoned or cancelled.
    #[arg(long, value_name = "ID", num_args = 1.., conflicts_with = "delay")]
    pub after: Vec<String>,
    /// Also print each job's id in order (for a job not queued, the id of the job holding its
    /// unique key): one per line, or as `ids` with --json. E.g. for a later --after.
    #[arg(long)]
    pub ids: bool,
    /// Print `{"queued": N, "pool": P, "matched": [...]}`.
    #[arg(long)]
    pub json: bool,
}

/// A JSON pointer (RFC 6901): empty, or `/` followed by reference tokens.
fn json_pointer(text: &str) -> Result<String, String> {
    if text.is_empty() || text.starts_with('/') {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a JSON pointer: start it with '/', e.g. /{text}"))
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this pool. Default: all pools.
    #[arg(long)]
    pub pool: Option<String>,
    /// Print the fixed JSON shape other tools read.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    /// Print `{"schedules": [...]}`, as `GET /api/v1/schedules` answers.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobStatusArg {
    Pending,
    Claimed,
    Completed,
    Poisoned,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FinishedStatusArg {
    Completed,
    Poisoned,
    Cancelled,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only jobs in this status.
        #[arg(long, value_enum)]
        status: Option<JobStatusArg>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its latest attempts (at most 20).
    Show {
        /// The job's id.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Give poisoned (or cancelled) jobs a fresh set of attempts.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["ids", "poisoned"]))]
    Retry {
        /// Jobs to retry.
        ids: Vec<String>,
        /// Retry every poisoned job (of --pool, if given).
        #[arg(long)]
        poisoned: bool,
        /// With --poisoned: only this pool.
        #[arg(long, requires = "poisoned")]
        pool: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel pending jobs so no worker picks them up.
    Cancel {
        /// Jobs to cancel.
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete finished jobs (and their history) older than a duration.
    Purge {
        /// Finished longer ago than this, e.g. `7d` or `12h`.
        #[arg(long, value_name = "DURATION")]
        older_than: HumanDuration,
        /// Only jobs in this status. Default: completed, poisoned and cancelled.
        #[arg(long, value_enum)]
        status: Option<FinishedStatusArg>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub command: Option<PoolsCommand>,
    /// Print `{"pools": [...]}`, as `GET /api/v1/pools` answers.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// Stop workers claiming the pool's jobs (jobs already running finish); `check` starts
    /// no worker for it and following workers wait. The pool need not hold jobs yet, and
    /// pausing a paused pool keeps when it was paused.
    Pause {
        /// The pool to pause.
        pool: String,
        /// Why, recorded with the pause and shown by `pools`, `status` and the dashboard.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print the pool as `jobhost pools --json` lists it.
        #[arg(long)]
        json: bool,
    },
    /// Let workers claim the pool's jobs again; waiting workers start on them at once.
    Resume {
        /// The pool to resume.
        pool: String,
        /// Print the pool as `jobhost pools --json` lists it.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Pool to take jobs from.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Use this id (the checker passes the id it registered). Default: a new uuid.
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// Process at most one job, then exit.
    #[arg(long, conflicts_with = "max_jobs")]
    pub once: bool,
    /// Process at most N jobs, then exit. Default: until no job is ready.
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,
    /// Stay up when no job is ready, and start each new job within milliseconds of its
    /// enqueue, until SIGTERM (jobs in flight finish; a second SIGTERM exits at once).
    #[arg(long)]
    pub follow: bool,
    /// Jobs kept in flight at once. Default: `worker.concurrency`.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// One JSON line per job, then a summary line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pool to check.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Most workers to keep alive for the pool. Default: `checker.max_workers`.
    #[arg(long, value_name = "N")]
    pub max_workers: Option<u32>,
    /// Check again every DURATION (default `checker.interval`), reaping each round, and
    /// queue the jobs of `schedules:` as they fall due, until SIGTERM.
    #[arg(long, value_name = "DURATION", num_args = 0..=1)]
    pub interval: Option<Option<HumanDuration>>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Only workers and jobs of this pool. Default: all pools.
    #[arg(long)]
    pub pool: Option<String>,
    /// A worker silent for longer than this is lost, e.g. `90s`. Default: `reaper.stale_after`.
    #[arg(long, value_name = "DURATION")]
    pub stale_after: Option<HumanDuration>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProcessorsArgs {
    #[arg(long, conflicts_with = "compile")]
    pub json: bool,
    /// Compile every processor into the compile cache now (as checking them does), print
    /// each one's compile time, and exit 1 if any cannot run. Run it after deploying.
    #[arg(long)]
    pub compile: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Processor to run (`echo`, or the stem of a `.wasm` file in the processors folder).
    pub name: String,
    /// JSON payload given on stdin. Default: `{}`.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Fuel budget for this run.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Wall-clock deadline for this run, e.g. `500ms`.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<HumanDuration>,
    /// Memory cap for this run, e.g. `16MiB`.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<ByteSize>,
    /// Print the fixed JSON shape other tools read.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The pool to copy into: a PostgreSQL URL or a SQLite file (created if missing).
    #[arg(long, value_name = "PATH|URL")]
    pub to: String,
    /// Add the jobs to a pool that already holds jobs or workers (ids must not clash).
    #[arg(long)]
    pub into_non_empty: bool,
    /// Print `{"copied": N, "to": TARGET}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Default: `serve.listen` (127.0.0.1:7700). Anything but loopback
    /// needs a token.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// File holding the token every request must carry (else $JOBHOST_TOKEN, else
    /// `serve.token_file`).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// File holding the read token, which reads but changes nothing (else
    /// $JOBHOST_READ_TOKEN, else `serve.read_token_file`).
    #[arg(long, value_name = "PATH")]
    pub read_token_file: Option<PathBuf>,
    /// Serve reads only; refuse every change.
    #[arg(long)]
    pub read_only: bool,
}
