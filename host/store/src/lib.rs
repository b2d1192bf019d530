//! jobhost-store: the durable job pool: one interface, [`Store`], over two backends — an embedded SQLite
//! file (the default: one machine, nothing to run) and a PostgreSQL server (many machines
//! sharing one pool). `--db` picks one: a `postgres://` or `postgresql://` URL, else a path.
//!
//! The store is split the way River splits its driver:
//! - this module and [`model`] hold what is the same for every backend: the data, typed
//!   states that are read back strictly, the one constructor that checks a new job
//!   ([`NewJob::new`], which `seed` and the HTTP API both call), the retry policy and how a
//!   finished attempt is settled ([`Store::turn`]), reaping as "mark the silent workers lost,
//!   then settle their jobs as `worker_lost`", errors that name the database and what
//!   happened there and keep their cause (the fix is for the command line and the API to
//!   word, each for its reader);
//! - a [`driver::Driver`] (`sqlite`, `postgres`) owns only its SQL and its connections, and
//!   makes every state change of a job one statement or one transaction fenced on the state
//!   it expects, so a late or duplicate call changes nothing and says so.
//!
//! Nothing outside the store names a backend, a connection or a database file. One test
//! suite (`suite`) is written against [`Store`] and run against every backend.
//!
//! It builds on `jobhost-core` alone and must not know about WebAssembly, processors' code,
//! the command line or HTTP serving; it links no wasmtime, so its suite builds and runs
//! (`cargo test -p jobhost-store`) without compiling the sandbox.

mod activity;
mod driver;
mod error;
mod flow;
mod model;
mod postgres;
mod retry;
mod sqlite;
#[cfg(test)]
mod suite;
mod wake;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jobhost_core::config::DatabaseConfig;
use jobhost_core::outcome::OutcomeKind;

pub use activity::{Activity, DURATION_BOUNDS_MS, FUEL_BOUNDS, Histogram};
use driver::{Driver, Now, Resolution, Settlement};
pub use error::{ErrorKind, Result, StoreError};
pub use model::*;
pub use retry::RetryPolicy;
pub use wake::Wakeups;

/// Jobs one batch of [`Store::purge`] deletes: a few milliseconds of writing.
pub const PURGE_BATCH: u32 = 1_000;

/// Where a store reads the time: the database's clock, or (in tests) a hand-driven one.
#[derive(Debug, Clone)]
pub enum Clock {
    Database,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    fn now(&self) -> Now {
        match self {
            Clock::Database => None,
            Clock::Manual(now) => Some(now.load(Ordering::SeqCst)),
        }
    }
}

/// A database location as it may be shown to people: a server URL without its password.
pub fn shown_location(location: &str) -> String {
    let config = DatabaseConfig { path: location.to_owned(), ..DatabaseConfig::default() };
    if config.is_server() { postgres::redact(location) } else { location.to_owned() }
}

/// Whether opening may create the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create the pool (a SQLite file and its folders, or the schema on a server) when it does
    /// not exist: commands that add jobs.
    CreateIfMissing,
    /// The pool must exist: a typo in `--db` is an error, not a new empty pool.
    Existing,
}

/// A connection to the pool. Methods take `&self`: a store can be shared between tasks.
pub struct Store {
    driver: Box<dyn Driver>,
    clock: Clock,
}

impl Fingerprint {
    /// Fails with [`ErrorKind::Replaced`] when the database opened is no longer the one its
    /// location names.
    pub fn verify(&self) -> Result<()> {
        sqlite::verify_fingerprint(self)
    }
}

impl Store {
    /// Opens the pool at `config.path` on one connection, creating or upgrading its schema as
    /// `access` allows, and refusing databases that are not jobhost's or come from a newer
    /// jobhost. Operations made at once take turns on the connection.
    pub async fn open(config: &DatabaseConfig, access: Access) -> Result<Store> {
        Store::open_with_clock(config, access, 1, Clock::Database).await
    }

    /// As [`Store::open`], for a process serving many callers at once: with up to
    /// `connections` connections, so operations made at once do not take turns on one. On
    /// PostgreSQL they run side by side, on connections opened as they are needed; on SQLite
    /// one connection writes and the others read, so reads go on while a write waits for
    /// another process's lock.
    pub async fn open_pooled(config: &DatabaseConfig, access: Access, connections: u32) -> Result<Store> {
        Store::open_with_clock(config, access, connections, Clock::Database).await
    }

    pub async fn open_with_clock(
        config: &DatabaseConfig,
        access: Access,
        connections: u32,
        clock: Clock,
    ) -> Result<Store> {
        let connections = connections.max(1) as usize;
        let driver: Box<dyn Driver> = if config.is_server() {
            Box::new(postgres::PostgresDriver::open(config, access, connections).await?)
        } else {
            Box::new(sqlite::SqliteDriver::open(config, access, connections)?)
        };
        Ok(Store { driver, clock })
    }

    /// The database as people name it: a path, or a URL without its password.
    pub fn location(&self) -> &str {
        self.driver.location()
    }

    /// Which database this store opened; see [`Fingerprint::verify`].
    pub fn fingerprint(&self) -> Fingerprint {
        self.driver.fingerprint()
    }

    fn named<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|err| err.at(self.driver.location()))
    }

    /// Queues every job `jobs` yields in one transaction: all of them, or none if any is
    /// refused (the refusal is the error). Jobs are streamed, so memory stays flat. A job
    /// whose unique key another job holds is not queued: it meets that job as its
    /// [`JobRequest::replace`] says, and the report names the job it matched.
    pub async fn enqueue(&self, jobs: impl Iterator<Item = Result<NewJob, Refusal>> + Send) -> Result<EnqueueReport> {
        let mut jobs = jobs;
        let queued = self.driver.enqueue(&mut jobs, self.clock.now()).await;
        self.named(queued)
    }

    /// Queues `jobs` in one transaction; returns, in order, the id of each job, or of the job
    /// holding its unique key (see [`EnqueueReport::answers`] for what became of each).
    pub async fn enqueue_all(&self, jobs: &[NewJob]) -> Result<Vec<String>> {
        let report = self.enqueue(jobs.iter().cloned().map(Ok)).await?;
        Ok(report.answers(jobs).into_iter().map(|(id, _)| id).collect())
    }

    /// One worker turn, in one transaction: records every finished attempt (completed, or
    /// failed and sent through `retry`: back to pending after its backoff, or poisoned when
    /// its attempts are used up), then claims up to `claim.limit` ready jobs. Each attempt is
    /// fenced on its claim: one the reaper took back is [`Settled::Stale`] and changes nothing.
    /// What the job's code wrote is made [`storable`] first, so no output of one job can fail
    /// the statement that settles the others with it.
    pub async fn turn(
        &self,
        finished: &[Finished<'_>],
        claim: Option<ClaimRequest<'_>>,
        retry: &RetryPolicy,
    ) -> Result<Turn> {
        let texts: Vec<[Option<Cow<'_, str>>; 3]> = finished
            .iter()
            .map(|attempt| {
                [attempt.result, attempt.report.message, attempt.report.stderr].map(|text| text.map(storable))
            })
            .collect();
        let settlements: Vec<Settlement<'_>> = finished
            .iter()
            .zip(&texts)
            .map(|(attempt, [result, message, stderr])| Settlement {
                claim: claim_ref(attempt.job),
                resolution: resolve(result.as_deref(), attempt.job.attempt, attempt.job.max_attempts, retry),
                report: AttemptReport {
                    message: message.as_deref(),
                    stderr: stderr.as_deref(),
                    ..attempt.report.clone()
                },
            })
            .collect();
        let turned = self.driver.turn(&settlements, claim.as_ref(), self.clock.now()).await;
        self.named(turned)
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobDetail>> {
        Ok(self.jobs(&[id]).await?.pop())
    }

    /// The jobs of `ids` that exist, each with its latest [`RECENT_ATTEMPTS`] attempts, in
    /// one read however many ids and attempts.
    pub async fn jobs(&self, ids: &[&str]) -> Result<Vec<JobDetail>> {
        let jobs = self.driver.jobs(ids).await;
        self.named(jobs)
    }

    /// The results of the parents of each of `children` (claimed jobs, by their `seq`), for
    /// a processor that reads them with its payload; parents deleted by retention are
    /// missing.
    pub async fn parent_results(&self, children: &[i64]) -> Result<Vec<ParentResult>> {
        if children.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.driver.parent_results(children).await;
        self.named(results)
    }

    /// One page of job `id`'s attempts, newest first (see [`AttemptPage`]); the last one's
    /// [`AttemptRecord::cursor`] in `page.before` asks for the next page. `None` when there
    /// is no such job.
    pub async fn attempts(&self, id: &str, page: &AttemptPage) -> Result<Option<Vec<AttemptRecord>>> {
        let attempts = self.driver.attempts(id, page).await;
        self.named(attempts)
    }

    /// One page of the jobs matching `filter`, newest first; the last job's
    /// [`JobSummary::cursor`] in `filter.after` asks for the next page.
    pub async fn list_jobs(&self, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>> {
        let jobs = self.driver.list_jobs(filter).await;
        self.named(jobs)
    }

    /// The status of each of `ids` that exists (one query for all of them).
    pub async fn job_statuses(&self, ids: &[&str]) -> Result<Vec<(String, JobStatus)>> {
        let statuses = self.driver.job_statuses(ids).await;
        self.named(statuses)
    }

    /// The jobs `worker_id` holds claimed, with their claim tokens, oldest first: after a
    /// turn whose answer was lost, what that turn may have claimed for the worker.
    pub async fn claims_held_by(&self, worker_id: &str) -> Result<Vec<ClaimedJob>> {
        let held = self.driver.claims_held_by(worker_id).await;
        self.named(held)
    }

    /// Gives a poisoned or cancelled job a fresh set of attempts (as many as it had), ready now.
    pub async fn retry_job(&self, id: &str) -> Result<IdAnswer> {
        let answer = self.driver.retry_job(id, self.clock.now()).await;
        self.named(answer)
    }

    /// Retries every poisoned or cancelled job that `matching` matches, in one statement;
    /// returns how many.
    pub async fn retry_matching(&self, matching: &JobMatch<'_>) -> Result<u64> {
        let retried = self.driver.retry_matching(matching, self.clock.now()).await;
        self.named(retried)
    }

    /// Withdraws a pending job so no worker claims it.
    pub async fn cancel_job(&self, id: &str) -> Result<IdAnswer> {
        let answer = self.driver.cancel_job(id, self.clock.now()).await;
        self.named(answer)
    }

    /// Cancels every pending job that `matching` matches, in one statement; returns how many.
    pub async fn cancel_matching(&self, matching: &JobMatch<'_>) -> Result<u64> {
        let cancelled = self.driver.cancel_matching(matching, self.clock.now()).await;
        self.named(cancelled)
    }

    /// Deletes finished jobs (in `statuses`) that finished more than `older_than` ago, with
    /// their attempt history, [`PURGE_BATCH`] at a time (see [`Store::delete_expired`]), so
    /// workers go on claiming meanwhile. Returns how many jobs were deleted.
    pub async fn purge(&self, older_than: Duration, statuses: &[JobStatus]) -> Result<u64> {
        let ages: Vec<(JobStatus, Duration)> = statuses.iter().map(|&status| (status, older_than)).collect();
        let mut purged = 0;
        loop {
            let deleted = self.delete_expired(&ages, PURGE_BATCH).await?;
            purged += deleted;
            if deleted < u64::from(PURGE_BATCH) {
                return Ok(purged);
            }
        }
    }

    /// One batch of retention: deletes at most `limit` finished jobs, each in a status `ages`
    /// names and finished more than the age given for it, with their attempt history, in one
    /// short transaction. Pending and claimed jobs are never touched, whatever `ages` says.
    /// Claims never wait for it: it touches only finished jobs, skips any another
    /// transaction holds, and the counts it changes are kept without a row every writer
    /// updates. What `/metrics` counts (queued jobs, attempts) is kept apart from the jobs
    /// and stays. Returns how many jobs were deleted: fewer than `limit` once none is left.
    pub async fn delete_expired(&self, ages: &[(JobStatus, Duration)], limit: u32) -> Result<u64> {
        let deleted = self.driver.delete_finished(ages, limit, self.clock.now()).await;
        self.named(deleted)
    }

    /// A worker coming up: turns its `starting` row (left by the checker) into `active`, or
    /// registers it afresh. Refuses an id whose worker already ended or was declared lost.
    pub async fn activate_worker(&self, worker: &NewWorker) -> Result<()> {
        let activated = self.driver.activate_worker(worker, self.clock.now()).await;
        self.named(activated)
    }

    /// Proves `worker_id` alive and extends the leases of the jobs it holds by `lease`.
    /// Returns false when the worker is no longer `active` (it was reaped): it must stop.
    pub async fn heartbeat(&self, worker_id: &str, lease: Duration) -> Result<bool> {
        let alive = self.driver.heartbeat(worker_id, lease, self.clock.now()).await;
        self.named(alive)
    }

    /// A clean exit. Jobs it still holds (it should hold none) are left to the reaper.
    pub async fn deregister_worker(&self, worker_id: &str) -> Result<()> {
        let deregistered = self.driver.deregister_worker(worker_id, self.clock.now()).await;
        self.named(deregistered)
    }

    /// One reaping pass: `active` workers silent for longer than `stale_after` and `starting`
    /// ones not up within `start_grace` become `lost`; then every abandoned job (its worker
    /// gone, or its lease expired) goes through the retry policy as a `worker_lost` attempt,
    /// fenced on its claim, so reapers running at once never release a job twice.
    pub async fn reap(
        &self,
        pool: Option<&str>,
        stale_after: Duration,
        start_grace: Duration,
        retry: &RetryPolicy,
    ) -> Result<Reaped> {
        let now = self.clock.now();
        let workers = self.driver.mark_lost_workers(pool, stale_after, start_grace, now).await;
        let workers = self.named(workers)?;
        for worker in &workers {
            tracing::warn!(worker_id = worker, "worker marked lost: no heartbeat within {stale_after:?}");
        }
        let abandoned = self.driver.abandoned_jobs(pool, now).await;
        let abandoned = self.named(abandoned)?;
        let reasons: Vec<String> = abandoned.iter().map(driver::Abandoned::reason).collect();
        let settlements: Vec<Settlement<'_>> = abandoned
            .iter()
            .zip(&reasons)
            .map(|(job, reason)| Settlement {
                claim: job.claim.clone(),
                resolution: resolve(None, job.claim.attempt, job.max_attempts, retry),
                report: AttemptReport { message: Some(reason), ..AttemptReport::of(OutcomeKind::WorkerLost) },
            })
            .collect();
        let turned = self.driver.turn(&settlements, None, now).await;
        let settled = self.named(turned)?.settled;
        let mut recovery = Recovery::default();
        for outcome in settled {
            match outcome {
                Settled::Poisoned => recovery.poisoned += 1,
                Settled::Retrying { .. } => recovery.released += 1,
                Settled::Completed | Settled::Stale => {}
            }
        }
        Ok(Reaped { workers, recovery })
    }

    /// Succeeds when the pool answers a read now. Like every operation, it first reconnects
    /// a PostgreSQL connection the server dropped.
    pub async fn ping(&self) -> Result<()> {
        let answered = self.driver.ping().await;
        self.named(answered)
    }

    /// How long until the earliest pending job of `pool` is ready: zero when one is ready
    /// now, `None` when the pool has no pending job or is paused (none of its jobs will be
    /// claimed: a waiter waits for a wake-up, which resuming the pool sends). Read on the
    /// database's clock, so a waiter on a machine whose clock is off still wakes when the
    /// job is due there.
    pub async fn ready_in(&self, pool: &str) -> Result<Option<Duration>> {
        let ready_in = self.driver.ready_in(pool, self.clock.now()).await;
        Ok(self.named(ready_in)?.map(|ms| Duration::from_millis(ms.max(0) as u64)))
    }

    /// Wake-ups for a worker waiting for jobs of `pool`: hints that they may have changed,
    /// to be checked with [`Store::ready_in`] (see [`wake`] for each backend's source).
    pub async fn wakeups(&self, pool: &str) -> Result<Wakeups> {
        let wakeups = self.driver.wakeups(pool).await;
        self.named(wakeups)
    }

    /// Registers as `starting` the workers the checker on `request.host` should start:
    /// as many as there are ready jobs not yet covered by live workers on any host, at most
    /// this host's free slots, and none for a paused pool ([`WorkerPlan::paused`]).
    /// Concurrent checkers (on one host or many) never over-spawn.
    pub async fn plan_workers(&self, request: &PlanRequest<'_>) -> Result<WorkerPlan> {
        let plan = self.driver.plan_workers(request, self.clock.now()).await;
        self.named(plan)
    }

    /// The counts of `pool` (of every pool: `None`), and which of them are paused.
    pub async fn status(&self, pool: Option<&str>) -> Result<StatusSnapshot> {
        let status = self.driver.status(pool, self.clock.now()).await;
        let mut status = self.named(status)?;
        status.paused_pools = self
            .paused_pools()
            .await?
            .into_iter()
            .filter(|paused| pool.is_none_or(|pool| paused.pool == pool))
            .collect();
        Ok(status)
    }

    /// Every pool holding jobs or paused, by name, with its counts, ready jobs, oldest
    /// ready age and pause.
    pub async fn pools(&self) -> Result<Vec<PoolSnapshot>> {
        let names = self.driver.pool_names().await;
        let paused = self.paused_pools().await?;
        let mut names: std::collections::BTreeSet<String> = self.named(names)?.into_iter().collect();
        names.extend(paused.iter().map(|paused| paused.pool.clone()));
        let mut pools = Vec::with_capacity(names.len());
        for pool in names {
            let status = self.driver.status(Some(&pool), self.clock.now()).await;
            let pause = paused.iter().find(|paused| paused.pool == pool);
            pools.push(PoolSnapshot::new(pool, &self.named(status)?, pause));
        }
        Ok(pools)
    }

    /// One pool as [`Store::pools`] lists it, whether or not it holds jobs.
    pub async fn pool(&self, pool: &str) -> Result<PoolSnapshot> {
        let status = self.status(Some(pool)).await?;
        Ok(PoolSnapshot::new(pool.to_owned(), &status, status.paused_pools.first()))
    }

    /// Pauses `pool`, which need not hold jobs yet: from the moment this returns, no claim
    /// that starts takes one of its jobs (see each driver's claim for what a claim already
    /// under way when the pause commits may do), `check` starts no worker for it and
    /// following workers wait. Jobs already claimed run on and are settled as ever.
    /// Pausing a paused pool changes nothing but its reason, when one is given.
    pub async fn pause_pool(&self, pool: &str, reason: Option<&str>) -> Result<PausedPool> {
        let paused = self.driver.pause_pool(pool, reason, self.clock.now()).await;
        self.named(paused)
    }

    /// Lets workers claim `pool`'s jobs again, and wakes those waiting for them; whether it
    /// was paused (resuming a pool that is not changes nothing).
    pub async fn resume_pool(&self, pool: &str) -> Result<bool> {
        let resumed = self.driver.resume_pool(pool).await;
        self.named(resumed)
    }

    /// Every paused pool, by name.
    pub async fn paused_pools(&self) -> Result<Vec<PausedPool>> {
        let paused = self.driver.paused_pools().await;
        self.named(paused)
    }

    /// Each of `limits` per key with work under it: how many of its jobs run, and how many
    /// ready ones it holds back (those beyond the room it has left), by processor and key.
    /// Reads every ready job of a limited processor, so it costs more with a longer backlog.
    pub async fn flow_usage(&self, limits: &[jobhost_core::flow::FlowLimit]) -> Result<Vec<FlowUsage>> {
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.driver.flow_counts(limits, self.clock.now()).await;
        Ok(flow::usage(limits, self.named(counts)?))
    }

    pub async fn workers(&self, filter: &WorkerFilter<'_>) -> Result<Vec<WorkerInfo>> {
        let workers = self.driver.workers(filter).await;
        self.named(workers)
    }

    /// What the pool has done, added up: jobs queued, attempts by outcome, their durations
    /// and fuel, and the last hour minute by minute. Costs the same at any number of jobs.
    pub async fn activity(&self) -> Result<Activity> {
        let read = self.driver.activity(self.clock.now()).await;
        let (now, rows) = self.named(read)?;
        Ok(Activity::from_rows(rows, now))
    }

    /// Every schedule the pool knows (those seen by a scheduler), by name, each with its
    /// latest `runs` runs (at most [`KEPT_SCHEDULE_RUNS`]).
    pub async fn schedules(&self, runs: u32) -> Result<Vec<ScheduleState>> {
        let schedules = self.driver.schedules(runs.min(KEPT_SCHEDULE_RUNS)).await;
        self.named(schedules)
    }

    /// A schedule seen for the first time: handled through `at`, so ticks before it never
    /// run. Changes nothing if another process recorded it first; returns whether this one did.
    pub async fn start_schedule(&self, name: &str, at: Millis) -> Result<bool> {
        let started = self.driver.start_schedule(name, at).await;
        self.named(started)
    }

    /// Handles schedule `name`'s tick due at `due_at`, exactly once however many processes
    /// call this for it at once: in one transaction, the schedule moves to `due_at` only if
    /// it was behind it (compare-and-set), and only the call that moved it queues `job` (none
    /// to pass over the tick) and records it as the tick's run. So a tick's job exists iff
    /// its run does. Returns whether this call handled the tick; false when another had,
    /// or a later tick was handled already, or the schedule was never started.
    pub async fn advance_schedule(&self, name: &str, due_at: Millis, job: Option<NewJob>) -> Result<bool> {
        let advanced = self.driver.advance_schedule(name, due_at, job.as_ref(), self.clock.now()).await;
        self.named(advanced)
    }

    /// Copies every job of this pool, with its attempt history and result, into `target`:
    /// how a pool moves between backends. Workers are not copied (they belong to the machines
    /// of the old pool); a job still claimed arrives claimed by a worker the target does not
    /// know, so its reaper hands it back as `worker_lost`. `target` must hold no job and no
    /// worker unless `into_non_empty`. Jobs are copied a page at a time, each page in one
    /// transaction: after a failure the pages copied so far stay in the target.
    pub async fn copy_to(&self, target: &Store, into_non_empty: bool) -> Result<u64> {
        const PAGE: u32 = 1_000;
        if !into_non_empty && !target.named(target.driver.is_empty().await)? {
            return Err(StoreError::new(
                ErrorKind::Refused,
                format!(
                    "the target {} already holds jobs or workers: copy into an empty pool, or pass \
                     --into-non-empty to add these jobs to it",
                    target.location()
                ),
            ));
        }
        let mut copied = 0;
        let mut after = 0;
        loop {
            let page = self.driver.export(after, PAGE).await;
            let page = self.named(page)?;
            let Some(last) = page.last() else {
                return Ok(copied);
            };
            after = last.seq;
            let imported = target.driver.import(&page).await;
            target.named(imported)?;
            copied += page.len() as u64;
        }
    }
}

/// Text a job produced, as every backend can store it. PostgreSQL's `text` refuses NUL (and
/// would fail the whole turn over one byte a processor wrote to stderr), so NUL is shown as
/// `␀` (U+2400 SYMBOL FOR NULL), visibly and the same on every backend. Every other
/// character is kept: the text is valid UTF-8 already.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') { Cow::Owned(text.replace('\0', "\u{2400}")) } else { Cow::Borrowed(text) }
}

fn claim_ref(job: &ClaimedJob) -> driver::ClaimRef {
    driver::ClaimRef { seq: job.seq, worker_id: job.worker_id.clone(), token: job.token, attempt: job.attempt }
}

/// The retry rule, the same for every backend: a result completes the job; a failure sends
/// it back after its backoff, or poisons it when its last attempt failed.
fn resolve<'a>(result: Option<&'a str>, attempt: u32, max_attempts: u32, retry: &RetryPolicy) -> Resolution<'a> {
    match result {
        Some(result) => Resolution::Complete { result },
        None if attempt >= max_attempts => Resolution::Poison,
        None => Resolution::Retry { delay: retry.backoff(attempt) },
    }
}
