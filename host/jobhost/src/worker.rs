//! `jobhost work`: one worker process — register, claim, run in the sandbox, record, and
//! exit once the pool is drained, or (`--follow`) wait for more until stopped.
//!
//! Shape of a worker:
//! - a single-threaded tokio runtime drives up to `concurrency` sandboxed runs at once
//!   (guests yield at every epoch tick, so one busy guest cannot starve the others);
//! - between runs, the loop records every job that finished and claims replacements in one
//!   write transaction, so a busy worker commits once per turn, not twice per job;
//! - each claimed job is a task that loads its processor (read and compiled on a blocking
//!   thread, under a deadline: see [`jobhost_sandbox::processors`]) and then runs it, so a slow load
//!   delays only its own job, and a job's run deadline starts once its program is ready;
//! - a worker that runs more than one job keeps every processor compiled ahead
//!   ([`Registry::start_compiling_ahead`]), so a file deployed while it runs is compiled before its
//!   jobs arrive;
//! - a following worker waits for work on wake-ups from the store (a `NOTIFY` on
//!   PostgreSQL, a change of `data_version` on SQLite) and on the earliest pending job's
//!   `run_at`, so a new job starts within milliseconds and a delayed one on time (a paused
//!   pool has no ready job: the worker waits, and resuming the pool wakes it); beside
//!   its jobs it queues the schedules' due ticks and deletes expired finished jobs;
//! - a claim takes only what the flow limits allow; a worker whose ready jobs a full limit
//!   holds back stays and claims again soon, rather than exiting as if the pool were drained;
//! - heartbeats come from a plain OS thread with its own connection, so CPU-heavy guests
//!   cannot delay them and a long job keeps its lease;
//! - it stops through one [`Shutdown`]: the first SIGTERM/SIGINT stops claiming and lets
//!   in-flight jobs finish within their deadlines, a second one exits at once (the reaper
//!   recovers what was held), and when the heartbeat learns that the reaper declared this
//!   worker lost, the jobs in flight are dropped at once: they are another worker's now.
//!
//! Every complete/fail is fenced on the claim: if the reaper gave the job away meanwhile,
//! the late answer changes nothing and is logged.
//!
//! A worker rides out a database that drops out of reach (a PostgreSQL restart, an ended
//! session, a lost answer): each store call is tried again with backoff until it answers,
//! while the jobs in flight run on. A turn whose answer was lost may have committed; the
//! fences make its retry harmless, and the jobs it claimed are found by this worker's id and
//! run (see [`Worker::settle`]), so none is run twice or left held.

mod envelope;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;

use jobhost_core::config::{Config, ProcessorInput};
use jobhost_core::flow::FlowLimit;
use jobhost_core::outcome::OutcomeKind;
use jobhost_sandbox::processors::{self, Registry};
use jobhost_sandbox::{JobInput, Outcome, RunReport, Sandbox};
use jobhost_store::{
    Access, AttemptRecord, AttemptReport, ClaimRequest, ClaimedJob, ErrorKind, Fingerprint, Finished, NewWorker,
    ParentResult, RetryPolicy, Settled, Store, StoreError, Wakeups, WorkerStatus,
};

use crate::output::LineSink;
use crate::settings::WorkSettings;
use crate::shutdown::{self, Shutdown, Stage, Trigger};

/// What became of one job, printed as a JSON line with `--json`.
#[derive(Debug, Serialize)]
struct JobLine {
    job_id: String,
    processor: String,
    attempt: u32,
    outcome: OutcomeKind,
    status: Settlement,
    message: Option<String>,
    duration_ms: u64,
    fuel_used: u64,
}

/// What the turn made of a job, as its `--json` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Settlement {
    Completed,
    Retrying,
    Poisoned,
    /// The claim had been taken away (the reaper recovered the job); the outcome was dropped.
    Stale,
    /// Recorded by a turn whose answer the database never delivered (the connection broke);
    /// the retried turn found the attempt already settled with this outcome.
    Recorded,
}

impl From<&Settled> for Settlement {
    fn from(settled: &Settled) -> Settlement {
        match settled {
            Settled::Completed => Settlement::Completed,
            Settled::Retrying { .. } => Settlement::Retrying,
            Settled::Poisoned => Settlement::Poisoned,
            Settled::Stale => Settlement::Stale,
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    worker_id: String,
    processed: u64,
    completed: u64,
    failed: u64,
    /// The worker's final status: `terminated`, or `lost` when the reaper had given up on it;
    /// `None` until it ends.
    status: Option<WorkerStatus>,
    /// A worker that does not follow ran out of work because its pool is paused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pool_paused: bool,
}

impl Summary {
    fn count(&mut self, line: &JobLine) {
        self.processed += 1;
        let recorded_ok = line.status == Settlement::Recorded && line.outcome == OutcomeKind::Ok;
        if line.status == Settlement::Completed || recorded_ok {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// What a job task needs to load and run its job: shared by every task.
struct Runner {
    sandbox: Sandbox,
    registry: Arc<Registry>,
    config: Config,
}

/// The worker's loop state. Only the loop touches the store; job tasks load and run guests.
struct Worker {
    store: Store,
    runner: Arc<Runner>,
    retry: RetryPolicy,
    worker_id: String,
    pool: String,
    concurrency: u32,
    max_jobs: Option<u64>,
    follow: bool,
    json: bool,
    /// The flow limits every claim enforces (`processors.overrides.NAME.flow`).
    flow: Vec<FlowLimit>,
    /// When to stop claiming, and when to drop the jobs in flight too.
    shutdown: Shutdown,
    /// The `--json` lines; they stop (and the worker goes on) if the reader goes away.
    out: LineSink,
}

/// Why the heartbeat thread stopped the worker; each is an abnormal end, exit status 1.
#[derive(Debug)]
enum StopReason {
    /// The reaper declared this worker lost: its jobs are another worker's now.
    Lost,
    /// The database file was deleted or replaced under the worker.
    DatabaseReplaced(StoreError),
}

impl StopReason {
    /// How far the worker stops: a lost worker drops its jobs at once; one whose database
    /// was replaced only stops claiming.
    fn stage(&self) -> Stage {
        match self {
            StopReason::Lost => Stage::Abandoning,
            StopReason::DatabaseReplaced(_) => Stage::Draining,
        }
    }
}

pub async fn run(config: &Config, args: WorkSettings) -> Result<ExitCode> {
    let concurrency = config.worker.concurrency;
    let max_jobs = args.max_jobs;
    let worker_id = args.worker_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());

    let store = Store::open(&config.database, Access::Existing).await?;
    store
        .activate_worker(&NewWorker {
            id: worker_id.clone(),
            pool: args.pool.clone(),
            host: Some(config.worker.host()),
            pid: Some(std::process::id()),
            following: args.follow,
        })
        .await?;
    tracing::info!(worker_id, pool = args.pool, concurrency, "worker started");
    let sandbox = match Sandbox::new(concurrency) {
        Ok(sandbox) => sandbox,
        Err(err) => {
            // Deregister so the failed start is not mistaken for a crash.
            store.deregister_worker(&worker_id).await?;
            return Err(err);
        }
    };
    for warning in processors::unmatched_override_warnings(config) {
        tracing::warn!("{warning}");
    }
    let (trigger, shutdown) = shutdown::channel();
    shutdown::on_signals(trigger.clone())?;
    let worker_shutdown = shutdown.clone();
    let fingerprint = store.fingerprint();
    let registry = Arc::new(Registry::new(config, &sandbox));
    // A worker that stays for more than one job compiles new and changed processors as they
    // appear, off the jobs' path; one started for a single job would only take CPU from it.
    let compiling_ahead = (max_jobs != Some(1)).then(|| registry.start_compiling_ahead());
    let mut worker = Worker {
        store,
        runner: Arc::new(Runner { registry, sandbox, config: config.clone() }),
        retry: RetryPolicy::from_config(&config.retry),
        worker_id: worker_id.clone(),
        pool: args.pool.clone(),
        concurrency,
        max_jobs,
        follow: args.follow,
        json: args.json,
        flow: config.flow_limits(),
        shutdown,
        out: LineSink::default(),
    };

    let heartbeat = Heartbeat::start(config, &worker_id, fingerprint, trigger.clone())?;
    // One thread (the command's current-thread runtime): store calls run between guest runs,
    // with no hand-offs between threads. A worker uses one core; `jobhost check` starts one
    // worker per core.
    let working = async {
        let worked = worker.work_loop().await;
        // However the loop ended (drained, `--max-jobs` reached, stopped), the upkeep ends.
        trigger.advance(Stage::Draining);
        worked
    };
    let (result, upkept) = tokio::join!(working, upkeep(config, args.follow, worker_shutdown));
    upkept?;
    let stop_reason = heartbeat.stop();
    drop(compiling_ahead);

    let mut summary = result?;
    summary.worker_id = worker_id.clone();
    summary.status =
        Some(if matches!(stop_reason, Some(StopReason::Lost)) { WorkerStatus::Lost } else { WorkerStatus::Terminated });
    if !matches!(stop_reason, Some(StopReason::DatabaseReplaced(_))) {
        riding_out(&worker.shutdown, "deregistering the worker", || worker.store.deregister_worker(&worker_id)).await?;
    }
    // A paused pool drains like an empty one; the worker says which it was.
    if !args.follow && stop_reason.is_none() {
        let paused = riding_out(&worker.shutdown, "reading the paused pools", || worker.store.paused_pools()).await?;
        summary.pool_paused = paused.iter().any(|paused| paused.pool == args.pool);
    }
    tracing::info!(worker_id, processed = summary.processed, "worker finished");
    let out = &mut worker.out;
    if args.json {
        out.line(format_args!("{}", serde_json::to_string(&summary)?));
    } else if summary.processed == 0 {
        out.line(format_args!("worker {worker_id}: no work available"));
    } else {
        out.line(format_args!(
            "worker {worker_id}: processed {} job(s): {} completed, {} failed",
            summary.processed, summary.completed, summary.failed
        ));
    }
    if summary.pool_paused {
        let pool = &args.pool;
        tracing::info!(worker_id, pool, "the pool is paused: no more of its jobs are claimed");
        if !args.json {
            out.line(format_args!(
                "worker {worker_id}: pool {pool} is paused: its jobs are not claimed until `jobhost pools resume {pool}`"
            ));
        }
    }
    match stop_reason {
        None => Ok(ExitCode::SUCCESS),
        Some(StopReason::Lost) => anyhow::bail!(
            "worker {worker_id} stopped: the reaper declared it lost (no heartbeat within reaper.stale_after), \
             so the jobs it held were handed back to the pool; check that the machine is not overloaded or \
             suspended, or raise reaper.stale_after"
        ),
        Some(StopReason::DatabaseReplaced(why)) => {
            Err(anyhow::Error::new(why).context(format!("worker {worker_id} stopped")))
        }
    }
}

/// A following worker's [`crate::upkeep`], on a connection of its own so the work loop's
/// turns never wait behind it; none for a draining worker. Ends when `shutdown` drains.
async fn upkeep(config: &Config, follow: bool, shutdown: Shutdown) -> Result<()> {
    if !follow {
        return Ok(());
    }
    let store = Store::open(&config.database, Access::Existing).await?;
    crate::upkeep::run(&store, config, shutdown).await;
    Ok(())
}

/// What a worker's turn ([`Worker::settle`]) did.
struct TurnDone {
    /// One per finished job, in order.
    lines: Vec<JobLine>,
    /// The jobs to run now.
    claimed: Vec<ClaimedJob>,
    /// The claim's answer was lost: `claimed` are the jobs it took, adopted, and how many
    /// more were ready is unknown.
    claim_lost: bool,
    /// A flow limit held back ready jobs the claim could have taken.
    held_back: bool,
}

/// A job whose run ended, waiting to be recorded in the next turn.
struct FinishedRun {
    job: ClaimedJob,
    report: RunReport,
}

impl Worker {
    /// Claims and runs jobs until none is ready (or, following, until stopped), `max_jobs`
    /// were taken, a signal arrives, or the reaper declares this worker lost.
    ///
    /// Each turn of the loop is one write transaction: it records every job that finished
    /// since the last turn and claims as many new ones as there are free slots. A following
    /// worker with free slots and nothing to claim waits for a wake-up (see
    /// [`jobhost_store::Wakeups`]), the earliest pending job's `run_at`, or [`FALLBACK_LOOK`],
    /// whichever comes first, and reads whether a job is ready before it claims: a wake-up
    /// that finds nothing costs a read, not a write.
    async fn work_loop(&mut self) -> Result<Summary> {
        let mut summary = Summary::default();
        let mut in_flight: JoinSet<FinishedRun> = JoinSet::new();
        // The claims of the jobs in flight, by `seq`: a claim held beyond these was taken by
        // a turn whose answer was lost (see [`Worker::settle`]).
        let mut running: HashSet<i64> = HashSet::new();
        let mut finished: Vec<FinishedRun> = Vec::new();
        let mut claimed_total: u64 = 0;
        // Opened the first time the worker waits for work.
        let mut wakeups: Option<Wakeups> = None;
        // Whether a claim may find jobs: false once one came back short, until a look finds
        // one ready (only a following worker looks; the others claim on every turn).
        let mut may_be_ready = true;
        // Whether the last claim left ready jobs behind a full flow limit, and how long to
        // wait before claiming again if nothing else happens: room frees up when a job of
        // that processor ends on any worker, or when a rate's period passes, and no wake-up
        // says so, so the worker looks again, less often the longer the limit stays full.
        let mut held_back = false;
        let mut held_back_wait = HELD_BACK_FIRST_LOOK;
        loop {
            let may_claim = self.may_claim(claimed_total);
            let free_slots = u64::from(self.concurrency) - in_flight.len() as u64;
            // A following worker that found nothing claims again once a look finds a job
            // ready, or in a turn that settles jobs anyway (the claim then costs no write).
            let worth_claiming = may_be_ready || !self.follow || !finished.is_empty();
            let want = match self.max_jobs {
                _ if !may_claim || !worth_claiming => 0,
                Some(max) => free_slots.min(max - claimed_total),
                None => free_slots,
            };
            if want > 0 || !finished.is_empty() {
                let TurnDone { lines, claimed, claim_lost, held_back: held } =
                    self.settle(std::mem::take(&mut finished), want as u32, &running).await?;
                for line in lines {
                    summary.count(&line);
                    if self.json {
                        self.out.line(format_args!("{}", serde_json::to_string(&line)?));
                    }
                }
                if want > 0 {
                    may_be_ready = claimed.len() as u64 == want;
                    held_back = held;
                    if !claimed.is_empty() {
                        held_back_wait = HELD_BACK_FIRST_LOOK;
                    }
                }
                claimed_total += claimed.len() as u64;
                for job in self.with_parents(claimed).await? {
                    running.insert(job.seq);
                    in_flight.spawn(run_job(self.runner.clone(), job));
                }
                if claim_lost {
                    // What was not adopted is claimed again now: an empty answer is no
                    // sign that the pool is drained.
                    may_be_ready = true;
                    continue;
                }
            }
            let may_claim_more = self.may_claim(claimed_total) && in_flight.len() < self.concurrency as usize;
            if in_flight.is_empty() && !((self.follow || held_back) && may_claim_more) {
                // Nothing running and nothing more to claim: the pool is drained (or we stop).
                break;
            }
            let waiting_for_work = may_claim_more && (held_back || (self.follow && !may_be_ready));
            let mut look_at = Instant::now();
            if waiting_for_work && held_back {
                look_at += held_back_wait;
                held_back_wait = (held_back_wait * 2).min(HELD_BACK_LAST_LOOK);
            } else if waiting_for_work {
                if wakeups.is_none() {
                    wakeups = Some(self.store.wakeups(&self.pool).await?);
                }
                let ready_in = riding_out(&self.shutdown, "looking for ready jobs", || self.store.ready_in(&self.pool));
                look_at += match ready_in.await? {
                    Some(ready_in) if ready_in.is_zero() => {
                        may_be_ready = true;
                        continue;
                    }
                    Some(ready_in) => ready_in.min(FALLBACK_LOOK),
                    None => FALLBACK_LOOK,
                };
            }
            // Wait for a run to end (its failure may make its job ready again) or, following,
            // for work; then take every other run that ended meanwhile into the same batch.
            tokio::select! {
                done = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Some(done) = done {
                        let done = done.context("a job task panicked")?;
                        running.remove(&done.job.seq);
                        finished.push(done);
                    }
                }
                () = woken_or_due(wakeups.as_ref(), look_at), if waiting_for_work => {
                    // Held back: look again by claiming (a read would only find the same
                    // held-back jobs ready).
                    may_be_ready |= held_back;
                }
                // Waiting for work ends at the first signal; jobs in flight, at the second.
                () = self.shutdown.reached(if waiting_for_work { Stage::Draining } else { Stage::Abandoning }) => {
                    if self.shutdown.stage() == Stage::Abandoning {
                        // Dropping the set cancels every run at its next yield (guests yield
                        // at every epoch tick); what they would have reported is no longer ours.
                        tracing::warn!(jobs = in_flight.len(), "dropping the jobs in flight");
                        in_flight.abort_all();
                        break;
                    }
                }
            }
            while let Some(done) = in_flight.try_join_next() {
                let done = done.context("a job task panicked")?;
                running.remove(&done.job.seq);
                finished.push(done);
            }
        }
        Ok(summary)
    }

    /// Whether the worker may still claim, having claimed `claimed_total` jobs: it is not
    /// stopping, and `--max-jobs` is not reached.
    fn may_claim(&self, claimed_total: u64) -> bool {
        self.shutdown.stage() == Stage::Running && self.max_jobs.is_none_or(|max| claimed_total < max)
    }

    /// Records the finished jobs and claims up to `want` new ones in one store turn.
    ///
    /// A turn that fails for a passing reason is tried again until the database answers
    /// (see [`riding_out`]), claiming nothing. The failed try may have committed without its
    /// answer arriving: its settlements are then fenced off, and the retry finds them stale
    /// (they are reported as [`Settlement::Recorded`] once the attempt is seen recorded), and
    /// the jobs it claimed are held under this worker with tokens nobody saw. Those are
    /// adopted here, as the claims the worker holds beyond the `running` ones: left alone,
    /// the heartbeat would renew their leases for as long as the worker lives. They are no
    /// more than the failed try asked for, so the worker never runs more than its slots.
    /// The claimed jobs, those whose processor reads its parents' results (`input: envelope`)
    /// with their payload wrapped with those results (see [`envelope`]): one read for all of
    /// them, made only when there are such jobs.
    async fn with_parents(&self, mut claimed: Vec<ClaimedJob>) -> Result<Vec<ClaimedJob>> {
        let config = &self.runner.config;
        let wrapped: Vec<i64> = claimed
            .iter()
            .filter(|job| config.input_for(&job.processor) == ProcessorInput::Envelope)
            .map(|job| job.seq)
            .collect();
        if wrapped.is_empty() {
            return Ok(claimed);
        }
        let results =
            riding_out(&self.shutdown, "reading parents' results", || self.store.parent_results(&wrapped)).await?;
        for job in claimed.iter_mut().filter(|job| wrapped.contains(&job.seq)) {
            let parents: Vec<&ParentResult> = results.iter().filter(|result| result.child_seq == job.seq).collect();
            job.payload = envelope::wrap(&job.payload, &parents);
        }
        Ok(claimed)
    }

    async fn settle(&mut self, finished: Vec<FinishedRun>, want: u32, running: &HashSet<i64>) -> Result<TurnDone> {
        let messages: Vec<Option<String>> = finished.iter().map(|run| run.report.outcome.message()).collect();
        let results: Vec<Option<String>> = finished
            .iter()
            .map(|run| match &run.report.outcome {
                Outcome::Ok(result) => Some(result.to_string()),
                _ => None,
            })
            .collect();
        let attempts: Vec<Finished<'_>> = finished
            .iter()
            .zip(&messages)
            .zip(&results)
            .map(|((run, message), result)| Finished {
                job: &run.job,
                report: AttemptReport {
                    kind: run.report.outcome.kind(),
                    message: message.as_deref(),
                    stderr: Some(run.report.stderr.as_str()).filter(|s| !s.is_empty()),
                    fuel_used: Some(run.report.fuel_used),
                    duration_ms: Some(run.report.duration.as_millis() as u64),
                    processor_sha256: run.report.processor_sha256.as_deref(),
                },
                result: result.as_deref(),
            })
            .collect();
        let claim = (want > 0).then(|| ClaimRequest {
            pool: &self.pool,
            worker_id: &self.worker_id,
            lease: self.runner.config.reaper.stale_after.0,
            limit: want,
            flow: &self.flow,
        });
        let (mut turn, interrupted) =
            riding_out_noting(&self.shutdown, "recording finished jobs and claiming", |failures| {
                self.store.turn(&attempts, claim.filter(|_| failures == 0), &self.retry)
            })
            .await?;
        let mut statuses: Vec<Settlement> = turn.settled.iter().map(Settlement::from).collect();
        if interrupted {
            self.recognize_recorded(&finished, &mut statuses).await?;
            turn.claimed = self.orphaned_claims(running).await?;
        }

        let lines: Vec<JobLine> = finished
            .iter()
            .zip(messages)
            .zip(statuses)
            .map(|((run, message), status)| JobLine {
                job_id: run.job.id.clone(),
                processor: run.job.processor.clone(),
                attempt: run.job.attempt,
                outcome: run.report.outcome.kind(),
                status,
                message,
                duration_ms: run.report.duration.as_millis() as u64,
                fuel_used: run.report.fuel_used,
            })
            .collect();
        for line in &lines {
            if line.status == Settlement::Stale {
                tracing::warn!(
                    job_id = line.job_id,
                    worker_id = self.worker_id,
                    "the job was recovered by the reaper while this worker ran it; its {} outcome was discarded",
                    line.outcome.as_str()
                );
            } else {
                tracing::info!(
                    job_id = line.job_id,
                    outcome = line.outcome.as_str(),
                    status = ?line.status,
                    "job finished"
                );
            }
        }
        Ok(TurnDone {
            lines,
            claimed: turn.claimed,
            claim_lost: interrupted && claim.is_some(),
            held_back: turn.held_back,
        })
    }

    /// Marks as [`Settlement::Recorded`] each stale settlement whose attempt the store holds
    /// as settled by this worker with the outcome it reported: a turn whose answer was lost
    /// recorded it. A stale one without such a record was taken by the reaper.
    async fn recognize_recorded(&self, finished: &[FinishedRun], statuses: &mut [Settlement]) -> Result<()> {
        let stale: Vec<&str> = finished
            .iter()
            .zip(statuses.iter())
            .filter(|(_, status)| **status == Settlement::Stale)
            .map(|(run, _)| run.job.id.as_str())
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let jobs =
            riding_out(&self.shutdown, "reading the jobs a lost answer settled", || self.store.jobs(&stale)).await?;
        for (run, status) in
            finished.iter().zip(statuses.iter_mut()).filter(|(_, status)| **status == Settlement::Stale)
        {
            let ours = |attempt: &AttemptRecord| {
                attempt.attempt == run.job.attempt
                    && attempt.worker_id == self.worker_id
                    && attempt.outcome == Some(run.report.outcome.kind())
            };
            let detail = jobs.iter().find(|detail| detail.job.id == run.job.id);
            if detail.is_some_and(|detail| detail.attempt_history.iter().any(ours)) {
                *status = Settlement::Recorded;
            }
        }
        Ok(())
    }

    /// The claims this worker holds beyond the `running` ones: taken by a turn whose answer
    /// was lost. The worker runs them as if that turn had answered.
    async fn orphaned_claims(&self, running: &HashSet<i64>) -> Result<Vec<ClaimedJob>> {
        let held = riding_out(&self.shutdown, "reading the claims a lost answer took", || {
            self.store.claims_held_by(&self.worker_id)
        })
        .await?;
        let orphans: Vec<ClaimedJob> = held.into_iter().filter(|job| !running.contains(&job.seq)).collect();
        if !orphans.is_empty() {
            tracing::warn!(
                worker_id = self.worker_id,
                jobs = orphans.len(),
                "adopting the jobs a turn claimed before its answer was lost"
            );
        }
        Ok(orphans)
    }
}

/// The waits before a store call that failed for a passing reason is tried again: 50 ms,
/// doubling up to 2 s.
const RETRY_WAITS: RetryPolicy =
    RetryPolicy { initial: Duration::from_millis(50), max: Duration::from_secs(2), jitter: 0.0 };

/// `call`'s answer, trying it again with backoff while it fails for a passing reason: the
/// server out of reach (restarting, the connection cut; the store reconnects) or the
/// database locked. Any other failure ends the worker, and so does one that comes once the
/// worker must drop its jobs (the reaper declared it lost).
async fn riding_out<T, F>(shutdown: &Shutdown, what: &str, mut call: impl FnMut() -> F) -> Result<T>
where
    F: Future<Output = Result<T, StoreError>>,
{
    Ok(riding_out_noting(shutdown, what, |_| call()).await?.0)
}

/// As [`riding_out`], telling `call` how many tries failed before it, and saying whether
/// any did: such a try may have been carried out with only its answer lost.
async fn riding_out_noting<T, F>(shutdown: &Shutdown, what: &str, mut call: impl FnMut(u32) -> F) -> Result<(T, bool)>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut failures = 0u32;
    loop {
        let err = match call(failures).await {
            Ok(answer) => {
                if failures > 0 {
                    tracing::info!("{what}: the database answers again, after {failures} failed tries");
                }
                return Ok((answer, failures > 0));
            }
            Err(err) => err,
        };
        if !err.kind().is_passing() || shutdown.stage() == Stage::Abandoning {
            return Err(anyhow::Error::new(err).context(format!("{what} failed")));
        }
        if failures == 0 {
            tracing::warn!("{what} failed, trying again until the database answers: {err}");
        }
        failures += 1;
        let mut abandoning = shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(RETRY_WAITS.backoff(failures)) => {}
            () = abandoning.reached(Stage::Abandoning) => {}
        }
    }
}

/// The longest a following worker waits without looking at the pool: a backstop for a
/// wake-up that never came (none is known to be lost; a PostgreSQL listener that reconnects
/// wakes its worker itself).
const FALLBACK_LOOK: Duration = Duration::from_secs(5);

/// How soon a worker whose claim a full flow limit held back claims again, at first and at
/// most: soon enough that a freed slot is not left idle long, rarely enough that waiting
/// workers cost the database little.
const HELD_BACK_FIRST_LOOK: Duration = Duration::from_millis(20);
const HELD_BACK_LAST_LOOK: Duration = Duration::from_secs(1);

/// Returns at the first wake-up or at `due`, whichever comes first.
async fn woken_or_due(wakeups: Option<&Wakeups>, due: Instant) {
    let woken = async {
        match wakeups {
            Some(wakeups) => wakeups.changed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = woken => {}
        () = tokio::time::sleep_until(due.into()) => {}
    }
}

/// Loads one claimed job's processor and runs the job in the sandbox.
async fn run_job(runner: Arc<Runner>, job: ClaimedJob) -> FinishedRun {
    let report = match runner.registry.load(&job.processor).await {
        Ok(program) => {
            let limits = runner.config.limits_for(&job.processor);
            let input = JobInput {
                job_id: &job.id,
                attempt: job.attempt,
                pool: &job.pool,
                processor: &job.processor,
                payload: job.payload.as_bytes(),
            };
            runner.sandbox.run(&program, input, &limits, &runner.config.grants_for(&job.processor)).await
        }
        Err(err) => RunReport::load_error(err.to_string()),
    };
    FinishedRun { job, report }
}

/// The heartbeat thread: renews the worker's liveness and its jobs' leases on a fixed
/// schedule, with its own connection so job work never delays it. When a beat finds the
/// worker must stop, it advances the worker's shutdown and ends with the reason.
struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Option<StopReason>>,
}

impl Heartbeat {
    fn start(config: &Config, worker_id: &str, fingerprint: Fingerprint, trigger: Trigger) -> Result<Heartbeat> {
        let database = config.database.clone();
        let interval = config.worker.heartbeat_interval.0;
        let lease = config.reaper.stale_after.0;
        let worker_id = worker_id.to_owned();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            // Connected at the first beat, not at start: a worker that finishes sooner (a
            // `--once` run) never pays for a second connection. The thread drives its store
            // on a runtime of its own, so a busy worker loop never delays a beat.
            let mut store: Option<Store> = None;
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                tracing::error!(worker_id, "cannot start the heartbeat's async runtime; no heartbeats will be sent");
                return None;
            };
            loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return None,
                }
                // A new file at the database's path is another pool: beating there would
                // renew nothing of ours, and claiming there would run someone else's jobs.
                let beat = fingerprint.verify().and_then(|()| {
                    runtime.block_on(async {
                        if store.is_none() {
                            store = Some(Store::open(&database, Access::Existing).await?);
                        }
                        store.as_ref().expect("opened above").heartbeat(&worker_id, lease).await
                    })
                });
                let stop = match beat {
                    Ok(true) => continue,
                    Ok(false) => StopReason::Lost,
                    Err(err) if matches!(err.kind(), ErrorKind::Replaced | ErrorKind::Missing) => {
                        StopReason::DatabaseReplaced(err)
                    }
                    Err(err) => {
                        tracing::warn!(worker_id, "heartbeat failed (will retry): {err:#}");
                        continue;
                    }
                };
                tracing::error!(worker_id, "stopping: {stop:?}; claiming no more jobs");
                trigger.advance(stop.stage());
                return Some(stop);
            }
        })?;
        Ok(Heartbeat { stop, thread })
    }

    /// Stops the thread; why it stopped the worker, if it did.
    fn stop(self) -> Option<StopReason> {
        drop(self.stop);
        self.thread.join().unwrap_or(None)
    }
}
