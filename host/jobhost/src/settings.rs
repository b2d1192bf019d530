//! Settings: the command line and the configuration file settled into one validated value.
//!
//! Every value that both a flag and the config file can set lives in [`Config`]. The flags
//! are written into it here, each remembered as set by its flag, and the merged value is
//! validated once more by [`Config::validate`]: a flag never skips a check the file gets,
//! and an error names what the user typed (`--stale-after (2s) must be longer than …`).
//! Values only a flag can set (a count, an id) are checked here too, so every command
//! starts from settings that are known good. What `seed` queues (pool, processor, payload)
//! is checked where the HTTP API's jobs are, by `jobhost_store::NewJob::new`.

use anyhow::{Result, bail};

use jobhost_core::config::{Config, ProcessorOverrides};
use jobhost_core::names;

use crate::cli::{
    Cli, Command, CopyArgs, JobsCommand, PoolsArgs, PoolsCommand, ProcessorsArgs, RunArgs, SchedulesArgs, SeedArgs,
    StatusArgs,
};

/// Most jobs one `seed` queues; they are inserted in chunks inside one transaction.
pub const MAX_SEED_COUNT: u64 = 10_000_000;
/// Most jobs one `jobs list` prints.
pub const MAX_LIST_LIMIT: u32 = 100_000;

/// A command ready to run: its configuration settled, the long-running ones' flags settled
/// into values of their own, so the worker, checker and reaper never read clap's structs.
pub enum Task {
    Seed(SeedArgs),
    Status(StatusArgs),
    Schedules(SchedulesArgs),
    Jobs(JobsCommand),
    Pools(PoolsArgs),
    Processors(ProcessorsArgs),
    Run(RunArgs),
    Work(WorkSettings),
    Check(CheckSettings),
    Reap(ReapSettings),
    Copy(CopyArgs),
    Serve,
}

/// `jobhost work`: which pool, as whom, for how long.
#[derive(Debug, Clone)]
pub struct WorkSettings {
    pub pool: String,
    /// The id the checker registered this worker under; `None` registers a new one.
    pub worker_id: Option<String>,
    /// Most jobs to take before exiting; `None` runs until no job is ready (or, following,
    /// until stopped).
    pub max_jobs: Option<u64>,
    /// Wait for jobs when none is ready instead of exiting.
    pub follow: bool,
    pub json: bool,
}

/// `jobhost check`: one round, or a round every `checker.interval` until stopped.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub pool: String,
    pub repeat: bool,
    pub json: bool,
}

/// `jobhost reap`: one pass, over one pool or all of them.
#[derive(Debug, Clone)]
pub struct ReapSettings {
    pub pool: Option<String>,
    pub json: bool,
}

/// Reads the configuration, writes the command's flags into it and validates the result.
/// The returned task's flags that belong to the configuration have been moved into it.
pub fn settle(cli: Cli) -> Result<(Config, Task)> {
    let mut config = Config::discover(cli.global.config.as_deref())?;
    let mut command = cli.command;
    if let Some(db) = cli.global.db {
        config.database.path = db;
        config.set_by_flag.insert(String::from("database.path"), "--db");
    }
    if let Some(host) = cli.global.host {
        check_name("--host", &host)?;
        config.worker.host = Some(host);
    }
    if let Some(dir) = cli.global.processors_dir {
        config.processors.dir = dir;
        config.set_by_flag.insert(String::from("processors.dir"), "--processors-dir");
    }
    match &mut command {
        Command::Seed(args) => {
            if let Some(max_attempts) = args.max_attempts.take() {
                config.retry.max_attempts = max_attempts;
                config.set_by_flag.insert(String::from("retry.max_attempts"), "--max-attempts");
            }
            if args.payload_file.is_none() && !(1..=MAX_SEED_COUNT).contains(&args.count) {
                bail!("--count must be between 1 and {MAX_SEED_COUNT}, got {}", args.count);
            }
        }
        Command::Work(args) => {
            if let Some(concurrency) = args.concurrency.take() {
                config.worker.concurrency = concurrency;
                config.set_by_flag.insert(String::from("worker.concurrency"), "--concurrency");
            }
            if args.max_jobs == Some(0) {
                bail!("--max-jobs must be at least 1");
            }
            check_name("--pool", &args.pool)?;
            if let Some(id) = &args.worker_id {
                check_name("--worker-id", id)?;
            }
        }
        Command::Check(args) => {
            if let Some(max_workers) = args.max_workers.take() {
                config.checker.max_workers = max_workers;
                config.set_by_flag.insert(String::from("checker.max_workers"), "--max-workers");
            }
            if let Some(Some(interval)) = args.interval.as_mut().map(Option::take) {
                config.checker.interval = interval;
                config.set_by_flag.insert(String::from("checker.interval"), "--interval");
            }
            check_name("--pool", &args.pool)?;
        }
        Command::Reap(args) => {
            if let Some(stale_after) = args.stale_after.take() {
                config.reaper.stale_after = stale_after;
                config.set_by_flag.insert(String::from("reaper.stale_after"), "--stale-after");
            }
        }
        Command::Run(args) => {
            // An invalid name gets no override: the run reports it as a load error.
            if names::check_processor(&args.name).is_ok() {
                let name = args.name.clone();
                if let Some(fuel) = args.fuel.take() {
                    override_limit(&mut config, &name, "fuel", "--fuel", |o| o.fuel = Some(fuel));
                }
                if let Some(timeout) = args.timeout.take() {
                    override_limit(&mut config, &name, "timeout", "--timeout", |o| o.timeout = Some(timeout));
                }
                if let Some(memory) = args.memory.take() {
                    override_limit(&mut config, &name, "memory", "--memory", |o| o.memory = Some(memory));
                }
            }
        }
        Command::Jobs(JobsCommand::List { limit, pool, .. }) => {
            if !(1..=MAX_LIST_LIMIT).contains(limit) {
                bail!("--limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}");
            }
            if let Some(pool) = pool {
                check_name("--pool", pool)?;
            }
        }
        Command::Pools(PoolsArgs { command: Some(PoolsCommand::Pause { pool, reason, .. }), .. }) => {
            check_name("POOL", pool)?;
            if let Some(reason) = reason {
                jobhost_store::check_pause_reason(reason).map_err(|err| anyhow::anyhow!("--reason {err}"))?;
            }
        }
        Command::Pools(PoolsArgs { command: Some(PoolsCommand::Resume { pool, .. }), .. }) => check_name("POOL", pool)?,
        Command::Copy(args) => {
            if args.to == config.database.path {
                bail!(
                    "--to names the pool being copied ({}): name another database",
                    jobhost_store::shown_location(&args.to)
                );
            }
        }
        Command::Serve(args) => {
            if let Some(listen) = args.listen.take() {
                config.serve.listen = listen;
                config.set_by_flag.insert(String::from("serve.listen"), "--listen");
            }
            if let Some(token_file) = args.token_file.take() {
                config.serve.token_file = Some(token_file);
                config.set_by_flag.insert(String::from("serve.token_file"), "--token-file");
            }
            if let Some(read_token_file) = args.read_token_file.take() {
                config.serve.read_token_file = Some(read_token_file);
                config.set_by_flag.insert(String::from("serve.read_token_file"), "--read-token-file");
            }
            if args.read_only {
                config.serve.read_only = true;
            }
        }
        Command::Status(_)
        | Command::Schedules(_)
        | Command::Jobs(_)
        | Command::Pools(PoolsArgs { command: None, .. })
        | Command::Processors(_) => {}
    }
    config.validate()?;
    let task = match command {
        Command::Seed(args) => Task::Seed(args),
        Command::Status(args) => Task::Status(args),
        Command::Schedules(args) => Task::Schedules(args),
        Command::Jobs(command) => Task::Jobs(command),
        Command::Pools(args) => Task::Pools(args),
        Command::Processors(args) => Task::Processors(args),
        Command::Run(args) => Task::Run(args),
        Command::Work(args) => Task::Work(WorkSettings {
            pool: args.pool,
            worker_id: args.worker_id,
            max_jobs: if args.once { Some(1) } else { args.max_jobs },
            follow: args.follow,
            json: args.json,
        }),
        Command::Check(args) => {
            Task::Check(CheckSettings { pool: args.pool, repeat: args.interval.is_some(), json: args.json })
        }
        Command::Reap(args) => Task::Reap(ReapSettings { pool: args.pool, json: args.json }),
        Command::Copy(args) => Task::Copy(args),
        Command::Serve(_) => Task::Serve,
    };
    Ok((config, task))
}

/// Changes one limit of processor `name` for this run, as its override in the config would.
fn override_limit(
    config: &mut Config,
    name: &str,
    limit: &str,
    flag: &'static str,
    apply: impl FnOnce(&mut ProcessorOverrides),
) {
    apply(config.processors.overrides.entry(name.to_string()).or_default());
    config.set_by_flag.insert(format!("processors.overrides.{name}.{limit}"), flag);
}

/// A pool name, worker id or host name given as `flag`, checked by the rule the config file
/// and the HTTP API share.
fn check_name(flag: &str, value: &str) -> Result<()> {
    names::check_label(value).map_err(|err| anyhow::anyhow!("{flag} {err}"))
}
