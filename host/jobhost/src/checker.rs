//! `jobhost check`: compare ready jobs with live workers and spawn the missing workers.
//!
//! needed = min(ready jobs, max_workers); spawn = needed − live, where live counts
//! `starting` workers and `active` ones with a fresh heartbeat. New workers are registered
//! as `starting` in the same transaction that counted (see `Store::plan_workers`), before
//! they are launched, so checks run back to back or side by side never over-spawn.
//!
//! With `--interval`, it also keeps `checker.min_workers` following workers (`work
//! --follow`) alive per pool on its host, whatever the backlog: they wait for jobs and start
//! each within milliseconds, and the backlog beyond them gets draining workers up to
//! `max_workers`, which exit once it is drained. A single `check` starts draining workers
//! only, as the seed's shape always did.
//!
//! A paused pool (`jobhost pools pause`) gets no worker at all, following or draining; its
//! workers alive wait, and the next round after it is resumed starts those it needs.
//!
//! Workers are fire-and-forget: each is a `jobhost work` process in a session of its own
//! (a signal to the checker's terminal does not reach it), with the checker's config and
//! database, logging to `<data dir>/logs/<worker-id>.log`.
//!
//! With `--interval`, the checker also keeps every processor compiled into the compile cache
//! (see [`Registry::start_compiling_ahead`]), so the workers it starts load compiled code,
//! runs the [`crate::upkeep`] beside its rounds (queueing due ticks, deleting expired jobs).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use jobhost_core::config::{Config, DatabaseConfig};
use jobhost_sandbox::Sandbox;
use jobhost_sandbox::processors::Registry;
use jobhost_store::{Access, PlanRequest, RetryPolicy, Store, StoreError};

use crate::settings::CheckSettings;
use crate::shutdown::{self, Shutdown, Stage};

#[derive(Debug, Serialize)]
struct CheckReport {
    queue_depth: u64,
    active_workers: u64,
    /// Live workers on this host.
    active_here: u64,
    /// Live following workers on this host.
    following_here: u64,
    workers_needed: u64,
    /// The pool is paused: no worker is started for it until it is resumed.
    paused: bool,
    spawned: usize,
    /// The workers started, following ones first.
    spawned_ids: Vec<String>,
    /// How many of them follow.
    spawned_following: usize,
}

pub async fn run(config: &Config, args: CheckSettings) -> Result<ExitCode> {
    let store = Store::open(&config.database, Access::Existing).await?;
    if !args.repeat {
        // One round starts workers for the ready jobs only: a following worker would outlive
        // it with nothing to keep it company.
        check_once(&store, config, &args.pool, 0, args.json).await?;
        return Ok(ExitCode::SUCCESS);
    }

    // While the checker runs, it keeps the compile cache filled for the workers it starts, so
    // a new or changed processor is compiled once, here, not by every worker that needs it.
    let sandbox = Sandbox::new(1)?;
    let _compiling_ahead = Arc::new(Registry::new(config, &sandbox)).start_compiling_ahead();

    let (trigger, shutdown) = shutdown::channel();
    shutdown::on_signals(trigger.clone())?;
    let checking = {
        let shutdown = shutdown.clone();
        async {
            let checked = check_repeatedly(&store, config, &args, shutdown).await;
            // A check that failed for good ends the process: the scheduler and retention stop
            // with it.
            trigger.advance(Stage::Draining);
            checked
        }
    };
    let (checked, ()) = tokio::join!(checking, crate::upkeep::run(&store, config, shutdown));
    checked
}

/// The rounds of `check --interval`, until `shutdown` drains or a round fails for good.
async fn check_repeatedly(
    store: &Store,
    config: &Config,
    args: &CheckSettings,
    mut shutdown: Shutdown,
) -> Result<ExitCode> {
    let mut children = Vec::new();
    loop {
        match check_round(store, config, args).await {
            Ok(spawned) => children.extend(spawned),
            // A server restarting or failing over must not end the loop that keeps the
            // pool's workers alive: say so and try at the next interval, when the store
            // connects again by itself.
            Err(err) if is_transient(&err) => {
                let report = crate::output::error_report(&err);
                tracing::warn!("this round failed, trying again in {}: {report}", config.checker.interval);
            }
            Err(err) => return Err(err),
        }
        // Collect the workers that exited, so they do not linger as zombies.
        children.retain_mut(|child: &mut Child| matches!(child.try_wait(), Ok(None)));
        tokio::select! {
            _ = tokio::time::sleep(config.checker.interval.0) => {}
            () = shutdown.reached(Stage::Draining) => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One round of the loop: reap, then plan and spawn.
async fn check_round(store: &Store, config: &Config, args: &CheckSettings) -> Result<Vec<Child>> {
    let retry = RetryPolicy::from_config(&config.retry);
    let reaped =
        store.reap(Some(&args.pool), config.reaper.stale_after.0, config.checker.start_grace.0, &retry).await?;
    if !reaped.workers.is_empty() || reaped.recovery.released > 0 || reaped.recovery.poisoned > 0 {
        tracing::info!(?reaped, "reaped");
    }
    check_once(store, config, &args.pool, config.checker.min_workers, args.json).await
}

/// Whether `err` is the database being out of reach or busy for a while, not a mistake.
fn is_transient(err: &anyhow::Error) -> bool {
    err.downcast_ref::<StoreError>().is_some_and(|err| err.kind().is_passing())
}

/// Plans this host's workers for `pool`, keeping `min_following` following ones, and starts
/// those the plan registered.
async fn check_once(store: &Store, config: &Config, pool: &str, min_following: u32, json: bool) -> Result<Vec<Child>> {
    let host = config.worker.host();
    let request = PlanRequest {
        pool,
        host: &host,
        max_workers: config.checker.max_workers,
        min_following,
        stale_after: config.reaper.stale_after.0,
    };
    let plan = store.plan_workers(&request).await?;
    let mut children = Vec::new();
    let following = plan.new_following.iter().map(|id| (id, true));
    for (worker_id, follow) in following.chain(plan.new_workers.iter().map(|id| (id, false))) {
        match spawn_worker(config, pool, worker_id, follow) {
            Ok(child) => children.push(child),
            Err(err) => {
                // Nothing will ever run under this id: end its registration now rather
                // than leaving it to the start grace.
                store.deregister_worker(worker_id).await?;
                return Err(err);
            }
        }
    }
    let report = CheckReport {
        queue_depth: plan.queue_depth,
        active_workers: plan.live_workers,
        active_here: plan.live_here,
        following_here: plan.following_here,
        workers_needed: plan.workers_needed,
        paused: plan.paused,
        spawned: plan.new_following.len() + plan.new_workers.len(),
        spawned_following: plan.new_following.len(),
        spawned_ids: plan.new_following.into_iter().chain(plan.new_workers).collect(),
    };
    if report.paused {
        tracing::info!(pool, "the pool is paused: starting no worker for it");
    }
    if json {
        crate::outln!("{}", serde_json::to_string(&report)?)?;
    } else if report.paused {
        crate::outln!(
            "pool {pool}: paused, so no worker is started for its {} ready job(s) ({} live worker(s)); \
             `jobhost pools resume {pool}` lets them run",
            report.queue_depth,
            report.active_workers
        )?;
    } else {
        crate::outln!(
            "pool {pool}: {} ready job(s), {} live worker(s) ({} on {host}), {} needed here; spawned {}",
            report.queue_depth,
            report.active_workers,
            report.active_here,
            report.workers_needed,
            report.spawned
        )?;
        for (n, id) in report.spawned_ids.iter().enumerate() {
            let kind = if n < report.spawned_following { "following worker" } else { "worker" };
            crate::outln!("  started {kind} {id}")?;
        }
    }
    Ok(children)
}

/// Launches `jobhost work` (with `--follow` when `follow`) for a worker already registered
/// as `starting`.
fn spawn_worker(config: &Config, pool: &str, worker_id: &str, follow: bool) -> Result<Child> {
    let log_dir = config.database.data_dir().join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create the worker log folder {}", log_dir.display()))?;
    let log_path = log_dir.join(format!("{worker_id}.log"));
    let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;

    let exe = std::env::current_exe().context("cannot find the jobhost executable to spawn workers")?;
    let mut command = Command::new(exe);
    // The pool goes by environment, not argv: a server URL may hold a password, and argv is
    // readable by every user of the machine.
    command
        .env("JOBHOST_DB", database_for_child(&config.database))
        // The worker belongs to this host's slots: it must register under the same name,
        // whether that came from --host, the config or the hostname.
        .env("JOBHOST_HOST", config.worker.host())
        .arg("--processors-dir")
        .arg(absolute(&config.processors.dir));
    if let Some(source) = &config.source {
        command.arg("--config").arg(absolute(source));
    }
    command
        .args(["--log-level", "info", "work", "--pool", pool, "--worker-id", worker_id])
        .args(follow.then_some("--follow"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Safety: setsid is async-signal-safe, as required between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().context("cannot spawn a `jobhost work` process")
}

/// The pool as a spawned worker must name it: a SQLite path made absolute.
fn database_for_child(database: &DatabaseConfig) -> String {
    if database.is_server() {
        return database.path.clone();
    }
    absolute(Path::new(&database.path)).display().to_string()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
